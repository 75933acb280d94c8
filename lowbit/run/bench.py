"""`invoke bench`: llama-bench sweeps, each result as a fraction of the memory-bandwidth roofline.

Sweeps run `llama-bench -o json` over GPU layers, threads and cache types (its comma lists), then
write a table and plots under `runs/<time>-bench-<model>/`. Decode speed is bounded by how fast
the bytes each token needs can be read: the roofline is `1 / (gpu bytes/GPU bandwidth + cpu
bytes/CPU bandwidth)` with the bytes from the model's headers (`lowbit.run.plan`) and the bandwidth
measured once per machine (cached under the kit's cache dir, keyed by CPU).
"""

from __future__ import annotations

import json
import json as _json
import os
import re
import shlex
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lowbit import LowbitError, machine
from lowbit.files.gguf_header import read_model
from lowbit.files.shard_set import model_stem
from lowbit.machine import cached_bandwidth, physical_cores
from lowbit.models.catalog import locate
from lowbit.paths import runs_dir
from lowbit.run import plan as planner
from lowbit.run.plan import _bytes_per_token
from lowbit.toolchain.build import active_build
from lowbit.toolchain.llama_tools import llama_bench
from lowbit.ui import console, print_table, step, warn

SWEEP_KEYS = {
    "ngl": "-ngl",
    "threads": "-t",
    "t": "-t",
    "ctk": "-ctk",
    "cache_type_k": "-ctk",
    "ncmoe": "-ncmoe",
    "ub": "-ub",
    "fa": "-fa",
}


# ---------------------------------------------------------------------------------------------
# memory bandwidth


