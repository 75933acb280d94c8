"""ggml's CPU quantization kernels of one llama.cpp build, called through ctypes.

The BitNet speed work patches llama.cpp's CPU dot products (`patches/0003-...`, `0005-...`). This module reaches
the very functions the matrix multiplications call — `ggml_get_type_traits_cpu(type)->vec_dot` and the activation
quantizer `from_float` of its `vec_dot_type` — plus ggml's reference quantizer and dequantizer, so a test can
compare a kernel with numpy over the dequantized values and a benchmark can time it in isolation. `mul_mat`
runs a whole `ggml_mul_mat` on ggml's CPU backend, which is how the mat-mat paths (prompt processing: several
activation columns per call, e.g. patch 0005's TQ2_0 GEMM) are reached.
"""

from __future__ import annotations

import ctypes
import sys
import time
from pathlib import Path

from lowbit import LowbitError

# enum ggml_type values (ggml.h at the pinned commit)
TYPES = {"F32": 0, "Q4_0": 2, "Q8_0": 8, "Q6_K": 14, "Q8_K": 15, "TQ1_0": 34, "TQ2_0": 35}

_TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
_FROM_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
_VEC_DOT = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t,
                            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


class _TypeTraits(ctypes.Structure):  # struct ggml_type_traits (ggml.h)
    _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64),
                ("blck_size_interleave", ctypes.c_int64), ("type_size", ctypes.c_size_t),
                ("is_quantized", ctypes.c_bool), ("to_float", ctypes.c_void_p), ("from_float_ref", ctypes.c_void_p)]


class _CpuTraits(ctypes.Structure):  # struct ggml_type_traits_cpu (ggml-cpu.h)
    _fields_ = [("from_float", ctypes.c_void_p), ("vec_dot", ctypes.c_void_p), ("vec_dot_type", ctypes.c_int),
                ("nrows", ctypes.c_int64)]


class _InitParams(ctypes.Structure):  # struct ggml_init_params (ggml.h)
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


