"""The validation benchmark's band: the worst error over the predictions of every kept calibration."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

from lowbit.run import predict as P
from tests.test_predict import _cal

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "predict_vs_measured.py"


def _bench():
    spec = importlib.util.spec_from_file_location("predict_vs_measured", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _slower(cal: dict) -> dict:
    """The same machine calibrated at half of every rate (a busy calibration): every time doubles."""
    out = copy.deepcopy(cal)
    out["bandwidth_gbs"] = {t: v / 2 for t, v in cal["bandwidth_gbs"].items()}
    out["kernels"] = {t: {q: {k: v / 2 for k, v in r.items()} for q, r in ks.items()}
                      for t, ks in cal["kernels"].items()}
    out["attention"] = {t: {kind: {k: v * 2 for k, v in f.items()} for kind, f in a.items()}
                        for t, a in cal["attention"].items()}
    return out


def test_band_is_the_worst_error_over_every_kept_calibration(tmp_path, monkeypatch):
    bench = _bench()
    path = P.calibration_model(tmp_path / "m.gguf", 2)
    fast = _cal()
    slow = _slower(fast) | {"measured_at": "slow"}
    truth = P.predict(path, P.Config(threads=1, n_prompt=64, n_gen=32), fast)  # measured = fast's prediction
    rows = [{"model": "m", "threads": 1, "depth": 0, "test": test, "measured": v, "busy": False}
            for _ in range(15) for test, v in (("pp64", truth.prefill_tps), ("tg32", truth.decode_tps))]
    across = bench.across_calibrations(rows, [fast, slow], {"m": path})
    assert across["n"] == 2 and across["quiet_rows"] == 30
    assert across["per_calibration"][0]["decode"]["worst"] < 1e-3  # its own calibration predicts it
    assert abs(across["worst"]["decode"] - 0.5) < 1e-3 and abs(across["worst"]["prefill"] - 0.5) < 1e-3
    monkeypatch.setattr(P, "BAND_FILE", tmp_path / "band.json")
    assert bench.store_band(rows, across) == 0
    assert json.loads((tmp_path / "band.json").read_text())["band"] == {"decode": 0.5, "prefill": 0.5, "rss": 0.1}
    # one calibration alone cannot give a band; nor can too few quiet rows
    assert bench.store_band(rows, bench.across_calibrations(rows, [fast], {"m": path})) == 2
    assert bench.store_band(rows[:10], across) == 2
    busy = bench.across_calibrations(rows, [fast, slow | {"busy_cpus": 1.5}], {"m": path})
    assert busy["per_calibration"][1]["busy"] and bench.store_band(rows, busy) == 2  # measured the load


def test_replay_refits_the_stored_calibration_and_reports_then_and_now(tmp_path, monkeypatch, capsys):
    """A stored run whose calibration kept llama-bench's medians: replay refits the overhead under the current
    cost model and predicts the stored rows again; the medians here are the cost model's own time plus 2 ms per
    token, so the refitted prediction matches rows measured as the same model plus 2 ms."""
    import math

    bench = _bench()
    cal = {**_cal(), "cores": 1}
    _folder, cal_models = P._calibration_models(tmp_path)
    bare = {**cal, "overhead": {}}
    measured = {}
    for path in cal_models:
        p = P.predict(path, P.Config(threads=1, n_prompt=64, n_gen=32), bare)
        measured[path.name] = {"decode_s": 1 / p.decode_tps + 2e-3, "prefill_s": 64 / p.prefill_tps + 2e-3}
    deep = P.predict(cal_models[1], P.Config(threads=1, n_prompt=64, n_gen=32, depth=P.CAL_DEPTH), bare)
    flat = measured[cal_models[1].name]
    measured[f"{cal_models[1].name}@{P.CAL_DEPTH}"] = {
        "decode_s": 1 / deep.decode_tps + 2e-3, "prefill_s": 64 / deep.prefill_tps + 2e-3,
        "flat_decode_s": flat["decode_s"], "flat_prefill_s": flat["prefill_s"]}
    stored = {**cal, "overhead": {"threads": {"1": {"decode_a": 9.0, "decode_b": 0, "prefill_a": 9.0, "prefill_b": 0}},
                                  "measured": {"1": measured}}}
    model = P.calibration_model(tmp_path / "m.gguf", 4)
    truth = P.predict(model, P.Config(threads=1, n_prompt=64, n_gen=32), bare)
    rows = [{"model": "m", "threads": 1, "depth": 0, "test": "tg32", "measured": 1 / (1 / truth.decode_tps + 2e-3),
             "error": 0.5, "busy": False}]
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"rows": rows, "calibration": stored}))
    monkeypatch.setattr(bench, "models", lambda: {"m": model})
    monkeypatch.setattr(P, "_calibration_models", lambda folder=None: (tmp_path, cal_models))
    assert bench.replay(results) == 0
    out = capsys.readouterr().out
    now = float(out.split("now median ")[1].split("%")[0])
    assert math.isclose(now, 0.0, abs_tol=0.2) and "then median 50.0%" in out
    results.write_text(json.dumps({"rows": rows, "calibration": cal}))  # no medians kept: refused
    assert bench.replay(results) == 2


def test_sweep_measures_the_bitnet_shape_the_bitnet_benchmark_wrote(tmp_path, monkeypatch):
    """The 2B4T shape's TQ2_0 and Q4_0 files are found where `invoke bitnet-bench` writes them (the full shape
    before the reduced one) and each gets one 2-thread row at depth 0."""
    from lowbit.bitnet import bench as bitnet_bench

    monkeypatch.setenv("LOWBIT_MODELS", str(tmp_path))
    mod = _bench()
    assert not any(name.startswith("bitnet") for name in mod.models())
    for shape in (bitnet_bench.REDUCED, bitnet_bench.FULL):
        for qtype in ("TQ2_0", "Q4_0"):
            path = bitnet_bench.shape_file(shape, qtype)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
    found = mod.models()
    assert found["bitnet-shape TQ2_0"] == bitnet_bench.shape_file(bitnet_bench.FULL, "TQ2_0")
    assert found["bitnet-shape Q4_0"].parent == tmp_path / "bench"
    rows = [c for c in mod.configs(False, 2) if c[0].startswith("bitnet")]
    assert rows == [("bitnet-shape TQ2_0", 2, 0), ("bitnet-shape Q4_0", 2, 0)]
