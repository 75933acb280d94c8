"""The CPU kernels BitNet runs on (patch 0003's AVX-512 TQ2_0 dot product, patch 0005's TQ2_0 GEMM, patch 0006's
multi-row TQ2_0 mat-vec), against numpy.

Each dot product is called exactly as the matmul calls it (ggml's CPU type traits: weights from ggml's quantizer,
activations from the `from_float` of the kernel's `vec_dot_type`) and compared with float64 numpy over the
dequantized values; whole matrix products go through `ggml_mul_mat` on the CPU backend, where several activation
columns (a prompt) take the mat-mat path and one column (decode) the mat-vec kernel (the dot products where the
CPU has none). The integer part of these
kernels is exact, so only float rounding differs (bounded below): a wrong field order, lane, scale or ternary
offset is off by far more than that tolerance.
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import numpy as np
import pytest

from lowbit.toolchain.ggml_kernels import Kernels

SIZES = (256, 512, 2560, 6912, 256 * 33)


@pytest.fixture(scope="module")
def kernels(llama_build):
    return Kernels(llama_build)


def _check(kernels: Kernels, qtype: str, w: np.ndarray, a: np.ndarray) -> None:
    n = w.size
    xq, yq = kernels.quantize(qtype, w), kernels.quantize_activations(qtype, a)
    x = kernels.dequantize(qtype, xq, n).astype(np.float64)
    y = kernels.dequantize(kernels.dot_type(qtype), yq, n).astype(np.float64)
    want = float(np.dot(x, y))
    got = kernels.vec_dot(qtype, xq, yq, n)
    # The kernels compute d * (dot(codes, y) - sum(y)) with codes = q + 1 in {0, 1, 2}: float rounding is
    # relative to the size of those terms, i.e. sum((|x| + d) * |y|) with d each block's magnitude.
    d = np.repeat(np.abs(x).reshape(-1, 256).max(axis=1), 256)
    scale = float(((np.abs(x) + d) * np.abs(y)).sum()) + 1e-30
    assert abs(got - want) <= 1e-5 * scale, f"{qtype} n={n}: kernel {got} vs numpy {want} (scale {scale})"


@pytest.mark.parametrize("qtype", ["TQ2_0", "TQ1_0"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ternary_dot_matches_numpy(kernels, qtype, seed):
    rng = np.random.default_rng(seed)
    for n in SIZES:
        # ternary weights with a per-block magnitude that varies block to block (TQ blocks store their own f16)
        scale = np.repeat(rng.uniform(0.01, 2.0, n // 256), 256)
        w = rng.integers(-1, 2, n) * scale
        _check(kernels, qtype, w, rng.standard_normal(n) * rng.uniform(0.1, 10))


@pytest.mark.parametrize("qtype", ["TQ2_0", "TQ1_0"])
def test_ternary_dot_extremes(kernels, qtype):
    """All +1 / all -1 / all 0 weights against activations at the int8 limits (overflow, offset and sign paths)."""
    n = 2560
    rng = np.random.default_rng(3)
    big = np.where(rng.random(n) < 0.5, 1.0, -1.0) * 100.0  # quantizes to ±127 in every Q8_K block
    for w in (np.ones(n), -np.ones(n), np.zeros(n), np.tile([1.0, 0.0, -1.0, 1.0], n // 4)):
        for a in (np.full(n, 100.0), np.full(n, -100.0), big, rng.standard_normal(n)):
            _check(kernels, qtype, w, a)


def test_dot_is_position_sensitive(kernels):
    """A single +1 weight picks exactly its own activation: catches fields read from the wrong lane."""
    n = 512
    a = np.arange(1, n + 1, dtype=np.float64) % 97 - 48
    for pos in (0, 1, 31, 32, 63, 64, 100, 127, 128, 191, 192, 255, 256, 300, 511):
        w = np.zeros(n)
        w[pos] = 1.0
        _check(kernels, "TQ2_0", w, a)


def test_control_types_match_numpy(kernels):
    """Q6_K (the tied output matrix) and Q4_0 go through the same harness: the harness itself is sound."""
    rng = np.random.default_rng(4)
    for qtype in ("Q6_K", "Q4_0"):
        for n in (256, 2560):
            x = rng.standard_normal(n)
            xq, yq = kernels.quantize(qtype, x), kernels.quantize_activations(qtype, rng.standard_normal(n))
            want = float(np.dot(kernels.dequantize(qtype, xq, n).astype(np.float64),
                                kernels.dequantize(kernels.dot_type(qtype), yq, n).astype(np.float64)))
            got = kernels.vec_dot(qtype, xq, yq, n)
            assert abs(got - want) <= 1e-3 * max(1.0, abs(want)), (qtype, n, got, want)


def _check_matmul(kernels: Kernels, qtype: str, w: np.ndarray, a: np.ndarray, threads: int = 1) -> None:
    """`ggml_mul_mat(w, a)` against float64 numpy over the dequantized weights and Q8_K activations."""
    (m, k), n = w.shape, a.shape[0]
    wq = kernels.quantize(qtype, w)  # blocks never cross rows (k is a multiple of 256)
    x = kernels.dequantize(qtype, wq, m * k).astype(np.float64).reshape(m, k)
    dot_type = kernels.dot_type(qtype)
    y = np.stack([kernels.dequantize(dot_type, kernels.quantize_activations(qtype, col), k) for col in a])
    y = y.astype(np.float64)
    want = y @ x.T
    got = kernels.mul_mat(qtype, wq, m, k, a, threads)
    d = np.repeat(np.abs(x).reshape(m, -1, 256).max(axis=2), 256, axis=1)
    scale = np.abs(y) @ (np.abs(x) + d).T + 1e-30
    err = np.abs(got - want) / scale
    worst = np.unravel_index(int(np.argmax(err)), err.shape)
    assert err.max() <= 1e-5, (f"{qtype} {m}x{k} @ {n} columns, {threads} thread(s): column {worst[0]} row "
                               f"{worst[1]}: {got[worst]} vs numpy {want[worst]}")


def _ternary(rng, m: int, k: int) -> np.ndarray:
    """Ternary rows whose magnitude changes block to block and row to row (TQ2_0 stores one f16 per block)."""
    return rng.integers(-1, 2, (m, k)) * rng.uniform(0.01, 2.0, (m, k // 256)).repeat(256, axis=1)


@pytest.mark.parametrize("m,k,n,threads", [
    (16, 256, 8, 1),      # one tile of rows, the fewest columns the GEMM takes
    (32, 512, 8, 2),      # one full column group per thread
    (48, 2560, 13, 2),    # a column group and a remainder of 5; 3 row tiles over 2 threads
    (64, 6912, 23, 1),    # BitNet's FFN width, a remainder of 7
    (16, 512, 9, 2),      # a remainder of 1; one tile, so the second thread has none
    (32, 256, 11, 1),     # a remainder of 3
    (80, 512, 10, 1),     # 5 row tiles on one thread, an odd count
    (24, 512, 9, 2),      # rows not a multiple of the tile: the generic path
    (32, 512, 7, 1),      # below the GEMM's column minimum: the dot products
    (32, 512, 1, 2),      # one column: matrix-vector (decode)
])
def test_ternary_matmul_matches_numpy(kernels, m, k, n, threads):
    rng = np.random.default_rng(m * 7 + n)
    a = rng.standard_normal((n, k)) * rng.uniform(0.1, 10, (n, 1))
    _check_matmul(kernels, "TQ2_0", _ternary(rng, m, k), a, threads)


def test_ternary_matmul_extremes_and_positions(kernels):
    """Every row a different single +1 (one per lane of a tile, at block and field boundaries), then all
    +1 / -1 rows against activations at the int8 limits: catches a lane, field or column read from the
    wrong place and any overflow of the integer sums."""
    k, n = 512, 8
    positions = (0, 1, 3, 4, 31, 32, 63, 64, 127, 128, 200, 255, 256, 300, 447, 511)
    w = np.zeros((len(positions), k))
    w[np.arange(len(positions)), positions] = 1.0
    a = (np.arange(n * k).reshape(n, k) % 97 - 48).astype(np.float64)
    _check_matmul(kernels, "TQ2_0", w, a)
    rng = np.random.default_rng(5)
    w = np.concatenate([np.ones((8, k)), -np.ones((8, k)), np.zeros((8, k)),
                        np.tile([1.0, 0.0, -1.0, 1.0], (8, k // 4))])
    big = np.where(rng.random((n, k)) < 0.5, 1.0, -1.0) * 100.0
    _check_matmul(kernels, "TQ2_0", w, np.concatenate([np.full((4, k), 100.0), np.full((4, k), -100.0), big]), 2)


def test_control_matmul_matches_numpy(kernels):
    """Q4_0 (llamafile's tinyBLAS) and TQ1_0 (dot products) through the same mul_mat harness."""
    rng = np.random.default_rng(6)
    a = rng.standard_normal((6, 512))
    _check_matmul(kernels, "TQ1_0", _ternary(rng, 32, 512), a)
    _check_matmul(kernels, "Q4_0", rng.standard_normal((32, 512)), a)


@pytest.mark.parametrize("m,k,n,threads", [
    (1, 256, 1, 1),       # one row: only the single-row remainder
    (3, 512, 1, 1),       # fewer rows than one pass of 4
    (4, 256, 1, 1),       # exactly one pass
    (7, 2560, 1, 2),      # a pass and a remainder of 3, rows split over 2 threads
    (37, 6912, 1, 2),     # BitNet's FFN width, a remainder of 1
    (3200, 2560, 1, 2),   # 2 MiB of rows: a span of ~32 KiB chunks per thread (52 rows each: 4-row passes)
    (3201, 2560, 1, 3),   # three spans of unequal length, the last chunk a single row
    (1001, 6912, 1, 4),   # four threads on fewer cores: spans finished early take chunks from the others' ends
    (60, 2560, 1, 4),     # two chunks for four threads: two spans are empty from the start
    (1, 512, 2, 2),       # fewer rows than columns: one column per thread, the second at a column offset
    (2, 256, 3, 3),       # one column per thread, three threads
])
def test_ternary_matvec_matches_numpy(kernels, m, k, n, threads):
    """One activation column per chunk (decode): the mat-vec path, including where it writes in dst."""
    rng = np.random.default_rng(m * 11 + k + n)
    a = rng.standard_normal((n, k)) * rng.uniform(0.1, 10, (n, 1))
    _check_matmul(kernels, "TQ2_0", _ternary(rng, m, k), a, threads)


def test_ternary_matvec_extremes_and_positions(kernels):
    """The mat-vec path with a different single +1 per row (lane, field and block boundaries, rows in every
    slot of a pass) and with all +1 / -1 / 0 rows against activations at the int8 limits, one column each."""
    k = 512
    positions = (0, 1, 3, 4, 31, 32, 63, 64, 127, 128, 200, 255, 256, 300, 447, 511, 129)
    w = np.zeros((len(positions), k))
    w[np.arange(len(positions)), positions] = 1.0
    _check_matmul(kernels, "TQ2_0", w, (np.arange(k) % 97 - 48).astype(np.float64)[None, :])
    rng = np.random.default_rng(7)
    w = np.concatenate([np.ones((5, k)), -np.ones((5, k)), np.zeros((3, k)),
                        np.tile([1.0, 0.0, -1.0, 1.0], (5, k // 4))])
    big = np.where(rng.random(k) < 0.5, 1.0, -1.0) * 100.0
    for a in (np.full(k, 100.0), np.full(k, -100.0), big):
        _check_matmul(kernels, "TQ2_0", w, a[None, :], 2)


def test_control_matvec_matches_numpy(kernels):
    """One column of Q6_K (BitNet's tied output matrix), TQ1_0 and Q4_0: the per-row mat-vec path every type
    without its own mat-vec kernel takes, over several >= 256 KiB chunks on 2 threads."""
    rng = np.random.default_rng(8)
    _check_matmul(kernels, "Q6_K", rng.standard_normal((1100, 2560)), rng.standard_normal((1, 2560)), 2)
    _check_matmul(kernels, "TQ1_0", _ternary(rng, 37, 512), rng.standard_normal((1, 512)), 2)
    _check_matmul(kernels, "Q4_0", rng.standard_normal((33, 512)), rng.standard_normal((1, 512)))


def _mapping_of(address: int) -> dict[str, str]:
    """The /proc/self/smaps fields of the mapping that holds `address`."""
    fields: dict[str, str] = {}
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:  # "start-end perms offset dev inode path": a new mapping
            start, end = (int(x, 16) for x in head.split("-"))
            inside = start <= address < end
        elif inside:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="transparent huge pages are Linux's")
def test_large_cpu_buffers_ask_for_huge_pages(kernels):
    """Patch 0010: a CPU backend buffer of 2 MiB or more (a model loaded into memory, the KV cache) starts on a
    2 MiB boundary and is marked for transparent huge pages, so a mat-vec streams its weights without a TLB miss
    every 4 KiB; a small one keeps the usual alignment."""
    base = kernels.base
    base.ggml_backend_buft_alloc_buffer.restype = ctypes.c_void_p
    base.ggml_backend_buft_alloc_buffer.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    base.ggml_backend_buffer_get_base.restype = ctypes.c_void_p
    base.ggml_backend_buffer_get_base.argtypes = [ctypes.c_void_p]
    kernels.cpu.ggml_backend_cpu_buffer_type.restype = ctypes.c_void_p
    buffer = base.ggml_backend_buft_alloc_buffer(kernels.cpu.ggml_backend_cpu_buffer_type(), 6 << 20)
    try:
        address = base.ggml_backend_buffer_get_base(buffer)
        assert address % (2 << 20) == 0, f"a 6 MiB CPU buffer at {address:#x}: not on a 2 MiB boundary"
        mode = Path("/sys/kernel/mm/transparent_hugepage/enabled")
        if mode.exists() and "[never]" not in mode.read_text():
            assert _mapping_of(address).get("THPeligible") == "1", "the buffer's mapping is not THP-eligible"
    finally:
        base.ggml_backend_buffer_free(buffer)


def _attention_reference(q, k, v, mask):
    """softmax(q k^T / sqrt(d) + mask) v in float64 over the f16-rounded cache, heads grouped over the KV heads."""
    n_head, n_head_kv = q.shape[0], k.shape[0]
    k64, v64 = k.astype(np.float16).astype(np.float64), v.astype(np.float16).astype(np.float64)
    out = np.empty((q.shape[1], n_head, v.shape[2]))
    for h in range(n_head):
        kv = h // (n_head // n_head_kv)
        s = q[h].astype(np.float64) @ k64[kv].T / np.sqrt(q.shape[2]) + mask
        p = np.exp(s - s.max(axis=1, keepdims=True))
        out[:, h] = (p / p.sum(axis=1, keepdims=True)) @ v64[kv]
    return out


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize(("head_dim", "value_dim", "n_head", "n_head_kv", "n_kv", "n_tokens"), [
    (64, 64, 4, 4, 200, 100),  # 100 queries: a full 64-row Q tile and a partial one per head
    (320, 256, 2, 1, 130, 64),  # DeepSeek MLA's shape: K != V, 2 heads over one cache head, a partial KV tile
    (64, 64, 8, 2, 96, 160),  # grouped heads, more Q tiles than threads
    (64, 64, 4, 4, 80, 12),  # fewer queries than a tile: the untiled path
])
def test_flash_attention_matches_numpy(kernels, threads, head_dim, value_dim, n_head, n_head_kv, n_kv, n_tokens):
    """ggml's CPU flash attention (patch 0007: only a tile's valid query rows multiplied, chunks of whole Q
    tiles) against float64 numpy, with a causal mask whose first rows hide whole KV tiles."""
    rng = np.random.default_rng(n_kv + n_tokens)
    q = rng.standard_normal((n_head, n_tokens, head_dim))
    k = rng.standard_normal((n_head_kv, n_kv, head_dim))
    v = rng.standard_normal((n_head_kv, n_kv, value_dim))
    past = n_kv - n_tokens if n_kv > n_tokens else 0
    visible = np.arange(n_kv)[None, :] <= past + np.arange(n_tokens)[:, None]
    mask = np.where(visible, 0.0, -np.inf)
    got = kernels.flash_attn(q, k, v, mask, threads)
    want = _attention_reference(q, k, v, mask)
    # ggml rounds q and the softmax weights to f16 on some paths: tolerance relative to the values' scale
    assert np.abs(got - want).max() <= 2e-2 * np.abs(want).max(), np.abs(got - want).max()
    # a query that sees one position more gets a different answer: the check is position-sensitive
    assert np.abs(got[1:] - got[:-1]).max() > 1e-2


def _q8_k_reference(x: np.ndarray) -> np.ndarray:
    """ggml's quantize_row_q8_K_ref in float32 numpy, as bytes: per 256 values the scale from the first value of
    the largest magnitude (iscale = -127 / it), round half to even, at most 127, and the 16 sums of 16."""
    block = np.dtype([("d", "<f4"), ("qs", "i1", 256), ("bsums", "<i2", 16)])
    out = np.zeros(x.size // 256, dtype=block)
    for i, xs in enumerate(x.astype(np.float32).reshape(-1, 256)):
        ax = np.abs(xs)
        if ax.max() == 0:
            continue  # d, qs and bsums all zero
        iscale = np.float32(-127.0) / xs[int(np.argmax(ax))]  # argmax: the first of equal magnitudes
        q = np.minimum(np.rint(iscale * xs), 127).astype(np.int32)
        out[i]["qs"], out[i]["bsums"] = q, q.reshape(16, 16).sum(axis=1)
        out[i]["d"] = np.float32(1) / iscale
    return out.view(np.uint8)


def test_q8_k_activations_match_the_reference_bit_for_bit(kernels):
    """The activation quantizer K-quant and TQ2_0 matmuls run (patch 0008 vectorises it on AVX-512): equal to the
    reference algorithm to the byte, including a tie of opposite signs for the largest magnitude, an all-zero
    block, halves that round to even, and a negative largest value."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal(256 * 6).astype(np.float32) * rng.uniform(0.01, 100, 6).repeat(256).astype(np.float32)
    x[256:512] = 0.0  # an all-zero block
    x[512 + 7], x[512 + 200] = -50.0, 50.0  # the first of equal magnitudes (negative) sets the sign of the scale
    x[768:1024] = np.arange(256, dtype=np.float32) % 50 - 24.5  # iscale 1 below: every value a .5 to round
    x[768] = -127.0
    x[1024 + 3] = -1e3  # a negative largest value
    got = kernels.quantize_activations("TQ2_0", x)
    want = _q8_k_reference(x)
    assert got.tobytes() == want.tobytes(), np.flatnonzero(got != want)[:10]
