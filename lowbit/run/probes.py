"""Kernel times for the exact shapes a model runs: measured through ggml on first use, kept in the calibration.

The calibration's per-type rates come from one probe shape each (4096-wide rows, a few MB). A model's own
matrices differ: on the reference machine 256-wide Q8_0 rows run 1.3x faster per byte than 4096-wide ones and
Q4_K rows 1.5x slower, a 200 KB matrix spends a third of its time starting and joining the thread pool, and
ggml's flash attention cuts 64 tokens x 2 heads into part-filled tiles on two threads (MLA at depth 2048:
2.2x slower than on one). So the cost model asks for the time of each matmul shape (type, rows, row length,
columns, threads) and each attention shape it meets. What the calibration does not hold yet is measured once,
on this machine's own calibration only (milliseconds to a few tenths of a second per shape), and stored in it
(`cal["probes"]`): a stored benchmark run replays with the probes it used. Large shapes are probed on a slice
(`PROBE_BYTES` of rows, `PROBE_BATCH` columns, fewer heads or positions) and scaled: past that size the time
grows in proportion.
"""

from __future__ import annotations

from collections.abc import Callable

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from lowbit import LowbitError
from lowbit.run import calibrate
from lowbit.toolchain.ggml_kernels import Kernels
from lowbit.ui import step

PROBE_BYTES = 4 << 20  # weight bytes a matmul probe holds at most
PROBE_MEMORY = 64 << 20  # all a probe allocates (weights, activations, outputs, cache); a larger shape has none
PROBE_BATCH = 512  # columns a matmul probe and query tokens an attention probe use at most
PROBE_KV = 2048  # cached positions of an attention probe (fewer when the shape is large)
ATTN_WORK = 5e8  # multiply-adds an attention probe does at most
PROBE_SECONDS = 0.05  # each probe repeats its call this long (best of the calls)
WARM_UP_SECONDS = 0.3


