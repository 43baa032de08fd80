"""Packed model vs PyTorch float eval of the same model, end to end, and file size.

    python benchmarks/bench_end_to_end.py [--run-dir runs/mnist-mlp/bnn] [--quick] [--threads 1 2]

For each thread count: torch, the packed model on float32 and on uint8 input, at batch 1 and 256,
and the packed model's time per layer at batch 256 beside its total.

See onebit.deploy.benchmark for how the ratios are measured, onebit.experiments.bench for the model.
"""

from onebit.experiments.bench import end_to_end_main

if __name__ == "__main__":
    end_to_end_main()
