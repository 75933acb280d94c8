"""The BitNet benchmark's orchestration: which runs it interleaves and what it computes from them.

The measuring functions are replaced by fakes with known values, so the test checks the bookkeeping
(type and thread selection, baseline interleaving, medians, roofline fractions) without llama.cpp.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lowbit import LowbitError
from lowbit.bitnet import bench


def _fake_measurements(monkeypatch, tmp_path: Path, calls: list, host: tuple[float, ...] = (1.0,)) -> None:
    """`host`: the machine's speed in successive rounds of one run (decode and the bandwidth after it move
    together)."""
    files = {q: tmp_path / f"{q}.gguf" for q in bench.TYPES}
    monkeypatch.setattr(bench, "quantized_files", lambda folder, shape: files)

    def speed() -> float:
        return host[(sum(c[0] == "bench" and c[1:] == calls[-1][1:] for c in calls) - 1) % len(host)]

    def llama_bench(model, threads, tool=None):
        calls.append(("bench", model.stem, threads, "base" if tool else "main"))
        tg = {"TQ2_0": 30.0, "TQ1_0": 20.0, "Q4_0": 15.0}[model.stem] * (0.5 if tool else 1.0) * speed()
        return {"pp": 100.0, "tg": tg, "others": 0.0}

    def read_bandwidth_gbs(threads, mib, reps, best=False):
        return 30.0 if best else 20.0 * speed()  # best: the round's ceiling; else right after the last run

    def prompt_cpu_rate(model, tool=None):
        calls.append(("cpu", model.stem, 1, "base" if tool else "main"))
        return 50.0

    monkeypatch.setattr(bench, "llama_bench", llama_bench)
    monkeypatch.setattr(bench, "prompt_cpu_rate", prompt_cpu_rate)
    monkeypatch.setattr(bench.calibrate, "read_bandwidth_gbs", read_bandwidth_gbs)
    monkeypatch.setattr(bench, "measure_memory", lambda files, shape: {
        q: {"weights": 600_000_000, "embeddings": 300_000_000, "kv": 0, "buffers": 0, "peak_rss": 0} for q in files})
    monkeypatch.setattr(bench, "kernel_rates", lambda: {})
    monkeypatch.setattr(bench, "active_patches", lambda: ["0006"])
    monkeypatch.setattr(bench, "_build_patches", lambda directory: ["0005"])


def test_two_thread_comparison_with_baseline(monkeypatch, tmp_path, capsys):
    calls: list = []
    _fake_measurements(monkeypatch, tmp_path, calls)
    base = tmp_path / "base"
    (base / "bin").mkdir(parents=True)
    (base / "bin" / "llama-bench").touch()
    result = bench.run_benchmark(rounds=3, threads=(2,), folder=tmp_path, baseline=base, types=("TQ2_0",))
    # TQ2_0 and the Q4_0 reference, both builds, 2 threads only, every round; no one-thread CPU-time runs
    assert sorted(set(calls)) == sorted({("bench", q, 2, b) for q in ("TQ2_0", "Q4_0") for b in ("main", "base")})
    assert len(calls) == 3 * 4
    # interleaved build by build, the order alternating from round to round (the second run is favoured)
    assert [c[3] for c in calls[:2]] == ["main", "base"] and [c[3] for c in calls[4:6]] == ["base", "main"]
    assert [c[3] for c in calls[8:10]] == ["main", "base"]
    assert result["speed"]["TQ2_0/tg/t2"] == 30.0 and result["vs_baseline"]["TQ2_0/tg/t2"] == 2.0
    assert result["roofline"]["TQ2_0/t2"] == pytest.approx(30.0 * 900e6 / 30e9)
    assert result["baseline_roofline"]["TQ2_0/t2"] == pytest.approx(15.0 * 900e6 / 30e9)
    assert "TQ1_0/t2" not in result["roofline"]
    bench.report(result)
    table = capsys.readouterr().out
    assert "TQ2_0" in table and "2.00x base" in table and "TQ1_0" not in table


def test_decode_is_paired_with_the_bandwidth_measured_after_it(monkeypatch, tmp_path, capsys):
    calls: list = []
    _fake_measurements(monkeypatch, tmp_path, calls, host=(1.0, 3.0, 2.0, 5.0))
    base = tmp_path / "base"
    (base / "bin").mkdir(parents=True)
    (base / "bin" / "llama-bench").touch()
    result = bench.run_benchmark(rounds=4, threads=(2,), folder=tmp_path, baseline=base, types=("TQ2_0",))
    # every round the host's speed moves decode and bandwidth alike: paired, the fraction is the same each round
    # (paired with other rounds' bandwidth, shifted or reversed, its median would be 1.5x or 1.08x this)
    assert result["paired_roofline"]["TQ2_0/t2"] == pytest.approx(30.0 * 900e6 / 20e9)
    assert result["paired_roofline"]["base:TQ2_0/t2"] == pytest.approx(15.0 * 900e6 / 20e9)
    assert result["paired_roofline"]["Q4_0/t2"] == pytest.approx(15.0 * 900e6 / 20e9)
    assert result["roofline"]["TQ2_0/t2"] == pytest.approx(75.0 * 900e6 / 30e9)  # the median over the best
    bench.report(result)
    assert "measured right after each run" in capsys.readouterr().out


def test_one_thread_adds_cpu_time_rates(monkeypatch, tmp_path):
    calls: list = []
    _fake_measurements(monkeypatch, tmp_path, calls)
    result = bench.run_benchmark(rounds=1, threads=(1, 2), folder=tmp_path)
    assert {c[1] for c in calls if c[0] == "cpu"} == set(bench.TYPES)
    assert result["speed"]["TQ1_0/pp_cpu/t1"] == 50.0 and not result["baseline_roofline"]


@pytest.mark.parametrize("kwargs", [{"types": ("TQ3_0",)}, {"threads": ()}, {"threads": (0,)}])
def test_bad_selection_is_a_clear_error(monkeypatch, tmp_path, kwargs):
    calls: list = []
    _fake_measurements(monkeypatch, tmp_path, calls)
    with pytest.raises(LowbitError, match="bitnet bench"):
        bench.run_benchmark(rounds=1, folder=tmp_path, **kwargs)
    assert not calls


def test_a_baseline_without_llama_bench_is_refused_before_any_work(monkeypatch, tmp_path):
    calls: list = []
    _fake_measurements(monkeypatch, tmp_path, calls)
    monkeypatch.setattr(bench, "quantized_files", lambda folder, shape: calls.append("quantize") or {})
    with pytest.raises(LowbitError, match="no bin/llama-bench"):
        bench.run_benchmark(rounds=1, folder=tmp_path, baseline=tmp_path / "not-a-build")
    assert not calls  # no GGUF written, nothing measured


def test_bad_thread_list_is_a_clear_error():
    with pytest.raises(LowbitError, match="--threads"):
        bench.bench_command(threads="two")


def test_the_benchmark_loads_the_model_into_memory(monkeypatch, tmp_path):
    """Decode then reads the weights from the CPU buffer, which patch 0010 puts on 2 MiB pages, not from the file
    mapping's 4 KiB pages: what the kit's BitNet commands do too."""
    seen = []

    def run_llama_bench(model, args, tool=None):
        seen.append(args)
        return [{"n_prompt": 64, "avg_ts": 100.0}, {"n_prompt": 0, "avg_ts": 40.0}], []

    monkeypatch.setattr(bench, "run_llama_bench", run_llama_bench)
    got = bench.llama_bench(tmp_path / "m.gguf", 2)
    assert (got["pp"], got["tg"]) == (100.0, 40.0)
    assert seen[0][seen[0].index("-lm") + 1] == "none"
