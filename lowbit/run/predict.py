"""Predict prefill and decode tokens/s and peak RSS of a GGUF before running it, from its header alone.

Per tensor a token touches, the time is what ggml's own kernel takes for that tensor's shape on this machine
(`lowbit.run.probes`: measured once per shape and thread count, kept with the calibration; the per-type rates
of `lowbit.run.calibrate` where no probe exists), against the bytes it moves at the calibrated read bandwidth:

- decode (one token): every weight matrix once (routed experts: ggml's `mul_mat_id` through `n_expert_used`
  of them), the output matrix (the embedding matrix when tied), one embedding row, and attention over the
  context (ggml's flash attention for the model's heads and head sizes, plus the K and V cache it reads).
  While the matrices fit in the last-level cache a probe's time is the time; once they are as large as the
  calibration's streaming probe they run at the rate measured on memory-resident weights, never above the read
  bandwidth; in between, in proportion;
- prefill (a batch of B tokens per micro-batch): each matrix multiplied by B columns (experts: `mul_mat_id` of
  the batch), read once from memory for the share not in the cache; logits for the last token only;
- plus a fixed overhead per token (graph, thread synchronisation), `a + b x tensors in the blocks` per
  thread count, fitted once per machine on synthetic calibration models (`fit_overhead`), never on a real
  model, and llama.cpp's attention against the kernel probe (a scale from the same models at depth 2048).

Peak RSS: every weight byte (llama.cpp's warm-up touches all experts; mmap'd pages count once read), the
KV cache for the context, the compute buffer and the runtime's own footprint (fitted like the overhead).
The error band is what the validation benchmark (`benchmarks/predict_vs_measured.py`) found on this kit's
reference machine; docs/plan.md holds its table.
"""

from __future__ import annotations

import copy
import json
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import quantize

from lowbit import LowbitError, procs
from lowbit.files.gguf_header import BLOCK_RE, ModelMeta, classify, read_header, read_model
from lowbit.files.synthetic import Hparams, vocab_size, write_gguf
from lowbit.machine import busy_cpu_seconds, children_cpu_seconds, physical_cores
from lowbit.models.catalog import locate
from lowbit.run import calibrate
from lowbit.run.probes import Probes
from lowbit.toolchain.build import active_build, sdist_tree
from lowbit.toolchain.ggml_kernels import Kernels
from lowbit.toolchain.llama_tools import llama_bench
from lowbit.ui import print_json, print_table, step, warn

# Worst |predicted/measured - 1| of the validation benchmark on the reference machine (docs/plan.md), stored
# by `benchmarks/predict_vs_measured.py --store-band` in error_band.json; a prediction is shown as
# `value x (1 +- band)`. Before any validation: the goal.
BAND_FILE = Path(__file__).with_name("error_band.json")
ERROR_BAND = {"decode": 0.25, "prefill": 0.25, "rss": 0.10}
try:
    ERROR_BAND |= {k: float(v) for k, v in json.loads(BAND_FILE.read_text()).get("band", {}).items()}
except (OSError, ValueError, AttributeError):
    pass
RSS_SLACK = 100 * 2**20  # or 100 MB, whichever is larger
# Sliding-window layer patterns llama.cpp assumes when a GGUF does not state one (llama-model.cpp)
SWA_PATTERNS = {"gemma2": 2, "gemma3": 6, "cohere2": 4, "gemma3n": 5}
CAL_VOCABS = ("ggml-vocab-phi-3.gguf", "ggml-vocab-llama-bpe.gguf")  # 32k and 128k tokens: the RSS vocab slope
# (width, layers) of the calibration models: two depths give the overhead's per-tensor slope and constant,
# a wide one its per-activation term (norms, rope, activation quantization grow with the width)
CAL_MODELS = ((256, 2), (256, 12), (1024, 2))
CAL_TEST = {"n_prompt": 64, "n_gen": 32, "reps": 3, "rounds": 3}
CAL_DEPTH = 2048


# ---------------------------------------------------------------------------------------------
# what a model is made of, per tensor


@dataclass
class Tensor:
    name: str
    qtype: str
    n_bytes: int
    rows: int  # output features (ne1)
    cols: int  # input features (ne0)
    experts: int = 1  # ne2 of a stacked expert tensor
    group: str = "other"  # attention / dense_ffn / shared_experts / routed_experts / other / output / embd
    layer: int = -1


@dataclass
class Workload:
    """What the cost model needs from a header: tensors and attention shape."""

    meta: ModelMeta
    tensors: list[Tensor]
    swa_window: int = 0
    swa_layers: int = 0  # layers that attend only to the window
    header_bytes: int = 0  # metadata before the tensor data, mostly the tokenizer: what llama.cpp's vocab costs

    @property
    def activations(self) -> int:
        """Activation values one token moves through the blocks' matrices (inputs + outputs): what norms, rope,
        element-wise ops and activation quantization scale with."""
        return sum(t.rows + t.cols for t in self.tensors if t.layer >= 0 and t.rows > 1)

    @property
    def block_tensors(self) -> int:
        """Tensors inside the transformer blocks: the graph's size, what the per-token overhead scales with
        (a MoE/MLA block has twice the nodes of a llama block, and each node costs a thread barrier)."""
        return sum(1 for t in self.tensors if t.layer >= 0)


def workload(path: str | os.PathLike) -> Workload:
    """Per-tensor sizes and types of the model at `path` (header only)."""
    meta = read_model(path)
    tensors: list[Tensor] = []
    first = None
    header_bytes = 0
    for shard in meta.shards:
        header = read_header(shard)
        first = first or header
        header_bytes += header.data_offset
        for t in header.tensors:
            shape = list(t.shape) + [1, 1]
            m = BLOCK_RE.match(t.name)
            if m:
                layer = int(m["layer"])
                if layer >= meta.n_layers:
                    continue  # MTP/nextn blocks llama.cpp does not run
                group = classify(m["rest"])
            else:
                layer = -1
                group = ("embd" if t.name.startswith("token_embd")
                         else "output" if t.name.startswith("output") else "other")
            tensors.append(Tensor(t.name, t.tensor_type.name, int(t.n_bytes), int(shape[1]), int(shape[0]),
                                  int(shape[2]), group, layer))
    if not any(t.name == "output.weight" for t in tensors):  # tied embeddings: token_embd is the output matrix
        for t in tensors:
            if t.name == "token_embd.weight":
                tensors.append(Tensor("output(tied token_embd)", t.qtype, t.n_bytes, t.rows, t.cols, 1, "output"))
    window = first.value(f"{meta.arch}.attention.sliding_window") if first else None
    swa_layers = 0
    if window:
        pattern = first.value(f"{meta.arch}.attention.sliding_window_pattern")
        if hasattr(pattern, "__len__"):  # per-layer flags
            swa_layers = int(sum(bool(x) for x in pattern))
        else:
            n = int(pattern) if pattern else SWA_PATTERNS.get(meta.arch, 0)
            swa_layers = meta.n_layers - meta.n_layers // n if n else 0
    return Workload(meta, tensors, int(window or 0), swa_layers, header_bytes)


