"""Offload planning: which parts of a GGUF model go to which GPU, and how fast that should run.

The planner reads real per-layer tensor sizes from the model's headers (`lowbit.files.gguf_header`) and
prints options side by side:

- `unsloth-rule`: Unsloth's rule of thumb `floor(VRAM / file size x n_layers) - 4`, for comparison;
- `ngl`: the largest `-ngl N` whose layers, KV cache and compute buffer fit on the (first) GPU;
- `experts-cpu`: every layer on the GPU except the routed MoE experts (`-ot ".ffn_.*_exps.=CPU"`),
  then as many expert layers back on the GPU as the VRAM left allows (`--n-cpu-moe N`);
- `multi-gpu`: `-ngl N --tensor-split a,b` over all GPUs; `cpu-only`: threads = physical cores.

Each option carries its VRAM and RAM use and an estimated decode speed from a bandwidth model:
the bytes read per generated token where they live, divided by that memory's bandwidth.

Units: `--vram 24` means a 24 GB card as sold, i.e. 24 GiB. File sizes are bytes; the rule uses
decimal GB as the Hub and Unsloth's table print them.
"""

from __future__ import annotations

import json as _json
import math
import os
import re
import sys
from dataclasses import asdict, dataclass, field

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from lowbit import LowbitError
from lowbit.files.gguf_header import LayerBytes, ModelMeta, read_model
from lowbit.machine import cached_bandwidth, memory_warning, physical_cores, ram_bytes, vram_gib
from lowbit.models.catalog import locate
from lowbit.models.entries import load_catalog
from lowbit.run import calibrate, predict
from lowbit.ui import console, human_bytes, print_table, warn

GiB = 1024**3
GB = 1000**3
GPU_RESERVE = int(0.5 * GiB)  # CUDA context, driver and allocator slack per GPU
UBATCH = 512  # llama.cpp's default physical batch
DEFAULT_CTX = 8192  # the seed's --ctx-size
DEFAULT_GPU_BW_GBS = 1000.0  # an RTX 4090-class card; override with gpu_bw_gbs (H100 SXM: ~3350)
DEFAULT_CPU_BW_GBS = 50.0  # used until `invoke bench` has measured this machine
CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")  # llama.cpp's list
OPTION_NAMES = ("unsloth-rule", "ngl", "experts-cpu", "multi-gpu", "cpu-only")
EXPERTS_CPU_REGEX = ".ffn_.*_exps.=CPU"

# Unsloth's R1 table as the seed prints it (file GB; layers for 24 GB, 80 GB, 2x80 GB): a fact to
# reproduce through the rule, not a value the planner uses.
SEED_OFFLOAD_TABLE = {
    "1.58bit UD-IQ1_S": (131, (7, 33, 61)),
    "1.73bit UD-IQ1_M": (158, (5, 26, 57)),
    "2.22bit UD-IQ2_XXS": (183, (4, 22, 49)),
    "2.51bit UD-Q2_K_XL": (212, (2, 19, 32)),
}
SEED_VRAM_CONFIGS = ((24.0,), (80.0,), (80.0, 80.0))


# ---------------------------------------------------------------------------------------------
# data


@dataclass
class Option:
    """One way to place the model, with its memory use and estimated speed."""

    name: str
    vram_gb: float  # the VRAM this option plans for (sum over the GPUs it uses)
    n_gpu_layers: int
    vram_bytes: int
    ram_bytes: int
    est_tokens_per_s: float
    flags: list[str]
    fits: bool = True
    note: str = ""
    n_cpu_moe: int | None = None  # experts-cpu: layers whose experts stay on the CPU
    expert_layers_on_gpu: int = 0
    threads: int | None = None
    gpu_bytes_per_token: int = 0
    cpu_bytes_per_token: int = 0


@dataclass
class Plan:
    """The planner's answer for one model and machine."""

    model: str
    arch: str
    n_layers: int
    file_bytes: int
    ctx: int
    cache_type_k: str
    cache_type_v: str
    vram_gb: list[float]
    ram_bytes: int
    cpu_bw_gbs: float
    gpu_bw_gbs: float
    kv_bytes_per_layer: int
    kv_bytes: int
    compute_bytes: int
    non_expert_bytes: int  # what experts-cpu must hold on the GPU (weights only)
    options: list[Option] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    recommended: str = "cpu-only"
    sizes_only: bool = False
    is_mla: bool = False
    prediction: dict | None = None  # cpu-only, calibrated (lowbit.run.predict), with its error band

    def option(self, name: str) -> Option:
        for opt in self.options:
            if opt.name == name:
                return opt
        raise LowbitError(f"plan has no {name!r} option (options: {', '.join(o.name for o in self.options)})")

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# sizes


