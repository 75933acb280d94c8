"""Speed and memory of the BitNet b1.58 2B4T *shape* on CPU: TQ2_0 and TQ1_0 against Q4_0.

Random ternary weights (speed and memory do not depend on the values) are written with gguf-py as a
TQ2_0 master file; llama-quantize then makes each benchmarked type with its own recipe, so the files are
what `bitnet-convert` would produce for the real model. llama-bench measures prompt and decode tok/s,
interleaved over rounds (medians); peak RSS comes from the OS for one llama-completion run per type.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from lowbit import LowbitError, procs
from lowbit.bitnet import LOAD_FLAGS
from lowbit.files.gguf_header import read_header
from lowbit.files.synthetic import Hparams, write_gguf
from lowbit.machine import busy_cpu_seconds, children_cpu_seconds
from lowbit.paths import models_dir, runs_dir
from lowbit.procs import run_checked
from lowbit.run import calibrate
from lowbit.toolchain.build import active_build, load_build, sdist_tree
from lowbit.toolchain.ggml_kernels import Kernels
from lowbit.toolchain.llama_tools import llama_bench as run_llama_bench
from lowbit.ui import human_bytes, print_table, step, warn

PAPER_WEIGHTS_GB = 0.4  # arXiv 2504.12285, non-embedding weights
PAPER_MS_PER_TOKEN = 29.0  # same paper, CPU decode
TYPES = ("TQ2_0", "TQ1_0", "Q4_0")


@dataclass(frozen=True)
class Shape:
    hidden: int = 2560
    layers: int = 30
    ffn: int = 6912
    heads: int = 20
    kv_heads: int = 5
    vocab: int = 128256


FULL = Shape()
REDUCED = Shape(hidden=1024, layers=6, ffn=2816, heads=8, kv_heads=2)


def make_shape_gguf(dest: Path, shape: Shape, seed: int = 0) -> Path:
    """A 2B4T-shape bitnet GGUF: random ternary BitLinear weights (TQ2_0), f16 embeddings, Llama 3 vocab."""
    import numpy as np


    rng = np.random.default_rng(seed)
    vocab = sdist_tree() / "vendor" / "llama.cpp" / "models" / "ggml-vocab-llama-bpe.gguf"
    # 81 byte values = all 4-tuples of 2-bit codes in {0,1,2} (-1/0/+1): random valid TQ2_0 blocks.
    codes = np.array(
        [
            a | b << 2 | c << 4 | d << 6
            for a in range(3)
            for b in range(3)
            for c in range(3)
            for d in range(3)
        ],
        dtype=np.uint8,
    )
    scale = np.array([0.02], dtype=np.float16).view(np.uint8)

    def ternary(rows: int, cols: int) -> np.ndarray:
        blocks = rows * cols // 256
        qs = codes[rng.integers(0, 81, size=(blocks, 64), dtype=np.uint8)]
        return np.concatenate([qs, np.broadcast_to(scale, (blocks, 2))], axis=1).reshape(
            rows, cols // 256 * 66
        )

    hd = shape.hidden // shape.heads
    ones = {n: np.ones(n, dtype=np.float32) for n in (shape.hidden, shape.ffn)}

    def tensors():
        emb = (rng.standard_normal((shape.vocab, shape.hidden), dtype=np.float32) * 0.02).astype(np.float16)
        yield "token_embd.weight", emb, None
        yield "output_norm.weight", ones[shape.hidden], None
        for i in range(shape.layers):
            yield f"blk.{i}.attn_norm.weight", ones[shape.hidden], None
            yield f"blk.{i}.attn_sub_norm.weight", ones[shape.hidden], None
            yield f"blk.{i}.ffn_norm.weight", ones[shape.hidden], None
            yield f"blk.{i}.ffn_sub_norm.weight", ones[shape.ffn], None
            for name, rows, cols in (
                ("attn_q", shape.hidden, shape.hidden),
                ("attn_k", shape.kv_heads * hd, shape.hidden),
                ("attn_v", shape.kv_heads * hd, shape.hidden),
                ("attn_output", shape.hidden, shape.hidden),
                ("ffn_gate", shape.ffn, shape.hidden),
                ("ffn_up", shape.ffn, shape.hidden),
                ("ffn_down", shape.hidden, shape.ffn),
            ):
                yield f"blk.{i}.{name}.weight", ternary(rows, cols), GGMLQuantizationType.TQ2_0

    hparams = Hparams(n_embd=shape.hidden, n_layer=shape.layers, n_ff=shape.ffn, n_head=shape.heads,
                      n_head_kv=shape.kv_heads, rope_base=500000.0, n_vocab=shape.vocab, file_type=1)
    relu2 = lambda w: w.add_string("bitnet.hidden_activation", "relu2")  # noqa: E731 (the patched converter's key)
    return write_gguf(dest, "bitnet", tensors(), hparams, vocab_from=vocab, metadata=relu2)


def bench_folder() -> Path:
    """Where the benchmark keeps its generated GGUFs unless told otherwise."""
    return models_dir() / "bench"


def shape_file(shape: Shape, qtype: str, folder: Path | None = None) -> Path:
    """Where the benchmark keeps `shape`'s GGUF of `qtype` ("master": the unquantized one)."""

    tag = f"h{shape.hidden}-l{shape.layers}-f{shape.ffn}"
    return (folder or bench_folder()) / f"bitnet-shape-{tag}-{qtype}.gguf"


