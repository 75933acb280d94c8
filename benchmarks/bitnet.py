"""BitNet b1.58 2B4T shape on CPU: TQ2_0 / TQ1_0 vs Q4_0 decode and prompt tok/s, memory split, roofline.

Usage: python benchmarks/bitnet.py [--rounds 4] [--reduced] [--baseline BUILD_DIR] [--threads 1,2]
                                  [--types TQ2_0,TQ1_0,Q4_0]   (`invoke bitnet-bench`)
       python benchmarks/bitnet.py --peer IK_LLAMA_BUILD_DIR [--rounds 6] [--threads 2]
Everything is measured in one run; ratios are to Q4_0 of the same shape, medians of interleaved rounds.
--baseline adds another llama.cpp build (e.g. one without patches/0003) to the same interleaved rounds and
prints each speed's ratio to it: the kernel patch's effect, with Q4_0 (unchanged by it) as the noise control.
--peer runs the side by side with an ik_llama.cpp build instead: the kit's TQ2_0 and Q4_0 against its IQ2_BN
and Q4_0 (run-time repack on), the same weights, interleaved rounds (docs/bitnet.md says how it was built).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lowbit import LowbitError  # noqa: E402
from lowbit.bitnet.bench import bench_command  # noqa: E402
from lowbit.bitnet.peer import side_by_side_command  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--reduced", action="store_true", help="a reduced shape (quick look)")
    parser.add_argument("--baseline", help="another build folder to compare with in the same rounds")
    parser.add_argument("--threads", default="1,2", help="comma list of thread counts")
    parser.add_argument("--types", default="TQ2_0,TQ1_0,Q4_0", help="comma list (Q4_0, the reference, always runs)")
    parser.add_argument("--peer", help="an ik_llama.cpp build folder: run the side by side with it instead")
    args = parser.parse_args()
    try:
        if args.peer:
            sys.exit(side_by_side_command(args.peer, rounds=args.rounds, threads=args.threads))
        sys.exit(bench_command(rounds=args.rounds, reduced=args.reduced, baseline=args.baseline,
                               threads=args.threads, types=args.types))
    except LowbitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