def cache_type_bytes(cache_type: str) -> float:
    """Bytes per element of a llama.cpp KV cache type (q4_0: 18/32)."""

    if cache_type not in CACHE_TYPES:
        raise LowbitError(
            f"unsupported cache type {cache_type!r}; llama.cpp accepts: {', '.join(CACHE_TYPES)}"
        )
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[cache_type.upper()]]
    return size / block


def kv_bytes_per_layer(meta: ModelMeta, ctx: int, cache_type_k: str, cache_type_v: str) -> int:
    """KV cache of one layer for `ctx` tokens. MLA (deepseek2): only the compressed K row is stored."""
    k = meta.key_length * meta.n_head_kv * ctx * cache_type_bytes(cache_type_k)
    v = 0 if meta.is_mla else meta.value_length * meta.n_head_kv * ctx * cache_type_bytes(cache_type_v)
    return int(k + v)


def compute_allowance(meta: ModelMeta, ctx: int) -> int:
    """Compute-buffer allowance for one backend: logits and activations for one micro-batch plus one
    layer's attention scores (f32, no flash attention) — an upper-bound style estimate, not exact."""
    logits = UBATCH * meta.n_vocab * 4
    activations = UBATCH * meta.n_embd * 4 * 16
    scores = UBATCH * meta.n_head * ctx * 4
    return int(logits + activations + scores)


def sizes_meta(spec: str) -> ModelMeta:
    """A layout from `SIZE:LAYERS` alone (e.g. "131GB:61"): equal layers, nothing known about experts."""
    m = re.fullmatch(r"\s*([\d.]+)\s*(GB|GiB|G|MB|MiB|TB)?\s*:\s*(\d+)\s*", spec, re.IGNORECASE)
    if not m:
        raise LowbitError(f"--sizes-from {spec!r}: expected SIZE:LAYERS, e.g. 131GB:61")
    unit = (m[2] or "GB").lower()
    scale = {"gb": GB, "g": GB, "gib": GiB, "mb": 1000**2, "mib": 1024**2, "tb": 1000**4}[unit]
    size, n = int(float(m[1]) * scale), int(m[3])
    if n <= 0 or size <= 0:
        raise LowbitError(f"--sizes-from {spec!r}: size and layer count must be positive")
    per = size // n
    layers = [LayerBytes(i, other=per) for i in range(n)]
    layers[-1].other += size - per * n
    return ModelMeta(
        name=spec,
        shards=[],
        arch="unknown",
        n_layers=n,
        n_ctx_train=0,
        n_embd=0,
        n_head=0,
        n_head_kv=0,
        key_length=0,
        value_length=0,
        is_mla=False,
        n_expert=0,
        n_expert_used=0,
        n_vocab=0,
        file_bytes=size,
        embeddings=0,
        output=0,
        layers=layers,
    )


def _bytes_per_token(meta: ModelMeta, layer: LayerBytes, experts_here: bool = True) -> int:
    """Bytes of `layer` read per generated token: everything dense, n_used/n_expert of the experts."""
    frac = meta.n_expert_used / meta.n_expert if meta.n_expert else 1.0
    dense = layer.total - layer.routed_experts
    return int(dense + (layer.routed_experts * frac if experts_here else 0))


def _speed(gpu_b: int, cpu_b: int, gpu_bw: float, cpu_bw: float) -> float:
    t = gpu_b / (gpu_bw * GB) + cpu_b / (cpu_bw * GB)
    return round(1.0 / t, 2) if t > 0 else 0.0


def cached_cpu_bandwidth_gbs() -> float | None:
    """This machine's measured read bandwidth (all cores), if `invoke bench` has measured it."""
    try:
        bw = cached_bandwidth()
    except Exception:  # noqa: BLE001 - no measurement yet is the normal case
        return None
    return bw.get("cpu_read_gbs") if bw else None


# ---------------------------------------------------------------------------------------------
# the planner


