"""The lessons in a real browser: JupyterLab in headless Chromium runs the quickstart, Generate is pressed.

Needs Debian's `chromium` and `chromium-driver` and the `checks` extra (selenium); skipped with the
install command where they are missing (`.ci/run` installs them when apt is available).
"""

from __future__ import annotations

import shutil
import time

import pytest

from lowbit.paths import kit_root
from lowbit.run.sandbox import BROWSER_INSTALL, browser_missing

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(browser_missing() is not None, reason=f"{browser_missing()} ({BROWSER_INSTALL})"),
]


def wait_for(driver, script: str, timeout: float, what: str, *args):
    """Poll a JavaScript function body until it returns something truthy; fail naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script, *args)
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_quickstart_runs_in_jupyterlab_and_the_generate_button_streams_a_reply(tmp_path):
    from selenium.webdriver.common.by import By

    from lowbit.lessons.lab import LabServer
    from lowbit.lessons.runner import new_run_dir
    from lowbit.run.sandbox import Browser

    shots = new_run_dir("browser-quickstart")  # the screenshots are kept with the run, under runs/
    shutil.copy(kit_root() / "notebooks" / "00_quickstart.ipynb", tmp_path)  # autosave must not touch the lesson
    with LabServer(root=tmp_path, expose_app=True) as lab, Browser(width=1400, height=1000, offline=False) as b:
        d = b.driver
        base = lab.info["url"].rstrip("/")
        d.get(f"{base}/lab/tree/00_quickstart.ipynb?token={lab.info['token']}")
        wait_for(d, "return window.jupyterapp && document.querySelector('.jp-Notebook .jp-Cell')", 120,
                 "JupyterLab to open the notebook")
        wait_for(d, "const w = window.jupyterapp.shell.currentWidget; const k = w && w.sessionContext && "
                    "w.sessionContext.session && w.sessionContext.session.kernel; return k && k.status === 'idle'",
                 120, "the lowbit kernel to be ready")
        (shots / "1-opened.png").write_bytes(b.screenshot())
        d.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells')")
        # The chat widget renders after the model loaded and answered once (its headless path).
        wait_for(d, "return [...document.querySelectorAll('.jupyter-widgets button')]"
                    ".some(x => x.textContent.includes('Generate') && !x.disabled)", 600, "the chat widget")
        wait_for(d, "return document.body.innerText.includes('claim holds')", 300, "the claim cell to pass")
        (shots / "2-ran.png").write_bytes(b.screenshot())
        boxes = d.find_elements(By.CSS_SELECTOR, ".jupyter-widgets textarea")
        prompt_box, reply_box = boxes[0], boxes[-1]
        first_reply = reply_box.get_property("value")
        assert first_reply.strip(), "the widget shows the reply of its first (headless) run"
        prompt_box.clear()
        prompt_box.send_keys("Name three colours of the rainbow.")
        button = next(x for x in d.find_elements(By.CSS_SELECTOR, ".jupyter-widgets button")
                      if "Generate" in x.text)
        d.execute_script("arguments[0].scrollIntoView({block: 'center'})", button)
        button.click()  # a real click in the browser: the Python callback runs in the kernel
        reply = wait_for(d, "const t = [...document.querySelectorAll('.jupyter-widgets textarea')].pop();"
                            "const s = [...document.querySelectorAll('.jupyter-widgets .widget-label')]"
                            ".map(x => x.textContent).join(' ');"
                            "return t.value && t.value !== arguments[0] && /tok\\/s/.test(s) ? t.value : null",
                         300, "the new reply to stream in", first_reply)
        (shots / "3-generated.png").write_bytes(b.screenshot())
    assert len(reply.split()) >= 2, reply
    assert all((shots / f).stat().st_size > 10_000 for f in ("1-opened.png", "2-ran.png", "3-generated.png"))
