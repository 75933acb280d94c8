"""Calibrate this machine once: memory, kernel and disk rates the cost model (`lowbit.run.predict`) needs.

Measured in seconds and cached per CPU fingerprint + llama.cpp build (`calibration.json` in the kit's
cache): a different CPU or build recalibrates, the same one reads the cache.

- memory read bandwidth for 1..physical cores threads (median of streaming passes: the steady rate a
  token's weight stream sees, not the best single pass);
- ggml's own CPU `mul_mat` per quant type (`lowbit.toolchain.ggml_kernels`): mat-vec (one token) and mat-mat
  (a 64-token batch) on cache-resident weights, for every thread count — the compute ceilings;
- ggml's CPU flash attention (llama.cpp's default on CPU) per query x head x cached position;
- disk read bandwidth of a memory-mapped file, cold (pages evicted with posix_fadvise DONTNEED).

Rates on a shared VM swing between runs (two quiet calibrations 20 minutes apart read 34 and 66 GB/s): every
rate is the median of `ROUNDS` interleaved rounds (each round measures bandwidth, kernels and attention at every
thread count in turn, so a burst of other load lands in one round of every rate instead of in all samples of
one), and the calibration records each rate's spread over the rounds. Every calibration is also kept in a
short history (`calibration-history.json`): the validation benchmark derives the error band from the
predictions of all of them, not from one.

The fixed per-token overhead is fitted by `lowbit.run.predict.fit_overhead` on a synthetic calibration
model (never on a model the validation benchmark measures) and stored here too.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from lowbit import LowbitError
from lowbit.machine import busy_cpu_seconds, own_cpu_seconds, physical_cores
from lowbit.paths import cache_dir, models_dir
from lowbit.toolchain.build import active_build, cpu_fingerprint
from lowbit.toolchain.ggml_kernels import Kernels
from lowbit.ui import step, warn

CALIBRATION_FILE = "calibration.json"
HISTORY_FILE = "calibration-history.json"
HISTORY_KEEP = 8  # calibrations kept per fingerprint
ROUNDS = 3  # interleaved rounds of every rate; each rate is their median
FORMAT = 10  # bump when what is measured or fitted changes: every machine recalibrates once
# weight types the cost model can meet in a GGUF (KV cache types are among them)
WEIGHT_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
                "Q6_K", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M", "IQ4_NL", "IQ4_XS",
                "TQ1_0", "TQ2_0", "MXFP4")
MV_SHAPE = (1024, 4096)  # rows, cols of the mat-vec probe: 0.5-4 MB of weights, cache-resident
MM_BATCH = 64  # columns of the mat-mat probe (llama-bench -p 64; llama.cpp's kernels tile in 16s)
MM_ROWS = 256
STREAM_MIB = 96  # the streaming mat-vec probe: well beyond a last-level cache (32 MiB here)
FEW_BATCH = 8  # a few columns: what each expert sees in a MoE batch (64 tokens x 2 of 8 experts = 16 each)
DISK_PROBE_MIB = 128
RANDOM_BLOCKS_KIB = (16, 256, 4096)  # random-read probe block sizes: a few rows of one expert ... a whole expert
RANDOM_SHARE = 4  # the random probe touches 1/4 of the probe file per block size


def llc_bytes() -> int:
    """The last-level cache (bytes) from sysfs; 32 MiB when unknown."""
    best = 0
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = f.read_text().strip()
            best = max(best, int(text.rstrip("KMG")) * {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1], 1))
        except (OSError, ValueError):
            continue
    return best or 32 * 2**20


def fingerprint() -> str:
    """CPU + llama.cpp build: what the kernel rates depend on."""

    return f"{cpu_fingerprint()}|{active_build().key}|v{FORMAT}"


def cache_path() -> Path:
    return cache_dir() / CALIBRATION_FILE


def _read_all() -> dict:
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def save(cal: dict) -> None:
    """Store `cal` under its fingerprint (atomic replace; other fingerprints kept)."""
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _read_all()
    data[cal["fingerprint"]] = cal
    _write_json(path, data)
    _remember(cal)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def store_probes(cal: dict) -> None:
    """Write `cal`'s shape probes (`lowbit.run.probes`) into the cached calibration and the history entry that
    are the same measurement (same `measured_at`); any other calibration is left as it is."""
    if (current := cached(cal.get("fingerprint"))) and current.get("measured_at") == cal.get("measured_at"):
        save({**current, "probes": cal.get("probes", {})})
        return
    try:
        data = json.loads(history_path().read_text())
    except (OSError, json.JSONDecodeError):
        return
    for kept in data.get(cal.get("fingerprint"), []) if isinstance(data, dict) else []:
        if isinstance(kept, dict) and kept.get("measured_at") == cal.get("measured_at"):
            kept["probes"] = cal.get("probes", {})
            _write_json(history_path(), data)
            return


def stream_bytes(llc: int) -> int:
    """Weight bytes of the streaming mat-vec probe (`mvs`): well beyond the last-level cache."""
    return max(STREAM_MIB * 2**20, 3 * llc)


def history_path() -> Path:
    return cache_path().with_name(HISTORY_FILE)


def _remember(cal: dict) -> None:
    """Keep `cal` in the history of its fingerprint (the same measurement, re-saved with its overhead fit,
    replaces itself); the oldest beyond HISTORY_KEEP are dropped."""
    try:
        data = json.loads(history_path().read_text())
    except (OSError, json.JSONDecodeError):
        data = {}
    data = data if isinstance(data, dict) else {}
    kept = [c for c in data.get(cal["fingerprint"], []) if isinstance(c, dict)
            and c.get("measured_at") != cal.get("measured_at")]
    data[cal["fingerprint"]] = (kept + [cal])[-HISTORY_KEEP:]
    _write_json(history_path(), data)


BUSY_CALIBRATION = 0.5  # other processes' CPUs above which a calibration measured the load, not the machine


def history(key: str | None = None, quiet_only: bool = True) -> list[dict]:
    """Every kept calibration of this machine and build with its overhead fit, oldest first; by default only
    those measured while other processes used at most BUSY_CALIBRATION CPUs."""
    try:
        data = json.loads(history_path().read_text())
    except (OSError, json.JSONDecodeError):
        return []
    got = data.get(key or fingerprint(), []) if isinstance(data, dict) else []
    return [c for c in got if isinstance(c, dict) and c.get("overhead")
            and not (quiet_only and c.get("busy_cpus", 0.0) > BUSY_CALIBRATION)]


def cached(key: str | None = None) -> dict | None:
    """The cached calibration for this machine and build, if any."""
    return _read_all().get(key or fingerprint())


def others_busy(seconds: float = 0.5) -> float:
    """CPUs' worth of time other processes use right now (/proc/stat over `seconds`; 0 off Linux)."""
    b0, t0 = busy_cpu_seconds(), time.monotonic()
    if b0 is None:
        return 0.0
    time.sleep(seconds)
    b1 = busy_cpu_seconds() or b0
    return max(0.0, (b1 - b0) / (time.monotonic() - t0))


