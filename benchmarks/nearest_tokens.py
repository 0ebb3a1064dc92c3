"""Nearest-vocabulary search on a Gemma-2-sized table (256000 × 2304, bf16) on the CPU.

    python benchmarks/nearest_tokens.py [--threads 1]

Prints seconds for the row norms (computed once per encoder and cached by the Inspector), the
norm statistics, and cosine / Euclidean top-k for two query rows. Goal: under 2 s together.
Needs only torch (the host-free core).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dti import magnitude  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rows", type=int, default=256000)
    ap.add_argument("--width", type=int, default=2304)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    table = (torch.randn(args.rows, args.width, generator=g) * 0.03).to(torch.bfloat16)
    queries = torch.randn(2, args.width, generator=g)
    magnitude.nearest_tokens(table[:4096], queries, k=10)  # warm-up of the kernels, not of the table
    norms, t_norms = timed(lambda: magnitude.row_norms(table))
    stats, t_stats = timed(lambda: magnitude.norm_stats(table, norms))
    (_, cos_idx), t_cos = timed(lambda: magnitude.nearest_tokens(table, queries, k=10, metric="cosine", norms=norms))
    (_, euc_idx), t_euc = timed(lambda: magnitude.nearest_tokens(table, queries, k=10, metric="euclidean", norms=norms))
    total = t_norms + t_stats + t_cos + t_euc
    print(f"# nearest tokens, table {args.rows}×{args.width} bf16, threads {args.threads}, torch {torch.__version__}")
    print(f"row_norms_s={t_norms:.3f} norm_stats_s={t_stats:.3f} cosine_topk_s={t_cos:.3f} euclidean_topk_s={t_euc:.3f} "
          f"total_s={total:.3f} goal_s=2.0 within_goal={total < 2.0}")


if __name__ == "__main__":
    main()
