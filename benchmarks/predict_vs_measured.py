"""Predicted vs measured tokens/s and peak RSS over >= 30 configurations (the cost model's validation).

    python benchmarks/predict_vs_measured.py [--quick] [--reps 3] [--rounds 3] [--json] [--allow-busy]
                                             [--calibrations N]
    python benchmarks/predict_vs_measured.py --replay runs/<time>-predict-vs-measured/results.json

For each model on disk (the real SmolLM2-135M Q4_1 and Gemma-3-270M Q4_K_M, the replicas, the BitNet 2B4T
shape in TQ2_0/Q4_0 when `invoke bitnet-bench` made it, else its `--reduced` one), at 1..physical-cores
threads and context depth 0 and a few thousand, llama-bench measures prefill (pp64) and decode (tg32);
`lowbit.run.predict` predicts both from the header and this machine's calibration — which never sees these
runs (its overhead comes from a synthetic model). Prints every row and the median and worst |predicted/measured - 1| for
decode and prefill, then peak RSS (llama-completion's VmHWM) against the prediction, beside llama.cpp's own
allocation lines and `llama-fit-params`' projection.

Calibrations on a shared VM differ from run to run, so one calibration's errors understate the band:
`--calibrations N` recalibrates N times first (each kept in the calibration history), and the errors are
reported — and with `--store-band` the band stored — over the predictions of every kept calibration of this
machine and build, not only the latest.

`--replay RESULTS` measures nothing: it predicts a stored run's quiet rows again with the current cost model
and that run's own calibration (its overhead fit redone from the llama-bench medians the calibration kept), so
a change to the cost model is judged on real measurements without re-measuring.

A busy machine makes 2-thread runs several times slower than they are: every llama-bench run records how many
CPUs other processes used meanwhile; rows above 0.3 CPUs are marked busy, and the summary says so (the run
refuses to start above 1.5 CPUs of other load unless --allow-busy).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BUSY_START = 1.5


def models() -> dict[str, Path]:
    """name -> GGUF for every validation model present on this machine."""
    from lowbit.bitnet import bench as bitnet_bench
    from lowbit.models.catalog import locate as model_path
    from lowbit.paths import models_dir

    found = {}
    for name in ("smollm2", "gemma3-270m"):
        try:
            found[name] = model_path(name)
        except Exception:  # noqa: BLE001 - a model not fetched is left out, and the summary says which
            pass
    rep = models_dir() / "replicas"
    for name, pattern in (("r1 UD-IQ1_S", "r1/UD-IQ1_S/*-00001-of-*.gguf"), ("r1 Q8_0", "r1/*Q8_0.gguf"),
                          ("distill-qwen Q8_0", "distill-qwen/*Q8_0.gguf"),
                          ("distill-llama Q8_0", "distill-llama/*Q8_0.gguf")):
        hits = sorted(rep.glob(pattern))
        if hits:
            found[name] = hits[0]
    for qtype in ("TQ2_0", "Q4_0"):  # the 2B4T shape `invoke bitnet-bench` writes; else its reduced one
        hits = [path for shape in (bitnet_bench.FULL, bitnet_bench.REDUCED)
                if (path := bitnet_bench.shape_file(shape, qtype)).exists()]
        if hits:
            found[f"bitnet-shape {qtype}"] = hits[0]
    return found


def configs(quick: bool, cores: int, only_threads: int | None = None) -> list[tuple[str, int, int]]:
    """(model, threads, depth) triples; each gives one prefill and one decode row."""
    out = []
    for name in models():
        threads = [cores] if quick or name.startswith(("bitnet", "distill-llama")) else list(range(1, cores + 1))
        threads = [only_threads] if only_threads else threads
        depths = [0]
        if not quick and not name.startswith(("bitnet", "distill")):
            depths.append(2048)
        out += [(name, t, d) for t in threads for d in depths]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="threads = physical cores, depth 0 only")
    ap.add_argument("--reps", type=int, default=3, help="llama-bench repetitions per measurement")
    ap.add_argument("--rounds", type=int, default=3,
                    help="interleaved rounds over the whole sweep; each row is the median of its quiet rounds")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--allow-busy", action="store_true")
    ap.add_argument("--no-rss", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="only this thread count")
    ap.add_argument("--replay", type=Path, default=None,
                    help="predict the quiet rows of a stored results.json again with the current cost model")
    ap.add_argument("--calibrations", type=int, default=0,
                    help="recalibrate this many times before the sweep (each kept in the history the band uses)")
    ap.add_argument("--store-band", action="store_true",
                    help="store the worst errors of the quiet rows as the prediction's error band (>= 30 quiet rows)")
    args = ap.parse_args()

    from lowbit import procs
    from lowbit.lessons.runner import new_run_dir
    from lowbit.machine import physical_cores
    from lowbit.run import calibrate
    from lowbit.run import predict as P
    from lowbit.ui import print_table, warn

    if args.replay:
        return replay(args.replay)
    busy = calibrate.others_busy(2.0)
    if busy > BUSY_START and not args.allow_busy:
        print(f"error: other processes use {busy:.1f} CPUs: measurements would be meaningless; wait for a quiet "
              "machine or pass --allow-busy", file=sys.stderr)
        return 2
    for i in range(args.calibrations):
        print(f"calibration {i + 1} of {args.calibrations}", flush=True)
        P.calibration(refresh=True)
    cal = P.calibration()
    cores = physical_cores()
    found = models()
    rows = []
    sweep = list(configs(args.quick, cores, args.threads))

    def progress(run: tuple, got: dict) -> None:
        print(f"  {run[0].name:40s} t={run[1].threads} d={run[1].depth:5d}  pp64 {got['prefill']:9.1f}  "
              f"tg32 {got['decode']:8.1f}  others {got['others_cpus']:.2f}  host x{got.get('host_slowdown', 1.0)}"
              f" memory x{got.get('memory_slowdown', 1.0)}",
              flush=True)

    runs = [(found[name], P.Config(threads=threads, n_prompt=64, n_gen=32, depth=depth))
            for name, threads, depth in sweep]
    results = P.measure_interleaved(runs, args.reps, args.rounds, progress, cal=cal, memory=True)
    for (name, threads, depth), (path, cfg), got in zip(sweep, runs, results, strict=True):
        w = P.workload(path)
        pred = P.predict(w, cfg, cal)
        others = got["others_cpus"]
        for test, predicted, kind in (("pp64", pred.prefill_tps, "prefill"), ("tg32", pred.decode_tps, "decode")):
            measured = got[kind]
            rows.append({"model": name, "threads": threads, "depth": depth, "test": test,
                         "predicted": predicted, "measured": round(measured, 2),
                         "error": round(predicted / measured - 1, 4), "others_cpus": others,
                         "busy": got["busy"], "host_slowdown": got.get("host_slowdown", 1.0),
                         "host_rounds": got.get("host_rounds", []),
                         "bound": pred.bound if kind == "decode" else ""})
        print(f"{name:22s} t={threads} d={depth:5d}  pp64 {pred.prefill_tps:9.1f} vs {rows[-2]['measured']:9.1f}"
              f"  tg32 {pred.decode_tps:8.1f} vs {rows[-1]['measured']:8.1f}  others {others:.2f}", flush=True)
    rss_rows = []
    if not args.no_rss:
        for name, path in found.items():
            w = P.workload(path)
            cfg = P.Config(threads=cores, n_prompt=8, n_gen=16, n_ctx=P.RSS_CTX)
            pred = P.predict(w, cfg, cal)
            peak, log = procs.peak_rss(P.completion_cmd(path, cores))
            reported = reported_buffers(log)
            reported |= fit_params(path, P.RSS_CTX)
            rss_rows.append({"model": name, "predicted": pred.rss_bytes, "measured": peak,
                             "error": round(pred.rss_bytes / peak - 1, 4), "parts": pred.rss_parts,
                             "within": pred.within("rss", peak), "llama_cpp_reported": reported})
    summary = summarize(rows, rss_rows)
    history = calibrate.history() or [cal]
    summary["calibrations"] = across_calibrations(rows, history, found)
    run = new_run_dir("predict-vs-measured")
    (run / "results.json").write_text(json.dumps({"rows": rows, "rss": rss_rows, "summary": summary,
                                                  "calibration": cal, "history": history}, indent=1))
    if args.json:
        print(json.dumps({"rows": rows, "rss": rss_rows, "summary": summary}, indent=1))
        return 0
    print_table(f"predicted vs measured (llama-bench: median of {args.reps} repetitions, median of {args.rounds} "
                "interleaved rounds)",
                ["model", "t", "depth", "test", "predicted", "measured", "pred/meas-1", "others", "bound"],
                [(r["model"], r["threads"], r["depth"], r["test"], r["predicted"], r["measured"],
                  f"{r['error']:+.1%}", f"{r['others_cpus']:.2f}" + (" BUSY" if r["busy"] else ""), r["bound"])
                 for r in rows])
    if rss_rows:
        print_table("peak RSS (llama-completion -c 512, VmHWM)",
                    ["model", "predicted MB", "measured MB", "error", "within 10 %/100 MB", "llama.cpp buffers MB"],
                    [(r["model"], round(r["predicted"] / 1e6), round(r["measured"] / 1e6), f"{r['error']:+.1%}",
                      "yes" if r["within"] else "NO",
                      " ".join(f"{k}={v / 1e6:.0f}" for k, v in r["llama_cpp_reported"].items()))
                     for r in rss_rows])
    for what, s in summary.items():
        if isinstance(s, dict) and "worst_row" in s:
            print(f"{what}: n={s['n']} median |err| {s['median']:.1%}, worst {s['worst']:.1%} ({s['worst_row']})")
    print_calibrations(summary["calibrations"])
    if summary["busy_rows"]:
        warn(f"{summary['busy_rows']} of {len(rows)} rows ran while other processes used > {P.BUSY_CPUS} CPUs: "
             "their errors measure the machine's load, not the model")
    print(f"results: {run / 'results.json'}")
    if args.store_band:
        return store_band(rows, summary["calibrations"])
    return 0


def across_calibrations(rows: list[dict], history: list[dict], found: dict[str, Path]) -> dict:
    """The quiet rows predicted again under every kept calibration: per calibration its read bandwidth and
    the median and worst |error| of decode and prefill, and the worst over all of them (what the band uses)."""
    from lowbit.run import calibrate
    from lowbit.run import predict as P

    quiet = [r for r in rows if not r["busy"]]
    workloads = {name: P.workload(found[name]) for name in {r["model"] for r in quiet}}
    per, worst = [], {"decode": 0.0, "prefill": 0.0}
    for cal in history:
        errors: dict[str, list[float]] = {"decode": [], "prefill": []}
        for r in quiet:
            cfg = P.Config(threads=r["threads"], n_prompt=64, n_gen=32, depth=r["depth"])
            pred = P.predict(workloads[r["model"]], cfg, cal)
            kind = "decode" if r["test"].startswith("tg") else "prefill"
            value = pred.decode_tps if kind == "decode" else pred.prefill_tps
            errors[kind].append(abs(value / r["measured"] - 1))
        entry = {"measured_at": cal.get("measured_at"), "bandwidth_gbs": cal.get("bandwidth_gbs"),
                 "busy": cal.get("busy_cpus", 0.0) > calibrate.BUSY_CALIBRATION,
                 "busy_cpus": cal.get("busy_cpus"), "spread": cal.get("spread", {}).get("bandwidth")}
        for kind, errs in errors.items():
            if errs:
                entry[kind] = {"median": statistics.median(errs), "worst": max(errs)}
                worst[kind] = max(worst[kind], max(errs))
        per.append(entry)
    return {"n": len(history), "quiet_rows": len(quiet), "per_calibration": per, "worst": worst}


def print_calibrations(across: dict) -> None:
    if not across["quiet_rows"]:
        print("no quiet rows: errors under the kept calibrations not computed")
        return
    print(f"the {across['quiet_rows']} quiet rows under each of {across['n']} kept calibration(s):")
    for c in across["per_calibration"]:
        print(f"  {c['measured_at']}{' (BUSY calibration)' if c.get('busy') else ''}: read GB/s "
              f"{c['bandwidth_gbs']} (spread over rounds {c['spread']}), "
              + ", ".join(f"{k} median {c[k]['median']:.1%} worst {c[k]['worst']:.1%}"
                          for k in ("decode", "prefill") if k in c))
    print("  worst over all: " + ", ".join(f"{k} {v:.1%}" for k, v in across["worst"].items()))


def store_band(rows: list[dict], across: dict) -> int:
    """The band `lowbit.run.predict` shows: the worst error of each kind over the rows measured on a quiet
    machine, predicted under every kept calibration (at least 2), rounded up to 5 %; refused with fewer than
    30 quiet rows."""
    import math

    from lowbit.run import predict as P

    quiet = [r for r in rows if not r["busy"]]
    if len(quiet) < 30:
        print(f"error: only {len(quiet)} rows were measured on a quiet machine (30 needed): band not stored",
              file=sys.stderr)
        return 2
    if across["n"] < 2 or any(c.get("busy") for c in across["per_calibration"]):
        print("error: the band needs the spread of at least 2 quiet calibrations (--calibrations 2 on a quiet "
              "machine): band not stored", file=sys.stderr)
        return 2
    band = {kind: math.ceil(across["worst"][kind] * 20 - 1e-9) / 20 for kind in ("decode", "prefill")}
    band["rss"] = 0.10
    P.BAND_FILE.write_text(json.dumps({"band": band, "quiet_rows": len(quiet), "calibrations": across["n"],
                                       "per_calibration": across["per_calibration"],
                                       "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1) + "\n")
    print(f"stored the error band {band} (worst over {across['n']} calibrations) in {P.BAND_FILE.name}")
    return 0


def replay(results: Path) -> int:
    """Predict a stored run's quiet rows again (current cost model, that run's calibration refitted) and print
    the errors then and now."""
    from lowbit.run import predict as P
    from lowbit.ui import print_table

    try:
        stored = json.loads(results.read_text())
        rows, cal = [r for r in stored["rows"] if not r["busy"]], stored["calibration"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"error: {results} is not a results.json of this benchmark: {exc}", file=sys.stderr)
        return 2
    refitted = P.refit_overhead(cal)
    if refitted is cal:
        print("error: this run's calibration kept no llama-bench medians of the calibration models (it predates "
              "them): its overhead fit and attention scale belong to the cost model it was measured with, and "
              "mixing them with the current one would mislead; replay a run made with this version",
              file=sys.stderr)
        return 2
    found = models()
    missing = sorted({r["model"] for r in rows} - set(found))
    if missing:
        print(f"error: not on this machine: {', '.join(missing)}", file=sys.stderr)
        return 2
    workloads = {name: P.workload(found[name]) for name in {r["model"] for r in rows}}
    now = []
    for r in rows:
        pred = P.predict(workloads[r["model"]], P.Config(threads=r["threads"], n_prompt=64, n_gen=32,
                                                         depth=r["depth"]), refitted)
        value = pred.decode_tps if r["test"].startswith("tg") else pred.prefill_tps
        now.append({**r, "predicted": value, "error": round(value / r["measured"] - 1, 4), "was": r["error"]})
    print_table(f"replayed {results} ({len(now)} quiet rows)",
                ["model", "t", "depth", "test", "measured", "predicted then", "then", "predicted now", "now"],
                [(r["model"], r["threads"], r["depth"], r["test"], r["measured"],
                  round(r["measured"] * (1 + r["was"]), 2), f"{r['was']:+.1%}", r["predicted"], f"{r['error']:+.1%}")
                 for r in now])
    for what, prefix in (("decode", "tg"), ("prefill", "pp")):
        sel = [r for r in now if r["test"].startswith(prefix)]
        if sel:
            then, now_ = [abs(r["was"]) for r in sel], [abs(r["error"]) for r in sel]
            print(f"{what}: then median {statistics.median(then):.1%} worst {max(then):.1%}; "
                  f"now median {statistics.median(now_):.1%} worst {max(now_):.1%}")
    return 0


def fit_params(path: Path, n_ctx: int) -> dict[str, int]:
    """llama-fit-params' projected host buffers (model / context / compute), when the build has the tool."""
    from lowbit import LowbitError
    from lowbit.run import llama_fit

    if llama_fit.available() is None:
        return {}
    try:
        host = llama_fit.projected(path, n_ctx)["Host"]
    except LowbitError as exc:
        print(f"llama-fit-params: {exc}", file=sys.stderr)
        return {}
    return {f"fit_params_{k}": v for k, v in host.items()}