def rule_layers(vram_gb: float, file_gb: float, n_layers: int) -> int:
    """Unsloth's rule: floor(VRAM / size x n_layers) - 4, clipped to [0, n_layers]."""
    if vram_gb <= 0 or file_gb <= 0:
        return 0
    return max(0, min(n_layers, math.floor(vram_gb / file_gb * n_layers) - 4))


def make_plan(
    meta: ModelMeta,
    vram_gb: list[float],
    ram_gb: float | None = None,
    ctx: int | None = None,
    cache_type_k: str = "q4_0",
    cache_type_v: str | None = None,
    threads: int | None = None,
    cpu_bw_gbs: float | None = None,
    gpu_bw_gbs: float | None = None,
) -> Plan:
    """Plan `meta` for GPUs with `vram_gb` (GiB each; [] = none) and `ram_gb` of RAM."""
    sizes_only = not meta.shards
    if any(v <= 0 for v in vram_gb):
        raise LowbitError(f"--vram values must be positive GB, got {vram_gb}")
    if ctx is None:
        ctx = min(DEFAULT_CTX, meta.n_ctx_train) if meta.n_ctx_train else DEFAULT_CTX
    if ctx <= 0:
        raise LowbitError(f"--ctx must be positive, got {ctx}")
    if meta.n_ctx_train and ctx > meta.n_ctx_train:
        raise LowbitError(
            f"--ctx {ctx} is larger than the model's trained context ({meta.n_ctx_train} tokens in "
            f"{meta.arch}.context_length); use --ctx {meta.n_ctx_train} or less"
        )
    ram_gb = ram_bytes() / GiB if ram_gb is None else ram_gb
    mla_note = ""
    if meta.is_mla and cache_type_v not in (None, cache_type_k):
        mla_note = (
            f"MLA model: llama.cpp requires equal K and V cache types; --cache-type-v {cache_type_v} "
            f"replaced by {cache_type_k} (MLA stores no separate V cache)"
        )
    if cache_type_v is None or meta.is_mla:
        # MLA keeps no V cache, but llama.cpp refuses K and V types that differ ("model does not support
        # different K and V cache types"), so the seed's lone `--cache-type-k q4_0` needs a matching -ctv.
        cache_type_v = cache_type_k if meta.is_mla else "f16"
    threads = threads or physical_cores()
    cpu_bw = cpu_bw_gbs or cached_cpu_bandwidth_gbs() or DEFAULT_CPU_BW_GBS
    gpu_bw = gpu_bw_gbs or DEFAULT_GPU_BW_GBS
    n = meta.n_layers
    kv_layer = kv_bytes_per_layer(meta, ctx, cache_type_k, cache_type_v)
    compute = compute_allowance(meta, ctx)
    ram_bytes_avail = int(ram_gb * GiB)
    plan = Plan(
        model=meta.name,
        arch=meta.arch,
        n_layers=n,
        file_bytes=meta.file_bytes,
        ctx=ctx,
        cache_type_k=cache_type_k,
        cache_type_v=cache_type_v,
        vram_gb=list(vram_gb),
        ram_bytes=ram_bytes_avail,
        cpu_bw_gbs=cpu_bw,
        gpu_bw_gbs=gpu_bw,
        kv_bytes_per_layer=kv_layer,
        kv_bytes=kv_layer * n,
        compute_bytes=compute,
        non_expert_bytes=meta.output + sum(layer.non_expert for layer in meta.layers),
        sizes_only=sizes_only,
        is_mla=meta.is_mla,
    )
    if mla_note:
        plan.warnings.append(mla_note)
    if sizes_only:
        plan.warnings.append(
            "planned from size and layer count only: layers assumed equal, KV cache and compute "
            "buffer not counted, experts unknown (no experts-cpu option)"
        )
    common = ["--ctx-size", str(ctx), "--cache-type-k", cache_type_k]
    if cache_type_v != "f16" or meta.is_mla:
        common += ["--cache-type-v", cache_type_v]
    weights = meta.tensor_bytes - meta.unused
    tok_row = meta.embeddings // meta.n_vocab if meta.n_vocab else 0  # one embedding row per token
    usable = [int(v * GiB) - GPU_RESERVE for v in vram_gb]
    # every GPU beyond the first holds its own compute buffer: the budget over all GPUs shrinks by that
    all_gpus = sum(usable) - max(0, len(usable) - 1) * compute if usable else 0

    def layer_split(n_gpu: int) -> tuple[int, int, int, int]:
        """(gpu weight bytes, gpu bytes/token, cpu bytes/token, layers on gpu) for -ngl n_gpu."""
        on_gpu = meta.layers[n - min(n_gpu, n) :] if n_gpu > 0 else []
        gpu_w = sum(layer.total for layer in on_gpu) + (meta.output if n_gpu > n else 0)
        gpu_t = sum(_bytes_per_token(meta, layer) for layer in on_gpu) + (meta.output if n_gpu > n else 0)
        all_t = sum(_bytes_per_token(meta, layer) for layer in meta.layers) + meta.output + tok_row
        return gpu_w, gpu_t, all_t - gpu_t, len(on_gpu)

    def ngl_vram(n_gpu: int) -> int:
        gpu_w, _, _, nl = layer_split(n_gpu)
        return gpu_w + nl * kv_layer + (compute if n_gpu > 0 else 0)

    def ngl_option(
        name: str, n_gpu: int, budget: int, vram_total: float, extra: list[str], note: str = ""
    ) -> Option:
        gpu_w, gpu_t, cpu_t, nl = layer_split(n_gpu)
        vram = ngl_vram(n_gpu)
        ram = weights - gpu_w + (n - nl) * kv_layer + compute
        fits = vram <= budget
        return Option(
            name=name,
            vram_gb=vram_total,
            n_gpu_layers=n_gpu,
            vram_bytes=vram,
            ram_bytes=ram,
            est_tokens_per_s=_speed(gpu_t, cpu_t, gpu_bw, cpu_bw),
            flags=["-ngl", str(n_gpu), *extra, "-t", str(threads), *common],
            fits=fits,
            note=note
            or (
                ""
                if fits
                else f"needs {vram / GiB:.1f} GiB VRAM, more than the {budget / GiB:.1f} GiB usable"
            ),
            threads=threads,
            gpu_bytes_per_token=gpu_t,
            cpu_bytes_per_token=cpu_t,
        )

    def best_ngl(budget: int) -> int:
        best = 0
        for k in range(1, n + 2):  # n + 1 also puts the output layer on the GPU
            if ngl_vram(k) <= budget:
                best = k
        return best

    total_vram = sum(vram_gb)
    split = ["--tensor-split", ",".join(f"{v:g}" for v in vram_gb)] if len(vram_gb) > 1 else []
    # unsloth-rule: file size in decimal GB, as the Hub and the seed print it.
    k_rule = rule_layers(total_vram, meta.file_bytes / GB, n)
    plan.options.append(
        ngl_option(
            "unsloth-rule",
            k_rule,
            all_gpus,
            total_vram,
            split,
            note=f"floor({total_vram:g} / {meta.file_bytes / GB:.3g} x {n}) - 4",
        )
    )
    if usable:
        k = best_ngl(usable[0])
        opt = ngl_option("ngl", k, usable[0], vram_gb[0], [])
        opt.note = opt.note or f"largest -ngl whose layers + KV + compute fit in {vram_gb[0]:g} GiB"
        plan.options.append(opt)
        if meta.is_moe:
            plan.options.append(
                _experts_cpu(
                    meta,
                    plan,
                    all_gpus,
                    total_vram,
                    split,
                    threads,
                    common,
                    weights,
                    tok_row,
                    gpu_bw,
                    cpu_bw,
                )
            )
        if len(vram_gb) > 1:
            k = best_ngl(all_gpus)
            plan.options.append(ngl_option("multi-gpu", k, all_gpus, total_vram, split))
    cpu_t = sum(_bytes_per_token(meta, layer) for layer in meta.layers) + meta.output + tok_row
    plan.options.append(
        Option(
            name="cpu-only",
            vram_gb=0.0,
            n_gpu_layers=0,
            vram_bytes=0,
            ram_bytes=weights + n * kv_layer + compute,
            est_tokens_per_s=_speed(0, cpu_t, gpu_bw, cpu_bw),
            flags=["-ngl", "0", "-t", str(threads), *common],
            threads=threads,
            fits=weights + n * kv_layer + compute <= ram_bytes_avail,
            note=f"threads = {threads} physical cores",
            cpu_bytes_per_token=cpu_t,
        )
    )
    if not sizes_only:
        _add_prediction(plan, meta, threads, cache_type_k, cache_type_v)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if threads > 1 and load > 0.75 * physical_cores():
        plan.warnings.append(
            f"this machine is busy (load {load:.1f} on {physical_cores()} cores): one stolen core stalls "
            f"every token of a {threads}-thread run; compare `invoke bench --threads 1,...,{threads}`"
        )
    if too_big := memory_warning(meta.file_bytes, ram_bytes_avail, int(total_vram * GiB)):
        plan.warnings.append(too_big)
    for opt in plan.options:
        if opt.name != "unsloth-rule" and opt.ram_bytes > ram_bytes_avail and opt.fits:
            opt.note = (opt.note + "; " if opt.note else "") + "CPU part exceeds RAM (mmap paging)"
    candidates = [o for o in plan.options if o.fits and o.name != "unsloth-rule"]
    if candidates:
        plan.recommended = max(candidates, key=lambda o: o.est_tokens_per_s).name
    return plan


