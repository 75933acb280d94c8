"""`invoke doctor`: what this machine is, what the kit has built, and whether setup is complete."""

from __future__ import annotations

import importlib.util
import platform
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from lowbit import LowbitError
from lowbit.paths import kit_root, models_dir, state_dir

PACKAGES = ("lowbit", "llama_cpp_python", "gguf", "huggingface_hub", "hf_xet", "transformers", "torch",
            "papermill", "nbval", "ipywidgets", "invoke")
# SIMD features llama.cpp's CPU kernels use, as /proc/cpuinfo names them.
SIMD_FLAGS = ("sse3", "ssse3", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
              "avx512_bf16", "amx_tile", "asimd", "asimddp", "sve", "i8mm")


def cpu_info() -> dict:
    """CPU model, SIMD features, physical and logical cores."""
    import psutil

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


def _sysctl(name: str) -> str | None:
    try:
        return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True).stdout.strip() or None
    except OSError:
        return None


def gpus() -> list[dict]:
    """NVIDIA GPUs (name, memory) from nvidia-smi; Apple GPUs (unified memory) on macOS."""
    found = []
    if shutil.which("nvidia-smi"):
        proc = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True)
        for line in proc.stdout.strip().splitlines():
            name, _, mem = line.rpartition(",")
            found.append({"name": name.strip(), "memory_gb": round(float(mem) / 1024, 1), "api": "cuda"})
    if sys.platform == "darwin" and platform.machine() == "arm64":
        import psutil

        found.append({"name": _sysctl("machdep.cpu.brand_string") or "Apple GPU",
                      "memory_gb": round(psutil.virtual_memory().total / 2**30, 1), "api": "metal (unified)"})
    return found


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "-"
    return out


def machine_summary() -> dict:
    """Everything `doctor` reports about the machine, as a dict (lessons show it)."""
    import psutil

    models = models_dir()
    probe = models if models.exists() else kit_root()
    return {
        "os": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "python": platform.python_version(),
        "cpu": cpu_info(),
        "ram_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "ram_available_gb": round(psutil.virtual_memory().available / 1e9, 1),
        "disk_free_gb": round(shutil.disk_usage(probe).free / 1e9, 1),
        "gpus": gpus(),
    }


def setup_problems() -> list[tuple[str, str]]:
    """(what is wrong, how to fix it) for every incomplete part of setup."""
    from lowbit.toolchain import bindings
    from lowbit.toolchain.build import TARGETS, active_build

    problems = []
    if not (state_dir() / "python").exists():
        problems.append(("the kit's interpreter is not recorded", "run `invoke setup`"))
    try:
        build = active_build()
    except LowbitError:
        return problems + [("llama.cpp is not built", "run `invoke setup` (or `invoke build-llama`)")]
    missing = [t for t in TARGETS if not (build.bin_dir / t).exists()]
    if missing:
        problems.append((f"binaries missing from {build.bin_dir}: {', '.join(missing)}",
                         "run `invoke build-llama --force`"))
    if importlib.util.find_spec("llama_cpp") is None:
        problems.append(("llama-cpp-python (the Python bindings) is not installed", "run `invoke setup`"))
    elif bindings.bound_build_key() != build.key:
        problems.append(("the Python bindings are not linked to the active build", "run `invoke setup`"))
    else:
        probe = "import lowbit.toolchain.bindings as b; print(b.loaded_library())"
        check = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
        if check.returncode != 0 or Path(check.stdout.strip()).parent != build.bin_dir.resolve():
            problems.append((f"`import llama_cpp` does not load the kit's build: {check.stdout or check.stderr[-300:]}",
                             "run `invoke setup`"))
    from lowbit.toolchain.jupyter_kernel import KERNEL_NAME, kernel_registered

    if not kernel_registered():
        problems.append((f"Jupyter kernel {KERNEL_NAME!r} is not registered", "run `invoke setup`"))
    if importlib.util.find_spec("lowbit.models.replicas") is not None:
        from lowbit.models import replicas

        absent = [name for name in replicas.REPLICAS if replicas.replica_path(name) is None]
        if absent:
            problems.append((f"replica models not built: {', '.join(absent)}", "run `invoke replicas`"))
    return problems


def kernels() -> list[dict]:
    """Where the `lowbit` Jupyter kernel is registered, in Jupyter's search order ([] without jupyter_client)."""
    from lowbit.toolchain.jupyter_kernel import kernel_locations

    try:
        return kernel_locations()
    except ImportError:
        return []


def doctor_command(json: bool = False) -> int:  # noqa: A002 (the flag is --json)
    from lowbit.toolchain.build import active_build, builds_root, load_build
    from lowbit.ui import print_json, print_table

    summary = machine_summary()
    cpu = summary["cpu"]
    builds = [b for d in sorted(builds_root().glob("*")) if d.is_dir() and (b := load_build(d))]
    try:
        active = active_build()
    except LowbitError:
        active = None
    problems = setup_problems()
    found_kernels = kernels()
    if json:
        print_json({**summary, "builds": [b.key for b in builds], "active_build": active and active.key,
                    "packages": package_versions(), "kernels": found_kernels, "problems": problems})
        return 1 if problems else 0
    gpu_text = "; ".join(f"{g['name']} ({g['memory_gb']} GB, {g['api']})" for g in summary["gpus"]) or "none"
    print_table("machine", ["", ""], [
        ("OS", summary["os"]),
        ("CPU", cpu["model"]),
        ("SIMD", " ".join(cpu["simd"]) or "-"),
        ("cores", f"{cpu['physical_cores']} physical / {cpu['logical_cores']} logical"),
        ("RAM", f"{summary['ram_gb']} GB ({summary['ram_available_gb']} GB available)"),
        ("free disk", f"{summary['disk_free_gb']} GB (models: {models_dir()})"),
        ("GPUs", gpu_text),
    ])
    print_table("llama.cpp builds", ["key", "backend", "commit", "active", "directory"], [
        (b.key, b.backend, b.commit[:12], "yes" if active and b.key == active.key else "", b.directory)
        for b in builds
    ])
    print_table("packages", ["package", "version"], package_versions().items())
    print_table("jupyter kernel 'lowbit' (in Jupyter's search order from this environment)",
                ["kernel spec", "runs", "chosen here"], [
        (k["dir"], k["python"] or "?", "yes" if k["used"] else "") for k in found_kernels
    ] or [("not registered", "", "")])
    if problems:
        print_table("setup is incomplete", ["problem", "fix"], problems)
        return 1
    print("setup is complete")
    return 0
