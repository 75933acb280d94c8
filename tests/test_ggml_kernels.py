"""The CPU dot products BitNet decode runs on (patch 0003's AVX-512 TQ2_0 kernel among them), against numpy.

Each kernel is called exactly as the matmul calls it (ggml's CPU type traits: weights from ggml's quantizer,
activations from the `from_float` of the kernel's `vec_dot_type`) and compared with float64 numpy over the
dequantized values. The integer part of these kernels is exact, so only float rounding differs (bounded below): a
wrong field order, lane, scale or ternary offset is off by far more than that tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest

from lowbit.ggml_kernels import Kernels

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
