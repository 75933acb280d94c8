"""The quality lab's speed: a ladder of quants of one model, cold, then the same ladder cached.

Usage: python benchmarks/quality_ladder.py [--model smollm2] [--tokens 10240] [--ctx 512]
                                           [--recipe Q8_0 --recipe Q4_K_M ...] [--threads N]

Cold means an empty quality cache (a temporary LOWBIT_CACHE that shares only the llama.cpp build): the
reference is dequantized/converted, the importance matrix computed, the base logits written and every quant
built and measured. Prints each stage's seconds, the cold total, and the cached re-run's total. The goal
(the quality issue's goal): 5 quants of SmolLM2 on ~10k evaluation tokens in <= 5 min on 2 cores, cached
re-runs in seconds. Other processes on the machine slow the cold run: read it with the load average it prints.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lowbit.paths import cache_dir  # noqa: E402

LADDER = ["Q8_0", "Q4_K_M", "Q2_K", "IQ2_XXS", "IQ1_S"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--tokens", type=int, default=10240)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--recipe", action="append", default=None)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    recipes = args.recipe or LADDER
    real = cache_dir()
    with tempfile.TemporaryDirectory(prefix="lowbit-quality-bench-") as tmp:
        os.environ["LOWBIT_CACHE"] = tmp  # lowbit.paths reads it on every call
        for shared in ("builds", "src"):  # the llama.cpp build is shared, nothing of the quality lab
            if (real / shared).exists():
                os.symlink(real / shared, Path(tmp) / shared)
        from lowbit.run.quality import run_quality

        load = os.getloadavg()[0]
        started = time.monotonic()
        cold = run_quality(args.model, recipes, tokens=args.tokens, ctx=args.ctx, threads=args.threads)
        cold_s = time.monotonic() - started
        started = time.monotonic()
        warm = run_quality(args.model, recipes, tokens=args.tokens, ctx=args.ctx, threads=args.threads)
        warm_s = time.monotonic() - started
    assert warm.rows == cold.rows, "the cached re-run returned other results"
    print(f"\n{args.model}: {len(recipes)} quants, {cold.eval_tokens} evaluation tokens (ctx {args.ctx}), "
          f"load average {load:.1f} at start, {os.cpu_count()} cores")
    width = max(len(k) for k in cold.seconds)
    for stage, seconds in cold.seconds.items():
        if stage != "total":
            print(f"  {stage:<{width}}  {seconds:7.1f} s")
    print(f"  {'cold total (incl. reference, texts, token counts)':<{width}}  {cold_s:7.1f} s"
          f"  (goal <= 300 s: {'met' if cold_s <= 300 else 'NOT met'})")
    print(f"  {'cached re-run':<{width}}  {warm_s:7.1f} s")
    print("  mean KLD: " + ", ".join(f"{r['recipe']} {r['mean_kld']:.4f}" for r in cold.rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
