"""Shape probes: measured once on this machine's calibration, stored with it, used by the cost model."""

from __future__ import annotations

import json

import pytest

from lowbit.run import calibrate
from lowbit.run import predict as P
from lowbit.run.probes import PROBE_BYTES, Probes
from tests.test_predict import Q8_ROW, _cal, _moe_workload


def _live_cal() -> dict:
    return {"fingerprint": calibrate.fingerprint()}


def test_a_live_calibration_measures_a_shape_once_and_keeps_it(monkeypatch):
    cal = _live_cal()
    probes = Probes(cal)
    first = probes.matmul("Q8_0", 64, 256, 1, 1, repack=False)
    assert first and 0 < first < 0.01
    assert list(cal["probes"]) == ["mm Q8_0 64x256 b1 t1"] and probes.added == 1

    def fail(*_a, **_k):
        raise AssertionError("measured again")

    monkeypatch.setattr("lowbit.toolchain.ggml_kernels.Kernels.matmul_seconds", fail)
    assert Probes(cal).matmul("Q8_0", 64, 256, 1, 1, repack=False) == first  # from the calibration now


def test_large_shapes_are_probed_on_a_slice_and_scaled():
    sliced = PROBE_BYTES // (16 * Q8_ROW) // 8 * 8  # rows of 4096 Q8_0 values that fit in PROBE_BYTES
    cal = {"fingerprint": "not this machine", "probes": {f"mm Q8_0 {sliced}x4096 b512 t2": 1e-3}}
    rows = 100_000  # 435 MB of Q8_0: probed on PROBE_BYTES of rows, 512 of its 2048 columns
    got = Probes(cal).matmul("Q8_0", rows, 4096, 2048, 2, repack=False)
    assert got == pytest.approx(1e-3 * rows / sliced * 4)


def test_a_foreign_calibration_never_measures_and_bad_shapes_have_no_probe():
    cal = {"fingerprint": "another machine"}
    probes = Probes(cal)
    assert probes.matmul("Q8_0", 64, 256, 1, 1, repack=False) is None and cal["probes"] == {}
    live = Probes(_live_cal())
    assert live.matmul("Q4_K", 8, 100, 1, 1, repack=False) is None  # a row off the 256-block: ggml would abort
    assert live.matmul("NOSUCH", 8, 256, 1, 1, repack=False) is None
    assert live.attention(64, 64, 6, 4, 1, 1, "f16") is None  # heads not a multiple of the KV heads
    assert live.added == 0


def test_expert_probe_keeps_the_tokens_per_expert_when_it_slices():
    """R1's 256 experts of 2048 x 7168 IQ1_S, 8 used, a 512-token batch: probed on 8 experts (the fewest that
    hold 8 used ones) of fewer rows, with 16 tokens, so each expert still multiplies 16; scaled back."""
    row = 7168 // 256 * 50  # IQ1_S: 50 bytes per 256 values
    rows = PROBE_BYTES // (8 * row)
    cal = {"fingerprint": "another machine", "probes": {f"mmid IQ1_S {rows}x7168 e8 u8 b16 t2": 2e-3}}
    assert Probes(cal).matmul_id("IQ1_S", 2048, 7168, 256, 8, 512, 2) == pytest.approx(2e-3 * 2048 / rows * 32)
    assert Probes(cal).matmul_id("IQ1_S", 2048, 7168, 256, 9, 512, 2) is None  # not probed, not measured


def test_a_live_expert_probe_matches_the_kernel():
    cal = _live_cal()
    one = Probes(cal).matmul_id("Q8_0", 64, 256, 8, 2, 1, 1)
    batch = Probes(cal).matmul_id("Q8_0", 64, 256, 8, 2, 64, 1)
    assert one and batch and one < batch < 64 * one  # a batch shares each expert's rows among its tokens
    assert {"mmid Q8_0 64x256 e8 u2 b1 t1", "mmid Q8_0 64x256 e8 u2 b64 t1"} <= set(cal["probes"])


