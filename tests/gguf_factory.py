"""Small real GGUF files and shard sets for tests (gguf-py's GGUFWriter + llama-gguf-split)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

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
    import gguf
    from gguf import GGMLQuantizationType as Q
    from gguf import GGUFWriter

    rng = np.random.default_rng(seed)
    w = GGUFWriter(str(path), "llama")
    w.add_block_count(layers)
    if vocab is not None:
        w.add_tokenizer_model("gpt2")
        w.add_token_list(vocab)
        w.add_bos_token_id(0)
        w.add_eos_token_id(1)
    # token_embd first, as convert_hf_to_gguf.py writes it
    w.add_tensor("token_embd.weight", rng.standard_normal((big_rows, 256)).astype(np.float32))
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_q.weight", rng.standard_normal((rows, 256)).astype(np.float32))
        w.add_tensor(f"blk.{i}.ffn_up.weight", rng.standard_normal((rows, 256)).astype(np.float16))
        q = gguf.quants.quantize(rng.standard_normal((rows, 256)).astype(np.float32), Q.Q8_0)
        w.add_tensor(f"blk.{i}.ffn_down.weight", q, raw_dtype=Q.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def split_gguf(tool: Path, src: Path, prefix: Path, max_tensors: int) -> list[Path]:
    """Split with llama-gguf-split; returns the parts in order."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(tool), "--split", "--split-max-tensors", str(max_tensors), str(src), str(prefix)],
        check=True,
        capture_output=True,
    )
    return sorted(prefix.parent.glob(f"{prefix.name}-*-of-*.gguf"))


def write_llama_model(path: Path, n_embd: int = 64, n_layer: int = 2, n_ff: int = 128, seed: int = 0) -> Path:
    """A tiny but real llama-architecture GGUF (byte-level SPM vocab, random F32 weights) llama.cpp runs."""
    from gguf import GGUFWriter, TokenType

    rng = np.random.default_rng(seed)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL] + [TokenType.BYTE] * 256
    n_vocab, n_head = len(tokens), 4
    w = GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama-test")
    w.add_context_length(256)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(0)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * n_vocab)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)

    def mat(*shape):
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    w.add_tensor("token_embd.weight", mat(n_vocab, n_embd))
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(f"blk.{i}.{name}.weight", mat(n_embd, n_embd))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", mat(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_up.weight", mat(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_down.weight", mat(n_embd, n_ff))
    w.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    w.add_tensor("output.weight", mat(n_vocab, n_embd))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