PREDICT_PROMPT, PREDICT_GEN = 512, 128  # what the calibrated prediction describes: pp512, tg128


def _add_prediction(plan: Plan, meta: ModelMeta, threads: int, cache_type_k: str, cache_type_v: str) -> None:
    """The calibrated cost model's cpu-only prediction (when this machine is calibrated): it replaces the
    bandwidth-only estimate of the cpu-only option, which ignores compute, attention and overhead."""

    cal = calibrate.cached()
    if not cal or not cal.get("overhead"):
        plan.warnings.append("this machine is not calibrated: est tok/s is a bandwidth-only bound; "
                             "`invoke calibrate` (about a minute, once) gives a prediction with an error band")
        return
    try:
        w = predict.workload(meta.shards[0])
        cfg = predict.Config(threads=threads, n_prompt=PREDICT_PROMPT, n_gen=PREDICT_GEN,
                             cache_type_k=cache_type_k, cache_type_v=cache_type_v, n_ctx=plan.ctx)
        p = predict.predict(w, cfg, cal)
    except LowbitError as exc:
        plan.warnings.append(f"no calibrated prediction: {exc}")
        return
    plan.prediction = p.to_dict()
    if cal.get("busy_cpus", 0) > 0.5:
        plan.warnings.append(f"the calibration ran while other processes used {cal['busy_cpus']} CPUs: its rates "
                             "are low; `invoke calibrate --refresh` on a quiet machine")
    cpu = plan.option("cpu-only")
    cpu.est_tokens_per_s = p.decode_tps
    cpu.note += f"; calibrated: decode {p.decode_tps:.1f} tok/s ±{p.band['decode']:.0%}"


