"""ggml's CPU quantization kernels of one llama.cpp build, called through ctypes.

The BitNet speed work patches llama.cpp's CPU kernels (`patches/0003-...`, `0005-...`, `0006-...`, `0008-...`).
This module reaches the very functions the matrix multiplications call — `ggml_get_type_traits_cpu(type)->vec_dot`
and the activation quantizer `from_float` of its `vec_dot_type` — plus ggml's reference quantizer and dequantizer,
so a test can compare a kernel with numpy over the dequantized values and a benchmark can time it in isolation.
`mul_mat` runs a whole `ggml_mul_mat` on ggml's CPU backend, which is how the mat-mat paths (prompt processing:
several activation columns per call, e.g. patch 0005's TQ2_0 GEMM) and the mat-vec paths (one column: decode,
patch 0006) are reached.
"""

from __future__ import annotations

import ctypes
import mmap
import platform
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from lowbit import LowbitError
from lowbit.toolchain.build import active_build

# enum ggml_type values (ggml.h at the pinned commit): the types a GGUF's weights and KV cache use
TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8, "Q8_1": 9, "Q2_K": 10, "Q3_K": 11,
         "Q4_K": 12, "Q5_K": 13, "Q6_K": 14, "Q8_K": 15, "IQ2_XXS": 16, "IQ2_XS": 17, "IQ3_XXS": 18,
         "IQ1_S": 19, "IQ4_NL": 20, "IQ3_S": 21, "IQ2_S": 22, "IQ4_XS": 23, "IQ1_M": 29, "BF16": 30,
         "I32": 26, "TQ1_0": 34, "TQ2_0": 35, "MXFP4": 39}

# Types the CPU_REPACK buffer interleaves on x86-64 at the pinned commit (ggml-cpu/repack.cpp,
# ggml_repack_get_optimal_repack_type: AVX2 for Q4_0/Q4_K/IQ4_NL/MXFP4, AVX-512 for Q2_K; rows a multiple of 8).
# Other types must not go into that buffer (its set_tensor crashes on a type it has no layout for).
REPACK_X86 = {"Q4_0": "avx2", "Q4_K": "avx2", "IQ4_NL": "avx2", "MXFP4": "avx2", "Q2_K": "avx512f"}

# quantizers that build search tables for seconds before the first row (IQ1_M: ~30 s on a busy 2-core VM)
SLOW_QUANTIZERS = frozenset({"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S"})
WORK_ALIGN = 64  # bytes: ggml_aligned_malloc's alignment, which the CPU backend's work buffer gets (patch 0007)

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


class _SmallPages:
    """Anonymous memory on 4 KiB pages, as llama.cpp's memory-mapped weights get them (a file mapping gets no
    huge pages), where ggml's own buffers of 2 MiB or more ask for huge pages (patch 0010). A weight the real run
    reads from the model file is probed from here, so its streaming rate is the one decode will see."""

    def __init__(self, nbytes: int) -> None:
        self._map = mmap.mmap(-1, max(nbytes, 1))
        if hasattr(mmap, "MADV_NOHUGEPAGE"):
            self._map.madvise(mmap.MADV_NOHUGEPAGE)
        self._view = (ctypes.c_char * len(self._map)).from_buffer(self._map)
        self.address, self.size = ctypes.addressof(self._view), len(self._map)

    def close(self) -> None:
        del self._view  # the exported pointer first, or mmap refuses to close
        self._map.close()


class _InitParams(ctypes.Structure):  # struct ggml_init_params (ggml.h)
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


class _CPlan(ctypes.Structure):  # struct ggml_cplan (ggml-cpu.h)
    _fields_ = [("work_size", ctypes.c_size_t), ("work_data", ctypes.c_void_p), ("n_threads", ctypes.c_int),
                ("threadpool", ctypes.c_void_p), ("abort_callback", ctypes.c_void_p),
                ("abort_callback_data", ctypes.c_void_p), ("use_ref", ctypes.c_bool)]


_LOG_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_LOG_WARN = 3  # enum ggml_log_level: NONE, DEBUG, INFO, WARN, ERROR, CONT


@_LOG_CALLBACK
def _quiet_log(level: int, text: bytes, _user: int) -> None:
    """ggml's log lines: warnings and errors to stderr, the rest dropped."""
    if level in (_LOG_WARN, _LOG_WARN + 1):
        sys.stderr.write(text.decode(errors="replace"))


