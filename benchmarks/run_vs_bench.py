"""Three ratios from one run, medians over interleaved rounds:

1. `lowbit run` generation tokens/s ÷ plain `llama-bench` on the same file and placement flags, both
   greedy (goal >= 0.97): what the kit's wrapper costs.
2. the planner's pick ÷ the best configuration a llama-bench sweep found (goal >= 0.95): how good the plan is.
3. each swept generation speed as a fraction of the memory-bandwidth roofline (reported).

    python benchmarks/run_vs_bench.py [--model M] [--rounds 5] [--n-gen 32] [--threads 1,2]

Without --model it uses the r1 replica when it is built, else a small runnable deepseek2 (MoE, MLA)
written into a temporary folder. Tokens/s on a shared machine are noisy: read the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def default_model(tmp: Path) -> str:
    try:
        from lowbit.models.replicas import replica_path

        path = replica_path("r1")
        if path is not None and Path(path).exists():
            return str(path)
    except Exception:  # noqa: BLE001 - no replica module or replica yet: fall back to a generated model
        pass
    from lowbit.files.gguf_layout import runnable_deepseek2

    return str(runnable_deepseek2(tmp))


def bench_tg(model_path: str, flags: list[str], n_gen: int, depth: int) -> float:
    """Plain llama-bench generation tokens/s with the same placement flags, at the run's prompt depth."""
    from lowbit.run.bench import bench_flags
    from lowbit.toolchain.build import active_build

    cmd = [
        str(active_build().tool("llama-bench")),
        "-m",
        model_path,
        "-p",
        "0",
        "-n",
        str(n_gen),
        "-d",
        str(depth),
        "-r",
        "1",
        "-o",
        "json",
        *bench_flags(flags),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, stdin=subprocess.DEVNULL)
    rows = [r for r in json.loads(out.stdout) if r["n_gen"] > 0]
    return float(rows[0]["avg_ts"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n-gen", type=int, default=32)
    ap.add_argument("--threads", default=None, help="thread counts to sweep (default 1..physical cores)")
    ap.add_argument("--vram", type=float, action="append", default=None)
    ap.add_argument(
        "--run-threads",
        type=int,
        default=None,
        help="threads for the run-vs-bench rounds (default: the plan's, i.e. physical cores)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from lowbit.files.gguf_header import read_model
    from lowbit.run import bench, engine, plan

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or default_model(Path(tmp))
        meta = read_model(plan.model_path(model))
        the_plan = plan.make_plan(meta, args.vram or plan.detect_vram_gb(), threads=args.run_threads)
        pick = plan.choose(the_plan, "auto")
        placement = pick.flags
        first = meta.shards[0]
        print(
            f"model {meta.name} ({meta.arch}, {meta.n_layers} layers); planner pick: {pick.name} "
            f"{' '.join(placement)}",
            flush=True,
        )

        # 1. run vs bench, interleaved so machine load hits both alike
        run_tps, bench_tps, ratios = [], [], []
        for i in range(args.rounds):
            r = engine.run_model(
                model,
                "Explain the plan in one line.",
                plan="auto",
                vram=args.vram or None,
                n_predict=args.n_gen + 1,
                threads=args.run_threads,
                greedy=True,
                ignore_eos=True,
                echo=False,
            )
            b = bench_tg(first, placement, args.n_gen, r.prompt_tokens)
            run_tps.append(r.gen_tokens_per_s)
            bench_tps.append(b)
            ratios.append(r.gen_tokens_per_s / b)
            print(
                f"  round {i + 1}: run {r.gen_tokens_per_s:.2f} tok/s, llama-bench {b:.2f} tok/s, "
                f"ratio {ratios[-1]:.3f}",
                flush=True,
            )
        run_ratio = statistics.median(ratios)

        # 2. planner pick vs the best of a sweep; 3. roofline fractions
        cores = plan.physical_cores()
        threads = args.threads or ",".join(str(t) for t in range(1, cores + 1))
        sweep = []
        if pick.n_gpu_layers and the_plan.vram_gb:
            sweep = [f"ngl=0,{max(1, pick.n_gpu_layers // 2)},{pick.n_gpu_layers}"]
        res = bench.bench_model(
            model,
            sweep=sweep,
            threads=threads,
            cache_type_k=the_plan.cache_type_k,
            n_gen=args.n_gen,
            n_prompt=16,
            repetitions=max(3, args.rounds),
            write=True,
        )
        tg = [r for r in res.rows if r.test.startswith("tg")]
        mine = [r for r in tg if r.threads == pick.threads and (r.n_gpu_layers in (pick.n_gpu_layers, 0))]
        best = max(tg, key=lambda r: statistics.median(r.samples) if r.samples else r.tokens_per_s)

        def med(r):
            return statistics.median(r.samples) if r.samples else r.tokens_per_s

        pick_ratio = med(mine[0]) / med(best) if mine else float("nan")
        fractions = [r.roofline_fraction for r in tg if r.roofline_fraction]

    summary = {
        "model": meta.name,
        "rounds": args.rounds,
        "run_tokens_per_s_median": round(statistics.median(run_tps), 3),
        "bench_tokens_per_s_median": round(statistics.median(bench_tps), 3),
        "run_over_bench": round(run_ratio, 3),
        "run_over_bench_goal": 0.97,
        "planner_pick": {
            "threads": pick.threads,
            "ngl": pick.n_gpu_layers,
            "tokens_per_s": round(med(mine[0]), 3) if mine else None,
        },
        "sweep_best": {
            "threads": best.threads,
            "ngl": best.n_gpu_layers,
            "tokens_per_s": round(med(best), 3),
        },
        "pick_over_best": round(pick_ratio, 3),
        "pick_over_best_goal": 0.95,
        "roofline_fractions": {
            f"t{r.threads}/ngl{r.n_gpu_layers}/{r.cache_type_k}": r.roofline_fraction for r in tg
        },
        "roofline_fraction_median": round(statistics.median(fractions), 4) if fractions else None,
        "bandwidth": res.bandwidth,
        "sweep_dir": res.run_dir,
        "notes": res.notes,
    }
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(
            f"run / llama-bench (greedy, same flags): {summary['run_over_bench']:.3f}  (goal >= 0.97; "
            f"medians {summary['run_tokens_per_s_median']} vs {summary['bench_tokens_per_s_median']} tok/s)"
        )
        print(
            f"planner pick / sweep best:              {summary['pick_over_best']:.3f}  (goal >= 0.95; pick "
            f"{summary['planner_pick']}, best {summary['sweep_best']})"
        )
        print(
            f"roofline fractions (CPU read {res.bandwidth['cpu_read_gbs']} GB/s): "
            f"{summary['roofline_fractions']}; median {summary['roofline_fraction_median']}"
        )
        for n in res.notes:
            print("note:", n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