def _experts_cpu(
    meta: ModelMeta,
    plan: Plan,
    budget: int,
    total_vram: float,
    split: list[str],
    threads: int,
    common: list[str],
    weights: int,
    tok_row: int,
    gpu_bw: float,
    cpu_bw: float,
) -> Option:
    """All layers on the GPU except routed experts; bring back expert layers from the end while VRAM lasts."""
    n = meta.n_layers
    base = plan.non_expert_bytes + n * plan.kv_bytes_per_layer + plan.compute_bytes
    moe_layers = [layer for layer in meta.layers if layer.routed_experts]
    back, used = 0, base
    for layer in reversed(moe_layers):
        if used + layer.routed_experts > budget:
            break
        used += layer.routed_experts
        back += 1
    fits = base <= budget
    if back == 0:
        placement, n_cpu_moe = ["-ot", EXPERTS_CPU_REGEX], n
    else:
        # --n-cpu-moe M keeps the experts of blocks 0..M-1 on the CPU.
        n_cpu_moe = moe_layers[len(moe_layers) - back].index if back < len(moe_layers) else 0
        placement = ["--n-cpu-moe", str(n_cpu_moe)] if n_cpu_moe else []
    gpu_layers = set(layer.index for layer in moe_layers[len(moe_layers) - back :]) if back else set()
    frac = meta.n_expert_used / meta.n_expert if meta.n_expert else 1.0
    gpu_t = sum(
        _bytes_per_token(meta, layer, experts_here=layer.index in gpu_layers) for layer in meta.layers
    )
    gpu_t += meta.output
    cpu_t = (
        sum(int(layer.routed_experts * frac) for layer in meta.layers if layer.index not in gpu_layers)
        + tok_row
    )
    note = (
        f"experts of {back} of {len(moe_layers)} MoE layers back on the GPU"
        if fits
        else f"the non-expert tensors + KV + compute need {base / GiB:.1f} GiB, more than the "
        f"{budget / GiB:.1f} GiB "
        "usable: not even experts-on-CPU fits; use -ngl N, a smaller --ctx or a q4_0 cache"
    )
    vram = used if fits else base
    return Option(
        name="experts-cpu",
        vram_gb=total_vram,
        n_gpu_layers=n + 1,
        vram_bytes=vram,
        ram_bytes=weights - (vram - n * plan.kv_bytes_per_layer - plan.compute_bytes) + plan.compute_bytes,
        est_tokens_per_s=_speed(gpu_t, cpu_t, gpu_bw, cpu_bw),
        flags=["-ngl", str(n + 1), *placement, *split, "-t", str(threads), *common],
        fits=fits,
        note=note,
        n_cpu_moe=n_cpu_moe,
        expert_layers_on_gpu=back,
        threads=threads,
        gpu_bytes_per_token=gpu_t,
        cpu_bytes_per_token=cpu_t,
    )