class Probes:
    """Probe times of one calibration (`cal["probes"]`, created on first use); measures missing shapes only when
    `cal` is this machine's and build's calibration, else answers None (the caller uses the per-type rates)."""

    def __init__(self, cal: dict) -> None:
        self.store: dict = cal.setdefault("probes", {})
        self.cal = cal
        self.live: bool | None = None  # decided on the first missing shape
        self.added = 0
        self._kernels: Kernels | None = None

    def matmul(self, qtype: str, rows: int, cols: int, batch: int, threads: int, repack: bool) -> float | None:
        """Seconds of ggml's CPU `mul_mat` of a `rows x cols` weight of `qtype` times `batch` columns on
        `threads` threads (`repack`: in llama.cpp's repacked layout where it repacks the type)."""
        row_bytes = self._row_bytes(qtype, cols)
        if row_bytes is None or rows < 1 or batch < 1:
            return None
        n = rows if rows * row_bytes <= PROBE_BYTES else max(8, PROBE_BYTES // row_bytes // 8 * 8)
        cb = min(batch, PROBE_BATCH, (PROBE_MEMORY - n * row_bytes) // (4 * (cols + n)))  # f32 in and out
        if cb < 1:
            return None
        repack = repack and n % 8 == 0 and Kernels.repacks(qtype)
        key = f"mm {qtype} {n}x{cols} b{cb} t{threads}" + (" repack" if repack else "")
        s = self._get(key, lambda k: k.matmul_seconds(qtype, n, cols, cb, threads, seconds=PROBE_SECONDS,
                                                      repack=repack))
        return None if s is None else s * rows / n * batch / cb

    def matmul_id(self, qtype: str, rows: int, cols: int, n_expert: int, n_used: int, tokens: int,
                  threads: int) -> float | None:
        """Seconds of ggml's CPU `mul_mat_id` (routed experts): `tokens` columns, each through `n_used` of
        `n_expert` stacked `rows x cols` weights of `qtype`. Sliced to PROBE_BYTES: fewer experts with the same
        tokens per expert (at least `n_used` of them), then fewer rows; scaled back."""
        row_bytes = self._row_bytes(qtype, cols)
        if row_bytes is None or rows < 1 or not 1 <= n_used <= n_expert or tokens < 1:
            return None
        experts = min(n_expert, max(n_used, PROBE_BYTES // (rows * row_bytes)))
        n = rows if experts * rows * row_bytes <= PROBE_BYTES else max(8, PROBE_BYTES // (experts * row_bytes))
        q = max(1, min(PROBE_BATCH, round(tokens * experts / n_expert)))
        if experts * n * row_bytes + 4 * q * (cols + n * n_used) > PROBE_MEMORY:  # a header's absurd sizes
            return None
        key = f"mmid {qtype} {n}x{cols} e{experts} u{n_used} b{q} t{threads}"
        s = self._get(key, lambda k: k.matmul_id_seconds(qtype, n, cols, experts, n_used, q, threads,
                                                         seconds=PROBE_SECONDS))
        # the work is tokens x n_used expert rows at about the same columns per expert: it scales with tokens
        return None if s is None else s * rows / n * tokens / q

    @staticmethod
    def _row_bytes(qtype: str, cols: int) -> int | None:
        """Bytes of one row, or None for a type or row length ggml cannot run (it would abort, not fail)."""
        try:
            block, size = GGML_QUANT_SIZES[GGMLQuantizationType[qtype.upper()]]
        except KeyError:
            return None
        if cols < block or cols % block or cols // block * size > PROBE_BYTES:
            return None
        return cols // block * size

    def attention(self, key_dim: int, value_dim: int, n_head: int, n_head_kv: int, tokens: int, threads: int,
                  kv_type: str) -> float | None:
        """Seconds per query row (token x head) per cached position of ggml's CPU flash attention: `tokens`
        queries of `n_head` heads against `n_head_kv` cached heads (`kv_type`) of the given dimensions."""
        try:
            block, size = GGML_QUANT_SIZES[GGMLQuantizationType[kv_type.upper()]]
        except KeyError:
            return None
        step = max(block, 16)  # head sizes ggml's kernels take: whole blocks, multiples of 16
        if (min(key_dim, value_dim, n_head, n_head_kv, tokens) < 1 or n_head % n_head_kv
                or key_dim % step or value_dim % step):
            return None
        group, kv_heads, n_kv, q = n_head // n_head_kv, n_head_kv, PROBE_KV, min(tokens, PROBE_BATCH)

        def work() -> float:
            return q * group * kv_heads * n_kv * (key_dim + value_dim)

        while kv_heads > 1 and work() > ATTN_WORK:
            kv_heads = (kv_heads + 1) // 2
        while group > 1 and work() > ATTN_WORK:  # MQA/MLA: many query heads on one cached head
            group = (group + 1) // 2
        while n_kv > 256 and work() > ATTN_WORK:
            n_kv //= 2
        heads = group * kv_heads
        memory = (4 * q * heads * (key_dim + value_dim) + 2 * q * n_kv
                  + n_kv * kv_heads * (key_dim + value_dim) * size / block)
        if memory > PROBE_MEMORY:  # a header's absurd head counts or sizes: no probe, the calibrated rate
            return None
        key = f"fa {key_dim}/{value_dim} h{heads}/{kv_heads} q{q} kv{n_kv} t{threads} {kv_type.upper()}"
        s = self._get(key, lambda k: k.flash_attn_seconds(key_dim, heads, kv_heads, n_kv, q, threads,
                                                          kv_type=kv_type.upper(), seconds=PROBE_SECONDS,
                                                          value_dim=value_dim, masked=True))
        return None if s is None else s / (q * heads * n_kv)

    def _get(self, key: str, measure: Callable[[Kernels], float]) -> float | None:
        if key in self.store:
            got = self.store[key]
            return got if isinstance(got, (int, float)) and got > 0 else None
        if self.live is None:
            try:
                self.live = self.cal.get("fingerprint") == calibrate.fingerprint()
            except LowbitError:  # no build: nothing to measure with
                self.live = False
        if not self.live:
            return None
        try:
            if self._kernels is None:
                step("measuring the kernel shapes this model runs (once per shape; kept with the calibration)")
                self._kernels = Kernels()
                # the first calls of a process run up to 1.5x slow (clocks, page faults): warm up first
                self._kernels.matmul_seconds("F32", 1024, 1024, 64, 1, seconds=WARM_UP_SECONDS)
            s = float(measure(self._kernels))
        except (LowbitError, OSError, ValueError):  # a type or shape this build cannot run: the per-type rates
            s = 0.0
        self.store[key] = s
        self.added += 1
        return s if s > 0 else None

    def save(self) -> None:
        """Keep newly measured probes with the calibration they belong to (when it is cached)."""
        if self.added:
            calibrate.store_probes(self.cal)
            self.added = 0
