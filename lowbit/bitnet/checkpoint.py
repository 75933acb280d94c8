"""Is a folder a BitNet b1.58 2B4T-layout HF checkpoint? Both engines (`lowbit.bitnet.convert` for llama.cpp,
`lowbit.bitnet.engine` for bitnet.cpp) check before converting."""

from __future__ import annotations

import json
from pathlib import Path

from lowbit import LowbitError

ARCHITECTURES = ("BitNetForCausalLM", "BitnetForCausalLM")


def check_checkpoint(src: Path) -> dict:
    """config.json of a 2B4T-layout checkpoint, or a LowbitError saying what does not fit."""
    cfg_path = src / "config.json"
    if not cfg_path.exists():
        raise LowbitError(
            f"{src} has no config.json: bitnet-convert needs a Hugging Face checkpoint folder "
            "(e.g. microsoft/bitnet-b1.58-2B-4T-bf16 after `invoke fetch`)"
        )
    cfg = json.loads(cfg_path.read_text())
    archs = cfg.get("architectures") or []
    if cfg.get("model_type") != "bitnet" and not set(archs) & set(ARCHITECTURES):
        raise LowbitError(
            f"{src} is not a BitNet checkpoint (model_type {cfg.get('model_type')!r}, architectures "
            f"{archs}); bitnet-convert handles BitNet b1.58 2B4T layouts only"
        )
    problems = []
    if cfg.get("hidden_act") != "relu2":
        problems.append(
            f"hidden_act is {cfg.get('hidden_act')!r}, 2B4T uses 'relu2' (1bitLLM bitnet_b1_58 "
            "models convert with llama.cpp's own convert_hf_to_gguf.py)"
        )
    if not (src / "tokenizer.json").exists():
        problems.append("no tokenizer.json (2B4T ships the Llama 3 BPE tokenizer)")
    for key in ("hidden_size", "intermediate_size"):
        if int(cfg.get(key, 0)) % 256:
            problems.append(f"{key}={cfg.get(key)} is not a multiple of 256, so TQ1_0/TQ2_0 cannot hold it")
    names = _tensor_names(src)
    if names and not any(n.endswith("mlp.ffn_sub_norm.weight") for n in names):
        problems.append("no mlp.ffn_sub_norm / self_attn.attn_sub_norm tensors (not the 2B4T layout)")
    if problems:
        raise LowbitError(
            f"{src} is not a BitNet b1.58 2B4T-layout checkpoint:\n  - " + "\n  - ".join(problems)
        )
    return cfg


def _tensor_names(src: Path) -> list[str]:
    index = src / "model.safetensors.index.json"
    if index.exists():
        return list(json.loads(index.read_text())["weight_map"])
    names: list[str] = []
    for f in sorted(src.glob("*.safetensors")):
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            names += [k for k in json.loads(fh.read(n)) if k != "__metadata__"]
    return names
