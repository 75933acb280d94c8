"""The side by side with a peer engine (ik_llama.cpp): which files it makes, what it runs, what it computes.

llama-bench and llama-quantize are replaced by fakes with known speeds and outputs, so the bookkeeping is checked
without either engine: interleaving, per-round ratios, and that nothing is left behind when quantizing fails.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from lowbit import LowbitError
from lowbit.bitnet import bench, peer


def _peer_build(tmp_path: Path) -> Path:
    folder = tmp_path / "ik" / "build" / "bin"
    folder.mkdir(parents=True)
    for name in ("llama-bench", "llama-quantize"):
        (folder / name).write_text("")
    return tmp_path / "ik"


def test_peer_tools_are_found_in_the_build_folder_or_refused(tmp_path):
    root = _peer_build(tmp_path)
    assert peer.peer_tool(root, "llama-bench") == root / "build" / "bin" / "llama-bench"
    with pytest.raises(LowbitError, match="no llama-bench"):
        peer.peer_tool(tmp_path / "elsewhere", "llama-bench")


def _fake_quantize(monkeypatch, tmp_path: Path, calls: list, fail: str | None = None) -> None:
    monkeypatch.setattr(bench, "quantized_files", lambda folder, shape: {})
    monkeypatch.setattr(peer, "active_build", lambda: SimpleNamespace(tool=lambda name: Path("/kit") / name))

    def run_checked(cmd, what):
        calls.append(cmd)
        out = Path(cmd[-3])  # SRC OUT TYPE THREADS
        if fail and fail in cmd:
            out.write_text("partial")
            raise LowbitError(f"{what} failed")
        out.write_text("gguf")
        return ""

    monkeypatch.setattr(bench, "run_checked", run_checked)


def test_peer_files_start_from_f16_and_leave_only_the_peer_files(monkeypatch, tmp_path):
    calls: list = []
    _fake_quantize(monkeypatch, tmp_path, calls)
    files = peer.peer_files(_peer_build(tmp_path), folder=tmp_path)
    assert set(files) == set(peer.PEER_TYPES) and all(p.read_text() == "gguf" for p in files.values())
    assert calls[0][0] == "/kit/llama-quantize" and calls[0][-2] == "F16"  # the kit dequantizes TQ2_0
    for cmd in calls[1:]:  # the peer quantizes, with the kit's Q6_K embeddings
        assert cmd[0].endswith("build/bin/llama-quantize") and cmd.count("q6_K") == 2
    assert sorted(p.name for p in tmp_path.glob("*.gguf")) == sorted(p.name for p in files.values())
    assert not list(tmp_path.glob("*.tmp"))
    calls.clear()
    assert peer.peer_files(_peer_build(tmp_path / "again"), folder=tmp_path) == files and not calls  # cached


def test_a_failed_peer_quantize_leaves_nothing_behind(monkeypatch, tmp_path):
    calls: list = []
    _fake_quantize(monkeypatch, tmp_path, calls, fail="IQ2_BN")
    with pytest.raises(LowbitError, match="failed"):
        peer.peer_files(_peer_build(tmp_path), folder=tmp_path)
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob("*.tmp"))  # no F16, no partial file


def test_side_by_side_interleaves_and_takes_per_round_ratios(monkeypatch, tmp_path):
    root = _peer_build(tmp_path)
    kit = {q: tmp_path / f"kit-{q}.gguf" for q in ("TQ2_0", "Q4_0")}
    theirs = {q: tmp_path / f"peer-{q}.gguf" for q in peer.PEER_TYPES}
    monkeypatch.setattr(bench, "quantized_files", lambda folder, shape: kit)
    monkeypatch.setattr(peer, "peer_files", lambda p, shape, folder: theirs)
    monkeypatch.setattr(peer, "bench", SimpleNamespace(**{**vars(bench), "active_patches": lambda: ["0010"]}))
    speeds = {"kit-TQ2_0": (300, 60), "kit-Q4_0": (150, 30), "peer-IQ2_BN": (240, 50), "peer-Q4_0": (100, 25)}
    order, host = [], iter([1.0] * 4 + [0.5] * 4)  # the machine halves its speed in round 2

    def llama_bench(path, threads, tool=None, load=()):
        order.append(path.stem)
        assert (tool is None) == path.stem.startswith("kit") and (load == peer.PEER_LOAD) == (tool is not None)
        f = next(host)
        return {"pp": speeds[path.stem][0] * f, "tg": speeds[path.stem][1] * f, "others": 0.0}

    monkeypatch.setattr(peer.bench, "llama_bench", llama_bench)
    monkeypatch.setattr(peer.bench, "bandwidth_after", lambda threads: 40.0)
    result = peer.side_by_side(root, rounds=2, threads=2, folder=tmp_path)
    assert order[:4] == ["kit-TQ2_0", "kit-Q4_0", "peer-IQ2_BN", "peer-Q4_0"] and order[4:] == order[:4][::-1]
    # round 2 runs in reverse order on a machine at half speed: each ratio pairs runs of the same round
    assert result["ratio_to_own_q4_0"]["kit"] == {"pp": 2.0, "tg": 2.0}
    assert result["ratio_to_own_q4_0"]["peer"] == {"pp": 2.4, "tg": 2.0}
    assert result["kit_tq2_0_vs_peer_iq2_bn"] == {"pp": 1.25, "tg": 1.2}
    assert result["speed"]["kit TQ2_0"]["tg"] == pytest.approx(45.0)  # median of 60 and 30


def test_side_by_side_refuses_bad_counts_before_running(tmp_path):
    with pytest.raises(LowbitError, match=">= 1"):
        peer.side_by_side(_peer_build(tmp_path), rounds=0)
