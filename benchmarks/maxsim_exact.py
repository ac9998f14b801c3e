"""Exact MaxSim throughput against the machine's own dense matmul.

For a grid of corpus sizes (tokens) and query batch sizes, runs ``lir_agent.maxsim_topk`` over
packed float16 documents (real-looking lengths: 50-300 tokens) with 32-token queries, and prints
token dot products per second, GFLOP/s (2·dim per dot product), and the ratio to the best dense
``torch.matmul`` GFLOP/s measured in the same run (a square fp32 matmul, and one of the kernel's
own shape). Floor (issue 2): >= 50% at query batch 32 and >= 1M tokens.

    python benchmarks/maxsim_exact.py [--dims 128 384] [--tokens 250000 1000000 2000000] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from lir_agent import maxsim_topk
from lir_agent.maxsim import chunk_tokens_for

QUERY_TOKENS = 32


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_gflops(m: int, k: int, n: int, device: str, dtype: torch.dtype, repeats: int = 3) -> float:
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    return 2 * m * k * n / best_time(lambda: a @ b, repeats) / 1e9


def make_corpus(num_tokens: int, dim: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(50, 301, (num_tokens // 50 + 1,), generator=g)
    count = int((lengths.cumsum(0) < num_tokens).sum()) + 1
    lengths = lengths[:count]
    lengths[-1] -= int(lengths.sum()) - num_tokens  # exactly num_tokens tokens
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    torch.cumsum(lengths, 0, out=offsets[1:])
    tokens = torch.nn.functional.normalize(torch.randn(int(offsets[-1]), dim, generator=g), dim=1).half().to(device)
    return tokens, offsets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 384])
    parser.add_argument("--tokens", type=int, nargs="+", default=[250_000, 1_000_000, 2_000_000])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    compute_dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    print(f"device={args.device} threads={torch.get_num_threads()} compute={compute_dtype}")
    peak = matmul_gflops(2048, 2048, 2048, args.device, compute_dtype)
    print(f"dense torch.matmul 2048^3: {peak:.1f} GFLOP/s")
    rows = []
    header = f"{'dim':>4} {'tokens':>9} {'batch':>5} {'ms':>8} {'Gdot/s':>8} {'GFLOP/s':>8} {'mm-shape':>9} {'ratio':>6}"
    print(header)
    for dim in args.dims:
        for num_tokens in args.tokens:
            tokens, offsets = make_corpus(num_tokens, dim, args.device)
            for batch in args.batches:
                query_tokens = batch * QUERY_TOKENS
                queries = [torch.nn.functional.normalize(torch.randn(QUERY_TOKENS, dim), dim=1) for _ in range(batch)]
                seconds = best_time(lambda: maxsim_topk(queries, tokens, offsets, 10), args.repeats)
                dots = tokens.shape[0] * query_tokens
                gflops = 2 * dim * dots / seconds / 1e9
                chunk = chunk_tokens_for(query_tokens, dim, compute_dtype)
                same_shape = matmul_gflops(query_tokens, dim, min(chunk, tokens.shape[0]), args.device, compute_dtype)
                reference = max(peak, same_shape)
                row = dict(dim=dim, tokens=int(tokens.shape[0]), batch=batch, ms=seconds * 1e3,
                           gdots_per_s=dots / seconds / 1e9, gflops=gflops, matmul_peak_gflops=peak,
                           matmul_same_shape_gflops=same_shape, ratio=gflops / reference)
                rows.append(row)
                print(f"{dim:>4} {row['tokens']:>9} {batch:>5} {row['ms']:>8.1f} {row['gdots_per_s']:>8.2f} "
                      f"{gflops:>8.1f} {same_shape:>9.1f} {row['ratio']:>6.2f}")
    floor_rows = [r for r in rows if r["batch"] == 32 and r["tokens"] >= 1_000_000]
    if floor_rows:
        worst = min(r["ratio"] for r in floor_rows)
        print(f"floor check (batch 32, >=1M tokens): worst ratio to dense matmul = {worst:.2f} (floor 0.50)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