def test_attention_probe_is_per_row_and_position_and_shrinks_large_shapes():
    cal = _live_cal()
    probes = Probes(cal)
    small = probes.attention(64, 64, 4, 2, 1, 1, "f16")
    assert small and 1e-11 < small < 1e-6
    assert "fa 64/64 h4/2 q1 kv2048 t1 F16" in cal["probes"]
    # R1's 128 query heads of 576/512 on one cached head, a 512-token batch: fewer heads, still per row and position
    big = probes.attention(576, 512, 128, 1, 512, 1, "f16")
    key = next(k for k in cal["probes"] if k.startswith("fa 576/512"))
    assert key.startswith("fa 576/512 h1/1 q512 ") and big and 1e-11 < big < 1e-6


def test_probes_replace_the_type_rates_in_the_prediction():
    """Hand-computed: with every shape probed (a foreign calibration carrying probes), decode is the probe times
    (routed experts: ggml's mul_mat_id of one token through 2 of the 8), plus the attention probe x positions x
    the fitted scale and the cache read."""
    w = _moe_workload()
    cal = _cal()
    cal["probes"] = {"mm Q8_0 1000x256 b1 t1": 40e-6, "mm Q8_0 256x256 b1 t1": 9e-6,
                     "mmid Q8_0 512x256 e8 u2 b1 t1": 35e-6, "fa 64/64 h4/4 q1 kv2048 t1 F16": 4 * 2048 * 5e-9}
    cal["attention"]["1"]["decode"]["scale"] = 2.0
    pred = P.predict(w, P.Config(threads=1, n_gen=1, depth=100), cal)
    embd_row, norm = Q8_ROW / 10e9, 1024 / 10e9
    kv_read = 100 * (4 * 64 * 2 * 2) / 10e9  # K and V f16, read once for the token: adds to the kernel's time
    attention = 4 * 100 * 5e-9 * 2.0 + kv_read
    expected = embd_row + 40e-6 + 2 * (9e-6 + 35e-6 + norm + attention)
    assert 1 / pred.decode_tps == pytest.approx(expected, rel=1e-3)


def test_new_probes_are_stored_only_with_the_same_calibration(tmp_path, monkeypatch):
    monkeypatch.setattr(calibrate, "cache_dir", lambda: tmp_path)
    current = {"fingerprint": "fp", "measured_at": "2026-12-05T03:00:00", "overhead": {"x": 1}}
    older = {"fingerprint": "fp", "measured_at": "2026-12-05T02:00:00", "overhead": {"x": 1}}
    calibrate.save(older)
    calibrate.save(current)
    calibrate.store_probes({**older, "probes": {"mm a": 1.0}})
    assert "probes" not in calibrate.cached("fp")  # the cached one is a later measurement: untouched
    kept = json.loads(calibrate.history_path().read_text())["fp"]
    assert [c.get("probes") for c in kept] == [{"mm a": 1.0}, None]
    calibrate.store_probes({**current, "probes": {"mm b": 2.0}})
    assert calibrate.cached("fp")["probes"] == {"mm b": 2.0}


def test_a_hostile_header_gets_no_probe_and_nothing_allocated():
    """Sizes a header may claim that ggml would abort on, or that would allocate gigabytes: no probe (the
    calibrated per-type rate answers), nothing measured."""
    probes = Probes(_live_cal())
    assert probes.matmul("F32", 8, 1 << 21, 512, 1, repack=False) is None  # one row of 8 MiB
    assert probes.matmul_id("Q8_0", 256, 4096, 10_000, 5_000, 512, 1) is None  # thousands of experts per token
    assert probes.attention(65, 64, 4, 4, 1, 1, "f16") is None  # a head size ggml's kernels do not take
    assert probes.attention(64, 64, 4, 4, 1, 1, "q8_0") is not None  # whole Q8_0 blocks: fine
    assert probes.attention(1 << 20, 1 << 20, 1, 1, 1, 1, "f16") is None  # a 2 GB cache for one head
    assert probes.attention(64, 64, 4, 4, 1, 1, "nosuch") is None
    assert probes.added == 1