def quantized_files(folder: Path, shape: Shape) -> dict[str, Path]:
    """The master file plus one llama-quantize output per benchmarked type (cached in `folder`)."""

    folder.mkdir(parents=True, exist_ok=True)
    master = shape_file(shape, "master", folder)
    if not master.exists():
        step(f"writing the 2B4T-shape master GGUF ({master.name}, random ternary weights)")
        make_shape_gguf(master, shape)
    files = {}
    for qtype in TYPES:
        out = shape_file(shape, qtype, folder)
        if not out.exists():
            step(f"llama-quantize {qtype}")
            quantize(active_build().tool("llama-quantize"), master, out, qtype)
        files[qtype] = out
    return files


def quantize(tool: Path, src: Path, out: Path, qtype: str, options: tuple[str, ...] = ("--allow-requantize",),
             what: str = "llama-quantize") -> Path:
    """`tool` (a llama-quantize) writes `src` as `qtype` to `out` on all CPUs: through `out`.tmp, renamed when
    complete and removed when not, so a failed run leaves no file where a good one is expected."""
    tmp = out.with_suffix(".tmp")
    try:
        run_checked([str(tool), *options, str(src), str(tmp), qtype, str(os.cpu_count() or 2)], what)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def llama_bench(model: Path, threads: int, p: int = 64, n: int = 32, tool: Path | None = None,
                load: tuple[str, ...] = LOAD_FLAGS) -> dict[str, float]:
    """pp and tg tok/s of one llama-bench run (-r 1: repetition comes from the interleaved rounds). `load`: how
    the model is loaded (the kit's tools: into memory; another engine's llama-bench may spell it differently).

    Also returns `others`: the CPUs' worth of time other processes used meanwhile (from /proc/stat minus this
    run's own CPU time). On a small shared machine a 2-thread run that competes with other work loses most of
    its speed (its threads wait for each other), so such samples are told apart, not averaged in.
    """

    busy0, own0, wall0 = busy_cpu_seconds(), children_cpu_seconds(), time.monotonic()
    rows, _ = run_llama_bench(model, ["-t", str(threads), "-p", str(p), "-n", str(n), "-r", "1", *load], tool=tool)
    got = {}
    for row in rows:
        key = "pp" if row["n_prompt"] else "tg"
        got[key] = float(row["avg_ts"])
    if busy0 is not None:
        busy1 = busy_cpu_seconds() or busy0
        other = (busy1 - busy0) - (children_cpu_seconds() - own0)
        got["others"] = max(0.0, other / max(time.monotonic() - wall0, 1e-9))
    return got


