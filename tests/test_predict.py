"""The cost model on hand-computed cases, calibration caching, the overhead fit, and the real kernels' probe."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from lowbit import LowbitError
from lowbit.files.gguf_header import ModelMeta
from lowbit.run import calibrate
from lowbit.run import predict as P

Q8_ROW = 272  # bytes of one Q8_0 row of 256 values (8 blocks x 34 bytes)


def _cal(overhead: dict | None = None) -> dict:
    rates = {"Q8_0": {"mv": 5e9, "mm": 20e9}, "F16": {"mv": 8e9, "mm": 40e9}, "F32": {"mv": 8e9, "mm": 40e9}}
    attention = {"decode": {"a": 1e-7, "b": 1e-10}, "prefill": {"a": 1e-8, "b": 1e-10}}  # s per query x head x pos
    return {"fingerprint": "test", "cores": 2, "bandwidth_gbs": {"1": 10.0, "2": 20.0},
            "kernels": {"1": rates, "2": {k: {kk: 2 * vv for kk, vv in v.items()} for k, v in rates.items()}},
            "attention": {"1": attention,
                          "2": {k: {kk: vv / 2 for kk, vv in v.items()} for k, v in attention.items()}},
            "overhead": {"threads": {"1": overhead or {"decode_a": 0, "decode_b": 0, "prefill_a": 0,
                                                       "prefill_b": 0}}}}


def _moe_workload(n_expert: int = 8, used: int = 2) -> P.Workload:
    """2 layers, n_embd 256, 4 heads of 64, vocab 1000; per layer attn_q (Q8_0 256x256), a norm, and routed
    experts ffn_up_exps (Q8_0, 512 rows x 256, n_expert of them); untied Q8_0 output."""
    meta = ModelMeta(name="hand", shards=[], arch="llama", n_layers=2, n_ctx_train=4096, n_embd=256, n_head=4,
                     n_head_kv=4, key_length=64, value_length=64, is_mla=False, n_expert=n_expert,
                     n_expert_used=used, n_vocab=1000, file_bytes=0, embeddings=1000 * Q8_ROW,
                     output=1000 * Q8_ROW)
    tensors = [P.Tensor("token_embd.weight", "Q8_0", 1000 * Q8_ROW, 1000, 256, group="embd"),
               P.Tensor("output.weight", "Q8_0", 1000 * Q8_ROW, 1000, 256, group="output")]
    for i in range(2):
        tensors += [P.Tensor(f"blk.{i}.attn_q.weight", "Q8_0", 256 * Q8_ROW, 256, 256, 1, "attention", i),
                    P.Tensor(f"blk.{i}.attn_norm.weight", "F32", 1024, 1, 256, 1, "other", i),
                    P.Tensor(f"blk.{i}.ffn_up_exps.weight", "Q8_0", n_expert * 512 * Q8_ROW, 512, 256, n_expert,
                             "routed_experts", i)]
    return P.Workload(meta, tensors, header_bytes=1000)


def test_decode_hand_computed_moe_touches_only_active_experts():
    w = _moe_workload()
    pred = P.predict(w, P.Config(threads=1, n_gen=1), _cal())
    bw = 10e9
    embd_row = Q8_ROW / bw
    output = max(1000 * Q8_ROW / bw, 1000 * Q8_ROW / 5e9)  # compute-bound: 54.4 us
    attn_q = max(256 * Q8_ROW / bw, 256 * Q8_ROW / 5e9)
    experts = 2 / 8 * 8 * 512 * Q8_ROW / 5e9  # only n_expert_used of n_expert are read
    norm = 1024 / bw
    expected = embd_row + output + 2 * (attn_q + experts + norm)
    assert pred.decode_tps == pytest.approx(1 / expected, rel=1e-3)
    assert pred.bound == "compute"
    # the same bytes as a dense model reading all experts would be 4x the expert time
    dense = P.predict(_moe_workload(used=8), P.Config(threads=1, n_gen=1), _cal())
    assert 1 / dense.decode_tps - 1 / pred.decode_tps == pytest.approx(2 * 3 * experts, rel=1e-3)


def test_decode_attention_grows_with_depth_and_overhead_adds_per_layer():
    w = _moe_workload()
    cal = _cal({"decode_a": 1e-3, "decode_b": 1e-4, "prefill_a": 0, "prefill_b": 0})
    d0 = P.predict(w, P.Config(threads=1, n_gen=1), cal)
    d1000 = P.predict(w, P.Config(threads=1, n_gen=1, depth=1000), cal)
    kv_per_token = 4 * 64 * 2 + 4 * 64 * 2  # K and V, f16, 4 KV heads of 64
    read = 1000 * kv_per_token / 10e9  # 102.4 us per layer
    flash = 4 * 1000 * (1e-7 + 1e-10 * (64 + 64))  # heads x positions x calibrated cost: 451.2 us (compute-bound)
    assert 1 / d1000.decode_tps - 1 / d0.decode_tps == pytest.approx(2 * max(read, flash), rel=1e-3)
    assert w.block_tensors == 6  # 3 tensors in each of 2 blocks: the graph's size
    assert d0.decode_ms["overhead"] == pytest.approx((1e-3 + 6 * 1e-4) * 1e3)


def test_prefill_hand_computed_batch_reads_weights_once():
    w = _moe_workload()
    pred = P.predict(w, P.Config(threads=1, n_prompt=64), _cal())
    bw, b = 10e9, 64
    attn_q = max(256 * Q8_ROW / bw, b * 256 * Q8_ROW / 20e9)
    touched = 1 - (1 - 2 / 8) ** b
    per_expert = b * (2 / 8) / touched  # ~16 tokens reach each expert: between the mat-vec and mat-mat rates
    rate = 5e9 + math.log(per_expert) / math.log(64) * (20e9 - 5e9)
    experts = max(8 * 512 * Q8_ROW * touched / bw, b * 2 / 8 * 8 * 512 * Q8_ROW / rate)
    output = max(1000 * Q8_ROW / bw, 1000 * Q8_ROW / 5e9)  # logits of the last token only
    # ggml's tiled flash attention: 4 full tiles (one per head) of 64 rows, each over the 64 positions its last
    # query sees; the cache is read once at the mean context b/2 = 32
    attention = max(32 * 1024 / bw, b * 4 * 64 * (1e-8 + 1e-10 * 128))
    expected = 2 * (attn_q + experts + attention) + output
    assert pred.prefill_tps == pytest.approx(b / expected, rel=1e-3)
    assert pred.decode_tps is None


@pytest.mark.parametrize(("n_tokens", "n_head", "threads", "expected"), [
    (64, 2, 1, (2, 2.0)),  # one chunk on one thread: a 64-row tile per head
    (64, 2, 2, (2, 1.0)),  # chunks rounded up to whole tiles: one 64-row tile per thread (before patch 0007: 8)
    (64, 9, 2, (9, 4.5)),  # chunks of 128 rows (72 rounded up): 4 full ones and a 64-row rest, 288 rows each
    (64, 8, 2, (8, 4.0)),  # the probe's shape: 8 chunks of 64 rows
    (64, 1, 2, (8, 0.5)),  # whole tiles would leave a thread idle: 8 chunks of 8 rows instead
    (128, 1, 1, (2, 2.0)),  # 128 queries of one head: two tiles
    (32, 8, 2, None),  # below one tile: the untiled kernel
])
def test_flash_attention_tiles_mirror_ggml_chunking(n_tokens, n_head, threads, expected):
    assert P.flash_attn_tiles(n_tokens, n_head, threads) == expected


def test_prefill_attention_of_two_heads_halves_on_two_threads():
    """64 tokens x 2 heads: 1 thread runs both 64-row tiles, 2 threads one each at the same per-thread rate (the
    calibration's wall cost per row halves at 2 threads). Before patch 0007 ggml cut them into 8 tiles of 16 rows,
    each multiplied as 64: twice as long as 1 thread."""
    w = _moe_workload()
    w.meta.n_head, w.meta.n_head_kv = 2, 2
    cal = _cal()
    one = P._attention_seconds(w, P.Config(threads=1), [2048.0], 64, 1e15, cal["attention"]["1"], batch=True)
    two = P._attention_seconds(w, P.Config(threads=2), [2048.0], 64, 1e15, cal["attention"]["2"], batch=True)
    per = 1e-8 + 1e-10 * 128
    assert one == pytest.approx(2 * 64 * (2048 + 32) * per)  # 2 tiles x 64 rows x positions of the last query
    assert two == pytest.approx(one / 2)


def test_threads_pick_their_own_rates_and_beyond_calibrated_use_the_last():
    w = _moe_workload()
    one = P.predict(w, P.Config(threads=1, n_gen=1), _cal())
    two = P.predict(w, P.Config(threads=2, n_gen=1), _cal())
    eight = P.predict(w, P.Config(threads=8, n_gen=1), _cal())
    assert two.decode_tps == pytest.approx(2 * one.decode_tps, rel=1e-3)  # every rate doubled at 2 threads
    assert eight.decode_tps == two.decode_tps
    with pytest.raises(LowbitError, match="threads"):
        P.predict(w, P.Config(threads=0, n_gen=1), _cal())


@pytest.mark.parametrize("bad", [{"threads": 0}, {"depth": -5}, {"n_gen": -1}, {"n_prompt": -64}, {"ubatch": 0},
                                 {"n_ctx": -512}])
def test_a_config_out_of_range_is_a_clear_error(bad):
    """What `invoke predict` turns its flags into: a negative depth or token count names itself, not a number."""
    name = {"n_ctx": "ctx"}.get(next(iter(bad)), next(iter(bad)))
    with pytest.raises(LowbitError, match=f"{name} must be at least"):
        P.Config(**{"threads": 1, **bad})


def test_unknown_type_names_the_fix():
    w = _moe_workload()
    w.tensors[2].qtype = "IQ1_S"
    with pytest.raises(LowbitError, match="IQ1_S.*calibrate --refresh"):
        P.predict(w, P.Config(threads=1, n_gen=1), _cal())


def test_rss_counts_weights_kv_and_runtime_and_band():
    w = _moe_workload()
    cal = _cal()
    cal["overhead"] |= {"runtime_a": 30e6, "runtime_b": 100.0}
    pred = P.predict(w, P.Config(threads=1, n_gen=16, n_ctx=1000), cal)
    parts = pred.rss_parts
    assert parts["weights"] == sum(t.n_bytes for t in w.tensors)
    assert parts["kv"] == 1024 * 1024 * 2  # context padded to 1024 cells, 1024 bytes each, 2 layers
    assert parts["runtime"] == 30e6 + 100 * w.header_bytes
    assert pred.rss_bytes == sum(parts.values())
    assert pred.within("rss", pred.rss_bytes + 50 * 2**20)  # 100 MB slack for a small model
    assert not pred.within("rss", pred.rss_bytes + 150 * 2**20)
    band = pred.band["decode"]  # |predicted / measured - 1| <= band
    assert pred.within("decode", pred.decode_tps * 1.1)
    assert pred.within("decode", pred.decode_tps / (1 + band * 0.99))
    assert not pred.within("decode", pred.decode_tps / (1 + band * 1.01))
    assert not pred.within("decode", pred.decode_tps / (1 - band * 1.01))


def _write_moe_gguf(path: Path, tied: bool, swa: bool) -> Path:
    from gguf import GGUFWriter

    arch = "gemma3" if swa else "qwen3moe"
    w = GGUFWriter(str(path), arch)
    w.add_block_count(2)
    w.add_embedding_length(256)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_expert_count(4)
    w.add_expert_used_count(1)
    w.add_vocab_size(32)
    if swa:
        w.add_sliding_window(128)
    rng = np.random.default_rng(0)
    w.add_tensor("token_embd.weight", rng.standard_normal((32, 256)).astype(np.float32))
    if not tied:
        w.add_tensor("output.weight", rng.standard_normal((32, 256)).astype(np.float16))
    for i in range(2):
        w.add_tensor(f"blk.{i}.attn_q.weight", rng.standard_normal((256, 256)).astype(np.float16))
        w.add_tensor(f"blk.{i}.ffn_up_exps.weight", rng.standard_normal((4, 64, 256)).astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_workload_from_header(tmp_path):
    w = P.workload(_write_moe_gguf(tmp_path / "m.gguf", tied=False, swa=False))
    exps = [t for t in w.tensors if t.group == "routed_experts"]
    assert [(t.rows, t.cols, t.experts, t.n_bytes) for t in exps] == [(64, 256, 4, 4 * 64 * 256 * 2)] * 2
    assert [t.name for t in w.tensors if t.group == "output"] == ["output.weight"]
    assert w.swa_layers == 0
    tied = P.workload(_write_moe_gguf(tmp_path / "t.gguf", tied=True, swa=True))
    out = [t for t in tied.tensors if t.group == "output"]
    assert len(out) == 1 and out[0].n_bytes == 32 * 256 * 4  # the embedding matrix is the output matrix
    # gemma3's default pattern: 5 of every 6 layers slide; 2 layers -> both below the 6th
    assert tied.swa_window == 128 and tied.swa_layers == 2 - 2 // 6


# ---------------------------------------------------------------------------------------------
# calibration cache


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path))
    calls = []
    key = {"value": "cpuA|build1|v1"}
    monkeypatch.setattr(calibrate, "fingerprint", lambda: key["value"])

    def fake_measure(disk_dir=None):
        calls.append(key["value"])
        return {"fingerprint": key["value"], "cores": 1, "bandwidth_gbs": {"1": 10.0}, "kernels": {"1": {}}}

    monkeypatch.setattr(calibrate, "measure", fake_measure)
    return calls, key, tmp_path


def test_calibration_is_cached_per_fingerprint(cache):
    calls, key, folder = cache
    first = calibrate.calibration()
    again = calibrate.calibration()
    assert calls == ["cpuA|build1|v1"] and again == first  # the second call read the cache
    key["value"] = "cpuA|build2|v1"  # another llama.cpp build
    calibrate.calibration()
    assert calls == ["cpuA|build1|v1", "cpuA|build2|v1"]
    stored = json.loads((folder / calibrate.CALIBRATION_FILE).read_text())
    assert set(stored) == {"cpuA|build1|v1", "cpuA|build2|v1"}
    calibrate.calibration(refresh=True)
    assert len(calls) == 3


def test_corrupt_cache_recalibrates(cache):
    calls, _key, folder = cache
    (folder / calibrate.CALIBRATION_FILE).write_text("{not json")
    assert calibrate.calibration()["fingerprint"] == "cpuA|build1|v1"
    assert len(calls) == 1


def test_fingerprint_names_cpu_and_build(monkeypatch, llama_build):
    base = calibrate.fingerprint()
    assert llama_build.key in base
    other = type("B", (), {"key": "another-build"})()
    monkeypatch.setattr(calibrate, "active_build", lambda: other)
    assert calibrate.fingerprint() != base and "another-build" in calibrate.fingerprint()


# ---------------------------------------------------------------------------------------------
# the overhead fit and the real probes


def test_fit_overhead_recovers_a_known_line(tmp_path, monkeypatch, llama_build):
    """Measurements made of prediction + (a + b x block tensors + c x tokens x activations) give back a, b, c
    per thread count."""
    cal = {**_cal(), "cores": 2}
    truth = {1: (2e-3, 3e-4, 5e-3, 1e-3, 2e-9), 2: (4e-3, 1e-4, 6e-3, 2e-3, 1e-9)}

    def fake_bench(model, threads, n_prompt, n_gen, reps, depth=0, extra=None, timeout=900):
        pred = P.predict(model, P.Config(threads=threads, n_prompt=n_prompt, n_gen=n_gen), {**cal, "overhead": {}})
        w = P.workload(model)
        n, act = w.block_tensors, w.activations
        da, db, pa, pb, pc = truth[threads]
        tg = 1 / (1 / pred.decode_tps + da + db * n)
        pp = n_prompt / (n_prompt / pred.prefill_tps + pa + pb * n + pc * n_prompt * act)
        return [{"n_prompt": n_prompt, "n_gen": 0, "avg_ts": pp, "samples_ts": [pp]},
                {"n_prompt": 0, "n_gen": n_gen, "avg_ts": tg, "samples_ts": [tg * 0.9, tg, tg * 1.1]}]

    monkeypatch.setattr(P, "llama_bench_json", fake_bench)
    monkeypatch.setattr(P, "_measure_rss", lambda path: 50_000_000 + 40 * P.workload(path).header_bytes
                        + sum(P.peak_rss(P.workload(path), P.Config(threads=1, n_prompt=8, n_gen=16,
                                                                       n_ctx=P.RSS_CTX), {})[1].values()))
    fit = P.fit_overhead(cal, tmp_path)
    for t, (da, db, pa, pb, pc) in truth.items():
        got = fit["threads"][str(t)]
        assert got["decode_a"] == pytest.approx(da, rel=1e-3) and got["decode_b"] == pytest.approx(db, rel=1e-3)
        assert got["decode_c"] == pytest.approx(0, abs=1e-12)
        assert got["prefill_a"] == pytest.approx(pa, rel=1e-3) and got["prefill_b"] == pytest.approx(pb, rel=1e-3)
        assert got["prefill_c"] == pytest.approx(pc, rel=1e-3)
    assert fit["runtime_a"] == pytest.approx(50e6, rel=1e-6) and fit["runtime_b"] == pytest.approx(40, rel=1e-6)
    # llama-bench's medians are kept for refitting a changed cost model: the 12-layer model at 2 threads
    w = P.workload(tmp_path / "calibration-llama-w256-l12-q8_0.gguf")
    pred = P.predict(w, P.Config(threads=2, n_prompt=64, n_gen=32), {**cal, "overhead": {}})
    kept = fit["measured"]["2"]["calibration-llama-w256-l12-q8_0.gguf"]
    assert kept["decode_s"] == pytest.approx(1 / pred.decode_tps + 4e-3 + 1e-4 * w.block_tensors, rel=1e-6)
    assert set(fit["measured"]["1"]) >= {"calibration-llama-w256-l12-q8_0.gguf@2048"}
    # refitting a stored calibration from those medians under the same cost model gives the same line back
    stored = {**cal, "overhead": fit}
    again = P.refit_overhead(stored, tmp_path)
    assert again is not stored and again["overhead"]["threads"]["2"]["decode_b"] == pytest.approx(1e-4, rel=1e-3)
    old = {**cal, "overhead": {"threads": {"1": {}}}}  # a calibration from before the medians were kept
    assert P.refit_overhead(old, tmp_path) is old


def test_attention_scale_comes_from_the_fewest_threads(tmp_path, monkeypatch, llama_build):
    """llama.cpp's attention at depth against its kernel probe is fitted per thread count, then the one-thread
    ratio serves every count: on a shared host the 2-thread depth run is the noisiest point of a calibration."""
    cal = {**_cal(), "cores": 2}
    ratio = {1: 1.3, 2: 1.8}  # what the depth runs show: 2 threads disturbed

    def fake_bench(model, threads, n_prompt, n_gen, reps, depth=0, extra=None, timeout=900):
        bare = {**cal, "overhead": {}}
        cfg = P.Config(threads=threads, n_prompt=n_prompt, n_gen=n_gen)
        flat, deep = P.predict(model, cfg, bare), P.predict(model, P.Config(**{**cfg.__dict__, "depth": depth}), bare)
        k = ratio[threads] - 1
        pp_s = n_prompt / deep.prefill_tps + k * (deep.prefill_ms["attention"] - flat.prefill_ms["attention"]) / 1e3
        tg_s = 1 / deep.decode_tps + k * (deep.decode_ms["attention"] - flat.decode_ms["attention"]) / 1e3
        return [{"n_prompt": n_prompt, "n_gen": 0, "avg_ts": n_prompt / pp_s, "samples_ts": [n_prompt / pp_s]},
                {"n_prompt": 0, "n_gen": n_gen, "avg_ts": 1 / tg_s, "samples_ts": [1 / tg_s]}]

    monkeypatch.setattr(P, "llama_bench_json", fake_bench)
    monkeypatch.setattr(P, "_measure_rss", lambda path: 50_000_000)
    P.fit_overhead(cal, tmp_path)
    for t in ("1", "2"):
        for kind in ("decode", "prefill"):
            assert cal["attention"][t][kind]["scale"] == pytest.approx(1.3, rel=1e-3), (t, kind)


def test_real_kernel_probe_sees_repacking(llama_build):
    """ggml's own matmul through ctypes: Q4_0 is repacked on AVX2 CPUs (llama.cpp's default) and runs
    faster there than plain; Q8_0 has no x86 repack and carries one rate."""
    from lowbit.toolchain.ggml_kernels import Kernels

    attention = calibrate.attention_rates(1, seconds=0.01)
    assert all(v["a"] >= 0 and v["b"] >= 0 and v["a"] + v["b"] > 0 for v in attention.values())
    rates = calibrate.kernel_rates(1, ("Q4_0", "Q8_0"), seconds=0.02)
    assert rates["Q8_0"]["mv"] > 1e8 and rates["Q8_0"]["mm"] > 1e8 and "mv_norepack" not in rates["Q8_0"]
    if Kernels.repacks("Q4_0"):
        assert rates["Q4_0"]["mm"] > rates["Q4_0"]["mm_norepack"]


def test_disk_probe_is_cold_and_cleans_up(tmp_path):
    got = calibrate.disk_read_gbs(tmp_path, mib=8)
    assert got["gbs"] > 0 and got["mib"] == 8
    assert set(got["random_gbs"]) == {"16", "256", "4096"} and all(v > 0 for v in got["random_gbs"].values())
    assert calibrate.disk_read_gbs(tmp_path, mib=8, blocks_kib=(8192,))["random_gbs"] == {}  # one block: no probe
    assert list(tmp_path.iterdir()) == []  # the probe file is gone


def test_model_larger_than_the_cache_decodes_at_the_streaming_rate(monkeypatch):
    """Weights beyond the last-level cache come from memory every token: ggml's mat-vec measured on
    memory-resident weights (mvs) sets their time once the model is as large as that probe, a share in between,
    and the fitted attention scale multiplies attention."""
    monkeypatch.setattr(calibrate, "STREAM_MIB", 0)  # the streaming probe: 3 x the last-level cache
    w = _moe_workload()
    cal = _cal()
    cal["kernels"]["1"]["Q8_0"]["mvs"] = 2.5e9
    small = P.predict(w, P.Config(threads=1, n_gen=1), cal)
    q8 = 1000 * Q8_ROW + 2 * 256 * Q8_ROW + 2 * 2 / 8 * 8 * 512 * Q8_ROW  # output, attn_q, active experts
    cached = 1000 * Q8_ROW / 5e9 + 2 * 256 * Q8_ROW / 5e9 + 2 * 2 / 8 * 8 * 512 * Q8_ROW / 5e9
    footprint = 1000 * Q8_ROW + 2 * 256 * Q8_ROW + 2 * 8 * 512 * Q8_ROW  # every expert competes for the cache
    cal["llc_bytes"] = footprint // 3  # the model is as large as the streaming probe: all of it streams
    big = P.predict(w, P.Config(threads=1, n_gen=1), cal)
    assert 1 / big.decode_tps - 1 / small.decode_tps == pytest.approx(q8 / 2.5e9 - cached, rel=1e-3)
    cal["llc_bytes"] = footprint / 2  # halfway from the cache's size to the probe's: half the bytes miss
    half = P.predict(w, P.Config(threads=1, n_gen=1), cal)
    assert 1 / half.decode_tps - 1 / small.decode_tps == pytest.approx((q8 / 2.5e9 - cached) / 2, rel=1e-3)
    deep = P.predict(w, P.Config(threads=1, n_gen=1, depth=1000), cal)
    cal["attention"]["1"]["decode"]["scale"] = 3.0
    deeper = P.predict(w, P.Config(threads=1, n_gen=1, depth=1000), cal)
    assert deeper.decode_ms["attention"] == pytest.approx(3 * deep.decode_ms["attention"], rel=1e-3)


def test_rounds_combine_to_medians_with_their_spread():
    """Three interleaved rounds: each rate is the median, the spread (max - min) / median per rate."""
    def rnd(bw: float, mv: float, a: float) -> dict:
        return {"1": {"bandwidth": bw, "kernels": {"Q8_0": {"mv": mv}, "XX": {"error": "no such type"}},
                      "attention": {"decode": {"a": a, "b": 0.0}}}}

    got = calibrate.combine_rounds([rnd(30.0, 4e9, 1e-8), rnd(60.0, 5e9, 2e-8), rnd(40.0, 6e9, 3e-8)])
    assert got["bandwidth_gbs"] == {"1": 40.0} and got["bandwidth_rounds"] == {"1": [30.0, 60.0, 40.0]}
    assert got["kernels"]["1"]["Q8_0"]["mv"] == 5e9 and got["kernels"]["1"]["XX"] == {"error": "no such type"}
    assert got["attention"]["1"]["decode"]["a"] == 2e-8
    assert got["spread"]["bandwidth"]["1"] == pytest.approx(30 / 40, abs=1e-3)
    assert got["spread"]["kernels"]["1"] == {"median": 0.4, "worst": 0.4}  # (6 - 4) / 5
    assert got["spread"]["attention"]["1"]["worst"] == pytest.approx(1.0)  # (3 - 1) / 2; b is 0 everywhere
    assert got["spread"]["rounds"] == 3


def test_history_keeps_every_calibration_with_its_fit(cache):
    _calls, key, _folder = cache
    for i in range(calibrate.HISTORY_KEEP + 2):
        calibrate.save({"fingerprint": key["value"], "measured_at": f"t{i}", "overhead": {"threads": {}}})
    calibrate.save({"fingerprint": key["value"], "measured_at": f"t{calibrate.HISTORY_KEEP + 1}",
                    "overhead": {"threads": {"1": {}}}})  # the same calibration re-saved with its fit replaces itself
    calibrate.save({"fingerprint": key["value"], "measured_at": "unfitted"})  # no overhead fit yet: not listed
    calibrate.save({"fingerprint": key["value"], "measured_at": "busy", "busy_cpus": 1.2, "overhead": {"x": 1}})
    assert calibrate.history(quiet_only=False)[-1]["measured_at"] == "busy"  # kept, but measured the load:
    kept = calibrate.history()  # not among the calibrations the band uses
    assert [c["measured_at"] for c in kept] == [f"t{i}" for i in range(4, calibrate.HISTORY_KEEP + 2)]
    assert kept[-1]["overhead"] == {"threads": {"1": {}}}
    assert calibrate.history("another|fingerprint") == []


def test_measure_interleaves_rounds_and_keeps_medians(monkeypatch, tmp_path):
    """Each round measures bandwidth, kernels and attention at every thread count in turn; a burst of load in
    one round (the second: half of every rate) moves no median."""
    calls: list[str] = []

    def rate(name: str, value: float):
        def measure(threads: int, *args, **kwargs):
            calls.append(f"{name}{threads}")
            slow = 0.5 if calls.count(f"bw{threads}") == 2 else 1.0  # the second round is disturbed
            return value * threads * slow if name == "bw" else (
                {"Q8_0": {"mv": value * threads * slow}} if name == "k" else {"decode": {"a": value / slow, "b": 0.0}})
        return measure

    monkeypatch.setattr(calibrate, "physical_cores", lambda: 2)
    monkeypatch.setattr(calibrate, "fingerprint", lambda: "test")
    monkeypatch.setattr(calibrate, "others_busy", lambda *a: 0.0)
    monkeypatch.setattr(calibrate, "read_bandwidth_gbs", rate("bw", 30.0))
    monkeypatch.setattr(calibrate, "kernel_rates", rate("k", 5e9))
    monkeypatch.setattr(calibrate, "attention_rates", rate("a", 1e-8))
    monkeypatch.setattr(calibrate, "disk_read_gbs", lambda d: {"gbs": 1.0})
    cal = calibrate.measure(tmp_path)
    assert calibrate.ROUNDS == 3 and calls == ["bw1", "k1", "a1", "bw2", "k2", "a2"] * 3
    assert cal["bandwidth_gbs"] == {"1": 30.0, "2": 60.0} and cal["bandwidth_rounds"]["1"] == [30.0, 15.0, 30.0]
    assert cal["kernels"]["2"]["Q8_0"]["mv"] == 10e9 and cal["attention"]["1"]["decode"]["a"] == 1e-8
    assert cal["spread"]["bandwidth"] == {"1": 0.5, "2": 0.5}


def test_interleaved_measurement_is_the_median_of_quiet_rounds(monkeypatch):
    """Rounds alternate between the runs; a run's value is the median of its quiet rounds, and it is busy only
    when every round was."""
    calls = []
    values = {1: iter([(100.0, False), (300.0, True), (120.0, False), (110.0, False)]),
              2: iter([(50.0, True), (60.0, True), (70.0, True), (80.0, True)])}

    def fake(path, cfg, reps, cal=None, memory=False):
        calls.append(cfg.threads)
        v, busy = next(values[cfg.threads])
        return {"decode": v, "prefill": 2 * v, "busy": busy, "others_cpus": 0.5 if busy else 0.0}

    monkeypatch.setattr(P, "measure", fake)
    one, two = P.measure_interleaved([("m", P.Config(threads=1)), ("m", P.Config(threads=2))], rounds=4)
    assert calls == [1, 2, 1, 2, 1, 2, 1, 2]  # interleaved, not one run's rounds back to back
    assert one == {"decode": 110.0, "prefill": 220.0, "busy": False, "others_cpus": 0.0, "host_slowdown": 1.0,
                   "rounds": 3, "host_rounds": [[1.0, 1.0]] * 3}
    assert two["busy"] and two["decode"] == 65.0 and two["rounds"] == 4  # none quiet: all of them, marked busy


def test_a_slow_host_makes_a_measurement_busy(monkeypatch):
    """Neighbours on the VM's host do not show in /proc/stat: the calibration's mat-mat probe, run again after the
    measurement, does; over SLOW_HOST times slower the row is busy, not held to the band."""
    monkeypatch.setattr(P, "llama_bench_json", lambda *a, **k: [
        {"n_prompt": 0, "n_gen": 32, "samples_ts": [100.0], "avg_ts": 100.0}])
    cal = {"kernels": {"1": {"Q8_0": {"mm": 1e12}}}}  # a calibration far faster than anything real
    assert P.host_slowdown(cal, 1) > 10 and P.host_slowdown({}, 1) == 1.0
    got = P.measure("m.gguf", P.Config(threads=1, n_gen=32), cal=cal)
    assert got["busy"] and got["host_slowdown"] > P.SLOW_HOST and got["decode"] == 100.0
    assert not P.measure("m.gguf", P.Config(threads=1, n_gen=32))["busy"]  # no calibration: not judged


def test_memory_slowdown_is_recorded_not_judged(monkeypatch):
    """On request (the validation sweep) the read bandwidth is probed again after each measurement and recorded
    as a slowdown against the calibration's; it moves between two levels on the reference VM without explaining
    the errors, so it does not make a row busy."""
    monkeypatch.setattr(P, "llama_bench_json", lambda *a, **k: [
        {"n_prompt": 0, "n_gen": 32, "samples_ts": [100.0], "avg_ts": 100.0}])
    monkeypatch.setattr(P, "host_slowdown", lambda cal, threads: 1.0)
    monkeypatch.setattr(P.calibrate, "read_bandwidth_gbs", lambda threads, reps=9: 10.0)
    cal = {"bandwidth_gbs": {"1": 25.0}}
    assert P.memory_slowdown(cal, 1) == 2.5 and P.memory_slowdown(cal, 2) == 1.0 and P.memory_slowdown(None, 1) == 1.0
    got = P.measure("m.gguf", P.Config(threads=1, n_gen=32), cal=cal, memory=True)
    assert got["memory_slowdown"] == 2.5 and not got["busy"]
    assert "memory_slowdown" not in P.measure("m.gguf", P.Config(threads=1, n_gen=32), cal=cal)  # only on request

