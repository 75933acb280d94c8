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
