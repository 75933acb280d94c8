"""requirements.lock: in line with pyproject.toml, hashed, installed by setup where it fits; `invoke lock` is safe."""

from __future__ import annotations

import re
import sys
from importlib.metadata import requires

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from lowbit import LowbitError
from lowbit.paths import kit_root
from lowbit.setup import bootstrap, lock

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def pins(text: str) -> dict[str, tuple[Version, int]]:
    """name -> (pinned version, number of hashes) of a pip-compile output."""
    out: dict[str, tuple[Version, int]] = {}
    name = None
    for line in text.splitlines():
        if m := PIN.match(line):
            name = canonicalize_name(m[1])
            out[name] = (Version(m[2]), 0)
        elif name and line.strip().startswith("--hash=sha256:"):
            out[name] = (out[name][0], out[name][1] + 1)
    return out


def test_lock_pins_every_declared_dependency_within_its_range_with_hashes():
    extras = bootstrap.EXTRAS.split(",")
    declared = [r for r in map(Requirement, requires("lowbit"))  # pyproject.toml, as installed
                if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in extras)]
    text = (kit_root() / bootstrap.LOCK_FILE).read_text()
    locked = pins(text)
    assert len(locked) > len(declared)  # the transitive ones too
    for req in declared:
        name = canonicalize_name(req.name)
        assert name in locked, f"{req} is not in {bootstrap.LOCK_FILE}: run `invoke lock`"
        assert req.specifier.contains(locked[name][0], prereleases=True), f"{req} vs the lock's {locked[name][0]}"
    assert all(hashes for _, hashes in locked.values()), [n for n, (_, h) in locked.items() if not h]
    assert locked["torch"][0].local == "cpu"  # the CPU build: a plain PyPI torch pulls gigabytes of CUDA
    assert bootstrap.locked_for(kit_root() / bootstrap.LOCK_FILE) == bootstrap.lock_tag()


def test_setup_installs_the_lock_with_hashes_where_it_was_made(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bootstrap, "kit_root", lambda: tmp_path)
    (tmp_path / "pyproject.toml").write_text("[project]\n")
    tag = bootstrap.lock_tag()
    (tmp_path / bootstrap.LOCK_FILE).write_text(f"{bootstrap.LOCK_TAG_PREFIX}{tag}\nsix==1.17.0 \\\n")
    locked, editable = bootstrap.install_commands(sys.executable)
    assert locked[-4:] == ["--require-hashes", "--no-deps", "-r", bootstrap.LOCK_FILE]
    assert editable[-4:] == ["--no-deps", "--no-build-isolation", "-e", "."]  # setuptools from the lock
    fingerprint = bootstrap.install_fingerprint()
    (tmp_path / bootstrap.LOCK_FILE).write_text(f"{bootstrap.LOCK_TAG_PREFIX}cpython-3.99-plan9-vax\n")
    assert bootstrap.install_fingerprint() != fingerprint  # a new lock installs again
    (unlocked,) = bootstrap.install_commands(sys.executable)
    assert unlocked[-2:] == ["-e", f".[{bootstrap.EXTRAS}]"]
    assert f"made for cpython-3.99-plan9-vax, this environment is {tag}" in capsys.readouterr().out


def test_lock_task_replaces_the_lock_whole_or_not_at_all(tmp_path, monkeypatch):
    monkeypatch.setattr(lock, "kit_root", lambda: tmp_path)
    old = f"{bootstrap.LOCK_TAG_PREFIX}old\nsix==1.16.0 \\\n    --hash=sha256:{'0' * 64}\n"
    (tmp_path / bootstrap.LOCK_FILE).write_text(old)
    seen = tmp_path / "seen"

    def fake_compile(output, upgrade=False, package=None, code=0):
        script = (f"import pathlib, shutil; shutil.copy({str(output)!r}, {str(seen)!r}); "
                  f"pathlib.Path({str(output)!r}).write_text('six==1.17.0 \\\\\\n    --hash=sha256:{'1' * 64}\\n'); "
                  f"raise SystemExit({code})")
        return [sys.executable, "-c", script]

    monkeypatch.setattr(lock, "compile_command", lambda *a, **k: fake_compile(*a, **k, code=3))
    with pytest.raises(LowbitError, match="unchanged"):
        lock.lock_command()
    assert (tmp_path / bootstrap.LOCK_FILE).read_text() == old
    assert seen.read_text() == old.partition("\n")[2]  # pip-compile starts from the old pins, without the tag
    monkeypatch.setattr(lock, "compile_command", fake_compile)
    assert lock.lock_command() == 0
    new = (tmp_path / bootstrap.LOCK_FILE).read_text()
    assert new.splitlines()[0] == f"{bootstrap.LOCK_TAG_PREFIX}{bootstrap.lock_tag()}"
    assert pins(new) == {"six": (Version("1.17.0"), 1)}
    assert sorted(p.name for p in tmp_path.iterdir()) == [bootstrap.LOCK_FILE, "seen"]  # no leftovers


def test_pip_compile_command_reads_pyproject_with_setups_extras_and_hashes(tmp_path):
    cmd = lock.compile_command(tmp_path / "out", upgrade=True, package=["numpy"])
    assert cmd[1:4] == ["-m", "piptools", "compile"] and cmd[-1] == "pyproject.toml"
    assert "--generate-hashes" in cmd and "--no-emit-find-links" in cmd and "--no-emit-index-url" in cmd
    assert [a for a in cmd if a.startswith("--extra=")] == [f"--extra={e}" for e in bootstrap.EXTRAS.split(",")]
    assert "--upgrade" in cmd and cmd[cmd.index("--upgrade-package") + 1] == "numpy"


def test_a_failed_locked_install_says_how_to_get_the_cpu_torch(tmp_path, monkeypatch):
    monkeypatch.setattr(bootstrap, "state_dir", lambda: tmp_path / "state")
    failing = [sys.executable, "-c", "raise SystemExit(1)", "-r", bootstrap.LOCK_FILE]
    monkeypatch.setattr(bootstrap, "install_commands", lambda python: [failing])
    with pytest.raises(LowbitError, match=f"PIP_EXTRA_INDEX_URL={bootstrap.TORCH_CPU_INDEX} invoke setup"):
        bootstrap.install_package(tmp_path / "python")
    assert not (tmp_path / "state" / "installed").exists()  # the next setup tries again