def prompt_cpu_rate(model: Path, p: int = 64, reps: int = 5, tool: Path | None = None) -> float:
    """Prompt tokens per CPU-second of one llama-bench thread (pp`p`).

    The user time of `-r reps+1` minus that of `-r 1`: model loading and the warm-up run cancel out. CPU time
    barely moves when other processes share the machine, where wall-clock tok/s at 2 threads swings
    several-fold; it still includes the cache misses the neighbours cause, so compare builds in the same run.
    """
    import resource  # Unix only

    tool = tool or active_build().tool("llama-bench")
    used = []
    for r in (reps + 1, 1):
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
        run_checked([str(tool), "-m", str(model), "-t", "1", "-p", str(p), "-n", "0", "-r", str(r), *LOAD_FLAGS],
                    "llama-bench")
        used.append(resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime - before)
    return reps * p / max(used[0] - used[1], 1e-9)


def peak_rss(model: Path, threads: int = 2, ctx: int = 512) -> int:
    """Peak RSS (bytes) of llama-completion making 16 tokens (batch 64: a small logits buffer)."""

    cmd = [
        str(active_build().tool("llama-completion")),
        "-m",
        str(model),
        "-t",
        str(threads),
        "-c",
        str(ctx),
        "-n",
        "16",
        "-p",
        "Hello",
        "-no-cnv",
        "--no-warmup",
        "-s",
        "1",
        "--temp",
        "0",
        "-b",
        "64",
        "-ub",
        "64",
        *LOAD_FLAGS,
    ]
    return procs.peak_rss(cmd, timeout=None)[0]


def tensor_bytes(model: Path) -> tuple[int, int]:
    """(non-embedding weight bytes, embedding bytes) of a GGUF."""

    emb = other = 0
    for t in read_header(model).tensors:
        if t.name == "token_embd.weight":
            emb += int(t.n_bytes)
        else:
            other += int(t.n_bytes)
    return other, emb


