"""Running code a model wrote: only in a child process with limits, never in this interpreter.

`run_limited` starts a command in its own session with resource limits (address space, CPU seconds,
file size, open files, no core dumps), a wall-clock timeout that kills the whole process group, an
empty working folder and a minimal environment. `play_pygame` runs a pygame program headless (SDL's
dummy video and audio drivers) under that, injecting SPACE presses through pygame's own event queue
and counting frames. `Browser` drives Debian's headless Chromium through Selenium (chromedriver) with
the network switched off, for HTML/JavaScript answers.
"""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from lowbit import LowbitError

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
BROWSER_INSTALL = "sudo apt-get update && sudo apt-get install -y chromium chromium-driver && pip install selenium"


@dataclass
class Limited:
    """What a limited child did."""

    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    seconds: float


def _limits(mem_bytes: int, cpu_s: int, fsize: int):
    def apply() -> None:  # runs in the child between fork and exec
        import resource  # Unix only

        resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


@functools.lru_cache(maxsize=1)
def network_isolation() -> list[str]:
    """A prefix that runs a command without network (`unshare -rn`: a new user and network namespace with
    only a loopback that is down), or [] where Linux namespaces are unavailable."""
    unshare = shutil.which("unshare")
    if not unshare:
        return []
    try:
        ok = subprocess.run([unshare, "-rn", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return [unshare, "-rn"] if ok else []


def run_limited(cmd: list[str], cwd: Path, timeout: float = 60, mem_bytes: int = 1 << 30, cpu_s: int = 60,
                fsize: int = 16 << 20, env: dict[str, str] | None = None, output_limit: int = 200_000,
                offline: bool = True) -> Limited:
    """Run `cmd` in `cwd` with resource limits and a wall-clock timeout (the process group is killed);
    `offline` also takes its network away where the system allows (`network_isolation`)."""
    if not hasattr(os, "fork"):
        raise LowbitError("running generated code needs a POSIX system (resource limits)")
    cmd = [*(network_isolation() if offline else []), *cmd]
    base = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
    t0 = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                env={**base, **(env or {})}, start_new_session=True,
                                preexec_fn=_limits(mem_bytes, cpu_s, fsize))
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            if proc.poll() is None or timed_out:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        # the CPU-time limit (SIGXCPU, then SIGKILL at the hard limit) is a time limit too
        timed_out = timed_out or proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL)
        out.seek(0)
        err.seek(0)
        stdout = out.read(output_limit).decode("utf-8", "replace")
        stderr = err.read(output_limit).decode("utf-8", "replace")
    return Limited(None if timed_out else proc.returncode, stdout, stderr, timed_out, time.monotonic() - t0)


# ---------------------------------------------------------------------------------------------
# pygame, headless

# Runs in the child: SDL dummy drivers, SPACE presses posted to pygame's real event queue every
# `every` frames, frames counted at display.flip/update, clock sleeps skipped (the game runs as fast as
# the CPU allows), and a clean stop with a JSON report once `frames` frames were drawn.
_PYGAME_HARNESS = r'''
import json, os, runpy, sys, traceback
os.environ["SDL_VIDEODRIVER"] = "dummy"
os.environ["SDL_AUDIODRIVER"] = "dummy"
os.environ["PYGAME_HIDE_SUPPORT_PROMPT"] = "1"
FRAMES, EVERY, GAME = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
report = {"frames": 0, "spaces": 0, "exception": None, "exited": None}
try:
    import pygame
except Exception as exc:
    report["exception"] = "pygame is not installed: " + repr(exc)
    print("LOWBIT-REPORT " + json.dumps(report)); sys.exit(0)

class Done(BaseException):
    pass

def frame():
    report["frames"] += 1
    if report["frames"] >= FRAMES:
        raise Done()
    if report["frames"] % EVERY == 0:
        report["spaces"] += 1
        pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_SPACE, mod=0, unicode=" ", scancode=44))
        pygame.event.post(pygame.event.Event(pygame.KEYUP, key=pygame.K_SPACE, mod=0, unicode=" ", scancode=44))

_flip, _update = pygame.display.flip, pygame.display.update
def flip(*a, **k):
    r = _flip(*a, **k); frame(); return r
def update(*a, **k):
    r = _update(*a, **k); frame(); return r
pygame.display.flip, pygame.display.update = flip, update

class Clock:
    def __init__(self): self._c = pygame.time.get_ticks
    def tick(self, *a): return 16
    def tick_busy_loop(self, *a): return 16
    def get_fps(self): return 60.0
    def get_time(self): return 16
    def get_rawtime(self): return 16
pygame.time.Clock = Clock
pygame.time.delay = lambda ms: 0
pygame.time.wait = lambda ms: 0
sys.argv = [GAME]
try:
    runpy.run_path(GAME, run_name="__main__")
    report["exited"] = "returned"
except Done:
    report["exited"] = "frames reached"
except SystemExit as exc:
    report["exited"] = "sys.exit(%r)" % (exc.code,)
except BaseException as exc:
    report["exception"] = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    tb = traceback.extract_tb(exc.__traceback__)
    lines = [f for f in tb if f.filename == GAME]
    if lines:
        report["line"] = lines[-1].lineno
print("LOWBIT-REPORT " + json.dumps(report))
'''


