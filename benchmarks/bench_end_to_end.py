"""Packed model vs PyTorch float eval of the same model, end to end, and file size.

    python benchmarks/bench_end_to_end.py [--run-dir runs/mnist-mlp/bnn] [--quick]

See onebit.deploy.benchmark for how the ratios are measured, onebit.experiments.bench for the model.
"""

from onebit.experiments.bench import end_to_end_main

if __name__ == "__main__":
    end_to_end_main()