class Kernels:
    """The CPU kernels of a build's libggml-base / libggml-cpu (the active build by default)."""

    def __init__(self, build=None) -> None:
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
        self.base.ggml_log_set.argtypes = [_LOG_CALLBACK, ctypes.c_void_p]
        self.base.ggml_log_set(_quiet_log, None)  # ggml's default prints its debug lines (one per repacked tensor)
        self.cpu.ggml_cpu_init()  # fp16 tables, CPU feature detection
        for name, restype, argtypes in (
            ("ggml_init", ctypes.c_void_p, [_InitParams]),
            ("ggml_free", None, [ctypes.c_void_p]),
            ("ggml_new_tensor_2d", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]),
            ("ggml_mul_mat", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]),
            ("ggml_mul_mat_id", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                                  ctypes.c_void_p]),
            ("ggml_new_graph", ctypes.c_void_p, [ctypes.c_void_p]),
            ("ggml_build_forward_expand", None, [ctypes.c_void_p, ctypes.c_void_p]),
            ("ggml_get_data", ctypes.c_void_p, [ctypes.c_void_p]),
            ("ggml_nbytes", ctypes.c_size_t, [ctypes.c_void_p]),
            ("ggml_new_tensor_3d", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int64,
                                                     ctypes.c_int64]),
            ("ggml_flash_attn_ext", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                                      ctypes.c_void_p, ctypes.c_void_p, ctypes.c_float,
                                                      ctypes.c_float, ctypes.c_float]),
            ("ggml_quantize_requires_imatrix", ctypes.c_bool, [ctypes.c_int]),
        ):
            fn = getattr(self.base, name)
            fn.restype, fn.argtypes = restype, argtypes
        self.base.ggml_graph_overhead.restype = ctypes.c_size_t
        self.base.ggml_tensor_overhead.restype = ctypes.c_size_t
        self.cpu.ggml_graph_plan.restype = _CPlan
        self.cpu.ggml_graph_plan.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
        self.cpu.ggml_graph_compute.restype = ctypes.c_int
        for name, restype, argtypes in (
            ("ggml_backend_reg_dev_get", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_size_t]),
            ("ggml_backend_reg_get_proc_address", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_char_p]),
            ("ggml_backend_alloc_ctx_tensors_from_buft", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_void_p]),
            ("ggml_backend_tensor_set", None, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]),
            ("ggml_backend_buffer_free", None, [ctypes.c_void_p]),
            ("ggml_backend_buft_name", ctypes.c_char_p, [ctypes.c_void_p]),
            ("ggml_backend_cpu_buffer_from_ptr", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_size_t]),
            ("ggml_backend_tensor_alloc", ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]),
        ):
            fn = getattr(self.base, name)
            fn.restype, fn.argtypes = restype, argtypes
        self.cpu.ggml_backend_cpu_reg.restype = ctypes.c_void_p
        self.base.ggml_threadpool_params_init.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self.cpu.ggml_threadpool_new.restype = ctypes.c_void_p
        self.cpu.ggml_threadpool_new.argtypes = [ctypes.c_void_p]
        self.cpu.ggml_threadpool_free.argtypes = [ctypes.c_void_p]
        self.cpu.ggml_graph_compute.argtypes = [ctypes.c_void_p, ctypes.POINTER(_CPlan)]

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

        x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
        out = np.zeros(self.row_size(qtype, x.size), dtype=np.uint8)
        tid = self.type_id(qtype)
        # IQ1/IQ2 types refuse to quantize without an importance matrix: a flat one weighs all columns alike
        imatrix = np.ones(x.size, dtype=np.float32) if self.base.ggml_quantize_requires_imatrix(tid) else None
        self.base.ggml_quantize_chunk(tid, x.ctypes.data, out.ctypes.data, 0, 1, x.size,
                                      None if imatrix is None else imatrix.ctypes.data)
        return out

    def quantize_activations(self, qtype: str, y):
        """Activations as the CPU matmul quantizes them for `qtype` (the `from_float` of its vec_dot_type)."""

        y = np.ascontiguousarray(y, dtype=np.float32).reshape(-1)
        dot_type = self.dot_type(qtype)
        out = np.zeros(self.row_size(dot_type, y.size), dtype=np.uint8)
        fn = self.cpu.ggml_get_type_traits_cpu(self.type_id(dot_type)).contents.from_float
        _FROM_FLOAT(fn)(y.ctypes.data, out.ctypes.data, y.size)
        return out

    def dequantize(self, qtype: str, data, n: int):
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

        y = np.ascontiguousarray(y, dtype=np.float32)
        n = y.shape[0]
        if y.shape != (n, k) or wq.size != m * self.row_size(qtype, k):
            raise LowbitError(f"mul_mat: {m}x{k} {qtype} weights ({wq.size} bytes) and activations {y.shape} "
                              "do not fit together")
        with self._matmul_graph(qtype, wq, m, k, y) as (graph, out):
            self._time_graph(graph, threads, 0.0, 1, f"a {qtype} matmul")  # computed once
            res = np.empty((n, m), dtype=np.float32)
            ctypes.memmove(res.ctypes.data, self.base.ggml_get_data(out), res.nbytes)
        return res

    def dot_rate(self, qtype: str, n: int = 256 * 1024, seconds: float = 0.3) -> float:
        """Weight bytes/s one thread's `vec_dot` consumes on a cache-resident row (its compute ceiling).

        One long row (n values, ~70-150 KB of weights + activations) stays in L2, so the rate is the
        kernel's arithmetic, not memory; the ctypes call costs ~1 µs against tens of µs of work.
        """

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

    @staticmethod
    def repacks(qtype: str) -> bool:
        """Does llama.cpp repack weights of `qtype` on this CPU (x86-64 only here; elsewhere: no)?"""

        need = REPACK_X86.get(qtype)
        if not need or platform.machine() not in ("x86_64", "AMD64"):
            return False
        try:
            flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
        except (OSError, StopIteration):
            return False
        return need in flags.split()

    def repack_buffer_type(self):
        """The CPU backend's weight-repacking buffer type (CPU_REPACK), or None where this CPU has none."""
        reg = self.cpu.ggml_backend_cpu_reg()
        dev = self.base.ggml_backend_reg_dev_get(reg, 0)
        addr = self.base.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_dev_get_extra_bufts")
        if not addr:
            return None
        bufts = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(addr)(dev)
        i = 0
        while bufts and bufts[i]:
            if self.base.ggml_backend_buft_name(bufts[i]) == b"CPU_REPACK":
                return bufts[i]
            i += 1
        return None

    def matmul_seconds(self, qtype: str, rows: int, cols: int, batch: int, threads: int,
                       seconds: float = 0.25, min_calls: int = 3, repack: bool = False) -> float:
        """Best wall time of ggml's own CPU `mul_mat` (a `rows x cols` weight of `qtype` times `batch` f32
        columns) computed on `threads` threads through a one-node ggml graph: the real matmul path with its
        activation quantization, chunking and thread pool. `repack=True` puts the weight in the CPU_REPACK
        buffer as llama.cpp does by default (interleaved GEMM/GEMV kernels for Q4_0, Q4_K, IQ4_NL, ... where
        this CPU has them; other types are left as they are)."""

        rng = np.random.default_rng(0)
        if self.base.ggml_quantize_requires_imatrix(self.type_id(qtype)) or qtype in SLOW_QUANTIZERS:
            # IQ1/IQ2 quantizers build their search tables first (seconds to tens of seconds); a kernel's
            # time does not depend on the values, so use random blocks whose every byte pair is a
            # normal f16 (bytes 0x20-0x3b: exponents 8-14), whatever the block layout puts where
            row = rng.integers(0x20, 0x3C, self.row_size(qtype, cols), dtype=np.uint8)
        else:
            row = self.quantize(qtype, rng.standard_normal(cols).astype(np.float32))
        act = rng.standard_normal((batch, cols)).astype(np.float32)
        with self._matmul_graph(qtype, np.tile(row, rows), rows, cols, act, repack) as (graph, _out):
            return self._time_graph(graph, threads, seconds, min_calls, f"a {qtype} matmul")

    def matmul_id_seconds(self, qtype: str, rows: int, cols: int, n_expert: int, n_used: int, n_tokens: int,
                          threads: int, seconds: float = 0.25, min_calls: int = 3) -> float:
        """Best wall time of ggml's CPU `mul_mat_id` (what llama.cpp runs for routed experts): `n_tokens` f32
        columns, each routed to `n_used` of `n_expert` stacked `rows x cols` weights of `qtype`, spread evenly
        (token j uses experts j x n_used ... j x n_used + n_used - 1, modulo n_expert)."""
        rng = np.random.default_rng(0)
        if self.base.ggml_quantize_requires_imatrix(self.type_id(qtype)) or qtype in SLOW_QUANTIZERS:
            row = rng.integers(0x20, 0x3C, self.row_size(qtype, cols), dtype=np.uint8)  # as in matmul_seconds
        else:
            row = self.quantize(qtype, rng.standard_normal(cols).astype(np.float32))
        weights = np.ascontiguousarray(np.tile(row, rows * n_expert))
        ids = np.array([[(j * n_used + u) % n_expert for u in range(n_used)] for j in range(n_tokens)], np.int32)
        act = rng.standard_normal((n_tokens, cols)).astype(np.float32)
        overhead = self.base.ggml_tensor_overhead()
        mem = (weights.nbytes + ids.nbytes + 4 * cols * n_tokens + 4 * rows * n_used * n_tokens + 8 * overhead
               + self.base.ggml_graph_overhead() + 4096)
        pages = _SmallPages(mem)  # the experts are read from the model file, as in a real run
        ctx = self.base.ggml_init(_InitParams(pages.size, pages.address, False))
        if not ctx:
            pages.close()
            raise LowbitError(f"ggml_init could not allocate {mem} bytes for a {qtype} mul_mat_id")
        try:
            w = self.base.ggml_new_tensor_3d(ctx, self.type_id(qtype), cols, rows, n_expert)
            x = self.base.ggml_new_tensor_3d(ctx, TYPES["F32"], cols, 1, n_tokens)  # one row, broadcast to each
            i = self.base.ggml_new_tensor_2d(ctx, TYPES["I32"], n_used, n_tokens)
            for tensor, data in ((w, weights), (x, act), (i, ids)):
                ctypes.memmove(self.base.ggml_get_data(tensor), data.ctypes.data, data.nbytes)
            y = self.base.ggml_mul_mat_id(ctx, w, x, i)
            graph = self.base.ggml_new_graph(ctx)
            self.base.ggml_build_forward_expand(graph, y)
            return self._time_graph(graph, threads, seconds, min_calls, f"a {qtype} mul_mat_id")
        finally:
            self.base.ggml_free(ctx)
            pages.close()

    @contextmanager
    def _matmul_graph(self, qtype: str, weights, rows: int, cols: int, act, repack: bool = False):
        """The one-node ggml graph `ggml_mul_mat(weight, act)` every matmul here runs: a `rows x cols` weight of
        `qtype` (its bytes, `weights`) in CPU_REPACK with `repack` where llama.cpp would repack it, else on 4 KiB
        pages like a memory-mapped model file, times the f32 activations `act` (batch x cols). Yields (graph,
        output tensor); freed after."""
        import numpy as np

        tid = self.type_id(qtype)
        batch = act.shape[0]
        w_bytes = self.row_size(qtype, cols) * rows
        weights = np.ascontiguousarray(weights)  # kept alive: `.ctypes.data` of a temporary would dangle
        act = np.ascontiguousarray(act, dtype=np.float32)
        wctx = self.base.ggml_init(_InitParams(2 * self.base.ggml_tensor_overhead(), None, True))
        mem = (4 * cols * batch + 4 * rows * batch + 3 * self.base.ggml_tensor_overhead()
               + self.base.ggml_graph_overhead() + 4096)
        ctx = self.base.ggml_init(_InitParams(mem, None, False))
        if not ctx or not wctx:
            raise LowbitError(f"ggml_init could not allocate {mem} bytes for a {qtype} matmul")
        buffer = pages = None
        try:
            w = self.base.ggml_new_tensor_2d(wctx, tid, cols, rows)
            if repack and self.repacks(qtype) and rows % 8 == 0:  # llama.cpp's repacked copy: a ggml buffer
                buffer = self.base.ggml_backend_alloc_ctx_tensors_from_buft(wctx, self.repack_buffer_type())
            else:  # read from the model file's mapping in a real run
                pages = _SmallPages(w_bytes)
                buffer = self.base.ggml_backend_cpu_buffer_from_ptr(pages.address, pages.size)
                if buffer and self.base.ggml_backend_tensor_alloc(buffer, w, pages.address) != 0:
                    raise LowbitError(f"could not place a {qtype} weight of {w_bytes} bytes")
            if not buffer:
                raise LowbitError(f"could not allocate a {qtype} weight of {w_bytes} bytes")
            self.base.ggml_backend_tensor_set(w, weights.ctypes.data, 0, w_bytes)  # repacks in CPU_REPACK
            x = self.base.ggml_new_tensor_2d(ctx, TYPES["F32"], cols, batch)
            ctypes.memmove(self.base.ggml_get_data(x), act.ctypes.data, act.nbytes)
            y = self.base.ggml_mul_mat(ctx, w, x)
            graph = self.base.ggml_new_graph(ctx)
            self.base.ggml_build_forward_expand(graph, y)
            yield graph, y
        finally:
            self.base.ggml_free(ctx)
            if buffer:
                self.base.ggml_backend_buffer_free(buffer)
            if pages:
                pages.close()
            self.base.ggml_free(wctx)

    def _time_graph(self, graph, threads: int, seconds: float, min_calls: int, what: str) -> float:
        """Best wall time of computing `graph` on a persistent, polling thread pool as llama.cpp uses (ggml's
        default would start threads on every call)."""

        params = ctypes.create_string_buffer(4096)  # struct ggml_threadpool_params (~530 bytes)
        self.base.ggml_threadpool_params_init(params, threads)
        pool = self.cpu.ggml_threadpool_new(params)
        plan = self.cpu.ggml_graph_plan(graph, threads, pool)
        # e.g. activations quantized for the kernel; 64-byte aligned as the patched CPU backend allocates it
        # (patch 0007): at numpy's 16 bytes, flash attention's 512-bit tile accesses split cache lines (1.5x)
        work = np.zeros(max(plan.work_size, 1) + WORK_ALIGN, dtype=np.uint8)
        plan.work_data = work.ctypes.data + (-work.ctypes.data) % WORK_ALIGN
        best, calls, start = float("inf"), 0, time.perf_counter()
        try:
            while time.perf_counter() - start < seconds or calls < min_calls:
                t = time.perf_counter()
                if self.cpu.ggml_graph_compute(graph, ctypes.byref(plan)) != 0:
                    raise LowbitError(f"ggml could not compute {what}")
                best = min(best, time.perf_counter() - t)
                calls += 1
        finally:
            self.cpu.ggml_threadpool_free(pool)
        return best

    def flash_attn_seconds(self, head_dim: int, n_head: int, n_head_kv: int, n_kv: int, n_tokens: int,
                           threads: int, kv_type: str = "F16", seconds: float = 0.1, min_calls: int = 3,
                           value_dim: int | None = None, masked: bool = False) -> float:
        """Best wall time of ggml's CPU `flash_attn_ext` (what llama.cpp runs with flash attention, the CPU
        default): `n_tokens` queries of `n_head` heads over `n_kv` cached positions of `n_head_kv` heads;
        `masked` passes an (all-visible) f16 mask as llama.cpp always does, whose reads the kernel pays for."""
        with self._flash_attn_graph(head_dim, value_dim or head_dim, n_head, n_head_kv, n_kv, n_tokens, kv_type,
                                    masked) as (graph, tensors):
            for t in tensors[:3]:  # bytes 0x20: small normal f16/f32 values and valid quant blocks
                ctypes.memset(self.base.ggml_get_data(t), 0x20, self.base.ggml_nbytes(t))
            if masked:  # f16 zeros: every position visible
                ctypes.memset(self.base.ggml_get_data(tensors[3]), 0, self.base.ggml_nbytes(tensors[3]))
            return self._time_graph(graph, threads, seconds, min_calls, "flash attention")

    def flash_attn(self, q, k, v, mask=None, threads: int = 1):
        """ggml's CPU `flash_attn_ext` of f32 queries `q` (n_head x n_tokens x head_dim) over an f16 cache `k`
        (n_head_kv x n_kv x head_dim) and `v` (n_head_kv x n_kv x value_dim), with an optional additive mask
        (n_tokens x n_kv, -inf hides a position), scaled by 1/sqrt(head_dim). Returns n_tokens x n_head x
        value_dim, as llama.cpp reads it."""
        q = np.ascontiguousarray(q, dtype=np.float32)
        k, v = (np.ascontiguousarray(a, dtype=np.float16) for a in (k, v))
        (n_head, n_tokens, head_dim), (n_head_kv, n_kv, value_dim) = q.shape, v.shape
        if k.shape != (n_head_kv, n_kv, head_dim) or n_head % n_head_kv:
            raise LowbitError(f"flash_attn: queries {q.shape}, keys {k.shape} and values {v.shape} do not fit")
        arrays = [q, k, v]
        if mask is not None:
            arrays.append(np.ascontiguousarray(np.broadcast_to(mask, (n_tokens, n_kv)), dtype=np.float16))
        with self._flash_attn_graph(head_dim, value_dim, n_head, n_head_kv, n_kv, n_tokens, "F16",
                                    mask is not None) as (graph, tensors):
            for t, a in zip(tensors[:-1], arrays, strict=True):  # the inputs; the last is the output
                ctypes.memmove(self.base.ggml_get_data(t), a.ctypes.data, a.nbytes)
            self._time_graph(graph, threads, 0.0, 1, "flash attention")  # computed once
            res = np.empty((n_tokens, n_head, value_dim), dtype=np.float32)
            ctypes.memmove(res.ctypes.data, self.base.ggml_get_data(tensors[-1]), res.nbytes)
        return res

    @contextmanager
    def _flash_attn_graph(self, head_dim: int, value_dim: int, n_head: int, n_head_kv: int, n_kv: int,
                          n_tokens: int, kv_type: str, masked: bool):
        """The one-node graph `ggml_flash_attn_ext(q, k, v, mask)` both callers run. Yields (graph, [q, k, v,
        (mask,) out]) for the caller to fill; freed after."""
        kv = self.type_id(kv_type)
        sizes = [4 * head_dim * n_tokens * n_head, self.row_size(kv_type, head_dim) * n_kv * n_head_kv,
                 self.row_size(kv_type, value_dim) * n_kv * n_head_kv, 4 * value_dim * n_tokens * n_head,
                 2 * n_kv * n_tokens if masked else 0]
        mem = sum(sizes) + 8 * self.base.ggml_tensor_overhead() + self.base.ggml_graph_overhead() + 4096
        ctx = self.base.ggml_init(_InitParams(mem, None, False))
        if not ctx:
            raise LowbitError(f"ggml_init could not allocate {mem} bytes for flash attention")
        try:
            tensors = [self.base.ggml_new_tensor_3d(ctx, TYPES["F32"], head_dim, n_tokens, n_head),
                       self.base.ggml_new_tensor_3d(ctx, kv, head_dim, n_kv, n_head_kv),
                       self.base.ggml_new_tensor_3d(ctx, kv, value_dim, n_kv, n_head_kv)]
            if masked:
                tensors.append(self.base.ggml_new_tensor_2d(ctx, TYPES["F16"], n_kv, n_tokens))
            out = self.base.ggml_flash_attn_ext(ctx, *tensors[:3], tensors[3] if masked else None,
                                                1.0 / head_dim**0.5, 0.0, 0.0)
            graph = self.base.ggml_new_graph(ctx)
            self.base.ggml_build_forward_expand(graph, out)
            yield graph, [*tensors, out]
        finally:
            self.base.ggml_free(ctx)



def dequantize_q8_k(data, n: int):
    """Q8_K blocks (f32 d, int8 qs[256], int16 bsums[16]) to floats.

    Q8_K exists only as the activation side of the K-quant dot products, so neither ggml (no `to_float`) nor
    gguf-py dequantizes it; the layout is block_q8_K in ggml-common.h.
    """

    block = np.dtype([("d", "<f4"), ("qs", "i1", 256), ("bsums", "<i2", 16)])
    blocks = np.frombuffer(np.asarray(data, dtype=np.uint8).tobytes(), dtype=block, count=n // 256)
    return (blocks["d"][:, None] * blocks["qs"].astype(np.float32)).reshape(-1)