def measure_memory(files: dict[str, Path], shape: Shape, ctx: int = 512) -> dict[str, dict[str, int]]:
    """Peak RSS per type split into non-embedding weights, embeddings, KV cache (f16), buffers (rest)."""
    kv = 2 * shape.layers * shape.kv_heads * (shape.hidden // shape.heads) * 2 * ctx
    memory = {}
    for qtype, path in files.items():
        weights, emb = tensor_bytes(path)
        rss = peak_rss(path, ctx=ctx)
        memory[qtype] = {
            "weights": weights,
            "embeddings": emb,
            "kv": kv,
            "buffers": max(0, rss - weights - emb - kv),
            "peak_rss": rss,
        }
    return memory


QUIET = 0.25  # a sample counts as undisturbed when other processes used less than this many CPUs meanwhile


def run_benchmark(
    shape: Shape = FULL,
    rounds: int = 4,
    threads: tuple[int, ...] = (1, 2),
    folder: Path | None = None,
    baseline: Path | None = None,
    types: tuple[str, ...] = TYPES,
) -> dict:
    """Measure everything in one run; return a JSON-serialisable result (also the notebook's input).

    `baseline`: another build's folder (e.g. one without the kernel patch); its llama-bench runs every type in
    the same interleaved rounds, so `vs_baseline` shows what the build difference is worth (Q4_0 is the control).
    `types`: a subset of TYPES (Q4_0, the reference of every ratio, is always measured). Prompt tokens per
    CPU-second (a one-thread measure) are taken when 1 is among `threads`.
    """

    unknown = sorted(set(types) - set(TYPES))
    if unknown or not threads or any(t < 1 for t in threads):
        raise LowbitError(f"bitnet bench: types must be among {', '.join(TYPES)} (got {', '.join(unknown)}) and "
                          f"thread counts positive (got {threads})")
    tools = {"": None}
    if baseline is not None:
        tool = Path(baseline) / "bin" / "llama-bench"
        if not tool.exists():
            raise LowbitError(f"--baseline {baseline}: no bin/llama-bench there; give a build folder")
        tools["base:"] = tool
    files = {q: p for q, p in quantized_files(folder or bench_folder(), shape).items() if q in types or q == "Q4_0"}
    samples: dict[str, list[float]] = {}
    others: dict[str, list[float]] = {}
    bw_samples: dict[int, list[float]] = {}
    near_bw: dict[str, list[float]] = {}
    for r in range(rounds):
        step(f"round {r + 1}/{rounds}")
        # interleaved: every type (and build) once per round and thread count, the builds in alternating order
        # (the build run second got the better decode in three runs of a fixed order: 0.87-0.98x of its pair)
        order = list(tools.items())[::-1 if r % 2 else 1]
        for t in threads:
            for qtype, path in files.items():
                for prefix, tool in order:
                    got = llama_bench(path, t, tool=tool)
                    other = got.pop("others", 0.0)
                    for kind, value in got.items():
                        samples.setdefault(f"{prefix}{qtype}/{kind}/t{t}", []).append(value)
                        others.setdefault(f"{prefix}{qtype}/{kind}/t{t}", []).append(round(other, 2))
                    # the bandwidth right after this decode run (llama-bench runs tg last): a shared host's
                    # bandwidth moves between levels from minute to minute, and decode moves with it
                    near_bw.setdefault(f"{prefix}{qtype}/t{t}", []).append(bandwidth_after(t) * 1e9)
        for qtype, path in files.items() if 1 in threads else ():  # prompt tokens per CPU-second: survives load
            for prefix, tool in order:
                samples.setdefault(f"{prefix}{qtype}/pp_cpu/t1", []).append(prompt_cpu_rate(path, tool=tool))
                others.setdefault(f"{prefix}{qtype}/pp_cpu/t1", []).append(0.0)  # not disturbed by design
        for t in threads:  # once per round: the ceiling is the best the machine gave during the whole run
            bw_samples.setdefault(t, []).append(calibrate.read_bandwidth_gbs(t, mib=256, reps=12, best=True) * 1e9)
    speed, quiet = {}, {}
    for key, values in samples.items():
        calm = [v for v, o in zip(values, others[key], strict=True) if o < QUIET]
        quiet[key] = len(calm)
        speed[key] = statistics.median(calm or values)
    main = {k: v for k, v in speed.items() if not k.startswith("base:")}
    vs_baseline = {k: v / speed["base:" + k] for k, v in main.items() if speed.get("base:" + k)}
    bw = {t: max(v) for t, v in bw_samples.items()}
    memory = measure_memory(files, shape)
    roofline, baseline_roofline, paired = {}, {}, {}
    for qtype in files:
        per_token = memory[qtype]["weights"] + memory[qtype]["embeddings"]  # tied: the output reads them all
        for t in threads:
            tg, base_tg = main.get(f"{qtype}/tg/t{t}"), speed.get(f"base:{qtype}/tg/t{t}")
            if tg:
                roofline[f"{qtype}/t{t}"] = tg * per_token / bw[t]
            if base_tg:
                baseline_roofline[f"{qtype}/t{t}"] = base_tg * per_token / bw[t]
            for prefix in tools:
                decode, near = samples[f"{prefix}{qtype}/tg/t{t}"], near_bw[f"{prefix}{qtype}/t{t}"]
                paired[f"{prefix}{qtype}/t{t}"] = statistics.median(
                    d * per_token / b for d, b in zip(decode, near, strict=True))
    return {
        "shape": shape.__dict__,
        "rounds": rounds,
        "threads": list(threads),
        "speed": main,
        "samples": samples,
        "others": others,  # CPUs used by other processes during each sample
        "quiet_samples": quiet,  # how many samples per median were undisturbed (the median uses those)
        "baseline": Path(baseline).name if baseline else None,  # the build key, not a machine path
        "baseline_patches": _build_patches(Path(baseline)) if baseline else None,
        "baseline_speed": {k[5:]: v for k, v in speed.items() if k.startswith("base:")},
        "vs_baseline": vs_baseline,
        "bandwidth": {str(t): b for t, b in bw.items()},
        "bandwidth_samples": {str(t): v for t, v in bw_samples.items()},
        "kernels": kernel_rates(),
        "memory": memory,
        "roofline": roofline,
        "baseline_roofline": baseline_roofline,  # the baseline build's decode against the same bandwidth
        # per round: decode bytes/s over the median bandwidth measured right after that run; median of rounds
        "paired_roofline": paired,
        "near_bandwidth": near_bw,
        "patches": active_patches(),
        "cpu": _cpu_name(),
        "time": time.strftime("%Y-%m-%d %H:%M"),
        "loadavg_1min": os.getloadavg()[0],  # other work on the machine skews everything
    }


def kernel_rates(types: tuple[str, ...] = ("TQ2_0", "TQ1_0", "Q4_0", "Q6_K")) -> dict[str, float]:
    """Weight bytes/s one thread's CPU dot product consumes from cache, per type (its compute ceiling).

    Q4_0 here is the plain `vec_dot`; llama.cpp runs Q4_0 matmuls through its repacked (8-row interleaved)
    kernels instead. Q6_K is the tied output matrix every type shares. Empty when the libraries cannot be loaded.
    """

    try:
        kernels = Kernels()
    except (LowbitError, OSError):
        return {}
    return {qtype: kernels.dot_rate(qtype) for qtype in types}


def bandwidth_after(threads: int) -> float:
    """The read bandwidth (GB/s, `threads` readers, median of 5 passes over 256 MiB each) taken right after a
    decode run: what that run's decode is set against, since a shared host's bandwidth moves between levels from
    minute to minute and decode moves with it."""
    return calibrate.read_bandwidth_gbs(threads, mib=256, reps=5)


def active_patches() -> list[str]:
    return list(active_build().patches)


def _build_patches(directory: Path) -> list[str] | None:
    build = load_build(directory)
    return list(build.patches) if build else None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def report(result: dict) -> None:
    """Print the speed table (ratios to Q4_0, and to the baseline build if any), memory split and roofline."""

    s = result["speed"]
    vs = result.get("vs_baseline") or {}
    measured = [q for q in TYPES if any(k.startswith(f"{q}/") for k in s)]
    rows = []
    for qtype in measured:
        row = [qtype]
        for kind in ("pp", "tg"):
            for t in result["threads"]:
                key = f"{qtype}/{kind}/t{t}"
                v, ref = s.get(key), s.get(f"Q4_0/{kind}/t{t}")
                cell = f"{v:.1f} ({v / ref:.2f}x)" if v and ref else "-"
                if key in vs:
                    cell += f" [{vs[key]:.2f}x base]"
                row.append(cell)
        rows.append(row)
    cols = ["type"] + [f"{k}{64 if k == 'pp' else 32} t={t}" for k in ("pp", "tg") for t in result["threads"]]
    title = "tok/s, medians of interleaved rounds (ratio to Q4_0)"
    if vs:
        title += f" [ratio to the baseline build {result.get('baseline')}]"
    print_table(title, cols, rows)
    cpu_rows = []
    for qtype in TYPES:
        v, ref = s.get(f"{qtype}/pp_cpu/t1"), s.get("Q4_0/pp_cpu/t1")
        if v and ref:
            base = vs.get(f"{qtype}/pp_cpu/t1")
            cpu_rows.append([qtype, f"{v:.1f} ({v / ref:.2f}x)" + (f" [{base:.2f}x base]" if base else "")])
    if cpu_rows:
        print_table("pp64 tokens per CPU-second, 1 thread (ratio to Q4_0) [to the baseline build]",
                    ["type", "pp64 tok/CPU-s"], cpu_rows)
    quiet = result.get("quiet_samples") or {}
    disturbed = sorted(k for k, n in quiet.items() if n == 0)
    if disturbed:
        warn(f"other processes used >= {QUIET} CPU during every sample of {', '.join(disturbed)}: "
             "those medians are of disturbed runs")
    mem_rows = []
    for qtype, m in result["memory"].items():
        ms = (
            1000 / s[f"{qtype}/tg/t{max(result['threads'])}"]
            if s.get(f"{qtype}/tg/t{max(result['threads'])}")
            else 0
        )
        mem_rows.append(
            [
                qtype,
                human_bytes(m["weights"]),
                human_bytes(m["embeddings"]),
                human_bytes(m["kv"]),
                human_bytes(m["buffers"]),
                human_bytes(m["peak_rss"]),
                f"{ms:.0f}",
            ]
        )
    mem_rows.append(
        ["paper (2B4T)", f"{PAPER_WEIGHTS_GB} GB", "not counted", "-", "-", "-", f"{PAPER_MS_PER_TOKEN:.0f}"]
    )
    print_table(
        "peak RSS split (ctx 512) and decode latency",
        ["type", "non-emb weights", "embeddings", "KV", "buffers", "peak RSS", "ms/token"],
        mem_rows,
    )
    bw = result["bandwidth"]
    base_roof = result.get("baseline_roofline") or {}
    print_table(
        "decode vs memory-bandwidth roofline (read bandwidth: "
        + ", ".join(f"{b / 1e9:.1f} GB/s at t={t}" for t, b in bw.items()) + ")",
        ["type/threads", "fraction"] + (["baseline build"] if base_roof else []),
        [[k, f"{v:.2f}"] + ([f"{base_roof[k]:.2f}" if k in base_roof else "-"] if base_roof else [])
         for k, v in result["roofline"].items()],
    )
    paired = result.get("paired_roofline") or {}
    if paired:
        print_table(
            "decode vs the read bandwidth measured right after each run (median over rounds)",
            ["type/threads", "fraction"] + (["baseline build"] if base_roof else []),
            [[k, f"{v:.2f}"] + ([f"{paired['base:' + k]:.2f}" if "base:" + k in paired else "-"] if base_roof else [])
             for k, v in paired.items() if not k.startswith("base:")],
        )
    if result.get("kernels"):
        one = f"; read bandwidth 1 thread {bw['1'] / 1e9:.1f} GB/s" if "1" in bw else ""
        print_table(
            f"CPU dot product, 1 thread, cache-resident weights (compute ceiling{one})",
            ["type", "weights GB/s"],
            [[q, f"{r / 1e9:.1f}"] for q, r in result["kernels"].items()],
        )


def results_file() -> Path:
    return runs_dir() / "bench" / "bitnet.json"


def bench_command(rounds: int = 4, reduced: bool = False, baseline: str | None = None,
                  threads: str = "1,2", types: str = ",".join(TYPES)) -> int:
    """`invoke bitnet-bench`: measure, print, store results for the lesson.

    `threads` and `types` are comma lists (e.g. "2" and "TQ2_0,Q4_0" for a short 2-thread comparison)."""
    try:
        thread_counts = tuple(int(t) for t in threads.split(",") if t.strip())
    except ValueError:
        raise LowbitError(f"--threads {threads!r}: give a comma list of thread counts, e.g. 1,2") from None
    result = run_benchmark(REDUCED if reduced else FULL, rounds=rounds,
                           baseline=Path(baseline).expanduser() if baseline else None, threads=thread_counts,
                           types=tuple(t.strip().upper() for t in types.split(",") if t.strip()))
    report(result)
    out = results_file() if not reduced else results_file().with_name("bitnet-reduced.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"results: {out}")
    return 0
