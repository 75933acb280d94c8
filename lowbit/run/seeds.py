"""The source articles' test prompts and a checker for each: is the answer right, does the code run?

Prompts, as the seeds asked them: an acrostic poem on 新年快乐万事如意, chickens and rabbits (25 heads,
76 feet), the isosceles-right-triangle prism, a snake game that opens in the browser (all from the
article comparing R1 7B/32B/671B), Unsloth's Flappy Bird prompt with its 8 requirements, and "What is
1+1?" (Unsloth's R1 guide). A reasoning model's `<think>` part is split off first: only the answer is
graded, the thinking's length is reported. Code answers are extracted and run only in limited child
processes (`lowbit.run.sandbox`): the snake game in headless Chromium with arrow keys pressed, Flappy
Bird under pygame's dummy video driver with SPACE presses.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lowbit import LowbitError
from lowbit.run.sandbox import browser_missing, play_html_game, play_pygame

FLAPPY_BIRD = (
    "Create a Flappy Bird game in Python. You must include these things:\n"
    "1. You must use pygame.\n"
    "2. The background color should be randomly chosen and is a light shade. Start with a light blue color.\n"
    "3. Pressing SPACE multiple times will accelerate the bird.\n"
    "4. The bird's shape should be randomly chosen as a square, circle or triangle. The color should be randomly "
    "chosen as a dark color.\n"
    "5. Place on the bottom some land colored as dark brown or yellow chosen randomly.\n"
    "6. Make a score shown on the top right side. Increment if you pass pipes and don't hit them.\n"
    "7. Make randomly spaced pipes with enough space. Color them randomly as dark green or light brown or a dark "
    "gray shade.\n"
    "8. When you lose, show the best score. Make the text inside the screen. Pressing q or Esc will quit the game. "
    "Restarting is pressing SPACE again.\n"
    "The final game should be inside a markdown section in Python. Check your code for errors and fix them before "
    "the final markdown section."
)


@dataclass
class SeedPrompt:
    """One test prompt from the seeds and how its answer is judged."""

    id: str
    text: str
    source: str
    expects: str  # what a right answer is, in words
    kind: str = "text"  # text | html | python: code answers are run in a sandbox
    max_tokens: int = 1024  # a sensible budget on a small machine (the compare task can lower it)


SEED_PROMPTS: dict[str, SeedPrompt] = {p.id: p for p in [
    SeedPrompt("acrostic", "用“新年快乐万事如意”写一首藏头诗。", "R1 7B/32B/671B comparison",
               "8 lines (or verses), each starting with the next character of 新年快乐万事如意", max_tokens=512),
    SeedPrompt("chickens", "一个笼子，里头有鸡和兔子，一共有25个头和76只脚，请问笼子里边鸡和兔子各有多少只？",
               "R1 7B/32B/671B comparison", "12 chickens and 13 rabbits", max_tokens=768),
    SeedPrompt("prism", "一个三棱柱的上底和下底为两个等腰直角三角形，每个等腰三角形的直角边长为16。"
               "直棱柱的高度等于等腰直角三角形的斜边长度。求直棱柱的表面积。", "R1 7B/32B/671B comparison",
               "768 + 512√2 ≈ 1492.08 (exact or decimal)", max_tokens=1024),
    SeedPrompt("snake", "编写一个可以在浏览器上打开的贪吃蛇游戏。", "R1 7B/32B/671B comparison",
               "one HTML page that loads without errors, listens to keys, and visibly changes and responds "
               "to arrow keys in headless Chromium", kind="html", max_tokens=2048),
    SeedPrompt("flappy", FLAPPY_BIRD, "Unsloth's R1 1.58-bit blog and guide",
               "pygame code that parses and runs 300 headless frames with SPACE presses without an exception; "
               "q/Esc quit, SPACE restart and a score display are in the code", kind="python", max_tokens=2048),
    SeedPrompt("oneplusone", "What is 1+1?", "Unsloth's R1 guide (llama.cpp example)", "2", max_tokens=256),
]}


def select_prompts(spec: str | list[str] | None) -> list[SeedPrompt]:
    """`seeds`/None/`all` -> every prompt; else a comma list of ids (unknown ids list the choices)."""

    if spec in (None, "", "seeds", "all"):
        return list(SEED_PROMPTS.values())
    ids = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    unknown = [i for i in ids if i not in SEED_PROMPTS]
    if unknown:
        raise LowbitError(f"unknown prompt(s) {', '.join(unknown)}; choose from: seeds, {', '.join(SEED_PROMPTS)}")
    return [SEED_PROMPTS[i] for i in ids]


# ---------------------------------------------------------------------------------------------
# thinking and answer


def split_thinking(text: str) -> tuple[str, str]:
    """(thinking, answer): the `<think>...</think>` part and what follows it.

    R1 templates often open `<think>` themselves, so only `</think>` may appear; an unclosed `<think>`
    means the model never reached its answer (all of it is thinking).
    """
    if "</think>" in text:
        head, _, answer = text.partition("</think>")
        return head.replace("<think>", "", 1).strip(), answer.strip()
    if "<think>" in text:
        before, _, thinking = text.partition("<think>")
        return thinking.strip(), before.strip()
    return "", text.strip()


@dataclass
class Check:
    """A checker's verdict on one answer."""

    passed: bool
    detail: str
    data: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# text checkers

