"""The seeds' prompt checkers, on hand-written good and bad answers (no model involved)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lowbit.run import seeds
from lowbit.run.sandbox import browser_missing, play_pygame, run_limited

ANSWERS = Path(__file__).with_name("seed_answers")


def answer(name: str) -> str:
    return (ANSWERS / name).read_text(encoding="utf-8")


def test_thinking_is_split_from_the_answer():
    assert seeds.split_thinking("<think>\nhmm, 1 and 1\n</think>\n\nIt is 2.") == ("hmm, 1 and 1", "It is 2.")
    assert seeds.split_thinking("the template opened it\n</think>2") == ("the template opened it", "2")
    assert seeds.split_thinking("<think>never finished") == ("never finished", "")
    assert seeds.split_thinking("plain answer") == ("", "plain answer")


def test_acrostic_good_and_bad():
    poem = "《新年》\n新春佳节喜洋洋，\n年年有余福满堂。\n快马扬鞭奔前程，\n乐在心头笑声扬。\n" \
           "万家灯火映天红，\n事事顺心福寿长。\n如花似锦春光好，\n意气风发向远方。"
    assert seeds.check_acrostic(poem).passed
    verses = "新春佳节喜洋洋，年年有余福满堂。快马扬鞭奔前程，乐在心头笑声扬。\n" \
             "万家灯火映天红，事事顺心福寿长。如花似锦春光好，意气风发向远方。"
    assert seeds.check_acrostic(verses).passed  # two verses per line still spell it
    wrong_order = poem.replace("快马", "乐马").replace("乐在", "快在")
    bad = seeds.check_acrostic(wrong_order)
    assert not bad.passed and "新年" in bad.detail
    assert not seeds.check_acrostic("Happy New Year! May all your wishes come true.").passed


@pytest.mark.parametrize("text,ok", [
    ("设鸡x只，兔y只……所以鸡有12只，兔子有13只。", True),
    ("答：笼子里有12只鸡和13只兔子。", True),
    ("So there are 12 chickens and 13 rabbits.", True),
    ("\\boxed{12 \\text{ chickens}, 13 \\text{ rabbits}}", True),
    ("Chickens: 12, rabbits: 13", True),
    ("There are 121 chickens and 121 rabbits in the cage.", False),  # what SmolLM2 really answers
    ("鸡有13只，兔子有12只。", False),
    ("First guess 10 chickens and 15 rabbits... no: 12 chickens, 14 rabbits.", False),
    ("I cannot solve this.", False),
])
def test_chickens_and_rabbits(text, ok):
    assert seeds.check_chickens(text).passed is ok, seeds.check_chickens(text).detail


@pytest.mark.parametrize("text,ok", [
    ("表面积 = 768 + 512√2 ≈ 1492.08", True),
    ("$S = 768 + 512\\sqrt{2}$", True),
    ("S = 256(3 + 2\\sqrt{2})", True),
    ("The surface area is approximately 1492.1 square units.", True),
    ("表面积为 1024 + 256√2", False),
    ("The answer is 1536.", False),
    ("S = 768", False),
])
def test_prism(text, ok):
    assert seeds.check_prism(text).passed is ok, seeds.check_prism(text).detail


@pytest.mark.parametrize("text,ok", [
    ("1+1 = 2", True), ("The answer is **2**.", True), ("\\boxed{2}", True), ("It is two.", True),
    ("1 + 1 = 3", False), ("The answer is 11.", False), ("I don't know.", False),
])
def test_one_plus_one(text, ok):
    assert seeds.check_one_plus_one(text).passed is ok


def test_code_extraction_takes_the_right_block_and_survives_a_cut_answer():
    text = "Steps:\n```bash\npip install pygame\n```\n```python\nimport pygame\nprint('game')\n```"
    assert seeds.extract_python(text) == "import pygame\nprint('game')\n"
    assert seeds.extract_python("```python\nimport pygame\nwhile True:\n    pass").startswith("import pygame")
    page = seeds.extract_html("```html\n<html><body><canvas></canvas></body></html>\n```\n```js\nlet a = 1;\n```")
    assert "<script>\nlet a = 1;" in page and page.index("let a") < page.index("</body>")
    assert seeds.extract_html("no code here") is None


def test_limited_child_is_killed_at_its_time_and_memory_limits(tmp_path):
    import sys

    from lowbit.run.sandbox import network_isolation

    if network_isolation():  # where namespaces work, generated code gets no network at all
        net = run_limited([sys.executable, "-c", "import socket; socket.create_connection(('127.0.0.1', 9), 2)"],
                          cwd=tmp_path, timeout=20)
        assert net.returncode != 0 and "Network is unreachable" in net.stderr, net.stderr  # not "refused"

    slow = run_limited([sys.executable, "-c", "import time; time.sleep(30)"], cwd=tmp_path, timeout=1)
    assert slow.timed_out and slow.returncode is None and slow.seconds < 10
    hog = run_limited([sys.executable, "-c", "x = bytearray(600 * 2**20); print('no limit')"], cwd=tmp_path,
                      timeout=20, mem_bytes=300 * 2**20)
    assert hog.returncode != 0 and "MemoryError" in hog.stderr and "no limit" not in hog.stdout


@pytest.mark.slow
def test_flappy_bird_good_runs_and_crashing_one_fails(tmp_path):
    good = seeds.check_flappy(answer("flappy_good.md"), keep=tmp_path / "good.py")
    assert good.passed, good.detail
    assert good.data["run"]["frames"] == 300 and good.data["run"]["spaces"] >= 10
    assert all(good.data["static"].values())
    assert (tmp_path / "good.py").read_text().startswith("import random")
    crash = seeds.check_flappy(answer("flappy_crash.md"))
    assert not crash.passed and "KeyError" in crash.detail and "crashed after 20 frames" in crash.detail
    syntax = seeds.check_flappy("```python\nimport pygame\nif True print('x')\n```")
    assert not syntax.passed and "does not parse" in syntax.detail
    no_quit = seeds.check_flappy(answer("flappy_good.md").replace("pygame.K_q, pygame.K_ESCAPE", "pygame.K_x,"))
    assert not no_quit.passed and "q/Esc quits" in no_quit.detail


def test_generated_code_never_runs_in_this_process(tmp_path):
    marker = tmp_path / "ran"
    report = play_pygame(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('x')\n", frames=5)
    assert report["exception"] is None and report["exited"] == "returned"
    assert marker.exists()  # it ran, in a child process: an endless loop is killed at the time limit
    report = play_pygame("while True:\n    pass\n", frames=5, timeout=2)
    assert report["timed_out"] and "killed" in report["exception"]


needs_browser = pytest.mark.skipif(browser_missing() is not None, reason=str(browser_missing()))


@needs_browser
@pytest.mark.slow
def test_snake_good_passes_broken_and_static_fail(tmp_path):
    good = seeds.check_snake(answer("snake_good.md"), keep=tmp_path / "good")
    assert good.passed, good.detail
    assert (tmp_path / "good" / "2-after-keys.png").stat().st_size > 1000
    broken = seeds.check_snake(answer("snake_broken.md"))
    assert not broken.passed and "drawSnake" in broken.detail
    static = seeds.check_snake(answer("snake_static.md"))
    assert not static.passed and "no keyboard listener" in static.detail
    assert not seeds.check_snake("贪吃蛇游戏的规则是……").passed