# ---------------------------------------------------------------------------------------------
# the configuration and the answer


@dataclass
class Config:
    """What llama.cpp is asked to do (llama-bench's spelling: -t -p -n -d -ctk -ctv -ub --repack)."""

    threads: int
    n_prompt: int = 0
    n_gen: int = 0
    depth: int = 0
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    ubatch: int = 512
    n_ctx: int | None = None  # for memory; default n_prompt + n_gen + depth (llama-bench's context)
    repack: bool = True  # llama.cpp's default; --no-repack / llama-bench --repack 0 for out-of-core runs

    def __post_init__(self) -> None:
        bad = [f"{name} must be at least {low}, got {value}"
               for name, value, low in (("threads", self.threads, 1), ("ubatch", self.ubatch, 1),
                                        ("n_prompt", self.n_prompt, 0), ("n_gen", self.n_gen, 0),
                                        ("depth", self.depth, 0), ("ctx", self.n_ctx or 1, 1))
               if value < low]
        if bad:
            raise LowbitError("; ".join(bad))


@dataclass
class Prediction:
    model: str
    config: dict
    decode_tps: float | None = None
    prefill_tps: float | None = None
    decode_ms: dict = field(default_factory=dict)  # breakdown of one token: weights, attention, overhead
    prefill_ms: dict = field(default_factory=dict)  # breakdown of the whole prompt
    bound: str = ""  # "memory" or "compute": what limits most of the decode weight time
    rss_bytes: int = 0
    rss_parts: dict = field(default_factory=dict)
    band: dict = field(default_factory=lambda: dict(ERROR_BAND))
    calibration: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def within(self, what: str, measured: float) -> bool:
        """Is `measured` inside this prediction's stated band for `what` (decode/prefill/rss)?"""
        pred = {"decode": self.decode_tps, "prefill": self.prefill_tps, "rss": self.rss_bytes}[what]
        if not pred or measured <= 0:
            return False
        if what == "rss":
            return abs(measured - pred) <= max(self.band["rss"] * measured, RSS_SLACK)
        return abs(pred / measured - 1) <= self.band[what]


# ---------------------------------------------------------------------------------------------
# rates


def _rates(cal: dict, threads: int) -> tuple[float, dict, dict]:
    """(bandwidth bytes/s, {type: {"mv", "mm"}}, attention fit) at `threads` (above the calibrated range: the
    last)."""
    keys = sorted(int(k) for k in cal["bandwidth_gbs"])
    t = str(min(max(threads, keys[0]), keys[-1]))
    return cal["bandwidth_gbs"][t] * 1e9, cal["kernels"][t], cal["attention"][t]


def _kernel(kernels: dict, qtype: str, kind: str, repack: bool = True, required: bool = True) -> float | None:
    rates = kernels.get(qtype.upper(), {})
    rate = rates.get(kind) if repack else rates.get(f"{kind}_norepack", rates.get(kind))
    if not rate and not required:
        return None
    if not rate:
        raise LowbitError(f"no calibrated {kind} rate for ggml type {qtype}: this build cannot run it, or the "
                          "calibration predates it (`invoke calibrate --refresh`)")
    return rate


def _batch_rate(kernels: dict, qtype: str, columns: float, repack: bool) -> float:
    """Weight bytes x columns per second for a matmul of `columns` tokens: the calibrated mat-vec (1), few
    (FEW_BATCH) and mat-mat (MM_BATCH) rates, interpolated in log(columns) between them."""
    points = [(1.0, _kernel(kernels, qtype, "mv", repack))]
    rates = kernels.get(qtype.upper(), {})
    few = rates.get(f"mm{calibrate.FEW_BATCH}" + ("" if repack else "_norepack"), rates.get(f"mm{calibrate.FEW_BATCH}"))
    if few:
        points.append((float(calibrate.FEW_BATCH), few))
    points.append((float(calibrate.MM_BATCH), _kernel(kernels, qtype, "mm", repack)))
    if columns <= 1:
        return points[0][1]
    for (x1, y1), (x2, y2) in zip(points, points[1:], strict=False):
        if columns <= x2:
            f = math.log(columns / x1) / math.log(x2 / x1)
            return y1 + f * (y2 - y1)
    return points[-1][1]


def _cache_bytes(cache_type: str) -> float:
    """Bytes per element of a KV cache type (q4_0: 18/32)."""

    try:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType[cache_type.upper()]]
    except KeyError:
        raise LowbitError(f"unknown KV cache type {cache_type!r} (llama.cpp: f16, q8_0, q4_0, ...)") from None
    return size / block


def kv_bytes_per_token(meta: ModelMeta, cache_type_k: str, cache_type_v: str) -> float:
    """K + V cache bytes one token adds to one layer (MLA: the compressed K row only)."""
    k = meta.key_length * meta.n_head_kv * _cache_bytes(cache_type_k)
    v = 0 if meta.is_mla else meta.value_length * meta.n_head_kv * _cache_bytes(cache_type_v)
    return k + v


FA_TILE = 64  # ggml-cpu's flash-attention query and KV tile (GGML_FA_TILE_Q / GGML_FA_TILE_KV in common.h)