# ---------------------------------------------------------------------------------------------
# public API for other modules


def model_meta(model: str | None = None, sizes_from: str | None = None) -> ModelMeta:
    """The layout of `model` (catalog name, path) or of a `SIZE:LAYERS` spec."""
    if sizes_from:
        return sizes_meta(sizes_from)
    if not model:
        raise LowbitError("give --model (a catalog name or a GGUF path) or --sizes-from SIZE:LAYERS")

    return read_model(locate(model, hint="; or plan from its size with --sizes-from SIZE:LAYERS"))


def plan_model(
    model: str,
    vram_gb: list[float],
    ram_gb: float | None = None,
    ctx: int | None = None,
    cache_type_k: str = "q4_0",
    cache_type_v: str | None = None,
    threads: int | None = None,
    cpu_bw_gbs: float | None = None,
    gpu_bw_gbs: float | None = None,
) -> Plan:
    """Plan `model` (catalog name or GGUF path; `SIZE:LAYERS` plans from size alone) for GPUs and RAM."""
    meta = sizes_meta(model) if re.fullmatch(r"[\d.]+\s*\w*:\d+", model.strip()) else model_meta(model)
    return make_plan(meta, vram_gb, ram_gb, ctx, cache_type_k, cache_type_v, threads, cpu_bw_gbs, gpu_bw_gbs)


def choose(plan: Plan, plan_choice: str) -> Option:
    """The option behind `auto|rule|ngl=N|experts-cpu|multi-gpu|cpu-only` (errors say why it cannot run)."""
    if plan_choice == "auto":
        return plan.option(plan.recommended)
    if plan_choice == "rule":
        return plan.option("unsloth-rule")
    m = re.fullmatch(r"ngl=(\d+)", plan_choice)
    if m:
        k = int(m[1])
        if k > plan.n_layers + 1:
            raise LowbitError(
                f"--plan ngl={k}: the model has {plan.n_layers} layers (+1 for the output); "
                f"use ngl={plan.n_layers + 1} at most"
            )
        base = plan.options[-1]  # cpu-only carries the common flags
        flags = ["-ngl", str(k)] + base.flags[2:]
        if len(plan.vram_gb) > 1:
            flags[2:2] = ["--tensor-split", ",".join(f"{v:g}" for v in plan.vram_gb)]
        return Option(
            name=f"ngl={k}",
            vram_gb=sum(plan.vram_gb),
            n_gpu_layers=k,
            vram_bytes=0,
            ram_bytes=0,
            est_tokens_per_s=0.0,
            flags=flags,
            threads=base.threads,
        )
    if plan_choice in OPTION_NAMES:
        if plan_choice in ("ngl", "experts-cpu", "multi-gpu") and not plan.vram_gb:
            raise LowbitError(f"--plan {plan_choice} needs a GPU: give --vram GB (none was detected)")
        opt = plan.option(plan_choice)
        if not opt.fits and plan_choice != "unsloth-rule":
            raise LowbitError(f"--plan {plan_choice} does not fit: {opt.note}")
        return opt
    raise LowbitError(
        f"unknown --plan {plan_choice!r}; use auto, rule, ngl=N, experts-cpu, multi-gpu or cpu-only"
    )


