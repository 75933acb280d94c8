"""This machine: CPU (cores, model, SIMD, fingerprint), RAM, GPUs and their memory, free disk, CPU time, and
the memory bandwidth measured once per machine. The one place that asks the OS or `nvidia-smi`.

Standard library at import time: `invoke setup` builds llama.cpp (which keys its cache on
`cpu_fingerprint()`) before psutil is installed, so psutil is imported where it is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
from pathlib import Path

from lowbit.paths import cache_dir, kit_root, models_dir

BANDWIDTH_FILE = "bandwidth.json"
MIN_MARGIN = 256 * 1000 * 1000  # free-disk margin: up to this (never more than the download itself), or 2 %
# SIMD features llama.cpp's CPU kernels use, as /proc/cpuinfo names them.
SIMD_FLAGS = ("sse3", "ssse3", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
              "avx512_bf16", "amx_tile", "asimd", "asimddp", "sve", "i8mm")


# ---------------------------------------------------------------------------------------------
# CPU


def physical_cores() -> int:
    """Physical cores (logical ones where the OS does not say; at least 1)."""
    import psutil  # not at top: setup imports this module before psutil is installed

    return psutil.cpu_count(logical=False) or psutil.cpu_count() or 1


def cpu_fingerprint() -> str:
    """Native CPU builds are only valid on the same CPU: the model name goes into the cache key."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                return hashlib.sha256(line.encode()).hexdigest()[:8] + platform.machine()
    except OSError:
        pass
    return platform.machine() + platform.processor()


def _sysctl(name: str) -> str | None:
    try:
        return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True).stdout.strip() or None
    except OSError:
        return None


def cpu_info() -> dict:
    """CPU model, SIMD features, physical and logical cores."""
    import psutil  # not at top: see the module docstring

    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Model", "CPU part") and model in ("", platform.machine()):
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split()) | ({"sse3"} if "pni" in value.split() else set())
    elif sys.platform == "darwin":
        model = _sysctl("machdep.cpu.brand_string") or model
        flags = {f.lower() for f in (_sysctl("machdep.cpu.features") or "").split()}
        if platform.machine() == "arm64":
            flags |= {"asimd", "asimddp"}
    return {
        "model": model,
        "simd": [f for f in SIMD_FLAGS if f in flags],
        "physical_cores": psutil.cpu_count(logical=False) or psutil.cpu_count(),
        "logical_cores": psutil.cpu_count(),
    }


def busy_cpu_seconds() -> float | None:
    """CPU-seconds all processes have run (user, nice, system, irq, softirq, steal), or None off Linux."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    except (OSError, ValueError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """CPU-seconds (user + system) this process's finished children have run."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def own_cpu_seconds() -> float:
    """CPU-seconds (user + system) this process and its finished children have run."""
    return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))


# ---------------------------------------------------------------------------------------------
# memory, GPUs, disk


def ram_bytes() -> int:
    """Total RAM."""
    import psutil  # not at top: see the module docstring

    return psutil.virtual_memory().total


def ram_available_bytes() -> int:
    """RAM available to a new process now."""
    import psutil  # not at top: see the module docstring

    return psutil.virtual_memory().available