def play_pygame(code: str, frames: int = 300, every: int = 20, timeout: float = 60,
                mem_bytes: int = 1 << 30, keep: Path | None = None) -> dict:
    """Run a pygame program headless for `frames` frames with SPACE every `every` frames, in a limited child.

    Returns {"frames", "spaces", "exception", "exited", "timed_out", "seconds", "stderr"}.
    """
    with tempfile.TemporaryDirectory(prefix="lowbit-game-") as tmp:
        work = Path(tmp)
        (work / "game.py").write_text(code, encoding="utf-8")
        (work / "harness.py").write_text(_PYGAME_HARNESS)
        if keep is not None:
            keep.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(work / "game.py", keep)
        res = run_limited([sys.executable, "-I", str(work / "harness.py"), str(frames), str(every),
                           str(work / "game.py")], cwd=work, timeout=timeout, mem_bytes=mem_bytes,
                          cpu_s=int(timeout))
    report: dict = {"frames": 0, "spaces": 0, "exception": None, "exited": None}
    for line in res.stdout.splitlines():
        if line.startswith("LOWBIT-REPORT "):
            report = json.loads(line.split(" ", 1)[1])
    if res.timed_out:
        report["exception"] = report.get("exception") or f"no result within {timeout:g} s (killed)"
    elif report["exited"] is None and report["exception"] is None:
        report["exception"] = f"the process died (exit {res.returncode}): {res.stderr.strip()[-300:]}"
    report.update(timed_out=res.timed_out, seconds=round(res.seconds, 2), stderr=res.stderr[-2000:])
    return report


# ---------------------------------------------------------------------------------------------
# headless Chromium


def browser_missing() -> str | None:
    """Why no headless browser can run here (None when one can), with the install command."""
    try:
        import selenium  # noqa: F401  (optional: the `browser` extra)
    except ImportError:
        return f"selenium is not installed; install the browser test tools: {BROWSER_INSTALL}"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            return f"{path} is missing; install the browser: {BROWSER_INSTALL}"
    return None


class Browser:
    """Headless Chromium (Debian's) driven by chromedriver through Selenium; no network, fixed window."""

    def __init__(self, width: int = 800, height: int = 600, page_timeout: float = 20, offline: bool = True):
        why = browser_missing()
        if why:
            raise LowbitError(why)
        # selenium is an optional extra: imported here so the kit works without it
        from selenium import webdriver  # optional (the `checks` extra): imported on use
        from selenium.webdriver.chrome.service import Service  # optional (the `checks` extra): imported on use

        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-extensions", "--no-first-run", "--mute-audio", f"--window-size={width},{height}",
                    "--js-flags=--max-old-space-size=512"):
            opts.add_argument(arg)
        if offline:  # a page a model wrote gets no network at all
            opts.add_argument("--host-resolver-rules=MAP * ~NOTFOUND")
            opts.add_argument("--proxy-server=127.0.0.1:9")
        self.tmp = tempfile.TemporaryDirectory(prefix="lowbit-browser-")
        opts.add_argument(f"--user-data-dir={self.tmp.name}/profile")
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
        self.driver.set_page_load_timeout(page_timeout)
        self.driver.set_script_timeout(page_timeout)

    def screenshot(self) -> bytes:
        return self.driver.get_screenshot_as_png()

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            self.tmp.cleanup()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def changed_pixels(a: bytes, b: bytes) -> int:
    """How many pixels differ between two PNG screenshots of the same size."""

    from PIL import Image, ImageChops  # optional (the `checks` extra): imported on use

    ia, ib = (Image.open(io.BytesIO(x)).convert("RGB") for x in (a, b))
    if ia.size != ib.size:
        return ia.size[0] * ia.size[1]
    diff = ImageChops.difference(ia, ib).convert("L").point(lambda v: 255 if v > 8 else 0)
    return int(sum(diff.histogram()[255:]))


