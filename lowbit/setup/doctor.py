"""`invoke doctor`: what this machine is, what the kit has built, and whether setup is complete."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from lowbit import LowbitError
from lowbit.machine import machine_summary
from lowbit.models import replicas
from lowbit.paths import models_dir, state_dir
from lowbit.toolchain import bindings
from lowbit.toolchain.build import TARGETS, active_build, builds_root, load_build
from lowbit.toolchain.jupyter_kernel import KERNEL_NAME, kernel_locations, kernel_registered
from lowbit.ui import print_json, print_table

PACKAGES = ("lowbit", "llama_cpp_python", "gguf", "huggingface_hub", "hf_xet", "transformers", "torch",
            "papermill", "nbval", "ipywidgets", "invoke")


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "-"
    return out


def setup_problems() -> list[tuple[str, str]]:
    """(what is wrong, how to fix it) for every incomplete part of setup."""

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

    if not kernel_registered():
        problems.append((f"Jupyter kernel {KERNEL_NAME!r} is not registered", "run `invoke setup`"))
    absent = [name for name in replicas.REPLICAS if replicas.replica_path(name) is None]
    if absent:
        problems.append((f"replica models not built: {', '.join(absent)}", "run `invoke replicas`"))
    return problems


def kernels() -> list[dict]:
    """Where the `lowbit` Jupyter kernel is registered, in Jupyter's search order ([] without jupyter_client)."""

    try:
        return kernel_locations()
    except ImportError:
        return []


def doctor_command(json: bool = False) -> int:  # noqa: A002 (the flag is --json)
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