def flags_for(
    plan_choice: str,
    model: str,
    vram_gb: list[float] | None = None,
    ram_gb: float | None = None,
    ctx: int | None = None,
    cache_type_k: str = "q4_0",
    threads: int | None = None,
) -> list[str]:
    """llama.cpp placement flags (-ngl, -ot/--n-cpu-moe, --tensor-split, -t, --ctx-size, cache types) for
    `plan_choice` ("auto" | "rule" | "ngl=N" | "experts-cpu"); `vram_gb=None` detects the GPUs."""
    vram = vram_gib() if vram_gb is None else vram_gb
    plan = plan_model(model, vram, ram_gb, ctx, cache_type_k, threads=threads)
    return list(choose(plan, plan_choice).flags)


# ---------------------------------------------------------------------------------------------
# the seed table


def seed_table() -> dict[str, tuple[float, dict[tuple[float, ...], int]]]:
    """Unsloth's R1 table: quant -> (file GB, {VRAM config: layers}). From the catalog entry `deepseek-r1`
    (`quants[].size_gb`, `published_offload_layers`, 160 = 2x80 GB) when it has them, else the seed's."""
    try:
        entry = load_catalog()["deepseek-r1"]
        sizes = {q["name"]: q for q in entry["quants"]}
        table = {}
        for name, row in entry["published_offload_layers"].items():
            q = sizes[name]
            configs = {((80.0, 80.0) if float(v) == 160 else (float(v),)): int(n) for v, n in row.items()}
            table[f"{q['bits']}bit {name}"] = (float(q["size_gb"]), configs)
        if len(table) == len(SEED_OFFLOAD_TABLE):
            return table
    except (KeyError, TypeError, ValueError):
        pass
    return {
        q: (float(gb), dict(zip(SEED_VRAM_CONFIGS, layers, strict=True)))
        for q, (gb, layers) in SEED_OFFLOAD_TABLE.items()
    }


def seed_table_rows() -> list[dict]:
    """Unsloth's R1 offload table next to the rule computed here: 11 of 12 agree."""
    rows = []
    for quant, (size_gb, configs) in seed_table().items():
        for vram, expected in configs.items():
            got = rule_layers(sum(vram), size_gb, 61)
            rows.append(
                {
                    "quant": quant,
                    "file_gb": size_gb,
                    "vram": (f"{len(vram)}x" if len(vram) > 1 else "") + f"{vram[0]:g} GB",
                    "table": expected,
                    "rule": got,
                    "agree": got == expected,
                }
            )
    return rows


SEED_DISAGREEMENT = (
    "2.51bit (212 GB) on 2x80 GB: the rule gives floor(160/212 x 61) - 4 = 42, the table says 32. "
    "32 is what the rule gives for 128 GB (floor(128/212 x 61) - 4 = 32; any VRAM in [125.1, 128.6) GB "
    "does), the unified memory of the Mac the seed discusses next; no reading of 2x80 GB gives 32. "
    "Planning from sizes alone (`invoke plan --sizes-from 212GB:61 --vram 80 --vram 80`: equal layers, "
    "0.5 GiB reserved per GPU, KV and compute not counted) fits 49 layers; the rule's -4 is its allowance "
    "for KV cache and compute buffers, which the planner counts from the file."
)


# ---------------------------------------------------------------------------------------------
# `invoke plan`


def _gb(n: int) -> str:
    return f"{n / GiB:.1f}"


