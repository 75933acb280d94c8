"""`invoke bench`: llama-bench sweeps, roofline fractions, cached bandwidth, results under runs/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_engine import make_runnable

from lowbit import LowbitError, machine
from lowbit.run import bench


@pytest.fixture(scope="module")
def model(tmp_path_factory, llama_build) -> Path:
    return make_runnable(tmp_path_factory.mktemp("bench"))


@pytest.fixture
def bw_file(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "bandwidth.json"
    monkeypatch.setattr(machine, "bandwidth_path", lambda: path)
    return path


def test_parse_sweep_and_bench_spelling():
    assert bench.parse_sweep(["ngl=0,8,16", "threads=1,2"]) == {"-ngl": ["0", "8", "16"], "-t": ["1", "2"]}
    assert bench.parse_sweep("ctk=f16,q4_0") == {"-ctk": ["f16", "q4_0"]}
    with pytest.raises(LowbitError, match="KEY=v1,v2"):
        bench.parse_sweep(["layers=0,8"])
    flags = [
        "-ngl",
        "62",
        "--n-cpu-moe",
        "30",
        "--tensor-split",
        "80,80",
        "-t",
        "16",
        "--ctx-size",
        "8192",
        "--cache-type-k",
        "q4_0",
        "--cache-type-v",
        "q4_0",
    ]
    assert bench.bench_flags(flags) == [
        "-ngl",
        "62",
        "-ncmoe",
        "30",
        "-ts",
        "80/80",
        "-t",
        "16",
        "-ctk",
        "q4_0",
        "-ctv",
        "q4_0",
    ]


def test_bandwidth_is_measured_once_and_cached(bw_file, monkeypatch):
    first = bench.machine_bandwidth()
    assert first["cpu_read_gbs"] > 0 and first["threads"] >= 1 and bw_file.exists()

    def no_second_measurement(*a, **k):
        raise AssertionError("bandwidth measured twice")

    monkeypatch.setattr(bench, "measure_cpu_bandwidth", no_second_measurement)
    assert bench.machine_bandwidth() == first == bench.cached_bandwidth()


def test_sweep_writes_table_plot_and_roofline_fractions(model, bw_file, tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_RUNS", str(tmp_path / "runs"))
    res = bench.bench_model(
        str(model),
        sweep=["ngl=0,2"],
        threads="1,2",
        cache_type_k="f16,q4_0",
        n_prompt=8,
        n_gen=4,
        repetitions=1,
    )
    tg = [r for r in res.rows if r.test == "tg4"]
    pp = [r for r in res.rows if r.test == "pp8"]
    # threads x cache types; on this CPU build the ngl sweep collapses to 0 and says why
    assert {(r.threads, r.cache_type_k) for r in tg} == {(1, "f16"), (2, "f16"), (1, "q4_0"), (2, "q4_0")}
    assert len(pp) == 4 and all(r.roofline_fraction is None for r in pp)
    from lowbit.toolchain.build import active_build

    if active_build().backend == "cpu":
        assert {r.n_gpu_layers for r in res.rows} == {0} and any(
            "GPU numbers need a GPU" in n for n in res.notes
        )
    for r in tg:
        assert r.tokens_per_s > 0 and r.roofline_tokens_per_s > 0
        assert r.roofline_fraction == pytest.approx(r.tokens_per_s / r.roofline_tokens_per_s, rel=0.02)
    out = Path(res.run_dir)
    assert out.parent == tmp_path / "runs"
    assert {"results.json", "table.md", "tokens_per_s.png"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "results.json").read_text())["rows"][0]["test"] in ("pp8", "tg4")
    assert res.best("tg").tokens_per_s == max(r.tokens_per_s for r in tg)


def test_bad_cache_type_refused_before_running(model, bw_file):
    with pytest.raises(LowbitError, match="cache type"):
        bench.bench_model(str(model), cache_type_k="q3_0", write=False)