def cpu_seconds() -> tuple[float, float, float] | None:
    """(CPU-seconds all processes ran, CPU-seconds of this process and its reaped children, monotonic time)."""
    total = busy_cpu_seconds()
    if total is None:
        return None
    return total, own_cpu_seconds(), time.monotonic()


def others_since(start: tuple[float, float, float] | None) -> float:
    """CPUs' worth of time other processes used since `cpu_seconds()` returned `start` (0 off Linux)."""
    end = cpu_seconds()
    if start is None or end is None or end[2] <= start[2]:
        return 0.0
    return round(max(0.0, (end[0] - start[0]) - (end[1] - start[1])) / (end[2] - start[2]), 2)


# ---------------------------------------------------------------------------------------------
# measurements


def read_bandwidth_gbs(threads: int, mib: int = 128, reps: int = 9, best: bool = False) -> float:
    """Memory read bandwidth (GB/s) of `threads` streaming readers: the median of `reps` passes, or with `best`
    the fastest (the BitNet benchmark's roofline ceiling: the most the machine gave).

    Each thread OR-reduces its own uint64 array (numpy vectorizes it and releases the GIL), far larger
    than any cache. The median, not the best pass, for predictions: decode streams the weights every token,
    and on a shared VM single passes swing from ~0.5x to ~2x of the steady rate.
    """

    arrays = [np.ones(mib * 2**20 // 8, dtype=np.uint64) for _ in range(threads)]
    samples = []
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(np.bitwise_or.reduce, arrays))  # fault the pages in
        for _ in range(reps):
            t = time.perf_counter()
            list(pool.map(np.bitwise_or.reduce, arrays))
            samples.append(threads * mib * 2**20 / (time.perf_counter() - t) / 1e9)
    return round(max(samples) if best else statistics.median(samples), 2)


def matmul_rate(kernels: Kernels, qtype: str, rows: int, batch: int, threads: int, seconds: float,
                repack: bool = False) -> float:
    """Weight bytes x columns per second of ggml's `mul_mat` of a `rows x MV_SHAPE[1]` weight of `qtype` times
    `batch` columns (best of `seconds`): every rate `kernel_rates` keeps, and the host check's reference."""
    row_bytes = kernels.row_size(qtype, MV_SHAPE[1])
    return row_bytes * rows * batch / kernels.matmul_seconds(qtype, rows, MV_SHAPE[1], batch, threads,
                                                             seconds=seconds, repack=repack)


def kernel_rates(threads: int, types: tuple[str, ...] = WEIGHT_TYPES, seconds: float = 0.06) -> dict:
    """{type: {"mv": weight bytes/s one token consumes, "mm": weight bytes x batch / s for 64 columns, "mm8":
    the same for 8 columns}} on `threads`.

    Both through ggml's own CPU `mul_mat` (a one-node graph), with the weight repacked where llama.cpp
    repacks it by default; for those types also `mv_norepack`/`mm_norepack` (`--no-repack`, out-of-core
    runs). Types this build cannot run carry an "error" instead.
    """

    kernels = Kernels()
    out = {}
    rows, cols = MV_SHAPE
    for qtype in types:
        try:
            row_bytes = kernels.row_size(qtype, cols)
            rates = {}
            for suffix, repack in (("", True), ("_norepack", False)) if kernels.repacks(qtype) else (("", False),):
                # the last: one token through weights streamed from memory, as decode reads a model larger than
                # the cache: compute and memory stalls together, on ggml's own kernel
                big = max(8, stream_bytes(llc_bytes()) // row_bytes // 8 * 8)
                for key, n, batch in (("mv", rows, 1), ("mm", MM_ROWS, MM_BATCH),
                                      (f"mm{FEW_BATCH}", MM_ROWS, FEW_BATCH), ("mvs", big, 1)):
                    rates[key + suffix] = matmul_rate(kernels, qtype, n, batch, threads, seconds, repack)
        except (LowbitError, OSError, ValueError) as exc:  # a type missing from this build's traits
            out[qtype] = {"error": str(exc)}
            continue
        out[qtype] = rates
    return out


FA_PROBE = {"n_head": 8, "n_head_kv": 2, "n_kv": 2048, "dims": (64, 128)}


def attention_rates(threads: int, seconds: float = 0.05) -> dict:
    """ggml's CPU flash attention (llama.cpp's CPU default) as seconds per query x head x cached position,
    `a + b x (k_dim + v_dim)`, for one query (decode) and a 64-token batch (prefill), f16 cache."""

    kernels = Kernels()
    out = {}
    for kind, n_tokens in (("decode", 1), ("prefill", MM_BATCH)):
        points = []
        for d in FA_PROBE["dims"]:
            t = kernels.flash_attn_seconds(d, FA_PROBE["n_head"], FA_PROBE["n_head_kv"], FA_PROBE["n_kv"], n_tokens,
                                           threads, seconds=seconds)
            points.append((2 * d, t / (n_tokens * FA_PROBE["n_head"] * FA_PROBE["n_kv"])))
        (x1, y1), (x2, y2) = points
        b = max(0.0, (y2 - y1) / (x2 - x1))
        out[kind] = {"a": max(0.0, y1 - b * x1), "b": b}
    return out


def disk_read_gbs(directory: Path, mib: int = DISK_PROBE_MIB, blocks_kib: tuple[int, ...] = RANDOM_BLOCKS_KIB,
                  seed: int = 0) -> dict:
    """Cold read bandwidth (GB/s) of a memory-mapped file in `directory` (the models' disk): sequential, and
    random blocks of each size in `blocks_kib` (`random_gbs`, keyed by KiB).

    Writes a probe file, syncs it, evicts it from the page cache (posix_fadvise DONTNEED), then touches
    every page through mmap as llama.cpp's mmap loader does. A model bigger than RAM does not read its
    experts in order: each token faults in the experts it routes to, scattered over the file, where readahead
    and seek latency make the rate per useful byte several times lower than a sequential pass — so blocks at
    random offsets (a quarter of the file per size, evicted again before each size) are timed too. The probe
    file is deleted afterwards.
    """

    directory.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".lowbit-disk-probe-", dir=directory)
    try:
        chunk = np.random.default_rng(0).integers(0, 2**63, 2**20 // 8, dtype=np.uint64).tobytes()
        for _ in range(mib):
            os.write(fd, chunk)
        os.fsync(fd)
        evicted = hasattr(os, "posix_fadvise")
        size = mib * 2**20

        def evict() -> None:
            if evicted:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)

        out: dict = {"mib": mib, "cold": evicted, "dir_device": os.stat(directory).st_dev, "random_gbs": {}}
        rng = np.random.default_rng(seed)
        for kib in (None, *blocks_kib):  # None: one sequential pass
            n_blocks = size // (kib * 1024) if kib else 1
            if kib and n_blocks < 2:
                continue
            picks = rng.permutation(n_blocks)[: max(1, n_blocks // RANDOM_SHARE)] if kib else [0]
            words = (kib * 1024 if kib else size) // 8
            evict()  # a fresh map of evicted pages: mapped pages would not be dropped
            with mmap.mmap(fd, size, prot=mmap.PROT_READ) as m:
                arr = np.frombuffer(m, dtype=np.uint64)
                t = time.perf_counter()
                for b in picks:  # every page of each block, as a matmul over one expert's rows faults them in
                    np.bitwise_or.reduce(arr[b * words:(b + 1) * words])
                gbs = round(len(picks) * words * 8 / (time.perf_counter() - t) / 1e9, 3)
                del arr
            if kib:
                out["random_gbs"][str(kib)] = gbs
            else:
                out["gbs"] = gbs
        return out
    finally:
        os.close(fd)
        os.unlink(name)


def disk_rate(cal: dict, block_bytes: float | None = None) -> float:
    """Cold disk read rate (bytes/s) for reads of `block_bytes` at random offsets, interpolated in log(size)
    between the calibrated random-read probes (beyond them: the nearest; no size or no probe: sequential)."""
    disk = cal.get("disk", {})
    seq = float(disk.get("gbs", 0)) * 1e9
    points = sorted((int(k) * 1024, float(v) * 1e9) for k, v in disk.get("random_gbs", {}).items() if v)
    if not block_bytes or not points:
        return seq
    if block_bytes <= points[0][0]:
        return points[0][1]
    for (x1, y1), (x2, y2) in zip(points, points[1:], strict=False):
        if block_bytes <= x2:
            f = math.log(block_bytes / x1) / math.log(x2 / x1)
            return y1 + f * (y2 - y1)
    return points[-1][1]


def _median_tree(values: list):
    """The element-wise median of equally shaped nested dicts of numbers (a key missing in some: those that
    have it; non-numbers: the first)."""
    first = values[0]
    if isinstance(first, dict):
        keys = dict.fromkeys(k for v in values if isinstance(v, dict) for k in v)
        return {k: _median_tree([v[k] for v in values if isinstance(v, dict) and k in v]) for k in keys}
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        return statistics.median(values)
    return first


def _spreads(values: list, out: list[float]) -> None:
    """Collect (max - min) / median of every numeric leaf over the rounds into `out`."""
    first = values[0]
    if isinstance(first, dict):
        for k in first:
            _spreads([v[k] for v in values if isinstance(v, dict) and k in v], out)
    elif isinstance(first, (int, float)) and not isinstance(first, bool) and len(values) > 1:
        mid = statistics.median(values)
        if mid > 0:
            out.append((max(values) - min(values)) / mid)


def combine_rounds(rounds: list[dict]) -> dict:
    """Per-thread-count medians over interleaved rounds, and their spread: `{"bandwidth_gbs", "kernels",
    "attention", "bandwidth_rounds", "spread"}`. Spread: (max - min) / median over the rounds — of the
    bandwidth per thread count, and the median and worst over every kernel and attention rate."""
    threads = list(rounds[0])
    out: dict = {"bandwidth_gbs": {}, "kernels": {}, "attention": {}, "bandwidth_rounds": {},
                 "spread": {"rounds": len(rounds), "bandwidth": {}, "kernels": {}, "attention": {}}}
    for t in threads:
        per = [r[t] for r in rounds]
        bws = [p["bandwidth"] for p in per]
        out["bandwidth_gbs"][t] = round(statistics.median(bws), 2)
        out["bandwidth_rounds"][t] = bws
        out["kernels"][t] = _median_tree([p["kernels"] for p in per])
        out["attention"][t] = _median_tree([p["attention"] for p in per])
        spread: list[float] = []
        _spreads(bws, spread)
        out["spread"]["bandwidth"][t] = round(spread[0], 3) if spread else 0.0
        for what in ("kernels", "attention"):
            spread = []
            _spreads([p[what] for p in per], spread)
            out["spread"][what][t] = ({"median": round(statistics.median(spread), 3), "worst": round(max(spread), 3)}
                                      if spread else {"median": 0.0, "worst": 0.0})
    return out


def measure(disk_dir: Path | None = None) -> dict:
    """Every hardware rate, for thread counts 1..physical cores (a few seconds)."""

    cores = physical_cores()
    busy = others_busy()
    start = cpu_seconds()
    step(f"calibrating this machine (memory, ggml kernels at 1..{cores} threads, disk)")
    cal = {
        "fingerprint": fingerprint(),
        "format": FORMAT,
        "cores": cores,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "busy_cpus": round(busy, 2),
        "llc_bytes": llc_bytes(),
    }
    rounds: list[dict] = []
    for r in range(ROUNDS):  # interleaved: one burst of load hits one round of every rate, not one rate
        step(f"calibration round {r + 1} of {ROUNDS}")
        rounds.append({str(t): {"bandwidth": read_bandwidth_gbs(t, reps=3), "kernels": kernel_rates(t),
                                "attention": attention_rates(t)} for t in range(1, cores + 1)})
    cal |= combine_rounds(rounds)
    cal["disk"] = disk_read_gbs(disk_dir or models_dir())
    busy = cal["busy_cpus"] = max(busy, others_since(start))
    if busy > BUSY_CALIBRATION:
        warn(f"other processes used {busy:.1f} CPUs while calibrating: rates may be low; "
             "recalibrate on a quiet machine (`invoke calibrate --refresh`)")
    return cal


def calibration(refresh: bool = False) -> dict:
    """This machine's calibration: from the cache, or measured now and cached."""
    key = fingerprint()
    if not refresh and (cal := cached(key)):
        return cal
    cal = measure()
    save(cal)
    return cal