def print_plan(plan: Plan) -> None:
    rows = [
        (
            o.name,
            "yes" if o.fits else "NO",
            o.n_gpu_layers,
            _gb(o.vram_bytes),
            _gb(o.ram_bytes),
            f"{o.est_tokens_per_s:.2f}",
            " ".join(o.flags),
            o.note,
        )
        for o in plan.options
    ]
    kv = "MLA: compressed K only" if plan.is_mla else ""
    title = (
        f"{plan.model}: {plan.arch}, {plan.n_layers} layers, {plan.file_bytes / GB:.2f} GB; ctx {plan.ctx}, "
        f"KV {_gb(plan.kv_bytes)} GiB ({plan.cache_type_k}{', ' + kv if kv else ''}); compute allowance "
        f"{_gb(plan.compute_bytes)} GiB; VRAM {plan.vram_gb or 'none'} GiB; "
        f"RAM {plan.ram_bytes / GiB:.0f} GiB; "
        f"bandwidth CPU {plan.cpu_bw_gbs:.0f} / GPU {plan.gpu_bw_gbs:.0f} GB/s"
    )
    print_table(title, ["option", "fits", "-ngl", "VRAM GiB", "RAM GiB", "est tok/s", "flags", "note"], rows)

    console.print(f"recommended: [bold]{plan.recommended}[/]")
    if plan.prediction:
        p, band = plan.prediction, plan.prediction["band"]
        d, pp = p["decode_tps"], p["prefill_tps"]
        console.print(
            f"predicted cpu-only on this machine ({p['config']['threads']} threads; calibrated, from the header): "
            f"decode tg{PREDICT_GEN} {d:.1f} tok/s ({d * (1 - band['decode']):.1f}-{d * (1 + band['decode']):.1f}), "
            f"prefill pp{PREDICT_PROMPT} {pp:.1f} tok/s ({pp * (1 - band['prefill']):.1f}-"
            f"{pp * (1 + band['prefill']):.1f}), peak RSS {p['rss_bytes'] / GiB:.2f} GiB ±{band['rss']:.0%}; "
            f"{p['bound']}-bound")
    for w in plan.warnings:
        warn(w)


def print_layers(meta: ModelMeta) -> None:
    rows = [
        ("embeddings", "", "", "", "", human_bytes(meta.embeddings)),
        ("output", "", "", "", "", human_bytes(meta.output)),
    ]
    for layer in meta.layers:
        rows.append(
            (
                f"blk.{layer.index}",
                human_bytes(layer.attention),
                human_bytes(layer.dense_ffn),
                human_bytes(layer.shared_experts),
                human_bytes(layer.routed_experts),
                human_bytes(layer.total),
            )
        )
    print_table(
        f"{meta.name}: bytes per layer",
        ["part", "attention", "dense FFN", "shared experts", "routed experts", "total"],
        rows,
    )


def print_seed_table() -> None:
    rows = [
        (r["quant"], r["file_gb"], r["vram"], r["table"], r["rule"], "yes" if r["agree"] else "NO")
        for r in seed_table_rows()
    ]
    print_table(
        "Unsloth's R1 table vs floor(VRAM/size x 61) - 4",
        ["quant", "GB", "VRAM", "table", "rule", "agree"],
        rows,
    )
    console.print(SEED_DISAGREEMENT)


def plan_command(
    model: str | None = None,
    vram: list | None = None,
    ram: float | None = None,
    ctx: int | None = None,
    cache_type_k: str = "q4_0",
    cache_type_v: str | None = None,
    sizes_from: str | None = None,
    threads: int | None = None,
    gpu_bw: float | None = None,
    cpu_bw: float | None = None,
    json: bool = False,
    layers: bool = False,
    seed_table: bool = False,
) -> int:
    """`invoke plan`: print the options (or only JSON on stdout with --json)."""
    if seed_table and not model and not sizes_from:
        if json:
            print(_json.dumps({"seed_table": seed_table_rows(), "disagreement": SEED_DISAGREEMENT}, indent=1))
        else:
            print_seed_table()
        return 0
    vram_gb = [float(v) for v in vram] if vram else vram_gib()
    meta = model_meta(model, sizes_from)
    plan = make_plan(
        meta,
        vram_gb,
        float(ram) if ram is not None else None,
        int(ctx) if ctx else None,
        cache_type_k,
        cache_type_v,
        int(threads) if threads else None,
        float(cpu_bw) if cpu_bw else None,
        float(gpu_bw) if gpu_bw else None,
    )
    if json:
        for w in plan.warnings:
            warn(w)  # stderr
        out = plan.to_dict()
        out["model"] = model or sizes_from
        out["meta"] = {k: v for k, v in meta.to_dict().items() if k != "layers"}
        sys.stdout.write(_json.dumps(out, indent=1) + "\n")
        return 0
    if layers:
        print_layers(meta)
    print_plan(plan)
    if seed_table:
        print_seed_table()
    return 0
