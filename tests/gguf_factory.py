"""Small real GGUF files and shard sets for tests (gguf-py's GGUFWriter + llama-gguf-split)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import TokenType

from lowbit.files import synthetic
from lowbit.files.shard_set import shards_named

R1_TOKENS = [
    "<｜begin▁of▁sentence｜>",
    "<｜end▁of▁sentence｜>",
    "<｜▁pad▁｜>",
    "<｜User｜>",
    "<｜Assistant｜>",
    "<think>",
    "</think>",
    "a",
    "b",
    "c",
]


def write_gguf(
    path: Path,
    layers: int = 3,
    rows: int = 64,
    seed: int = 0,
    vocab: list[str] | None = None,
    big_rows: int = 300,
) -> Path:
    """A GGUF with F32, F16 and Q8_0 tensors (random data) and, optionally, a token list."""
    rng = np.random.default_rng(seed)

    def metadata(w) -> None:
        w.add_block_count(layers)
        if vocab is not None:
            w.add_tokenizer_model("gpt2")
            w.add_token_list(vocab)
            w.add_bos_token_id(0)
            w.add_eos_token_id(1)

    def tensors():
        # token_embd first, as convert_hf_to_gguf.py writes it
        yield "token_embd.weight", rng.standard_normal((big_rows, 256)).astype(np.float32), None
        for i in range(layers):
            yield f"blk.{i}.attn_q.weight", rng.standard_normal((rows, 256)).astype(np.float32), None
            yield f"blk.{i}.ffn_up.weight", rng.standard_normal((rows, 256)).astype(np.float16), None
            q = gguf.quants.quantize(rng.standard_normal((rows, 256)).astype(np.float32), Q.Q8_0)
            yield f"blk.{i}.ffn_down.weight", q, Q.Q8_0

    return synthetic.write_gguf(path, "llama", tensors(), metadata=metadata)


def split_gguf(tool: Path, src: Path, prefix: Path, max_tensors: int) -> list[Path]:
    """Split with llama-gguf-split; returns the parts in order."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(tool), "--split", "--split-max-tensors", str(max_tensors), str(src), str(prefix)],
        check=True,
        capture_output=True,
    )
    return shards_named(prefix.parent, prefix.name)


def write_llama_model(path: Path, n_embd: int = 64, n_layer: int = 2, n_ff: int = 128, seed: int = 0) -> Path:
    """A tiny but real llama-architecture GGUF (byte-level SPM vocab, random F32 weights) llama.cpp runs."""
    rng = np.random.default_rng(seed)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL] + [TokenType.BYTE] * 256
    n_vocab, n_head = len(tokens), 4

    def vocabulary(w) -> None:
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores([0.0] * n_vocab)
        w.add_token_types(types)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)

    def mat(*shape):
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    def tensors():
        yield "token_embd.weight", mat(n_vocab, n_embd), None
        for i in range(n_layer):
            yield f"blk.{i}.attn_norm.weight", np.ones(n_embd, np.float32), None
            for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
                yield f"blk.{i}.{name}.weight", mat(n_embd, n_embd), None
            yield f"blk.{i}.ffn_norm.weight", np.ones(n_embd, np.float32), None
            yield f"blk.{i}.ffn_gate.weight", mat(n_ff, n_embd), None
            yield f"blk.{i}.ffn_up.weight", mat(n_ff, n_embd), None
            yield f"blk.{i}.ffn_down.weight", mat(n_embd, n_ff), None
        yield "output_norm.weight", np.ones(n_embd, np.float32), None
        yield "output.weight", mat(n_vocab, n_embd), None

    hparams = synthetic.Hparams(n_embd=n_embd, n_layer=n_layer, n_ff=n_ff, n_head=n_head, ctx=256, file_type=0,
                                name="tiny-llama-test")
    return synthetic.write_gguf(path, "llama", tensors(), hparams, metadata=vocabulary)
