"""Architecture benchmark (`btml models bench` runs the same): presets beside nn.LSTM of equal size.

Run: .venv/bin/python benchmarks/bench_models.py [--arch tiny --arch efficient-hybrid] [--epochs 3]
"""

from __future__ import annotations

import argparse

import torch

from mlmodels.benchmark import benchmark_architectures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--arch", action="append", default=None)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--max-batches", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    benchmark_architectures(args.arch, epochs=args.epochs, max_batches=args.max_batches)


if __name__ == "__main__":
    main()