def nvidia_gpus() -> list[dict]:
    """NVIDIA GPUs as `nvidia-smi` lists them: [{"name", "memory_mib"}] ([] without one, or if it fails;
    an nvcc alone is not a GPU)."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run([smi, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    found = []
    for line in out.strip().splitlines():
        name, _, mem = line.rpartition(",")
        if name.strip() and mem.strip().isdigit():  # "[N/A]" or an error text is no GPU we can plan for
            found.append({"name": name.strip(), "memory_mib": int(mem)})
    return found


def gpu_names() -> list[str]:
    """Names of the NVIDIA GPUs."""
    return [g["name"] for g in nvidia_gpus()]


def vram_bytes() -> int:
    """Total memory of the NVIDIA GPUs (0 without one)."""
    return sum(g["memory_mib"] * 2**20 for g in nvidia_gpus())


def vram_gib() -> list[float]:
    """Memory of each NVIDIA GPU in GiB (one decimal); [] without one."""
    return [round(g["memory_mib"] / 1024, 1) for g in nvidia_gpus()]


def gpus() -> list[dict]:
    """NVIDIA GPUs (name, memory) from nvidia-smi; Apple GPUs (unified memory) on macOS."""
    found = [{"name": g["name"], "memory_gb": round(g["memory_mib"] / 1024, 1), "api": "cuda"}
             for g in nvidia_gpus()]
    if sys.platform == "darwin" and platform.machine() == "arm64":
        found.append({"name": _sysctl("machdep.cpu.brand_string") or "Apple GPU",
                      "memory_gb": round(ram_bytes() / 2**30, 1), "api": "metal (unified)"})
    return found


def disk_margin(n_bytes: int) -> int:
    """Free space to keep beyond a write of `n_bytes`: 2 %, at least min(256 MB, the write itself)."""
    return max(int(0.02 * n_bytes), min(MIN_MARGIN, n_bytes))


READ_AHEAD_DEFAULT = 128 * 1024  # Linux's default read_ahead_kb


def read_ahead_bytes(path: Path) -> int:
    """The kernel's read-ahead window (bytes) of the block device holding `path`: what a page fault on a mapped
    file reads around the faulting page. Linux sysfs (`queue/read_ahead_kb`, a partition's from its disk); the
    Linux default of 128 KiB when unknown."""
    try:
        dev = os.stat(path).st_dev
        block = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
        for queue in (block / "queue", block / ".." / "queue"):
            if (queue / "read_ahead_kb").is_file():
                kb = int((queue / "read_ahead_kb").read_text()[:16].strip())
                return kb * 1024 if 0 < kb <= 1 << 20 else READ_AHEAD_DEFAULT
    except (OSError, ValueError):
        pass
    return READ_AHEAD_DEFAULT


def free_disk(path: Path) -> int:
    """Free bytes on the filesystem that will hold `path` (its nearest existing parent)."""
    p = Path(path).resolve()
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def machine_summary() -> dict:
    """Everything `doctor` reports about the machine, as a dict (lessons show it)."""
    models = models_dir()
    probe = models if models.exists() else kit_root()
    return {
        "os": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "python": platform.python_version(),
        "cpu": cpu_info(),
        "ram_gb": round(ram_bytes() / 1e9, 1),
        "ram_available_gb": round(ram_available_bytes() / 1e9, 1),
        "disk_free_gb": round(shutil.disk_usage(probe).free / 1e9, 1),
        "gpus": gpus(),
    }


def memory_warning(model_bytes: int, ram: int | None = None, vram: int | None = None) -> str | None:
    """The seeds' rule of thumb (download size <= RAM + VRAM) as a warning, or None if it holds."""
    from lowbit.ui import human_bytes  # not at top: ui needs rich, and setup imports this module before it

    ram = ram_bytes() if ram is None else ram
    vram = vram_bytes() if vram is None else vram
    if model_bytes <= ram + vram:
        return None
    return (
        f"the model ({human_bytes(model_bytes)}) is larger than RAM + VRAM ({human_bytes(ram)} + "
        f"{human_bytes(vram)}): llama.cpp will mmap it and re-read weights from disk for every token, so "
        "expect far below 1 token/s (rule of thumb: download size <= RAM + VRAM)."
    )


# ---------------------------------------------------------------------------------------------
# measured memory bandwidth (measured by `lowbit.run.bench.machine_bandwidth`, read by the planner)


def bandwidth_path() -> Path:
    """Where measured bandwidths are cached, one entry per machine."""
    return cache_dir() / BANDWIDTH_FILE


def machine_key() -> str:
    """What a bandwidth measurement is valid for: this CPU and these GPUs."""
    return cpu_fingerprint() + "|" + ";".join(gpu_names())


def cached_bandwidth() -> dict | None:
    """This machine's cached bandwidth measurement, if any."""
    path = bandwidth_path()
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data.get(machine_key())
