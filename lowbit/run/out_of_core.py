"""Bigger than RAM: run a MoE model under a memory limit smaller than the file, and predict its speed.

llama.cpp maps the GGUF; the page cache keeps what fits and every token faults in what it needs from disk.
The prediction: the calibrated in-memory time (`--no-repack`: repacked copies are anonymous memory that
mmap cannot evict) plus the bytes per token the cache cannot hold, read at the measured cold disk rates:
dense weights at the sequential rate, experts at the rate of random reads the size of one expert's slice of a
tensor (`calibrate.disk_rate`: a token's experts lie scattered over the file).
With `C` bytes of cache for weights, `D` dense bytes (read every token), `E` routed-expert bytes of which a
token reads `e = E x used / n_expert`:

- `D + e >= C`: what one token touches does not fit; a cyclic scan larger than an LRU cache hits nothing:
  every token reads `D + e` from disk;
- otherwise the dense part stays hot and the experts get `C - D`: a token misses `e x (1 - (C - D) / E)`.

The measured run (`invoke bigger-than-ram`, root + cgroup v1) puts llama-bench in a fresh memory cgroup
(`/sys/fs/cgroup/memory/lowbit-...`, `memory.limit_in_bytes`, page cache included), evicts the model's pages
first (pages cached by another cgroup would stay resident uncharged), and always kills what is left in the
cgroup and removes it — also when the run fails or is interrupted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lowbit import LowbitError, flag_number
from lowbit.files.gguf_layout import write_deepseek2
from lowbit.machine import READ_AHEAD_DEFAULT, physical_cores, read_ahead_bytes
from lowbit.models.catalog import locate
from lowbit.models.entries import load_catalog
from lowbit.paths import models_dir
from lowbit.run import calibrate
from lowbit.run import predict as P
from lowbit.toolchain.build import active_build, sdist_tree
from lowbit.ui import print_json, step

CGROUP_ROOT = Path("/sys/fs/cgroup/memory")
NO_ROOT_HINT = (
    "a memory limit needs root and a cgroup v1 memory controller here. Without root: on a systemd machine with "
    "cgroup v2 and user delegation, `systemd-run --user --scope -p MemoryMax=600M -p MemorySwapMax=0 "
    "llama-bench -m MODEL --repack 0 -p 0 -n 16` limits one run the same way; otherwise a model larger than free "
    "RAM simply runs out of core by itself (no limit needed, only patience), with --no-repack."
)


# ---------------------------------------------------------------------------------------------
# prediction


@dataclass
class OutOfCore:
    model: str
    limit_bytes: int
    cache_bytes: int  # what the page cache can give the weights under the limit
    dense_bytes: int  # read every token
    expert_bytes: int  # all routed experts
    expert_bytes_per_token: int
    disk_bytes_per_token: int
    disk_gbs: float  # the effective rate over this token's mix of sequential (dense) and random (expert) reads
    in_memory_tps: float
    predicted_tps: float
    note: str = ""
    read_ahead_bytes: int = READ_AHEAD_DEFAULT

    def to_dict(self) -> dict:
        return asdict(self)


def expert_reads(tensor_bytes: float, experts: int, used: int, window: int) -> float:
    """Bytes one token's page faults read from a stacked routed-expert tensor: each used expert's slice, but
    never less than the read-around window the kernel reads around a faulting page (`read_ahead_kb`: 8 MiB on
    some cloud disks, where a 0.5 MB slice drags in 15 neighbours nobody asked for), at most the whole tensor."""
    return min(tensor_bytes, used * max(tensor_bytes / experts, window))


def _read_rate(cal: dict, block: float | None) -> float:
    """Cold read rate for contiguous reads of `block` bytes at scattered offsets: the calibrated random-read
    rate, or the sequential one for blocks at least as large as the largest random probe (one long read)."""
    probes = [int(k) * 1024 for k in cal.get("disk", {}).get("random_gbs", {})]
    if block and probes and block >= max(probes):
        return max(calibrate.disk_rate(cal), calibrate.disk_rate(cal, block))
    return calibrate.disk_rate(cal, block)


def predict_out_of_core(model: str | os.PathLike | P.Workload, limit_bytes: int, threads: int,
                        cal: dict | None = None, disk_gbs: float | None = None, n_gen: int = 16,
                        window: int | None = None) -> OutOfCore:
    """Decode tok/s of `model` when only `limit_bytes` of memory (page cache included) are allowed; `window`:
    the read-ahead page faults read (default: that of the disk holding the model)."""
    w = model if isinstance(model, P.Workload) else P.workload(model)
    cal = cal or P.calibration()
    cfg = P.Config(threads=threads, n_gen=n_gen, repack=False, n_ctx=n_gen + 16)
    mem = P.predict(w, cfg, cal)
    meta = w.meta
    used = meta.n_expert_used / meta.n_expert if meta.n_expert else 1.0
    experts = sum(t.n_bytes for t in w.tensors if t.group == "routed_experts")
    dense = sum(t.n_bytes for t in w.tensors if t.group not in ("routed_experts", "embd"))
    dense += sum(t.n_bytes // max(t.rows, 1) for t in w.tensors if t.group == "embd")  # one row per token
    parts = mem.rss_parts
    cache = max(0, limit_bytes - parts["kv"] - parts["compute"] - parts["runtime"])
    e = experts * used
    if dense + e >= cache:
        disk_dense, disk_experts = dense, e
        note = ("what one token touches (dense weights + its experts) exceeds the cache: an LRU page cache "
                "cycling through more than it holds hits nothing, every token reads it all from disk")
    else:
        hit = min(1.0, (cache - dense) / experts) if experts else 1.0
        disk_dense, disk_experts = 0.0, e * (1 - hit)
        note = f"dense weights stay cached; {hit:.0%} of expert reads hit the cache"
    window = window or (read_ahead_bytes(Path(meta.shards[0])) if meta.shards else READ_AHEAD_DEFAULT)
    routed = [t for t in w.tensors if t.group == "routed_experts" and t.experts > 1]
    if routed and e:  # what page faults really read of the experts a token uses (read-around windows)
        disk_experts *= sum(expert_reads(t.n_bytes, t.experts, meta.n_expert_used, window) for t in routed) / e
    if disk_gbs:
        seconds = (disk_dense + disk_experts) / (disk_gbs * 1e9)
    else:
        blocks = sorted(max(t.n_bytes / t.experts, window) for t in routed)
        seconds = (disk_dense / calibrate.disk_rate(cal)
                   + disk_experts / _read_rate(cal, blocks[len(blocks) // 2] if blocks else None))
    disk = disk_dense + disk_experts
    t = 1 / mem.decode_tps + seconds
    return OutOfCore(meta.name, int(limit_bytes), int(cache), int(dense), int(experts), int(e), int(disk),
                     round(disk / seconds / 1e9, 3) if seconds else 0.0, mem.decode_tps, round(1 / t, 3), note,
                     window)


R1_DENSE_PARAMS = 17e9  # of R1's 671B, outside the routed experts (attention, 3 dense layers, shared experts,
# embeddings, output): 58 MoE layers x 256 experts x 3 x 7168 x 2048 = 654B are routed experts
R1_EXPERT_PARAMS = 654e9
R1_DENSE_BITS = 4.5  # dynamic quants keep those at Q4_K-Q6_K while the experts go to 1.5-2 bits


def r1_at_ram(ram_gb: float = 64.0, file_gb: float | None = None, disk_gbs: float | None = None,
              bandwidth_gbs: float | None = None, window: int | None = None) -> dict:
    """The seed's question, as a prediction: R1-0528 UD-IQ1_S (catalog size, 185 GB) CPU-only with `ram_gb`
    of RAM, from R1's published shape (256 routed experts, 8 used per token) and this machine's measured cold
    disk and memory rates. Labelled a prediction: nothing of that size runs here."""
    cal = P.calibration()
    if file_gb is None:
        quants = {q["name"]: q for q in load_catalog()["deepseek-r1-0528"]["quants"]}
        file_gb = float(quants["UD-IQ1_S"]["size_gb"])
    bw = (bandwidth_gbs or max(cal["bandwidth_gbs"].values())) * 1e9
    dense = R1_DENSE_PARAMS * R1_DENSE_BITS / 8
    experts = file_gb * 1e9 - dense
    e = experts * 8 / 256
    cache = ram_gb * 1e9 * 0.9 - 4e9  # minus the OS, KV cache (MLA, 8k, q4_0) and compute buffers
    if dense + e >= cache:
        hit, disk_dense, disk_experts = 0.0, dense, e
    else:
        hit = min(1.0, (cache - dense) / experts)
        disk_dense, disk_experts = 0.0, e * (1 - hit)
    # one expert's slice of one tensor (7168 x 2048 weights at the experts' bits) is what a token asks for at a
    # random offset, read in windows of this machine's read-ahead; dense weights are read in order
    slice_bytes = 7168 * 2048 * experts / R1_EXPERT_PARAMS
    window = window or (read_ahead_bytes(models_dir()) if models_dir().exists() else READ_AHEAD_DEFAULT)
    disk_experts *= expert_reads(256 * slice_bytes, 256, 8, window) / (8 * slice_bytes)
    if disk_gbs:
        seconds = (disk_dense + disk_experts) / (disk_gbs * 1e9)
    else:
        seconds = disk_dense / calibrate.disk_rate(cal) + disk_experts / _read_rate(cal, max(slice_bytes, window))
    disk_b = disk_dense + disk_experts
    t_mem = (dense + e) / bw
    t = t_mem + seconds
    rate = disk_b / seconds if seconds else (disk_gbs or cal["disk"]["gbs"]) * 1e9
    return {"prediction": True, "ram_gb": ram_gb, "file_gb": file_gb, "disk_gbs": round(rate / 1e9, 3),
            "bandwidth_gbs": round(bw / 1e9, 1), "expert_cache_hit": round(hit, 3), "read_ahead_bytes": window,
            "disk_gb_per_token": round(disk_b / 1e9, 2), "tokens_per_s": round(1 / t, 3),
            "seconds_per_token": round(t, 1), "in_ram_tokens_per_s_bound": round(1 / t_mem, 2),
            "disk_gbs_for_1_tok_s": round(disk_b / max(1e-9, 1 - t_mem) / 1e9, 1) if t_mem < 1 else None}


# ---------------------------------------------------------------------------------------------
# the cgroup


def cgroup_available() -> str | None:
    """None when a memory cgroup can be made here, else why not (with what to do instead)."""
    if os.name != "posix" or not CGROUP_ROOT.is_dir():
        return f"no cgroup v1 memory controller at {CGROUP_ROOT}: " + NO_ROOT_HINT
    if os.geteuid() != 0 or not os.access(CGROUP_ROOT, os.W_OK):
        return "not root: " + NO_ROOT_HINT
    return None


@dataclass
class CgroupRun:
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    limit_bytes: int
    max_usage_bytes: int = 0
    major_faults: int = 0
    oom_killed: bool = False
    cgroup: str = ""
    stats: dict = field(default_factory=dict)


def _pids(group: Path) -> list[int]:
    try:
        return [int(x) for x in (group / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def remove_cgroup(group: Path, wait: float = 10.0) -> None:
    """Kill every process left in `group`, then remove it (retrying while the kernel lets go of it)."""
    deadline = time.monotonic() + wait
    while True:
        pids = _pids(group)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise LowbitError(f"could not remove cgroup {group} (processes left: {_pids(group)})") from None
            time.sleep(0.05)


def evict(paths: list[Path]) -> None:
    """Drop the files' pages from the page cache, so the limited run starts cold and is charged for them."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run_limited(cmd: list[str], limit_bytes: int, timeout: float = 600, name: str | None = None) -> CgroupRun:
    """Run `cmd` inside a new memory cgroup capped at `limit_bytes`; the cgroup and everything in it is
    gone when this returns or raises."""
    why = cgroup_available()
    if why:
        raise LowbitError(why)
    group = CGROUP_ROOT / (name or f"lowbit-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(int(limit_bytes)))
        swap = group / "memory.memsw.limit_in_bytes"
        if swap.exists():  # no escape into swap where swap accounting is on
            swap.write_text(str(int(limit_bytes)))
        procs = str(group / "cgroup.procs")

        def enter() -> None:  # in the child before exec: every byte it maps is charged to the group
            with open(procs, "w") as f:
                f.write(str(os.getpid()))

        start = time.monotonic()
        # files, not pipes: a child the command left behind would hold a pipe open after the command exits
        with tempfile.TemporaryFile() as fout, tempfile.TemporaryFile() as ferr:
            proc = subprocess.Popen(cmd, stdout=fout, stderr=ferr, stdin=subprocess.DEVNULL, preexec_fn=enter)
            note = ""
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                note = f"\n(killed after {timeout:g} s)"
            seconds = time.monotonic() - start
            fout.seek(0)
            ferr.seek(0)
            out = fout.read().decode("utf-8", "replace")
            err = ferr.read().decode("utf-8", "replace") + note
        stats = {}
        try:
            for line in (group / "memory.stat").read_text().splitlines():
                k, v = line.split()
                stats[k] = int(v)
        except (OSError, ValueError):
            pass
        oom = "oom_kill 1" in _read(group / "memory.oom_control") or proc.returncode == -signal.SIGKILL
        return CgroupRun(proc.returncode, out, err, seconds, int(limit_bytes),
                         int(_read(group / "memory.max_usage_in_bytes") or 0),
                         stats.get("total_pgmajfault", stats.get("pgmajfault", 0)), oom, group.name, stats)
    finally:
        remove_cgroup(group)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------
# the model and the command


def moe_model(folder: Path | None = None) -> Path:
    """An R1-layout MoE (deepseek2: MLA, 32 routed experts, 4 used, 1 shared; 8 layers of width 512,
    F16, random weights, phi-3 vocabulary), ~0.5 GB: big enough to be several times a memory limit that
    still holds llama.cpp itself."""

    folder = folder or models_dir() / "bigger-than-ram"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "r1-layout-moe-32x512.gguf"
    if not path.exists():
        step(f"writing {path.name} (R1 layout, 32 experts, random F16 weights; once)")
        tmp = folder / "tmp-r1-layout-moe.gguf"
        write_deepseek2(tmp, n_layers=8, n_embd=512, n_expert=32, n_used=4, n_ff=1024, n_ff_exp=512,
                        ctx_train=2048, vocab_gguf=sdist_tree() / "vendor/llama.cpp/models/ggml-vocab-phi-3.gguf",
                        n_head=8, q_lora=384)
        os.replace(tmp, path)
    return path


MIN_LIMIT_MB = 16  # below this the runtime itself (tokenizer tables, buffers) cannot start under the cgroup


def bench_cmd(model: Path, threads: int, n_gen: int) -> list[str]:
    return [str(active_build().tool("llama-bench")), "-m", str(model), "-t", str(threads), "-p", "0",
            "-n", str(n_gen), "-r", "1", "--repack", "0", "-lm", "mmap", "-o", "json"]


def bigger_than_ram(model: str | None = None, limit_mb: int | None = None, ratio: float = 3.0,
                    threads: int | None = None, n_gen: int = 16, timeout: float = 300) -> dict:
    """Run a MoE model `ratio` times larger than a cgroup memory limit; tok/s measured vs predicted."""
    why = cgroup_available()
    if why:
        raise LowbitError(why)
    path = locate(model) if model else moe_model()
    w = P.workload(path)
    threads = threads or physical_cores()
    if limit_mb is not None and limit_mb < MIN_LIMIT_MB:
        raise LowbitError(f"a memory limit of {limit_mb} MB leaves llama-bench no room to start: give at least "
                          f"{MIN_LIMIT_MB} MB")
    if ratio < 1:
        raise LowbitError(f"ratio {ratio}: the model must be at least as large as the limit (1 or more)")
    limit = int(limit_mb * 2**20) if limit_mb else int(w.meta.file_bytes / ratio)
    pred = predict_out_of_core(w, limit, threads, n_gen=n_gen)
    # a read-ahead window larger than Linux's default reads neighbours of every expert slice: what the default gives
    small = predict_out_of_core(w, limit, threads, n_gen=n_gen, window=READ_AHEAD_DEFAULT)
    free = P.predict(w, P.Config(threads=threads, n_gen=n_gen, repack=False))
    evict([Path(s) for s in w.meta.shards])
    run = run_limited(bench_cmd(path, threads, n_gen), limit, timeout=timeout)
    measured = None
    if run.returncode == 0:
        rows = json.loads(run.stdout[run.stdout.index("[") : run.stdout.rindex("]") + 1])
        measured = float(rows[0]["avg_ts"])
    return {"model": w.meta.name, "file_bytes": w.meta.file_bytes, "limit_bytes": limit,
            "ratio": round(w.meta.file_bytes / limit, 2), "threads": threads, "measured_tps": measured,
            "predicted": pred.to_dict(), "unlimited_predicted_tps": free.decode_tps,
            "predicted_default_read_ahead_tps": small.predicted_tps,
            "error": round(pred.predicted_tps / measured - 1, 3) if measured else None,
            "returncode": run.returncode, "oom_killed": run.oom_killed, "major_faults": run.major_faults,
            "max_usage_bytes": run.max_usage_bytes, "seconds": round(run.seconds, 1),
            "stderr_tail": run.stderr.strip().splitlines()[-3:] if run.returncode else []}


def bigger_than_ram_command(model: str | None = None, limit_mb: int | None = None, ratio: float = 3.0,
                            threads: int | None = None, n_gen: int = 16, ram_gb: float = 64.0,
                            json: bool = False) -> int:  # noqa: A002 (the flag is --json)
    """`invoke bigger-than-ram`: the limited run, then the seed's R1 question as a prediction."""
    res = bigger_than_ram(model, flag_number("limit_mb", limit_mb, minimum=MIN_LIMIT_MB),
                          flag_number("ratio", ratio, float, minimum=1.0), flag_number("threads", threads, minimum=1),
                          flag_number("n_gen", n_gen, minimum=1))
    ram = flag_number("ram_gb", ram_gb, float, minimum=1.0)
    r1 = r1_at_ram(ram)
    r1["tokens_per_s_default_read_ahead"] = r1_at_ram(ram, window=READ_AHEAD_DEFAULT)["tokens_per_s"]
    if json:
        print_json({"run": res, "r1_prediction": r1})
        return 0 if res["measured_tps"] else 1
    p = res["predicted"]
    print(f"{res['model']}: {res['file_bytes'] / 1e6:.0f} MB under a {res['limit_bytes'] / 1e6:.0f} MB memory "
          f"cgroup ({res['ratio']}x), {res['threads']} threads, --no-repack, mmap")
    if res["measured_tps"] is None:
        print(f"  the run failed (exit {res['returncode']}{', OOM-killed' if res['oom_killed'] else ''}): "
              + " | ".join(res["stderr_tail"]))
    else:
        print(f"  measured {res['measured_tps']:.2f} tok/s, predicted {p['predicted_tps']:.2f} "
              f"({res['error']:+.0%}); {res['major_faults']} major faults, peak {res['max_usage_bytes'] / 1e6:.0f} MB")
    print(f"  model: {p['disk_bytes_per_token'] / 1e6:.1f} MB/token from disk at {p['disk_gbs']:.2f} GB/s "
          f"({p['note']}); unlimited it would run {res['unlimited_predicted_tps']:.1f} tok/s")
    if p["read_ahead_bytes"] > READ_AHEAD_DEFAULT and res["predicted_default_read_ahead_tps"] > p["predicted_tps"]:
        print(f"  this disk reads {p['read_ahead_bytes'] // 1024} KiB around every page fault (read_ahead_kb), "
              "dragging in neighbouring experts nobody asked for; at Linux's default of 128 KiB the prediction is "
              f"{res['predicted_default_read_ahead_tps']:.2f} tok/s (as root: echo 128 > "
              "/sys/block/DISK/queue/read_ahead_kb; restore the old value after)")
    print(f"PREDICTION (not a measurement): DeepSeek-R1-0528 IQ1_S ({r1['file_gb']:.0f} GB), CPU only, "
          f"{r1['ram_gb']:.0f} GB RAM, this machine's disk ({r1['disk_gbs']:.2f} GB/s cold) and memory "
          f"({r1['bandwidth_gbs']:.0f} GB/s): {r1['tokens_per_s']} tok/s ({r1['seconds_per_token']} s/token; "
          f"{r1['disk_gb_per_token']} GB/token from disk, expert cache hit {r1['expert_cache_hit']:.0%}); "
          f"with everything in RAM the memory bound would be {r1['in_ram_tokens_per_s_bound']} tok/s; "
          + (f"with read_ahead_kb 128 instead of {r1['read_ahead_bytes'] // 1024}: "
             f"{r1['tokens_per_s_default_read_ahead']} tok/s; " if r1["read_ahead_bytes"] > READ_AHEAD_DEFAULT else "")
          + (f"the seed's ~1 tok/s needs a disk reading {r1['disk_gbs_for_1_tok_s']} GB/s"
             if r1["disk_gbs_for_1_tok_s"] else "the seed's ~1 tok/s is out of reach: memory alone is slower"))
    return 0 if res["measured_tps"] else 1