_CJK = re.compile(r"[\u3400-\u9fff]")


def check_acrostic(answer: str, head: str = "新年快乐万事如意") -> Check:
    """Lines (or verses split at Chinese punctuation) whose first characters spell `head`, in order."""
    lines = [ln for ln in answer.splitlines() if _CJK.search(ln)]
    verses = [v for ln in lines for v in re.split(r"[，。！？；,.!?;]", ln) if _CJK.search(v)]
    best = ""
    for units in (lines, verses):
        firsts = [_CJK.search(u).group(0) for u in units]
        for start in range(len(firsts)):
            n = 0
            while start + n < len(firsts) and n < len(head) and firsts[start + n] == head[n]:
                n += 1
            if n == len(head):
                return Check(True, f"{len(head)} consecutive lines start with {head}",
                             {"lines": units[start:start + n]})
            if n > len(best):
                best = head[:n]
    got = "".join(_CJK.search(u).group(0) for u in lines[:len(head) + 2])
    return Check(False, f"no {len(head)} consecutive lines start with {head} (longest run: {best or 'none'}; "
                        f"line starts: {got or 'no Chinese lines'})")


_NUM = r"(\d+(?:\.\d+)?)"


def _last_count(answer: str, words: str) -> float | None:
    """The last number written next to one of `words` (before: "12 chickens", "12只鸡"; after: "鸡有12只",
    "chickens: 12", "chickens = 12")."""
    pattern = re.compile(
        rf"{_NUM}\s*(?:\\text\{{\s*)?(?:只|个|頭|头)?\s*(?:{words})|(?:{words})[^\d\n]{{0,12}}?{_NUM}", re.I)
    found = [m.group(1) or m.group(2) for m in pattern.finditer(answer)]
    return float(found[-1]) if found else None


def check_chickens(answer: str, chickens: int = 12, rabbits: int = 13) -> Check:
    """The final counts named for chickens and rabbits are 12 and 13."""
    c = _last_count(answer, r"chickens?|hens?|鸡")
    r = _last_count(answer, r"rabbits?|bunn(?:y|ies)|兔子?|兔")
    ok = c == chickens and r == rabbits
    shown = f"chickens {c:g}" if c is not None else "no chicken count"
    shown += f", rabbits {r:g}" if r is not None else ", no rabbit count"
    return Check(ok, f"{shown} (expected {chickens} and {rabbits})", {"chickens": c, "rabbits": r})


