"""BitNet b1.58 2B4T shape on CPU: TQ2_0 / TQ1_0 vs Q4_0 decode and prompt tok/s, memory split, roofline.

Usage: python benchmarks/bitnet.py [--rounds 4] [--reduced] [--baseline BUILD_DIR] [--threads 1,2]
                                  [--types TQ2_0,TQ1_0,Q4_0]   (`invoke bitnet-bench`)
Everything is measured in one run; ratios are to Q4_0 of the same shape, medians of interleaved rounds.
--baseline adds another llama.cpp build (e.g. one without patches/0003) to the same interleaved rounds and
prints each speed's ratio to it: the kernel patch's effect, with Q4_0 (unchanged by it) as the noise control.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lowbit.bitnet.bench import bench_command  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--reduced", action="store_true", help="a reduced shape (quick look)")
    parser.add_argument("--baseline", help="another build folder to compare with in the same rounds")
    parser.add_argument("--threads", default="1,2", help="comma list of thread counts")
    parser.add_argument("--types", default="TQ2_0,TQ1_0,Q4_0", help="comma list (Q4_0, the reference, always runs)")
    args = parser.parse_args()
    sys.exit(bench_command(rounds=args.rounds, reduced=args.reduced, baseline=args.baseline, threads=args.threads,
                           types=args.types))