def measure_cpu_bandwidth(threads: int | None = None, mib: int = 256, rounds: int = 5) -> float:
    """Read bandwidth in GB/s with `threads` threads each summing its own `mib` MiB buffer (numpy
    reductions release the GIL); best of `rounds`. Buffers are far larger than any CPU cache."""

    threads = threads or physical_cores()
    bufs = [np.ones(mib * 2**20 // 8, dtype=np.float64) for _ in range(threads)]
    best = 0.0
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(rounds):
            t0 = time.perf_counter()
            list(pool.map(np.sum, bufs))
            dt = time.perf_counter() - t0
            best = max(best, sum(b.nbytes for b in bufs) / dt / 1e9)
    return round(best, 2)


def measure_gpu_bandwidth() -> float | None:
    """Device-memory read+write bandwidth in GB/s via torch.cuda, or None without a CUDA GPU."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    x = torch.empty(2**28, dtype=torch.float32, device="cuda")
    y = torch.empty_like(x)
    best = 0.0
    for _ in range(5):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        y.copy_(x)
        torch.cuda.synchronize()
        best = max(best, 2 * x.nbytes / (time.perf_counter() - t0) / 1e9)
    return round(best, 1)


def machine_bandwidth(refresh: bool = False) -> dict:
    """Measure CPU (and GPU) bandwidth once per machine; later calls read the cache."""
    if not refresh and (bw := cached_bandwidth()):
        return bw

    step("measuring memory bandwidth (once per machine)")
    cores = physical_cores()
    bw = {
        "cpu_read_gbs": measure_cpu_bandwidth(cores),
        "cpu_read_gbs_1t": measure_cpu_bandwidth(1),
        "threads": cores,
        "gpu_gbs": measure_gpu_bandwidth(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    path = machine.bandwidth_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {}
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            data = {}
    data[machine.machine_key()] = bw
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
    return bw


# ---------------------------------------------------------------------------------------------
# llama-bench


@dataclass
class BenchRow:
    """One llama-bench test (prompt processing or generation) and its roofline fraction."""

    test: str  # "pp64" or "tg32"
    n_gpu_layers: int
    threads: int
    cache_type_k: str
    n_cpu_moe: int
    tokens_per_s: float
    stddev: float
    roofline_tokens_per_s: float | None = None
    roofline_fraction: float | None = None
    samples: list[float] = field(default_factory=list)


@dataclass
class BenchResult:
    model: str
    command: list[str]
    rows: list[BenchRow]
    bandwidth: dict
    run_dir: str | None = None
    notes: list[str] = field(default_factory=list)

    def best(self, test_prefix: str = "tg") -> BenchRow:
        rows = [r for r in self.rows if r.test.startswith(test_prefix)]
        return max(rows, key=lambda r: r.tokens_per_s)

    def to_dict(self) -> dict:
        return asdict(self)


def parse_sweep(sweep: str | list | None) -> dict[str, list[str]]:
    """`ngl=0,8,16` (repeatable, or `;`-joined) -> {"ngl": ["0", "8", "16"]}."""
    out: dict[str, list[str]] = {}
    items = (
        sweep if isinstance(sweep, list) else ([s for s in re.split(r"[;\s]+", sweep) if s] if sweep else [])
    )
    for item in items:
        m = re.fullmatch(r"([a-z_]+)=([\w.,\-]+)", item.strip())
        if not m or m[1] not in SWEEP_KEYS:
            raise LowbitError(
                f"--sweep {item!r}: expected KEY=v1,v2 with KEY one of {', '.join(sorted(SWEEP_KEYS))}"
            )
        out.setdefault(SWEEP_KEYS[m[1]], []).extend(v for v in m[2].split(",") if v)
    return out


def bench_flags(placement: list[str]) -> list[str]:
    """llama-completion placement flags -> llama-bench spelling (-ts a/b, -ncmoe, -ctk; no --ctx-size)."""
    out, i = [], 0
    while i < len(placement):
        flag, val = placement[i], placement[i + 1] if i + 1 < len(placement) else None
        if flag in ("-ngl", "--n-gpu-layers"):
            out += ["-ngl", val]
        elif flag in ("-t", "--threads"):
            out += ["-t", val]
        elif flag in ("--cache-type-k", "-ctk"):
            out += ["-ctk", val]
        elif flag in ("--cache-type-v", "-ctv"):
            out += ["-ctv", val]
        elif flag in ("--n-cpu-moe", "-ncmoe"):
            out += ["-ncmoe", val]
        elif flag in ("-ot", "--override-tensor"):
            out += ["-ot", val]
        elif flag in ("--tensor-split", "-ts"):
            out += ["-ts", val.replace(",", "/")]
        elif flag in ("--ctx-size", "-c"):
            pass  # llama-bench sizes its context from -p/-n
        else:
            raise LowbitError(f"no llama-bench spelling for {flag}")
        i += 2
    return out


def roofline(meta, n_gpu_layers: int, n_cpu_moe: int, bw: dict, gpu_bw_gbs: float | None = None) -> float:
    """Decode tokens/s if every byte a token needs streamed at the measured bandwidth (empty context)."""

    n = meta.n_layers
    gpu_present = bool(bw.get("gpu_gbs") or gpu_bw_gbs)
    ngl = n_gpu_layers if gpu_present else 0
    ngl = n + 1 if ngl < 0 else ngl
    gpu_b = cpu_b = 0
    for layer in meta.layers:
        on_gpu = layer.index >= n - min(ngl, n)
        experts_cpu = layer.index < n_cpu_moe
        b = _bytes_per_token(meta, layer)
        if on_gpu and experts_cpu:
            e = b - _bytes_per_token(meta, layer, experts_here=False)
            gpu_b, cpu_b = gpu_b + b - e, cpu_b + e
        elif on_gpu:
            gpu_b += b
        else:
            cpu_b += b
    if ngl > n:
        gpu_b += meta.output
    else:
        cpu_b += meta.output
    cpu_b += meta.embeddings // meta.n_vocab if meta.n_vocab else 0
    gbw = (gpu_bw_gbs or bw.get("gpu_gbs") or 1) * 1e9
    t = gpu_b / gbw + cpu_b / (bw["cpu_read_gbs"] * 1e9)
    return 1 / t if t else 0.0


def run_llama_bench(
    model_path: Path,
    params: dict[str, list[str]],
    n_prompt: int = 64,
    n_gen: int = 32,
    repetitions: int = 3,
    extra: list[str] | None = None,
    timeout: float = 1800,
) -> tuple[list, list]:
    """Run llama-bench once with comma-list parameters; return (its JSON rows, the command)."""
    args = ["-p", str(n_prompt), "-n", str(n_gen), "-r", str(repetitions)]
    for flag, values in params.items():
        args += [flag, ",".join(values)]
    return llama_bench(model_path, args + list(extra or []), timeout, hint="; sweep fewer values")


def bench_model(
    model: str,
    sweep: str | list | None = None,
    threads: str | list | None = None,
    cache_type_k: str | list | None = None,
    n_prompt: int = 64,
    n_gen: int = 32,
    repetitions: int = 3,
    extra: str | None = None,
    gpu_bw_gbs: float | None = None,
    write: bool = True,
) -> BenchResult:
    """Sweep `model` with llama-bench; rows carry roofline fractions; results go under runs/ when `write`."""

    path = locate(model)
    meta = read_model(path)
    params = parse_sweep(sweep)
    if threads:
        params["-t"] = [str(t) for t in (threads if isinstance(threads, list) else str(threads).split(","))]
    if cache_type_k:
        ctk = cache_type_k if isinstance(cache_type_k, list) else str(cache_type_k).split(",")
        for c in ctk:
            planner.cache_type_bytes(c)  # refuse unknown cache types before the run
        params["-ctk"] = list(ctk)
    notes = []
    build = active_build()
    if build.backend == "cpu":
        gpu_values = [v for v in params.get("-ngl", []) if v != "0"]
        if gpu_values:
            notes.append(
                f"CPU-only build: -ngl {','.join(gpu_values)} would change nothing, swept ngl=0 only; "
                "GPU numbers need a GPU (and `invoke build-llama --backend cuda`)"
            )
            warn(notes[-1])
        params["-ngl"] = ["0"]
    params.setdefault("-t", [str(planner.physical_cores())])
    bw = machine_bandwidth()
    extra_args = shlex.split(extra) if extra else []
    step(f"llama-bench {meta.name}: " + " ".join(f"{k} {','.join(v)}" for k, v in params.items()))
    runs = [params]
    if meta.is_mla and "-ctk" in params:
        # MLA: llama.cpp refuses K and V cache types that differ, and llama-bench crosses -ctk with -ctv,
        # so each K type gets its own run with the same V type.
        runs = [{**params, "-ctk": [c], "-ctv": [c]} for c in params["-ctk"]]
    raw, cmd = [], []
    for p in runs:
        got, cmd_i = run_llama_bench(Path(meta.shards[0]), p, n_prompt, n_gen, repetitions, extra_args)
        raw += got
        cmd = cmd + ([";"] if cmd else []) + cmd_i
    rows = []
    for r in raw:
        test = f"pp{r['n_prompt']}" if r["n_gen"] == 0 else f"tg{r['n_gen']}"
        row = BenchRow(
            test=test,
            n_gpu_layers=int(r["n_gpu_layers"]),
            threads=int(r["n_threads"]),
            cache_type_k=r["type_k"],
            n_cpu_moe=int(r.get("n_cpu_moe", 0)),
            tokens_per_s=round(float(r["avg_ts"]), 3),
            stddev=round(float(r["stddev_ts"]), 3),
            samples=[float(x) for x in r.get("samples_ts", [])],
        )
        if test.startswith("tg"):
            roof = roofline(
                meta, row.n_gpu_layers if build.backend != "cpu" else 0, row.n_cpu_moe, bw, gpu_bw_gbs
            )
            row.roofline_tokens_per_s = round(roof, 3)
            row.roofline_fraction = round(row.tokens_per_s / roof, 4) if roof else None
        rows.append(row)
    result = BenchResult(model=model, command=cmd, rows=rows, bandwidth=bw, notes=notes)
    if write:
        result.run_dir = str(write_results(result, meta.name))
    return result


def write_results(result: BenchResult, name: str) -> Path:
    """results.json, table.md and plots (tokens/s vs the swept parameter) under runs/<time>-bench-<name>/."""

    stem = model_stem(Path(name).name)
    out = runs_dir() / f"{time.strftime('%Y%m%d-%H%M%S')}-bench-{stem}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result.to_dict(), indent=1))
    lines = [
        "| test | ngl | threads | ctk | ncmoe | tok/s | ± | roofline tok/s | fraction |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result.rows:
        lines.append(
            f"| {r.test} | {r.n_gpu_layers} | {r.threads} | {r.cache_type_k} | {r.n_cpu_moe} | "
            f"{r.tokens_per_s:.2f} | {r.stddev:.2f} | {r.roofline_tokens_per_s or ''} | "
            f"{r.roofline_fraction or ''} |"
        )
    (out / "table.md").write_text("\n".join(lines) + "\n")
    plot_results(result, out / "tokens_per_s.png")
    return out


def plot_results(result: BenchResult, path: Path) -> Path:
    """Prompt and generation tokens/s against layers offloaded (or threads when only one ngl was swept)."""
    import matplotlib  # optional (the `notebooks` extra): imported on use

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # optional (the `notebooks` extra): imported on use

    ngls = sorted({r.n_gpu_layers for r in result.rows})
    x_attr, x_label = (
        ("n_gpu_layers", "layers offloaded (-ngl)") if len(ngls) > 1 else ("threads", "threads (-t)")
    )
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, prefix, title in ((axes[0], "pp", "prompt processing"), (axes[1], "tg", "generation")):
        series: dict[tuple, list] = {}
        for r in result.rows:
            if r.test.startswith(prefix):
                key = tuple(
                    (a, getattr(r, a))
                    for a in ("n_gpu_layers", "threads", "cache_type_k", "n_cpu_moe")
                    if a != x_attr
                )
                series.setdefault(key, []).append(
                    (getattr(r, x_attr), r.tokens_per_s, r.roofline_tokens_per_s)
                )
        for key, pts in series.items():
            pts.sort()
            label = ", ".join(f"{a}={v}" for a, v in key if a in ("cache_type_k", "threads", "n_gpu_layers"))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
            ax.set_xticks(sorted({p[0] for p in pts}))
            if prefix == "tg" and all(p[2] for p in pts):
                ax.plot([p[0] for p in pts], [p[2] for p in pts], ls="--", color="gray", lw=1)
        ax.set_title(title + (" (dashed: roofline)" if prefix == "tg" else ""))
        ax.set_xlabel(x_label)
        ax.set_ylabel("tokens/s")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def bench_command(
    model: str,
    sweep: list | None = None,
    threads: str | None = None,
    cache_type_k: str | None = None,
    n_prompt: int = 64,
    n_gen: int = 32,
    repetitions: int = 3,
    extra: str | None = None,
    json: bool = False,
    refresh_bandwidth: bool = False,
) -> int:
    """`invoke bench`: print the table (or JSON) and where the plots went."""

    if refresh_bandwidth:
        machine_bandwidth(refresh=True)
    res = bench_model(model, sweep, threads, cache_type_k, int(n_prompt), int(n_gen), int(repetitions), extra)
    if json:
        sys.stdout.write(_json.dumps(res.to_dict(), indent=1) + "\n")
        return 0
    rows = [
        (
            r.test,
            r.n_gpu_layers,
            r.threads,
            r.cache_type_k,
            r.n_cpu_moe,
            f"{r.tokens_per_s:.2f}",
            f"{r.stddev:.2f}",
            r.roofline_tokens_per_s or "",
            r.roofline_fraction or "",
        )
        for r in res.rows
    ]
    print_table(
        f"llama-bench {model} (CPU read {res.bandwidth['cpu_read_gbs']} GB/s)",
        ["test", "ngl", "threads", "ctk", "ncmoe", "tok/s", "±", "roofline tok/s", "fraction"],
        rows,
    )
    best = res.best("tg")
    console.print(
        f"best generation: {best.tokens_per_s:.2f} tok/s (ngl {best.n_gpu_layers}, t {best.threads}, "
        f"ctk {best.cache_type_k}); median roofline fraction "
        f"{statistics.median([r.roofline_fraction for r in res.rows if r.roofline_fraction] or [0]):.3f}"
    )
    console.print(f"results: {res.run_dir}", markup=False)
    return 0
