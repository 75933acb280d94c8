"""`invoke lab`: JupyterLab on the lessons, loopback only, JupyterLab's own token auth, the lowbit kernel."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from lowbit import procs
from lowbit.paths import kit_root
from lowbit.toolchain.jupyter_kernel import KERNEL_NAME, register_kernel


class LabServer(procs.Child):
    """A JupyterLab process; `start()` waits until it serves and knows its URL and token."""

    def __init__(self, port: int = 0, browser: bool = False, root: Path | None = None, expose_app: bool = False):
        self.port, self.browser, self.expose_app = port, browser, expose_app  # expose: window.jupyterapp
        self.root = root or kit_root() / "notebooks"
        self.proc: subprocess.Popen | None = None
        self.info: dict = {}
        self._runtime = tempfile.TemporaryDirectory(prefix="lowbit-lab-")

    @property
    def url(self) -> str:
        """Base URL with the token, ready to open."""
        return f"{self.info['url'].rstrip('/')}/lab?token={self.info['token']}"

    def start(self, timeout: float = 90) -> LabServer:
        register_kernel()
        cmd = [
            sys.executable,
            "-m",
            "jupyterlab",
            "--ip=127.0.0.1",
            f"--port={self.port or 0}",
            f"--ServerApp.root_dir={self.root}",
            f"--MappingKernelManager.default_kernel_name={KERNEL_NAME}",
            "--ServerApp.port_retries=0",
            "--ServerApp.open_browser=" + str(self.browser),
            *(["--LabApp.expose_app_in_browser=True"] if self.expose_app else []),  # for browser tests
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append(
                "--allow-root"
            )  # containers and CI runners are often root; loopback + token still hold
        env = {
            **os.environ,
            "JUPYTER_RUNTIME_DIR": self._runtime.name,
        }  # its server file tells us URL + token
        self.log = Path(self._runtime.name) / "lab.log"  # never a pipe nobody reads: Jupyter logs a lot

        def ready() -> bool:
            info_file = Path(self._runtime.name) / f"jpserver-{self.proc.pid}.json"
            try:
                self.info = json.loads(info_file.read_text())
            except (OSError, ValueError):
                self.info = {}  # not written yet, or being written
            # the server file can appear before the socket answers (seen on a loaded machine)
            return bool(self.info.get("port")) and procs.can_connect("127.0.0.1", int(self.info["port"]), 1.0)

        # the kit's one child lifecycle (lowbit.procs): own session (the terminal's Ctrl-C reaches only us, and
        # `stop` shuts Jupyter down in order), a parent-death signal, stopped if it never gets ready
        self.launch(cmd, self.log, ready, timeout, "JupyterLab", env=env)
        return self

    def status(self) -> dict:
        """`GET /api/status` with the token (raises on HTTP errors)."""
        req = urllib.request.Request(
            f"{self.info['url'].rstrip('/')}/api/status",
            headers={"Authorization": f"token {self.info['token']}"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def stop(self, timeout: float = 20) -> int | None:
        """Stop the server (SIGINT twice is Jupyter's clean shutdown; then SIGTERM, then kill)."""
        if self.proc and self.proc.poll() is None:
            for sig in (signal.SIGINT, signal.SIGINT, signal.SIGTERM):
                self.proc.send_signal(sig)
                try:
                    self.proc.wait(timeout / 3)
                    break
                except subprocess.TimeoutExpired:
                    continue
        procs.stop(self.proc, grace=5, first=signal.SIGKILL)  # whatever is left of its group (kernels)
        self._runtime.cleanup()
        return self.proc.returncode if self.proc else None

    def __enter__(self) -> LabServer:
        return self.start()


def lab(port: int = 0, browser: bool = False) -> int:
    """Run JupyterLab until Ctrl-C; prints the URL (with its token) to open."""
    server = LabServer(port, browser).start()
    print(f"JupyterLab (kernel lowbit) at:\n  {server.url}\nCtrl-C stops it.", flush=True)
    try:
        while server.proc.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        code = server.stop()
    print("JupyterLab stopped.")
    return 0 if code in (0, None, -signal.SIGINT, -signal.SIGTERM) else code
