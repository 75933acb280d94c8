"""lowbit.machine: the one place that asks the OS and nvidia-smi about this machine."""

from __future__ import annotations

import os
import stat

import pytest

from lowbit import machine


def fake_smi(tmp_path, monkeypatch, output: str, code: int = 0) -> None:
    """An `nvidia-smi` first on PATH that prints `output` for the memory query."""
    script = tmp_path / "bin" / "nvidia-smi"
    script.parent.mkdir()
    script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}\nEOF\nexit {code}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")


def test_gpus_from_one_nvidia_smi_query(tmp_path, monkeypatch):
    fake_smi(tmp_path, monkeypatch, "NVIDIA H100 80GB HBM3, 81559\nNVIDIA GeForce RTX 4090, 24564")
    assert machine.gpu_names() == ["NVIDIA H100 80GB HBM3", "NVIDIA GeForce RTX 4090"]
    assert machine.vram_bytes() == (81559 + 24564) * 2**20
    assert machine.vram_gib() == [79.6, 24.0]
    assert [g["memory_gb"] for g in machine.gpus() if g["api"] == "cuda"] == [79.6, 24.0]
    assert machine.machine_key().endswith("|NVIDIA H100 80GB HBM3;NVIDIA GeForce RTX 4090")


def test_unreadable_gpu_lines_are_no_gpu(tmp_path, monkeypatch):
    # a driver that is not loaded prints an error; a MIG or vGPU setup may print [N/A] for the memory
    fake_smi(tmp_path, monkeypatch, "NVIDIA A100, [N/A]\nNVIDIA-SMI has failed because it couldn't communicate", 9)
    assert machine.nvidia_gpus() == [] and machine.vram_bytes() == 0 and machine.vram_gib() == []


def test_no_nvidia_smi_means_no_gpu(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert machine.gpu_names() == [] and machine.vram_bytes() == 0


def test_cpu_facts_are_plausible():
    assert machine.physical_cores() >= 1
    assert machine.ram_bytes() > machine.ram_available_bytes() > 0
    info = machine.cpu_info()
    assert info["logical_cores"] >= info["physical_cores"] >= 1
    assert machine.cpu_fingerprint() == machine.cpu_fingerprint() != ""
    summary = machine.machine_summary()
    assert {"os", "python", "cpu", "ram_gb", "ram_available_gb", "disk_free_gb", "gpus"} <= set(summary)


def test_cpu_seconds_grow_with_work():
    busy = machine.busy_cpu_seconds()
    if busy is None:
        pytest.skip("no /proc/stat on this OS (busy_cpu_seconds is None there by design)")
    own = machine.own_cpu_seconds()
    sum(i * i for i in range(2_000_000))
    assert machine.own_cpu_seconds() > own and machine.busy_cpu_seconds() >= busy


def test_free_disk_of_a_path_not_made_yet(tmp_path):
    assert machine.free_disk(tmp_path / "a" / "b" / "c.gguf") == machine.free_disk(tmp_path) > 0


def test_disk_margin_and_memory_warning():
    assert machine.disk_margin(9) == 9 and machine.disk_margin(10**12) == 2 * 10**10
    assert machine.disk_margin(10**9) == machine.MIN_MARGIN
    warning = machine.memory_warning(131 * 10**9, ram=24 * 10**9, vram=24 * 10**9)
    assert "larger than RAM + VRAM" in warning and "131.00 GB" in warning
    assert machine.memory_warning(48 * 10**9, ram=24 * 10**9, vram=24 * 10**9) is None


def test_cached_bandwidth_is_per_machine(tmp_path, monkeypatch):
    path = tmp_path / "bandwidth.json"
    monkeypatch.setattr(machine, "bandwidth_path", lambda: path)
    assert machine.cached_bandwidth() is None
    path.write_text('{"another-cpu|": {"cpu_read_gbs": 1.0}}')
    assert machine.cached_bandwidth() is None
    path.write_text(f'{{"{machine.machine_key()}": {{"cpu_read_gbs": 28.5}}}}')
    assert machine.cached_bandwidth() == {"cpu_read_gbs": 28.5}
    path.write_text("{not json")
    assert machine.cached_bandwidth() is None