def _normalize_math(text: str) -> str:
    t = text.replace("\\left", "").replace("\\right", "").replace("\\,", "").replace("\\!", "")
    t = re.sub(r"\\sqrt\s*\{\s*2\s*\}|\\sqrt\s*2|sqrt\s*\(\s*2\s*\)|√\s*\{?\s*2\s*\}?|根号\s*2|2\s*的平方根", "√2", t)
    t = re.sub(r"\\(?:cdot|times)|[*×·]", "", t)
    t = re.sub(r"\\text\{[^}]*\}|\\mathrm\{[^}]*\}", "", t)
    return re.sub(r"\s+", "", t).replace("（", "(").replace("）", ")").replace("＋", "+")


def check_prism(answer: str) -> Check:
    """Surface area 768 + 512√2 (or 256(3 + 2√2)) exactly, or ≈ 1492.08 as a decimal."""
    exact = 768 + 512 * math.sqrt(2)
    t = _normalize_math(answer)
    forms = [r"768\+512√2", r"512√2\+768", r"256\((?:3\+2√2|2√2\+3)\)"]
    if any(re.search(f, t) for f in forms):
        return Check(True, "exact form 768 + 512√2")
    decimals = [float(x.replace(",", "")) for x in re.findall(r"\d[\d,]*\.\d+", answer)]
    close = [d for d in decimals if abs(d - exact) < 0.1]
    if close:
        return Check(True, f"decimal {close[-1]:g} ≈ {exact:.2f}")
    approx = re.search(r"(?:≈|约|approximately|about)\s*1492\b", answer)
    if approx:
        return Check(True, "≈ 1492")
    numbers = re.findall(r"\d+(?:\.\d+)?(?:\s*\+\s*\d+\s*√\s*2)?", answer.replace("\\sqrt{2}", "√2"))
    return Check(False, f"no 768 + 512√2 ≈ {exact:.2f} (last numbers: {', '.join(numbers[-3:]) or 'none'})")


def check_one_plus_one(answer: str) -> Check:
    """The last number in the answer is 2 (or the answer says "two" and no other result)."""
    numbers = re.findall(r"-?\d+(?:\.\d+)?", answer.replace("1+1", " ").replace("1 + 1", " "))
    if numbers:
        last = float(numbers[-1])
        return Check(last == 2, f"last number {numbers[-1]} (expected 2)")
    if re.search(r"\btwo\b|二|两", answer, re.I):
        return Check(True, "says two")
    return Check(False, "no number in the answer")


# ---------------------------------------------------------------------------------------------
# code answers