class Kernels:
    """The CPU kernels of a build's libggml-base / libggml-cpu (the active build by default)."""

    def __init__(self, build=None) -> None:
        from lowbit.build import active_build

        build = build or active_build()
        suffix = ".dylib" if sys.platform == "darwin" else ".so"
        libs = {name: Path(build.bin_dir) / f"lib{name}{suffix}" for name in ("ggml-base", "ggml-cpu")}
        missing = [str(p) for p in libs.values() if not p.exists()]
        if missing:
            raise LowbitError(f"{', '.join(missing)} missing: the kernels need a shared-library build "
                              "(`invoke build-llama`)")
        self.base = ctypes.CDLL(str(libs["ggml-base"]), mode=ctypes.RTLD_GLOBAL)
        self.cpu = ctypes.CDLL(str(libs["ggml-cpu"]), mode=ctypes.RTLD_GLOBAL)
        self.base.ggml_get_type_traits.restype = ctypes.POINTER(_TypeTraits)
        self.base.ggml_get_type_traits.argtypes = [ctypes.c_int]
        self.base.ggml_row_size.restype = ctypes.c_size_t
        self.base.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
        self.base.ggml_quantize_chunk.restype = ctypes.c_size_t
        self.base.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                                  ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
        self.cpu.ggml_get_type_traits_cpu.restype = ctypes.POINTER(_CpuTraits)
        self.cpu.ggml_get_type_traits_cpu.argtypes = [ctypes.c_int]
        for name, restype, argtypes in (
                ("ggml_init", ctypes.c_void_p, [_InitParams]),
                ("ggml_free", None, [ctypes.c_void_p]),
                ("ggml_new_tensor_2d", ctypes.c_void_p,
                 [ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]),
                ("ggml_get_data", ctypes.c_void_p, [ctypes.c_void_p]),
                ("ggml_nbytes", ctypes.c_size_t, [ctypes.c_void_p]),
                ("ggml_mul_mat", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]),
                ("ggml_new_graph", ctypes.c_void_p, [ctypes.c_void_p]),
                ("ggml_build_forward_expand", None, [ctypes.c_void_p, ctypes.c_void_p])):
            getattr(self.base, name).restype = restype
            getattr(self.base, name).argtypes = argtypes
        self.cpu.ggml_graph_compute_with_ctx.restype = ctypes.c_int
        self.cpu.ggml_graph_compute_with_ctx.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
        self.cpu.ggml_cpu_init()  # fp16 tables, CPU feature detection

    @staticmethod
    def type_id(name: str) -> int:
        if name not in TYPES:
            raise LowbitError(f"unknown ggml type {name!r}; known here: {', '.join(TYPES)}")
        return TYPES[name]

    def row_size(self, qtype: str, n: int) -> int:
        return int(self.base.ggml_row_size(self.type_id(qtype), n))

    def dot_type(self, qtype: str) -> str:
        """The type the activations are quantized to for `qtype`'s dot product (Q8_K, Q8_0, ...)."""
        tid = self.cpu.ggml_get_type_traits_cpu(self.type_id(qtype)).contents.vec_dot_type
        return next(name for name, v in TYPES.items() if v == tid)

    def quantize(self, qtype: str, x):
        """Weights: ggml's reference quantizer (what llama-quantize writes). Returns a uint8 array."""
        import numpy as np

        x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
        out = np.zeros(self.row_size(qtype, x.size), dtype=np.uint8)
        self.base.ggml_quantize_chunk(self.type_id(qtype), x.ctypes.data, out.ctypes.data, 0, 1, x.size, None)
        return out

    def quantize_activations(self, qtype: str, y):
        """Activations as the CPU matmul quantizes them for `qtype` (the `from_float` of its vec_dot_type)."""
        import numpy as np

        y = np.ascontiguousarray(y, dtype=np.float32).reshape(-1)
        dot_type = self.dot_type(qtype)
        out = np.zeros(self.row_size(dot_type, y.size), dtype=np.uint8)
        fn = self.cpu.ggml_get_type_traits_cpu(self.type_id(dot_type)).contents.from_float
        _FROM_FLOAT(fn)(y.ctypes.data, out.ctypes.data, y.size)
        return out

    def dequantize(self, qtype: str, data, n: int):
        import numpy as np

        if qtype == "Q8_K":
            return dequantize_q8_k(data, n)
        out = np.zeros(n, dtype=np.float32)
        fn = self.base.ggml_get_type_traits(self.type_id(qtype)).contents.to_float
        _TO_FLOAT(fn)(data.ctypes.data, out.ctypes.data, n)
        return out

    def vec_dot_fn(self, qtype: str):
        return _VEC_DOT(self.cpu.ggml_get_type_traits_cpu(self.type_id(qtype)).contents.vec_dot)

    def vec_dot(self, qtype: str, xq, yq, n: int) -> float:
        """The CPU backend's dot product of one quantized weight row with quantized activations."""
        s = ctypes.c_float()
        self.vec_dot_fn(qtype)(n, ctypes.addressof(s), 0, xq.ctypes.data, 0, yq.ctypes.data, 0, 1)
        return float(s.value)

    def mul_mat(self, qtype: str, wq, m: int, k: int, y, threads: int = 1):
        """`ggml_mul_mat` of m quantized weight rows (`wq`, k values each, from `quantize`) with the float
        activations `y` (n x k) on ggml's CPU backend: the path a prompt of n tokens takes. Returns n x m."""
        import numpy as np

        y = np.ascontiguousarray(y, dtype=np.float32)
        n = y.shape[0]
        if y.shape != (n, k) or wq.size != m * self.row_size(qtype, k):
            raise LowbitError(f"mul_mat: {m}x{k} {qtype} weights ({wq.size} bytes) and activations {y.shape} "
                              "do not fit together")
        # tensors + graph + the work buffer ggml_graph_compute_with_ctx takes from the context (activations
        # quantized to the dot type, about n*k bytes) with room to spare
        size = 2 * (wq.size + y.nbytes + 4 * n * m) + 4 * n * k + (16 << 20)
        ctx = self.base.ggml_init(_InitParams(size, None, False))
        if not ctx:
            raise LowbitError(f"ggml_init could not allocate {size} bytes")
        try:
            w_t = self.base.ggml_new_tensor_2d(ctx, self.type_id(qtype), k, m)
            y_t = self.base.ggml_new_tensor_2d(ctx, TYPES["F32"], k, n)
            ctypes.memmove(self.base.ggml_get_data(w_t), wq.ctypes.data, wq.size)
            ctypes.memmove(self.base.ggml_get_data(y_t), y.ctypes.data, y.nbytes)
            out = self.base.ggml_mul_mat(ctx, w_t, y_t)
            graph = self.base.ggml_new_graph(ctx)
            self.base.ggml_build_forward_expand(graph, out)
            status = self.cpu.ggml_graph_compute_with_ctx(ctx, graph, threads)
            if status != 0:
                raise LowbitError(f"ggml_graph_compute failed (status {status})")
            res = np.empty((n, m), dtype=np.float32)
            ctypes.memmove(res.ctypes.data, self.base.ggml_get_data(out), res.nbytes)
            return res
        finally:
            self.base.ggml_free(ctx)

    def dot_rate(self, qtype: str, n: int = 256 * 1024, seconds: float = 0.3) -> float:
        """Weight bytes/s one thread's `vec_dot` consumes on a cache-resident row (its compute ceiling).

        One long row (n values, ~70-150 KB of weights + activations) stays in L2, so the rate is the
        kernel's arithmetic, not memory; the ctypes call costs ~1 µs against tens of µs of work.
        """
        import numpy as np

        rng = np.random.default_rng(0)
        w = rng.integers(-1, 2, n).astype(np.float32) if qtype.startswith("TQ") else rng.standard_normal(n)
        xq, yq = self.quantize(qtype, w), self.quantize_activations(qtype, rng.standard_normal(n))
        fn, s = self.vec_dot_fn(qtype), ctypes.c_float()
        args = (n, ctypes.addressof(s), 0, xq.ctypes.data, 0, yq.ctypes.data, 0, 1)
        best, calls, start = float("inf"), 0, time.perf_counter()
        while time.perf_counter() - start < seconds or calls < 20:
            t = time.perf_counter()
            fn(*args)
            best = min(best, time.perf_counter() - t)
            calls += 1
        return xq.size / best


def dequantize_q8_k(data, n: int):
    """Q8_K blocks (f32 d, int8 qs[256], int16 bsums[16]) to floats.

    Q8_K exists only as the activation side of the K-quant dot products, so neither ggml (no `to_float`) nor
    gguf-py dequantizes it; the layout is block_q8_K in ggml-common.h.
    """
    import numpy as np

    block = np.dtype([("d", "<f4"), ("qs", "i1", 256), ("bsums", "<i2", 16)])
    blocks = np.frombuffer(np.asarray(data, dtype=np.uint8).tobytes(), dtype=block, count=n // 256)
    return (blocks["d"][:, None] * blocks["qs"].astype(np.float32)).reshape(-1)
