"""invoke tasks, setup bootstrap, doctor and the Python bindings bound to our build."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from lowbit import LowbitError
from lowbit.paths import kit_root
from lowbit.setup import bootstrap

ROOT = kit_root()
INVOKE = Path(sys.executable).with_name("invoke")


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, cwd=kw.pop("cwd", ROOT), **kw)


@pytest.fixture(scope="module")
def bare_invoke(tmp_path_factory) -> Path:
    """An invoke installed in a venv that has nothing else (no lowbit, no rich, no yaml)."""
    env_dir = tmp_path_factory.mktemp("bare") / "venv"
    venv.create(env_dir, with_pip=True)
    proc = run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", "invoke==3.0.3"])
    assert proc.returncode == 0, proc.stderr
    return env_dir / "bin" / "invoke"


def test_invoke_list_works_before_setup_with_only_invoke(bare_invoke, tmp_path):
    # A copy of the checkout's tasks.py and package, never set up (no .lowbit/python).
    shutil.copy(ROOT / "tasks.py", tmp_path / "tasks.py")
    shutil.copytree(ROOT / "lowbit", tmp_path / "lowbit")
    proc = run([str(bare_invoke), "--list"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in ("setup", "build-llama", "doctor", "test"):
        assert name in proc.stdout
    proc = run([str(bare_invoke), "doctor"], cwd=tmp_path)
    assert proc.returncode == 1
    assert "run `invoke setup` first" in proc.stderr + proc.stdout


def test_tasks_py_imports_only_invoke_and_stdlib():
    import ast

    tree = ast.parse((ROOT / "tasks.py").read_text())
    modules = {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    modules |= {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert modules - {"__future__", "invoke"} <= set(sys.stdlib_module_names)


def test_task_errors_are_clear_and_non_zero():
    proc = run([str(INVOKE), "build-llama", "--backend", "rocm"])
    assert proc.returncode == 2
    assert "unknown backend 'rocm'" in proc.stderr and "cuda" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_setup_again_does_no_work():
    proc = run([str(INVOKE), "setup"], timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "installing" not in proc.stdout + proc.stderr
    steps = [line for line in proc.stdout.splitlines() if line.startswith(("│ llama.cpp build", "│ python bindings"))]
    assert steps and all("cached" in line for line in steps), proc.stdout


def test_bootstrap_explains_missing_venv(monkeypatch):
    monkeypatch.setitem(sys.modules, "ensurepip", None)  # as on Debian without python3-venv
    with pytest.raises(LowbitError) as exc:
        bootstrap.create_venv(Path("/nonexistent/venv"))
    assert "-venv" in str(exc.value) and "apt install" in str(exc.value)


def test_active_conda_env_is_used_as_is(monkeypatch):
    monkeypatch.delenv("LOWBIT_PYTHON", raising=False)
    monkeypatch.setenv("CONDA_PREFIX", "/opt/conda/envs/lowbit")
    monkeypatch.setenv("CONDA_DEFAULT_ENV", "lowbit")
    python, where = bootstrap.choose_environment()
    assert python == Path("/opt/conda/envs/lowbit/bin/python") and "conda" in where
    monkeypatch.setenv("CONDA_DEFAULT_ENV", "base")
    python, where = bootstrap.choose_environment()
    assert python.parent.parent.name == ".venv" or "LOWBIT_VENV" in os.environ


def test_environment_yml_installs_what_pyproject_lists():
    from importlib.metadata import metadata

    import yaml

    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_lines = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    extras = set(metadata("lowbit").get_all("Provides-Extra"))
    assert pip_lines == [f"-e .[{','.join(sorted(extras, key=bootstrap.EXTRAS.split(',').index))}]"]


def test_doctor_passes_when_set_up():
    proc = run([str(INVOKE), "doctor"])
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "physical" in proc.stdout and "setup is complete" in proc.stdout


def test_doctor_fails_with_fix_when_incomplete(tmp_path):
    env = dict(os.environ, LOWBIT_STATE=str(tmp_path))
    proc = run([sys.executable, "-m", "lowbit", "lowbit.setup.doctor:doctor_command"], env=env)
    assert proc.returncode == 1
    assert "llama.cpp is not built" in proc.stdout and "invoke setup" in proc.stdout


def test_import_llama_cpp_loads_our_build_without_env(llama_build):
    proc = run([sys.executable, "-c", "import llama_cpp, os; print(os.path.realpath(llama_cpp.llama_cpp._lib._name))"],
               env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).parent == llama_build.bin_dir.resolve()


def test_bindings_generate_with_our_library(llama_build):
    """A real generation through llama_cpp.Llama, on a replica, with the kit's libllama loaded."""
    from lowbit.models import replicas

    model = replicas.ensure_replica("distill-llama")
    code = (
        "import os, llama_cpp\n"
        f"llm = llama_cpp.Llama({str(model)!r}, n_ctx=256, verbose=False, seed=1)\n"
        "out = llm.create_completion('Hello', max_tokens=8, temperature=0)\n"
        "print(out['usage']['completion_tokens'])\n"
        "print(os.path.realpath(llama_cpp.llama_cpp._lib._name))\n"
    )
    proc = run([sys.executable, "-c", code], env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    n_tokens, lib = proc.stdout.split()[-2:]
    assert int(n_tokens) > 0
    assert Path(lib).parent == llama_build.bin_dir.resolve()
