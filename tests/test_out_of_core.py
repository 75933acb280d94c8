"""Bigger than RAM: the memory cgroup is always removed and its processes killed; the disk-read model."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lowbit import LowbitError
from lowbit.run import out_of_core as O
from tests.test_predict import _cal, _moe_workload

needs_cgroup = pytest.mark.skipif(O.cgroup_available() is not None,
                                  reason=f"{O.cgroup_available()} (test_no_root_says_what_to_do covers this case)")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def _our_groups() -> set[str]:
    return {p.name for p in O.CGROUP_ROOT.iterdir() if p.name.startswith("lowbit-test-")}


@needs_cgroup
def test_limited_run_reports_and_leaves_nothing():
    run = O.run_limited([sys.executable, "-c", "print(open('/proc/self/cgroup').read())"], 200 * 2**20,
                        name="lowbit-test-ok")
    assert run.returncode == 0 and "lowbit-test-ok" in run.stdout  # the child ran inside the group
    assert run.limit_bytes == 200 * 2**20 and run.max_usage_bytes > 0
    assert not (O.CGROUP_ROOT / "lowbit-test-ok").exists()


@needs_cgroup
def test_failing_run_with_orphan_child_is_cleaned_up(tmp_path):
    pidfile = tmp_path / "pid"
    cmd = ["sh", "-c", f"sleep 60 & echo $! > {pidfile}; exit 3"]
    run = O.run_limited(cmd, 100 * 2**20, name="lowbit-test-orphan")
    assert run.returncode == 3
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid), "the orphaned child outlived its cgroup"
    assert "lowbit-test-orphan" not in _our_groups()


@needs_cgroup
def test_over_the_limit_is_oom_killed_and_cleaned_up():
    grab = "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); print('survived')"
    run = O.run_limited([sys.executable, "-c", grab], 64 * 2**20, name="lowbit-test-oom")
    assert run.returncode != 0 and "survived" not in run.stdout and run.oom_killed
    assert "lowbit-test-oom" not in _our_groups()


@needs_cgroup
def test_timeout_and_exceptions_still_remove_the_group(monkeypatch):
    run = O.run_limited(["sleep", "30"], 50 * 2**20, timeout=0.5, name="lowbit-test-timeout")
    assert run.returncode != 0 and "killed after" in run.stderr
    assert "lowbit-test-timeout" not in _our_groups()

    def broken(*a, **k):
        raise OSError("exec failed")

    monkeypatch.setattr(subprocess, "Popen", broken)
    with pytest.raises(OSError, match="exec failed"):
        O.run_limited(["true"], 50 * 2**20, name="lowbit-test-raise")
    assert "lowbit-test-raise" not in _our_groups()


def test_no_root_says_what_to_do(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    why = O.cgroup_available()
    assert why and "systemd-run --user --scope -p MemoryMax=" in why
    with pytest.raises(LowbitError, match="systemd-run"):
        O.run_limited(["true"], 2**20)


def test_out_of_core_model_hand_computed():
    """Dense weights fit the cache: only expert misses come from disk, at the calibrated disk rate."""
    w = _moe_workload()  # experts 2 x 8 x 512 x 272 bytes, 2 of 8 used; dense: output, attn_q, norms, a row
    cal = _cal() | {"disk": {"gbs": 0.5}}
    cal["overhead"] |= {"runtime_a": 0, "runtime_b": 0}
    experts = 2 * 8 * 512 * 272
    dense = 1000 * 272 + 2 * (256 * 272 + 1024) + 272
    mem = O.P.predict(w, O.P.Config(threads=1, n_gen=16, repack=False, n_ctx=32), cal)
    buffers = mem.rss_parts["kv"] + mem.rss_parts["compute"]
    limit = buffers + dense + experts // 2  # half the experts fit next to the dense weights
    got = O.predict_out_of_core(w, limit, 1, cal)
    assert got.dense_bytes == dense and got.expert_bytes == experts
    assert got.disk_bytes_per_token == pytest.approx(experts * 2 / 8 * (1 - 0.5), abs=2)
    assert 1 / got.predicted_tps == pytest.approx(1 / mem.decode_tps + got.disk_bytes_per_token / 0.5e9, rel=1e-3)
    # one token's dense weights + experts do not fit: an LRU cache cycling through them hits nothing
    thrash = O.predict_out_of_core(w, buffers + dense + experts // 8, 1, cal)
    assert thrash.disk_bytes_per_token == pytest.approx(dense + experts * 2 / 8, abs=2)


def test_disk_rate_interpolates_random_reads_by_block_size():
    cal = {"disk": {"gbs": 1.0, "random_gbs": {"16": 0.1, "256": 0.2, "4096": 0.8}}}
    assert O.calibrate.disk_rate(cal) == 1e9  # no block size: the sequential rate
    assert O.calibrate.disk_rate(cal, 4 * 1024) == 0.1e9  # below the smallest probe: its rate
    assert O.calibrate.disk_rate(cal, 64 * 1024) == pytest.approx(0.15e9)  # halfway in log(size) from 16 to 256
    assert O.calibrate.disk_rate(cal, 2**30) == 0.8e9
    assert O.calibrate.disk_rate({"disk": {"gbs": 0.5}}, 64 * 1024) == 0.5e9  # an old calibration: sequential


def _disk_case():
    """The hand-computed MoE workload with a random-read disk probe (16 KiB: 0.1 GB/s, 256 KiB: 0.2, in order
    0.5): (workload, calibration, expert bytes, dense bytes, its in-memory prediction, buffer bytes)."""
    w = _moe_workload()
    cal = _cal() | {"disk": {"gbs": 0.5, "random_gbs": {"16": 0.1, "256": 0.2}}}
    cal["overhead"] |= {"runtime_a": 0, "runtime_b": 0}
    experts = 2 * 8 * 512 * 272
    dense = 1000 * 272 + 2 * (256 * 272 + 1024) + 272
    mem = O.P.predict(w, O.P.Config(threads=1, n_gen=16, repack=False, n_ctx=32), cal)
    return w, cal, experts, dense, mem, mem.rss_parts["kv"] + mem.rss_parts["compute"]


def test_out_of_core_experts_come_at_the_random_read_rate():
    """Expert misses are scattered: they are read at the random rate for one expert's slice (512 rows x 272
    bytes = 136 KiB, between the 16 and 256 KiB probes), dense weights at the sequential rate."""
    w, cal, experts, dense, mem, buffers = _disk_case()
    rate = 0.1e9 + math.log(136 / 16) / math.log(16) * 0.1e9
    half = O.predict_out_of_core(w, buffers + dense + experts // 2, 1, cal)
    miss = experts * 2 / 8 * 0.5
    assert 1 / half.predicted_tps == pytest.approx(1 / mem.decode_tps + miss / rate, rel=1e-3)
    thrash = O.predict_out_of_core(w, buffers + dense + experts // 8, 1, cal)
    e = experts * 2 / 8
    assert 1 / thrash.predicted_tps == pytest.approx(1 / mem.decode_tps + dense / 0.5e9 + e / rate, rel=1e-3)
    assert thrash.disk_gbs == pytest.approx((dense + e) / (dense / 0.5e9 + e / rate) / 1e9, rel=1e-2)


def test_read_ahead_window_reads_neighbouring_experts():
    """A page fault reads the read-ahead window around it: with a 1 MiB window each used expert's 136 KiB slice
    drags in its neighbours, so a token reads whole expert tensors (8 x 136 KiB < 2 used x 1 MiB), in long
    reads at the sequential rate; measured on the bigger-than-RAM replica, 8 MiB vs 128 KiB windows: 3.3 vs
    6.2 tok/s, predicted 2.7 and 6.1."""
    assert O.expert_reads(32 * 2**19, 32, 4, 8 * 2**20) == 32 * 2**19  # the whole tensor, no more
    assert O.expert_reads(32 * 2**19, 32, 4, 128 * 1024) == 4 * 2**19  # a window below the slice: the slices
    w, cal, experts, dense, mem, buffers = _disk_case()
    wide = O.predict_out_of_core(w, buffers + dense + experts // 8, 1, cal, window=2**20)
    assert wide.disk_bytes_per_token == pytest.approx(dense + experts, abs=2) and wide.read_ahead_bytes == 2**20
    assert 1 / wide.predicted_tps == pytest.approx(1 / mem.decode_tps + (dense + experts) / 0.5e9, rel=1e-3)
    narrow = O.predict_out_of_core(w, buffers + dense + experts // 8, 1, cal, window=128 * 1024)
    assert narrow.disk_bytes_per_token == pytest.approx(dense + experts * 2 / 8, abs=2)


def test_read_ahead_comes_from_the_disk_or_the_linux_default(tmp_path):
    from lowbit.machine import READ_AHEAD_DEFAULT, read_ahead_bytes

    got = read_ahead_bytes(tmp_path)
    assert got % 1024 == 0 and 0 < got <= 2**30
    assert read_ahead_bytes(tmp_path / "missing") == READ_AHEAD_DEFAULT
    assert read_ahead_bytes(Path("/proc")) == READ_AHEAD_DEFAULT  # no block device


@pytest.mark.parametrize("flags, message", [({"limit_mb": "-5"}, "at least 16"), ({"limit_mb": "abc"}, "whole number"),
                                            ({"ratio": "0.5"}, "at least 1.0"), ({"threads": "0"}, "at least 1")])
def test_bad_limits_are_refused_before_any_group_or_model(monkeypatch, flags, message):
    """A negative limit once reached the cgroup file as an OSError traceback; now one clear error, nothing made."""
    monkeypatch.setattr(O, "moe_model", lambda: pytest.fail("no model may be written for a bad flag"))
    before = {p.name for p in O.CGROUP_ROOT.iterdir()} if O.CGROUP_ROOT.is_dir() else set()
    with pytest.raises(LowbitError, match=message):
        O.bigger_than_ram_command(**flags)
    after = {p.name for p in O.CGROUP_ROOT.iterdir()} if O.CGROUP_ROOT.is_dir() else set()
    assert after == before
