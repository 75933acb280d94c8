"""tasks.py: every task forwards its flags, under their own names, to a package function that takes exactly them."""

from __future__ import annotations

import importlib
import inspect
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from invoke import MockContext, Result

from lowbit.cli import load_tasks
from lowbit.paths import kit_root

TASKS = load_tasks()
INVOKE = Path(sys.executable).with_name("invoke")


def passed_kwargs(name: str, **given) -> tuple[str, dict, dict]:
    """(target, keyword arguments, secret keyword arguments) that `invoke NAME` hands to the kit process."""
    task = TASKS[name]
    c = MockContext(run=Result())
    required = {p.name: "X" for p in task.argspec(task.body).parameters.values() if p.default is p.empty}
    task(c, **{**required, **given})
    (call,) = c.run.call_args_list
    argv = shlex.split(call.args[0])
    assert argv[1:3] == ["-m", "lowbit"], argv
    secrets = call.kwargs["env"].get("LOWBIT_SECRET_KWARGS")
    return argv[3], json.loads(argv[4]), json.loads(secrets) if secrets else {}


@pytest.mark.parametrize("name", sorted(TASKS.task_names))
def test_task_target_exists_and_takes_exactly_the_flags(name):
    task = TASKS[name]
    flags = list(task.argspec(task.body).parameters)
    secret = {f: "s3cret-0123456789" for f, flag in task.flags.items() if flag.secret}  # None ones are not sent
    repeatable = {f: ["a", "b"] for f in task.iterable}
    for given in (secret, {**secret, **repeatable}):
        target, kwargs, secrets = passed_kwargs(name, **given)
        assert target == task.target
        assert set(kwargs) | set(secrets) == set(flags) and not set(kwargs) & set(secrets)
        module, _, function = target.partition(":")
        func = getattr(importlib.import_module(module), function)  # the module and the function exist
        inspect.signature(func).bind(**kwargs, **secrets)  # TypeError if a name is unknown or one is missing
        for flag, value in given.items():
            assert {**kwargs, **secrets}[flag] == value


def test_flags_keep_their_cli_names_and_empty_repeats_are_none():
    _, kwargs, _ = passed_kwargs("tokens", json=True)
    assert kwargs == {"model": None, "base": None, "json": True}
    _, kwargs, _ = passed_kwargs("setup", no_replicas=True)
    assert kwargs["no_replicas"] is True and kwargs["no_real_models"] is False
    _, kwargs, secrets = passed_kwargs("serve", api_key="k" * 16)
    assert "api_key" not in kwargs and secrets == {"api_key": "k" * 16}


def test_setup_runs_in_invokes_own_python():
    c = MockContext(run=Result())
    TASKS["setup"](c)
    assert shlex.split(c.run.call_args_list[0].args[0])[0] == sys.executable


@pytest.mark.parametrize("argv, flag", [(["mirror", "models", "--port", "eighty"], "--port"),
                                        (["ollama", "m.gguf", "--min-p", "low"], "--min-p")])
def test_a_badly_typed_flag_is_one_error_line(argv, flag):
    proc = subprocess.run([str(INVOKE), *argv], cwd=kit_root(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr
    assert proc.stderr.startswith(f"error: {flag} takes a ") and "Traceback" not in proc.stderr


@pytest.mark.parametrize("k, no_notebooks, expected", [("lock", True, "(lock) and not notebook"),
                                                       (None, True, "not notebook"), ("lock", False, "lock")])
def test_invoke_test_keeps_both_filters(monkeypatch, k, no_notebooks, expected):
    from lowbit import testing

    calls = []
    done = subprocess.CompletedProcess([], 0)
    monkeypatch.setattr(testing.subprocess, "run", lambda args, **kw: calls.append(args) or done)
    assert testing.run_tests(k=k, no_notebooks=no_notebooks, lint=False) == 0
    (args,) = calls
    assert args.count("-k") == 1 and args[args.index("-k") + 1] == expected  # pytest keeps only the last -k
    assert not any(a.endswith(".ipynb") for a in args)