def code_blocks(answer: str) -> list[tuple[str, str]]:
    """Fenced code blocks as (language, code); an unclosed last fence counts (answers get cut at max tokens)."""
    blocks = [(m.group(1).strip().lower(), m.group(2))
              for m in re.finditer(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:```|\Z)", answer, re.S)]
    return [(lang, code) for lang, code in blocks if code.strip()]


def extract_html(answer: str) -> str | None:
    """The page in an answer: the HTML block (with separate CSS/JS blocks inlined), or a bare <html> document."""
    blocks = code_blocks(answer)
    html = [c for lang, c in blocks if lang in ("html", "htm", "xhtml") or re.search(r"<html|<!doctype|<canvas|"
                                                                                   r"<body", c, re.I)]
    if html:
        page = max(html, key=len)
    else:
        m = re.search(r"(<!doctype html.*?</html>|<html.*?</html>)", answer, re.S | re.I)
        if not m:
            return None
        page = m.group(1)
    css = "\n".join(c for lang, c in blocks if lang == "css")
    js = "\n".join(c for lang, c in blocks if lang in ("js", "javascript"))
    if css and "<style" not in page.lower():
        page = re.sub(r"</head>", f"<style>\n{css}\n</style></head>", page, count=1, flags=re.I) \
            if re.search(r"</head>", page, re.I) else f"<style>\n{css}\n</style>\n{page}"
    if js:
        page = re.sub(r"</body>", f"<script>\n{js}\n</script></body>", page, count=1, flags=re.I) \
            if re.search(r"</body>", page, re.I) else f"{page}\n<script>\n{js}\n</script>"
    return page


def check_snake(answer: str, keep: Path | None = None) -> Check:
    """The HTML page loads in headless Chromium without script errors, listens to keys, moves on its own,
    and its screen changes after arrow keys are pressed."""

    page = extract_html(answer)
    if page is None:
        return Check(False, "no HTML page in the answer")
    why = browser_missing()
    if why:
        return Check(False, f"not run: {why}", {"skipped": True})
    try:
        r = play_html_game(page, keep=keep)
    except Exception as exc:  # noqa: BLE001 - a page can break the browser in many ways; each is a fail
        return Check(False, f"the browser could not run the page: {type(exc).__name__}: {str(exc)[:200]}")
    moves = r["key_change"] > 20 and r["after_change"] > 20
    ok = not r["errors"] and r["key_listeners"] > 0 and moves
    why_not = []
    if r["errors"]:
        why_not.append(f"script errors: {r['errors'][0]}")
    if not r["key_listeners"]:
        why_not.append("no keyboard listener")
    if not moves:
        why_not.append(f"screen after keys changed {r['key_change']} px, then {r['after_change']} px")
    detail = ("loads, listens to keys, screen changes after arrow keys "
              f"({r['key_change']} px) and keeps moving ({r['after_change']} px)") if ok else "; ".join(why_not)
    return Check(ok, detail, r)


def extract_python(answer: str) -> str | None:
    """The program in an answer: the longest python block (preferring ones that use pygame), or None."""
    blocks = [c for lang, c in code_blocks(answer) if lang in ("python", "py", "python3", "")]
    if not blocks:
        return None
    games = [c for c in blocks if "pygame" in c]
    return max(games or blocks, key=len)


def _names(tree: ast.AST) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            out.add(node.attr)
        elif isinstance(node, ast.Name):
            out.add(node.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.add(node.value)
    return out


def check_flappy(answer: str, frames: int = 300, keep: Path | None = None) -> Check:
    """Parses; runs `frames` headless frames with SPACE presses without an exception (limited child);
    the code handles q/Esc (quit), SPACE, and draws a score."""

    code = extract_python(answer)
    if code is None:
        return Check(False, "no Python code block in the answer")
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        return Check(False, f"does not parse: line {exc.lineno}: {exc.msg}")
    names = _names(tree)
    static = {
        "uses pygame": "pygame" in names,
        "q/Esc quits": bool({"K_q", "K_ESCAPE"} & names) and bool({"quit", "exit"} & names),
        "SPACE handled": "K_SPACE" in names,
        "score shown": any("score" in n.lower() for n in names) and "render" in names,
    }
    run = play_pygame(code, frames=frames, keep=keep)
    ran = run["exception"] is None and run["frames"] >= frames
    missing = [k for k, v in static.items() if not v]
    ok = ran and not missing
    if run["exception"]:
        detail = f"crashed after {run['frames']} frames: {run['exception'][:200]}"
    elif not ran:
        detail = f"stopped by itself after {run['frames']} of {frames} frames ({run['exited']})"
    else:
        detail = f"ran {run['frames']} frames with {run['spaces']} SPACE presses"
    if missing:
        detail += "; missing: " + ", ".join(missing)
    return Check(ok, detail, {"run": {k: v for k, v in run.items() if k != "stderr"}, "static": static})


CHECKERS: dict[str, Callable[..., Check]] = {
    "acrostic": check_acrostic,
    "chickens": check_chickens,
    "prism": check_prism,
    "snake": check_snake,
    "flappy": check_flappy,
    "oneplusone": check_one_plus_one,
}


def grade(prompt_id: str, answer: str, keep: Path | None = None) -> Check:
    """The checker for `prompt_id` on `answer` (code answers keep their files/screenshots under `keep`)."""
    check = CHECKERS[prompt_id]
    if prompt_id == "snake":
        return check(answer, keep=keep)
    if prompt_id == "flappy":
        return check(answer, keep=keep / "game.py" if keep else None)
    return check(answer)