def flash_attn_tiles(n_tokens: int, n_head: int, threads: int) -> tuple[int, float] | None:
    """(query tiles, rounds of 64 query rows per thread) of ggml's CPU flash attention for a batch of `n_tokens`
    queries of `n_head` heads on `threads` threads; None when the batch is below one tile (the untiled path).

    Mirrors `ggml_compute_forward_flash_attn_ext_f16` with patch 0007: the `n_tokens x n_head` query rows are cut
    into chunks of `ceil(rows / (4 x threads))` rounded up to whole 64-row tiles (unless that leaves a thread
    without a chunk: then `threads` equal chunks), each chunk into tiles of at most 64 rows that never cross a
    head, and a tile multiplies its own rows against the KV cache. A thread's work: its share of the rows, at
    least the largest chunk (chunks are handed out dynamically). Before the patch every tile cost a full
    64-row tile, and 64 tokens x 2 heads on 2 threads made 8 tiles of 16 rows: slower than 1 thread.
    """
    if n_tokens < FA_TILE:
        return None
    nr = n_tokens * n_head
    chunk = -(-nr // (threads * 4))
    tiled = -(-chunk // FA_TILE) * FA_TILE
    whole = -(-nr // tiled) >= threads
    chunk = tiled if whole else chunk
    nchunk = -(-nr // chunk)
    if threads == 1 or nchunk < threads:
        nchunk, whole = threads, False
    dr = chunk if whole else -(-nr // nchunk)
    tiles, largest = 0, 0
    for c in range(nchunk):
        ir, end = dr * c, min(dr * (c + 1), nr)
        largest = max(largest, end - ir)
        while ir < end:
            ir += min(FA_TILE, end - ir, n_tokens - ir % n_tokens)
            tiles += 1
    return tiles, max(nr / threads, float(largest)) / FA_TILE


def _attention_seconds(w: Workload, cfg: Config, ctx_per_layer: list[float], tokens: int, bw: float,
                       attn: dict, batch: bool, probes: Probes | None = None) -> float:
    """Attention of `tokens` queries over `ctx_per_layer[i]` cached positions each, summed over layers: queries
    x heads x positions (a batch: up to its last query's) x the probe of this attention shape, plus the K+V
    cache bytes read / bandwidth.

    Without a probe (a calibration from elsewhere): max(read, compute at the calibrated cost over the head
    dims); a batch of at least one tile (64 tokens) runs ggml's tiled kernel, whose cost is one thread's rows
    (`flash_attn_tiles`), normalised by the calibration probe's own."""
    meta = w.meta
    kv_tok = kv_bytes_per_token(meta, cfg.cache_type_k, cfg.cache_type_v)
    fit = attn["prefill" if batch else "decode"]
    probed = probes.attention(meta.key_length, meta.value_length, meta.n_head, meta.n_head_kv, tokens,
                              cfg.threads, cfg.cache_type_k) if probes else None
    # seconds per query x head x position: this shape's probe, else the calibrated rate over the head dims
    per = probed or fit["a"] + fit["b"] * (meta.key_length + meta.value_length)
    per *= fit.get("scale", 1.0)  # llama.cpp's attention vs the kernel probe (fit_overhead)
    rows = tokens * meta.n_head  # query rows x positions the kernel computes, in units of `per`
    extra = tokens / 2 if batch and probed else 0.0  # positions beyond the mean a query sees: to the last one
    tiled = flash_attn_tiles(tokens, meta.n_head, cfg.threads) if batch and not probed else None
    if tiled:
        probe = flash_attn_tiles(calibrate.MM_BATCH, calibrate.FA_PROBE["n_head"], cfg.threads)
        probe_rows = calibrate.MM_BATCH * calibrate.FA_PROBE["n_head"]
        # one thread's rows, against the probe's (the probe's `per` is wall time per row)
        rows = tiled[1] * FA_TILE * probe_rows / (probe[1] * FA_TILE) if probe else rows
        extra = tokens / 2
    total = 0.0
    for ctx in ctx_per_layer:
        read = ctx * kv_tok * (1 if batch else tokens)  # a batch reads the cache once; decode every token
        compute = rows * (ctx + extra) * per
        # a probe's cache is hot; llama.cpp's comes from memory, each layer's evicted by the other layers' weights
        # and cache, and the kernel waits for it: the read adds to the compute
        total += compute + read / bw if probed else max(read / bw, compute)
    return total


def _layer_contexts(w: Workload, ctx: float) -> list[float]:
    n = w.meta.n_layers
    full = [ctx] * (n - w.swa_layers)
    return full + [min(ctx, w.swa_window)] * w.swa_layers


def predict(model: str | os.PathLike | Workload, cfg: Config, cal: dict | None = None) -> Prediction:
    """Prefill and decode tokens/s and peak RSS for `model` under `cfg` on this (calibrated) machine."""
    w = model if isinstance(model, Workload) else workload(model)
    cal = cal or calibration()
    meta = w.meta
    bw, kernels, attn_fit = _rates(cal, cfg.threads)
    used = meta.n_expert_used / meta.n_expert if meta.n_expert else 1.0
    ov = _overhead(cal, cfg.threads)
    pred = Prediction(model=meta.name, config=asdict(cfg), calibration=cal.get("fingerprint", ""))

    probes = Probes(cal)
    # Weights a token reads: from the cache at the kernel's own rate while they fit in the last-level cache, at
    # the rate measured on memory-resident weights ("mvs", calibrate.stream_bytes of them) once they are that
    # large; in between the share that misses the cache grows in proportion (all experts count: tokens route
    # to different ones, so each competes for the cache).
    llc = cal.get("llc_bytes", 32 << 20)
    footprint = sum(t.n_bytes for t in w.tensors if t.rows > 1 and t.group != "embd")
    miss = min(1.0, max(0.0, (footprint - llc) / max(calibrate.stream_bytes(llc) - llc, 1)))
    if cfg.n_gen:
        mem = comp = 0.0
        weights = 0.0
        for t in w.tensors:
            if t.group == "embd":
                weights += t.n_bytes / max(t.rows, 1) / bw  # one row per token
                continue
            share = used if t.group == "routed_experts" else 1.0
            b = t.n_bytes * share
            if t.rows <= 1:  # norms, biases
                weights += b / bw
                continue
            seconds, c, m = _one_token(t, share, cfg, kernels, bw, miss, probes)
            mem, comp, weights = mem + m, comp + c, weights + seconds
        ctx = cfg.depth + (cfg.n_gen - 1) / 2  # mean context over the generated tokens
        attn = _attention_seconds(w, cfg, _layer_contexts(w, ctx), 1, bw, attn_fit, batch=False, probes=probes)
        overhead = ov["decode_a"] + ov["decode_b"] * w.block_tensors + ov.get("decode_c", 0.0) * w.activations
        total = weights + attn + overhead
        pred.decode_tps = round(1 / total, 2)
        pred.decode_ms = {"weights": round(weights * 1e3, 4), "attention": round(attn * 1e3, 4),
                          "overhead": round(overhead * 1e3, 4), "memory_only": round(mem * 1e3, 4),
                          "compute_only": round(comp * 1e3, 4)}
        pred.bound = "memory" if mem >= comp else "compute"

    if cfg.n_prompt:
        total = attn_total = w_total = 0.0
        done = 0
        n_ub = math.ceil(cfg.n_prompt / cfg.ubatch)
        for _ in range(n_ub):
            b = min(cfg.ubatch, cfg.n_prompt - done)
            for t in w.tensors:
                if t.group in ("embd", "output") or t.rows <= 1:
                    continue
                repacked = _repacked(t, cfg)
                if t.group == "routed_experts":
                    touched = 1 - (1 - used) ** b  # share of experts at least one of b tokens routes to
                    # each touched expert multiplies the few tokens routed to it
                    per_expert = max(1.0, b * used / touched)
                    probed = probes.matmul_id(t.qtype, t.rows, t.cols, t.experts, meta.n_expert_used, b,
                                              cfg.threads)
                    c = probed or b * used * t.n_bytes / _batch_rate(kernels, t.qtype, per_expert, cfg.repack)
                    read = t.n_bytes * touched
                else:
                    probed = probes.matmul(t.qtype, t.rows, t.cols, b, cfg.threads, repacked)
                    c = probed or b * t.n_bytes / _batch_rate(kernels, t.qtype, b, cfg.repack)
                    read = t.n_bytes
                # with a probe, bytes still in the cache need no memory reads (without one: the old bound)
                w_total += max(read / bw * (miss if probed else 1.0), c)
            ctx = cfg.depth + done + b / 2
            attn_total += _attention_seconds(w, cfg, _layer_contexts(w, ctx), b, bw, attn_fit, batch=b > 1,
                                             probes=probes)
            done += b
        out = sum(_one_token(t, 1.0, cfg, kernels, bw, miss, probes)[0]
                  for t in w.tensors if t.group == "output" and t.rows > 1)  # logits of the last token
        overhead = (n_ub * (ov["prefill_a"] + ov["prefill_b"] * w.block_tensors)
                    + ov.get("prefill_c", 0.0) * cfg.n_prompt * w.activations)
        total = w_total + attn_total + out + overhead
        pred.prefill_tps = round(cfg.n_prompt / total, 2)
        pred.prefill_ms = {"weights": round((w_total + out) * 1e3, 3), "attention": round(attn_total * 1e3, 3),
                           "overhead": round(overhead * 1e3, 3)}

    pred.rss_bytes, pred.rss_parts = peak_rss(w, cfg, cal)
    probes.save()
    return pred


def _one_token(t: Tensor, share: float, cfg: Config, kernels: dict, bw: float, miss: float,
               probes: Probes) -> tuple[float, float, float]:
    """(seconds, compute-only, memory-only) of one token through `share` of tensor `t`'s bytes (routed experts:
    the used ones). Cache-resident, a probe of the matrix's own shape is the time; the share `miss` of the bytes
    that does not stay in the cache runs at the rate of the type's kernel on memory-resident weights ("mvs")."""
    b = t.n_bytes * share
    m = b / bw
    if t.group == "routed_experts":
        probed = probes.matmul_id(t.qtype, t.rows, t.cols, t.experts, round(share * t.experts), 1, cfg.threads)
    else:
        probed = probes.matmul(t.qtype, t.rows, t.cols, 1, cfg.threads, _repacked(t, cfg))
    c = probed or b / _kernel(kernels, t.qtype, "mv", cfg.repack)
    stream = _kernel(kernels, t.qtype, "mvs", cfg.repack, required=False)
    cached = c if probed else max(m, c)  # a probe is the cache-resident time itself; a type rate is not
    return (1 - miss) * cached + miss * (max(c, m, b / stream) if stream else max(m, c)), c, m


def _repacked(t: Tensor, cfg: Config) -> bool:
    return cfg.repack and t.group not in ("embd",) and t.rows % 8 == 0 and Kernels.repacks(t.qtype)


def peak_rss(w: Workload, cfg: Config, cal: dict) -> tuple[int, dict]:
    """Peak resident bytes of a llama.cpp run: every weight byte (mmap'd pages count once read; llama.cpp's
    warm-up reads all, experts included), the repacked copies of the weights llama.cpp interleaves, the KV
    cache, the part of the compute buffer a micro-batch of the run's size touches (llama.cpp reserves for
    512 tokens but untouched pages are not resident), and the runtime's own footprint (`runtime_a` +
    `runtime_b` x header bytes: binaries, the tokenizer's tables built from the header), fitted on calibration
    models with two vocabularies."""
    meta = w.meta
    n_ctx = cfg.n_ctx or (cfg.n_prompt + cfg.n_gen + cfg.depth)
    n_ctx = max(256, -(-n_ctx // 256) * 256)  # llama.cpp pads the context to 256
    real = [t for t in w.tensors if not t.name.startswith("output(tied")]
    weights = sum(t.n_bytes for t in real)
    repacked = sum(t.n_bytes for t in real if t.rows > 1 and _repacked(t, cfg))
    kv_tok = kv_bytes_per_token(meta, cfg.cache_type_k, cfg.cache_type_v)
    ctxs = _layer_contexts(w, n_ctx)
    if w.swa_window:  # llama.cpp's SWA cache keeps window + one micro-batch, padded
        ctxs = [c if c == n_ctx else min(n_ctx, -(-(w.swa_window + cfg.ubatch) // 256) * 256) for c in ctxs]
    kv = int(kv_tok * sum(ctxs))
    ffn = [t.rows for t in w.tensors if t.group in ("dense_ffn", "shared_experts") and "up" in t.name]
    n_ff = max(ffn or [4 * meta.n_embd])
    ub = max(1, min(cfg.ubatch, cfg.n_prompt or 1))
    compute = int(ub * (4 * meta.n_embd + 2 * n_ff + meta.n_head * min(n_ctx, 256)) * 4 + meta.n_vocab * 4)
    fit = cal.get("overhead", {})
    runtime = int(fit.get("runtime_a", 0) + fit.get("runtime_b", 0) * w.header_bytes)
    parts = {"weights": weights, "repacked": repacked, "kv": kv, "compute": compute, "runtime": runtime}
    return sum(parts.values()), parts


# ---------------------------------------------------------------------------------------------
# overhead, fitted on a synthetic calibration model


def _overhead(cal: dict, threads: int) -> dict:
    fits = cal.get("overhead", {}).get("threads", {})
    if not fits:
        return {"decode_a": 0.0, "decode_b": 0.0, "prefill_a": 0.0, "prefill_b": 0.0}
    keys = sorted(int(k) for k in fits)
    return fits[str(min(max(threads, keys[0]), keys[-1]))]


def calibration_model(dest: Path, n_layers: int, vocab_file: str = CAL_VOCABS[0], n_embd: int = 256) -> Path:
    """A small random-weight llama GGUF (Q8_0 matrices, phi-3 vocabulary) for fitting the overhead."""
    import numpy as np
    from gguf import GGMLQuantizationType


    if dest.exists():
        return dest
    rng = np.random.default_rng(n_layers)
    vocab = sdist_tree() / "vendor" / "llama.cpp" / "models" / vocab_file
    n_vocab = vocab_size(vocab)
    d, ff, h = n_embd, 3 * n_embd, n_embd // 64
    q8_0 = GGMLQuantizationType.Q8_0

    def q8(rows: int, cols: int):
        x = (rng.standard_normal((rows, cols)) * 0.02).astype(np.float32)
        return quantize(x, q8_0)

    def tensors():
        yield "token_embd.weight", q8(n_vocab, d), q8_0
        yield "output_norm.weight", np.ones(d, dtype=np.float32), None
        yield "output.weight", q8(n_vocab, d), q8_0
        for i in range(n_layers):
            yield f"blk.{i}.attn_norm.weight", np.ones(d, dtype=np.float32), None
            yield f"blk.{i}.ffn_norm.weight", np.ones(d, dtype=np.float32), None
            for name, rows, cols in (("attn_q", d, d), ("attn_k", d, d), ("attn_v", d, d), ("attn_output", d, d),
                                     ("ffn_gate", ff, d), ("ffn_up", ff, d), ("ffn_down", d, ff)):
                yield f"blk.{i}.{name}.weight", q8(rows, cols), q8_0

    hparams = Hparams(n_embd=d, n_layer=n_layers, n_ff=ff, n_head=h, n_vocab=n_vocab, file_type=7)
    return write_gguf(dest, "llama", tensors(), hparams, vocab_from=vocab)


def llama_bench_json(model: Path, threads: int, n_prompt: int, n_gen: int, reps: int, depth: int = 0,
                     extra: list[str] | None = None, timeout: float = 900) -> list[dict]:
    """llama-bench -o json rows (its own repetitions; samples in `samples_ts`)."""
    args = ["-t", str(threads), "-p", str(n_prompt), "-n", str(n_gen), "-d", str(depth), "-r", str(reps)]
    return llama_bench(model, args + list(extra or []), timeout)[0]


def _median_ts(rows: list[dict], prefill: bool) -> float:
    row = next(r for r in rows if (r["n_prompt"] > 0) == prefill and (r["n_gen"] > 0) != prefill)
    return statistics.median(row.get("samples_ts") or [row["avg_ts"]])


def _calibration_models(folder: Path | None) -> tuple[Path, list[Path]]:
    folder = folder or Path(tempfile.gettempdir()) / "lowbit-calibration-models"
    folder.mkdir(parents=True, exist_ok=True)
    return folder, [calibration_model(folder / f"calibration-llama-w{d}-l{n}-q8_0.gguf", n, n_embd=d)
                    for d, n in CAL_MODELS]


def fit_overhead(cal: dict, folder: Path | None = None) -> dict:
    """Fit `overhead = a + b x block tensors + c x tokens x activations` per thread count (decode per token,
    prefill per micro-batch) from llama-bench on three synthetic calibration models (two depths, two widths),
    and the runtime's RSS footprint from two vocabularies. llama-bench's medians are kept (`measured`) so a
    changed cost model can be refitted on a stored calibration (`refit_overhead`) without measuring again."""

    folder, models = _calibration_models(folder)
    deep_model = models[1]  # attention in llama.cpp (cache views, mask) against the kernel probe: it at depth
    runs = [(path, Config(threads=t, n_prompt=CAL_TEST["n_prompt"], n_gen=CAL_TEST["n_gen"], depth=depth))
            for t in range(1, int(cal["cores"]) + 1)
            for path, depth in [*((m, 0) for m in models), (deep_model, CAL_DEPTH)]]
    # interleaved rounds, each point the median of its rounds on an unloaded host (measure_interleaved): one
    # llama-bench run per point swung a fitted attention scale 0.8-1.9 between calibrations minutes apart
    got = measure_interleaved(runs, CAL_TEST["reps"], CAL_TEST["rounds"], cal=cal,
                              progress=lambda run, _: step(f"overhead fit: measured {run[0].name}, "
                                                           f"{run[1].threads} thread(s), depth {run[1].depth}"))
    raw: dict = {}  # {threads: {model file (@depth): seconds}}
    for (path, cfg), m in zip(runs, got, strict=True):
        point = {"decode_s": 1 / m["decode"], "prefill_s": CAL_TEST["n_prompt"] / m["prefill"]}
        raw.setdefault(str(cfg.threads), {})[path.name + (f"@{cfg.depth}" if cfg.depth else "")] = point
    for points in raw.values():
        flat = points[deep_model.name]
        points[f"{deep_model.name}@{CAL_DEPTH}"] |= {"flat_decode_s": flat["decode_s"],
                                                     "flat_prefill_s": flat["prefill_s"]}
    bare = {**cal, "overhead": {}}
    rss_points = []
    for vocab_file in CAL_VOCABS:
        path = calibration_model(folder / f"calibration-llama-w256-l2-{Path(vocab_file).stem}-q8_0.gguf", 2, vocab_file)
        w = workload(path)
        _, parts = peak_rss(w, Config(threads=1, n_prompt=8, n_gen=16, n_ctx=RSS_CTX), bare)
        rss_points.append((w.header_bytes, _measure_rss(path) - sum(parts.values())))
    (v1, r1), (v2, r2) = rss_points
    rb = max(0.0, (r2 - r1) / (v2 - v1))
    return {"threads": _fit_measured(cal, raw, models), "measured": raw, "runtime_a": max(0.0, r1 - rb * v1),
            "runtime_b": rb, "model": f"synthetic llama Q8_0 (width, layers) {CAL_MODELS}"}


def _fit_measured(cal: dict, raw: dict, models: list[Path]) -> dict:
    """The per-thread overhead fits from llama-bench's medians `raw` under the current cost model; sets the
    attention scale of `cal` from the depth run (cal["attention"][t][kind]["scale"]): the one measured with the
    fewest threads, for every thread count. The scale is llama.cpp's attention against its own kernel probe at
    the same thread count, and where the host was quiet 1 and 2 threads agreed (prefill 1.37 and 1.41-1.43);
    the 2-thread depth run is the calibration's noisiest point (prefill scales of 1.71-1.79 from a host in a
    slower state, which put the next sweep's 2-thread depth rows 27-31 % slow)."""
    cal.setdefault("probes", {})  # one probe dict for the copies below: each shape measured once
    bare = {**cal, "overhead": {}}
    cfg = Config(threads=1, n_prompt=CAL_TEST["n_prompt"], n_gen=CAL_TEST["n_gen"])
    fits = {}
    for t, got in raw.items():
        for kind in ("decode", "prefill"):
            cal["attention"][t][kind].pop("scale", None)
        xs, dec, pre = [], [], []
        for path in models:
            w = workload(path)
            p = predict(w, Config(**{**asdict(cfg), "threads": int(t)}), bare)
            xs.append((w.block_tensors, w.activations))
            dec.append(got[path.name]["decode_s"] - 1 / p.decode_tps)
            pre.append(got[path.name]["prefill_s"] - CAL_TEST["n_prompt"] / p.prefill_tps)
        da, db, dc = _fit_nonnegative(xs, dec, 1)
        pa, pb, pc = _fit_nonnegative(xs, pre, CAL_TEST["n_prompt"])
        fits[t] = {"decode_a": da, "decode_b": db, "decode_c": dc, "prefill_a": pa, "prefill_b": pb, "prefill_c": pc}
    t = min(raw, key=int)  # the depth run with the fewest threads sets the scale for every count
    path = models[1]
    deep = raw[t][f"{path.name}@{CAL_DEPTH}"]
    w = workload(path)
    cal_t = {**cal, "overhead": {"threads": {t: fits[t]}}}
    flat_cfg = Config(**{**asdict(cfg), "threads": int(t)})
    p0, p1 = predict(w, flat_cfg, cal_t), predict(w, Config(**{**asdict(flat_cfg), "depth": CAL_DEPTH}), cal_t)
    for kind in ("decode", "prefill"):
        measured = deep[f"{kind}_s"] - deep[f"flat_{kind}_s"]
        modelled = (getattr(p1, f"{kind}_ms")["attention"] - getattr(p0, f"{kind}_ms")["attention"]) / 1e3
        if measured > 0 and modelled > 0:
            for attention in (cal["attention"][n] for n in raw):
                attention[kind]["scale"] = measured / modelled
    return fits


def refit_overhead(cal: dict, folder: Path | None = None) -> dict:
    """A copy of a stored calibration with its overhead fits and attention scales refitted under the current
    cost model from the llama-bench medians it kept; a calibration without them is returned unchanged."""
    raw = cal.get("overhead", {}).get("measured")
    if not raw:
        return cal
    out = copy.deepcopy(cal)
    out["overhead"]["threads"] = _fit_measured(out, raw, _calibration_models(folder)[1])
    return out


def _fit_nonnegative(xs: list[tuple[int, int]], ys: list[float], tokens: int) -> tuple[float, float, float]:
    """Least squares `y = a + b x tensors + c x tokens x activations` with a, b, c >= 0 (a negative term is
    dropped and the rest refitted): the residual time the cost model leaves on the calibration models."""

    cols = np.array([[1.0, x[0], tokens * x[1]] for x in xs])
    y = np.array(ys)
    keep = [0, 1, 2]
    while keep:
        coef, *_ = np.linalg.lstsq(cols[:, keep], y, rcond=None)
        if (coef >= 0).all():
            out = [0.0, 0.0, 0.0]
            for i, c in zip(keep, coef, strict=True):
                out[i] = float(c)
            return out[0], out[1], out[2]
        keep.pop(int(np.argmin(coef)))
    return 0.0, 0.0, 0.0


RSS_CTX = 512


def completion_cmd(model: Path, threads: int, n_ctx: int = RSS_CTX, n_gen: int = 16,
                   extra: list[str] | None = None) -> list[str]:
    """llama-completion making `n_gen` tokens from a 1-token prompt: the run whose peak RSS is measured."""

    return [str(active_build().tool("llama-completion")), "-m", str(model), "-t", str(threads), "-c", str(n_ctx),
            "-n", str(n_gen), "-p", "Hello", "-no-cnv", "-s", "1", "--temp", "0", "-v", *(extra or [])]


def _measure_rss(model: Path, threads: int = 1, n_ctx: int = RSS_CTX) -> int:
    return procs.peak_rss(completion_cmd(model, threads, n_ctx))[0]


BUSY_CPUS = 0.3  # other processes' CPUs during a measurement that make it a busy one


SLOW_HOST = 1.25  # the calibration's mat-mat probe this much slower now: the host, not this machine, is loaded
_REFERENCE: dict = {}


def host_slowdown(cal: dict | None, threads: int) -> float:
    """How many times slower than at calibration ggml's Q8_0 mat-mat probe (calibrate.kernel_rates' "mm": 256 x
    4096 weights, 64 columns) runs now at `threads` (1.0: as fast; best of 0.1 s). A VM's neighbours on the same
    host take cores, cache and memory bandwidth without showing in /proc/stat: on the reference VM 2-thread
    runs inside one test suite ran 30-40 % slow with no other process busy. 1.0 without a calibration."""
    rate = ((cal or {}).get("kernels", {}).get(str(threads), {}).get("Q8_0", {}).get("mm"))
    if not rate:
        return 1.0
    try:
        kernels = _REFERENCE.setdefault("kernels", Kernels())
        now = calibrate.matmul_rate(kernels, "Q8_0", calibrate.MM_ROWS, calibrate.MM_BATCH, threads, 0.1)
    except (LowbitError, OSError, ValueError):
        return 1.0
    return round(max(rate / now, 0.0), 2)


def memory_slowdown(cal: dict | None, threads: int) -> float:
    """How many times lower than at calibration the memory read bandwidth at `threads` is now (1.0: the same;
    the calibration's own probe, `calibrate.read_bandwidth_gbs`). The reference VM's bandwidth moves between
    two levels (~45 and ~65 GB/s at 2 threads) from one minute to the next. 1.0 without a calibration."""
    calibrated = (cal or {}).get("bandwidth_gbs", {}).get(str(threads))
    if not calibrated:
        return 1.0
    return round(calibrated / max(calibrate.read_bandwidth_gbs(threads, reps=3), 1e-9), 2)


def measure(path: str | os.PathLike, cfg: Config, reps: int = 3, cal: dict | None = None,
            memory: bool = False) -> dict:
    """llama-bench on `path` under `cfg` (pp = n_prompt, tg = n_gen at depth): median tok/s of its repetitions,
    how many CPUs other processes used meanwhile and, with the calibration `cal`, how much slower than at
    calibration the host runs right after (`host_slowdown`; with `memory` also its read bandwidth,
    `memory_slowdown`, a record for the validation sweep). `busy` when others used over BUSY_CPUS or the host
    is over SLOW_HOST times slower: then the numbers measure the load, not the model."""
    extra = ["-ctk", cfg.cache_type_k, "-ctv", cfg.cache_type_v, "-ub", str(cfg.ubatch),
             "--repack", "1" if cfg.repack else "0"]
    b0, own0, t0 = busy_cpu_seconds(), children_cpu_seconds(), time.monotonic()
    rows = llama_bench_json(Path(path), cfg.threads, cfg.n_prompt, cfg.n_gen, reps, depth=cfg.depth, extra=extra)
    others = 0.0
    if b0 is not None:
        others = max(0.0, ((busy_cpu_seconds() or b0) - b0 - (children_cpu_seconds() - own0))
                     / max(time.monotonic() - t0, 1e-9))
    slow = host_slowdown(cal, cfg.threads) if cal else 1.0
    out = {"others_cpus": round(others, 2), "host_slowdown": slow, "busy": others > BUSY_CPUS or slow > SLOW_HOST}
    if memory:
        out["memory_slowdown"] = memory_slowdown(cal, cfg.threads)
    if cfg.n_prompt:
        out["prefill"] = _median_ts(rows, True)
    if cfg.n_gen:
        out["decode"] = _median_ts(rows, False)
    return out


def measure_interleaved(runs: list[tuple[str | os.PathLike, Config]], reps: int = 3, rounds: int = 3,
                        progress: Callable[[tuple, dict], None] | None = None, cal: dict | None = None,
                        memory: bool = False) -> list[dict]:
    """`measure` of every (model, config) in `rounds` interleaved rounds — a slow minute of a shared host lands
    in one round of every run, not in all rounds of one (on the reference VM two sweeps 10 minutes apart read
    the same 2-thread rows 20-35 % apart) — and per run the median of its quiet rounds (of all, when none was
    quiet), the most other CPUs a counted round saw, `busy` when every round was, and each counted round's
    host factors (`host_rounds`: compute, memory)."""
    got: list[list[dict]] = [[] for _ in runs]
    for _ in range(rounds):
        for i, (path, cfg) in enumerate(runs):
            got[i].append(measure(path, cfg, reps, cal, memory))
            if progress:
                progress(runs[i], got[i][-1])
    out = []
    for measured in got:
        quiet = [m for m in measured if not m["busy"]] or measured
        combined = {"others_cpus": max(m["others_cpus"] for m in quiet), "busy": all(m["busy"] for m in measured),
                    "host_slowdown": max(m.get("host_slowdown", 1.0) for m in quiet), "rounds": len(quiet),
                    "host_rounds": [[m.get("host_slowdown", 1.0), m.get("memory_slowdown", 1.0)] for m in quiet]}
        for kind in ("prefill", "decode"):
            if kind in quiet[0]:
                combined[kind] = statistics.median(m[kind] for m in quiet)
        out.append(combined)
    return out


def predict_then_measure(path: str | os.PathLike, cfgs: Config | list[Config], reps: int = 3,
                         cal: dict | None = None, show: bool = True, rounds: int = 1) -> list[dict]:
    """Print each configuration's prediction (with its band), run llama-bench on all of them in `rounds`
    interleaved rounds (`measure_interleaved`), print the measurements and errors: one row per configuration and
    test (prefill, decode) with `within` (inside the stated band) and `busy`."""
    cfgs = [cfgs] if isinstance(cfgs, Config) else cfgs
    cal = cal or calibration()  # one read for the predictions and the host check after each measurement
    w = workload(path)
    planned = []
    for cfg in cfgs:
        p = predict(w, cfg, cal)
        tests = [t for t in (("prefill", f"pp{cfg.n_prompt}", p.prefill_tps), ("decode", f"tg{cfg.n_gen}",
                                                                               p.decode_tps)) if t[2]]
        planned.append((cfg, p, tests))
        if show:
            print(f"t={cfg.threads} depth={cfg.depth} predicted: " + ", ".join(
                f"{name} {v:.1f} tok/s (±{p.band[kind]:.0%})" for kind, name, v in tests), flush=True)
    rows = []
    for (cfg, p, tests), got in zip(planned, measure_interleaved([(path, c) for c in cfgs], reps, rounds, cal=cal),
                                    strict=True):
        mine = []
        for kind, name, v in tests:
            m = got[kind]
            mine.append({"test": name, "kind": kind, "threads": cfg.threads, "depth": cfg.depth, "predicted": v,
                         "measured": round(m, 2), "error": round(v / m - 1, 4), "band": p.band[kind],
                         "within": p.within(kind, m), "busy": got["busy"], "others_cpus": got["others_cpus"]})
        if show:
            print(f"t={cfg.threads} depth={cfg.depth} measured"
                  + (f" (median of {got['rounds']} rounds)" if rounds > 1 else "") + ": " + ", ".join(
                      f"{r['test']} {r['measured']:.1f} tok/s ({r['error']:+.0%}"
                      f"{'' if r['within'] else ', OUTSIDE the band'})" for r in mine)
                  + (f"  [busy: others used {got['others_cpus']} CPUs, the host ran {got['host_slowdown']}x slower "
                     "than at calibration]" if got["busy"] else ""))
        rows += mine
    return rows


def plot_predicted_vs_measured(rows: list[dict], path: Path) -> Path:
    """Predicted against measured tok/s on log axes, the band as a shaded cone; busy rows hollow."""
    import matplotlib  # optional (the `notebooks` extra): imported on use

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # optional (the `notebooks` extra): imported on use

    fig, ax = plt.subplots(figsize=(5.5, 5))
    values = [r["measured"] for r in rows] + [r["predicted"] for r in rows]
    lo, hi = min(values) / 1.5, max(values) * 1.5
    band = max(r["band"] for r in rows)
    xs = [lo, hi]
    ax.fill_between(xs, [x * (1 - band) for x in xs], [x * (1 + band) for x in xs], color="0.9",
                    label=f"±{band:.0%} band")
    ax.plot(xs, xs, color="0.5", lw=1)
    for kind, marker in (("prefill", "s"), ("decode", "o")):
        for busy in (False, True):
            sel = [r for r in rows if r["kind"] == kind and r["busy"] == busy]
            if sel:
                ax.scatter([r["measured"] for r in sel], [r["predicted"] for r in sel], marker=marker,
                           facecolors="none" if busy else None, edgecolors="C0" if kind == "decode" else "C1",
                           color=None if busy else ("C0" if kind == "decode" else "C1"),
                           label=kind + (" (busy machine)" if busy else ""))
    ax.set(xscale="log", yscale="log", xlim=xs, ylim=xs, xlabel="measured tok/s (llama-bench)",
           ylabel="predicted tok/s (header + calibration)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def calibration(refresh: bool = False) -> dict:
    """This machine's calibration with its overhead fit (measured and cached on first use)."""
    cal = calibrate.calibration(refresh=refresh)
    if not cal.get("overhead"):
        start = calibrate.cpu_seconds()
        cal["overhead"] = fit_overhead(cal)
        # other processes' load over the fit too (llama-bench runs): a busy fit skews every prediction
        cal["busy_cpus"] = max(cal.get("busy_cpus", 0.0), calibrate.others_since(start))
        if cal["busy_cpus"] > 0.5:
            warn(f"other processes used {cal['busy_cpus']} CPUs while calibrating: predictions will be off; "
                 "`invoke calibrate --refresh` on a quiet machine")
        calibrate.save(cal)
    return cal


# ---------------------------------------------------------------------------------------------
# `invoke calibrate`, `invoke predict`


def calibrate_command(refresh: bool = False, json: bool = False) -> int:  # noqa: A002 (the flag is --json)
    """`invoke calibrate`: measure (or show the cached) calibration of this machine and build."""

    cal = calibration(refresh=refresh)
    if json:
        print_json(cal)
        return 0
    threads = sorted(cal["bandwidth_gbs"], key=int)
    print_table(f"calibration {cal['fingerprint']} ({cal.get('measured_at', '?')}, other load "
                f"{cal.get('busy_cpus', '?')} CPUs)",
                ["threads", "read GB/s", "decode overhead ms (a + b x block tensors)"],
                [(t, cal["bandwidth_gbs"][t], "{:.3f} + {:.5f} x T".format(
                    cal["overhead"]["threads"][t]["decode_a"] * 1e3, cal["overhead"]["threads"][t]["decode_b"] * 1e3))
                 for t in threads])
    rows = []
    for qtype, r in cal["kernels"][threads[-1]].items():
        if "mv" in r:
            rows.append((qtype, f"{r['mv'] / 1e9:.1f}", f"{r['mm'] / 1e9:.1f}",
                         f"{r['mv_norepack'] / 1e9:.1f} / {r['mm_norepack'] / 1e9:.1f}" if "mv_norepack" in r else ""))
    print_table(f"ggml mul_mat at {threads[-1]} threads, weight GB/s (mat-mat: x batch {calibrate.MM_BATCH})",
                ["type", "mat-vec", "mat-mat", "no repack mv / mm"], rows)
    spread = cal.get("spread", {})
    if spread:
        print(f"spread over {spread.get('rounds')} interleaved rounds, (max - min) / median: read bandwidth "
              + ", ".join(f"{t} thread(s) {v:.0%}" for t, v in spread.get("bandwidth", {}).items())
              + "; kernel rates " + ", ".join(f"{t} thread(s) median {v['median']:.0%} worst {v['worst']:.0%}"
                                              for t, v in spread.get("kernels", {}).items()))
    rnd = cal["disk"].get("random_gbs", {})
    print(f"disk (cold mmap read): {cal['disk']['gbs']:.2f} GB/s in order"
          + (", at random offsets " + ", ".join(f"{k} KiB blocks {v:.2f}" for k, v in rnd.items()) + " GB/s"
             if rnd else ""))
    return 0


def predict_command(model: str, threads: int | None = None, n_prompt: int = 512, n_gen: int = 128, depth: int = 0,
                    cache_type_k: str = "f16", cache_type_v: str = "f16", ubatch: int = 512, ctx: int | None = None,
                    no_repack: bool = False, json: bool = False) -> int:  # noqa: A002 (the flag is --json)
    """`invoke predict`: prefill/decode tok/s and peak RSS of a model (catalog name or GGUF) from its header."""

    cfg = Config(threads=int(threads or physical_cores()), n_prompt=int(n_prompt), n_gen=int(n_gen),
                 depth=int(depth), cache_type_k=cache_type_k, cache_type_v=cache_type_v, ubatch=int(ubatch),
                 n_ctx=int(ctx) if ctx else None, repack=not no_repack)
    p = predict(locate(model), cfg)
    if json:
        print_json(p.to_dict())
        return 0
    band = p.band

    def rng(v: float | None, b: float) -> str:
        return f"{v:.1f}  ({v * (1 - b):.1f} - {v * (1 + b):.1f})" if v else "-"

    print_table(f"{p.model}: predicted, {cfg.threads} threads, depth {cfg.depth} (band: worst error of the "
                "validation benchmark)", ["what", "predicted", "breakdown"],
                [(f"prefill pp{cfg.n_prompt} tok/s", rng(p.prefill_tps, band["prefill"]),
                  " ".join(f"{k} {v:.1f} ms" for k, v in p.prefill_ms.items())),
                 (f"decode tg{cfg.n_gen} tok/s", rng(p.decode_tps, band["decode"]),
                  f"{p.bound}-bound; " + " ".join(f"{k} {v:.2f} ms" for k, v in p.decode_ms.items())),
                 ("peak RSS MB", f"{p.rss_bytes / 1e6:.0f} (±{band['rss']:.0%} or 100 MB)",
                  " ".join(f"{k} {v / 1e6:.0f}" for k, v in p.rss_parts.items()))])
    return 0