# Installed before the page's own scripts: collects uncaught errors and the keys the page listens to.
_PAGE_PROBE = r"""
window.__lowbit = {errors: [], keyListeners: 0};
window.addEventListener('error', e => window.__lowbit.errors.push(String(e.message || e)));
(function () {
  const add = EventTarget.prototype.addEventListener;
  EventTarget.prototype.addEventListener = function (type, fn, opts) {
    if (/^key/.test(type)) window.__lowbit.keyListeners++;
    return add.call(this, type, fn, opts);
  };
  for (const t of [window, document, HTMLElement.prototype]) {
    for (const p of ['onkeydown', 'onkeyup', 'onkeypress']) {
      const d = Object.getOwnPropertyDescriptor(t, p) || Object.getOwnPropertyDescriptor(Object.getPrototypeOf(t), p);
      if (!d || !d.set) continue;
      try { Object.defineProperty(t, p, {configurable: true, get: d.get, set(v) {
        if (v) window.__lowbit.keyListeners++; return d.set.call(this, v); }}); } catch (e) {}
    }
  }
})();
"""


def play_html_game(html: str, keys: tuple[str, ...] = ("ArrowDown", "ArrowLeft", "ArrowUp", "ArrowRight"),
                   settle: float = 0.6, keep: Path | None = None, timeout: float = 30) -> dict:
    """Load an HTML game in headless Chromium, press arrow keys, and report what changed on screen.

    Returns {"loaded", "errors", "key_listeners", "idle_change", "key_change", "after_change",
    "screenshots"}: pixels changed with no key pressed, after the key presses (most of three frames),
    and between frames after them (a game keeps moving).
    """
    from selenium.webdriver.common.action_chains import ActionChains  # optional (the `checks` extra): imported on use
    from selenium.webdriver.common.keys import Keys  # optional (the `checks` extra): imported on use

    names = {"ArrowDown": Keys.ARROW_DOWN, "ArrowLeft": Keys.ARROW_LEFT, "ArrowUp": Keys.ARROW_UP,
             "ArrowRight": Keys.ARROW_RIGHT, "Space": Keys.SPACE, "Enter": Keys.ENTER}
    report: dict = {"loaded": False, "errors": [], "key_listeners": 0, "idle_change": 0, "key_change": 0,
                    "after_change": 0, "screenshots": []}
    deadline = time.monotonic() + timeout
    with tempfile.TemporaryDirectory(prefix="lowbit-page-") as tmp, Browser(page_timeout=timeout) as browser:
        page = Path(tmp) / "index.html"
        page.write_text(html, encoding="utf-8")
        d = browser.driver
        d.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": _PAGE_PROBE})
        d.get(page.as_uri())
        report["loaded"] = True
        time.sleep(settle)
        shots = [browser.screenshot()]
        time.sleep(settle)
        shots.append(browser.screenshot())
        body = d.find_element("tag name", "body")
        try:
            body.click()  # focus the page (some games listen on a canvas that needs focus)
        except Exception:  # noqa: BLE001 - an overlay may intercept the click; keys still go to the page
            pass
        for key in keys:
            if time.monotonic() > deadline:
                break
            ActionChains(d).send_keys(names.get(key, key)).perform()
            time.sleep(settle / 2)
        for _ in range(3):  # several frames: a periodic game can look the same at any two instants
            shots.append(browser.screenshot())
            time.sleep(settle / 3)
        probe = d.execute_script("return window.__lowbit || {errors: ['the page replaced window'], keyListeners: 0}")
        report["errors"] = [str(e)[:300] for e in probe.get("errors", [])][:10]
        report["key_listeners"] = int(probe.get("keyListeners", 0))
        report["idle_change"] = changed_pixels(shots[0], shots[1])
        report["key_change"] = max(changed_pixels(shots[1], s) for s in shots[2:])
        report["after_change"] = max(changed_pixels(a, b) for a, b in zip(shots[2:], shots[3:], strict=False))
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            for i, (name, shot) in enumerate(zip(("idle-1", "idle-2", "after-keys", "after-keys-2",
                                                  "after-keys-3"), shots, strict=True)):
                (keep / f"{i}-{name}.png").write_bytes(shot)
                report["screenshots"].append(str(keep / f"{i}-{name}.png"))
            (keep / "index.html").write_text(html, encoding="utf-8")
    return report
