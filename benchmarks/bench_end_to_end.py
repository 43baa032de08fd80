"""Packed model vs PyTorch float eval of the same model, end to end (see onebit.deploy.benchmark).

    python benchmarks/bench_end_to_end.py [--run-dir runs/mnist-mlp/bnn] [--quick]
"""

from onebit.deploy.benchmark import main

if __name__ == "__main__":
    main()