def reported_buffers(log: str) -> dict[str, int]:
    """llama.cpp's own allocation lines: model buffer, KV cache, compute buffer (bytes)."""
    import re

    out = {}
    for key, pattern in (("model", r"CPU_Mapped model buffer size =\s+([\d.]+) MiB"),
                         ("repack", r"CPU_REPACK model buffer size =\s+([\d.]+) MiB"),
                         ("kv", r"CPU KV buffer size =\s+([\d.]+) MiB"),
                         ("compute", r"CPU compute buffer size =\s+([\d.]+) MiB"),
                         ("fit_projected", r"projected to use\s+([\d.]+) MiB of host memory")):
        vals = [float(v) for v in re.findall(pattern, log)]
        if vals:  # the fit's dry run logs each buffer once more (as 0 MiB for mapped ones): the last load counts
            out[key] = int(vals[-1] * 2**20) if key == "fit_projected" else int(max(vals) * 2**20)
    return out


def summarize(rows: list[dict], rss_rows: list[dict]) -> dict:
    out: dict = {"busy_rows": sum(r["busy"] for r in rows)}
    for what, prefix in (("decode", "tg"), ("prefill", "pp")):
        sel = [r for r in rows if r["test"].startswith(prefix)]
        if sel:
            worst = max(sel, key=lambda r: abs(r["error"]))
            out[what] = {"n": len(sel), "median": statistics.median(abs(r["error"]) for r in sel),
                         "worst": abs(worst["error"]),
                         "worst_row": f"{worst['model']} t={worst['threads']} d={worst['depth']}"}
    if rss_rows:
        worst = max(rss_rows, key=lambda r: abs(r["error"]))
        out["rss"] = {"n": len(rss_rows), "median": statistics.median(abs(r["error"]) for r in rss_rows),
                      "worst": abs(worst["error"]), "worst_row": worst["model"],
                      "within": sum(r["within"] for r in rss_rows)}
    return out


if __name__ == "__main__":
    sys.exit(main())
