"""Synthetic GGUF models (random weights) for calibration, benchmarks and tests: one writer, on gguf-py's
`GGUFWriter`, written under a temporary name and renamed when complete."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter, Keys

from lowbit.files.gguf_header import ALL_ARRAYS, read_header

# (name, data, GGML type of `data` when it is already quantized bytes, else None)
Tensor = tuple[str, np.ndarray, GGMLQuantizationType | None]


@dataclass(frozen=True)
class Hparams:
    """A llama-style transformer's hyper-parameters, written as `{arch}.*` keys."""

    n_embd: int
    n_layer: int
    n_ff: int
    n_head: int
    n_head_kv: int | None = None  # default: n_head
    ctx: int = 4096
    rope_base: float | None = None  # default: llama.cpp's for the architecture
    rms_eps: float = 1e-5
    n_vocab: int | None = None
    file_type: int | None = None  # llama_ftype
    name: str | None = None

    def write(self, w: GGUFWriter) -> None:
        if self.name:
            w.add_name(self.name)
        w.add_context_length(self.ctx)
        w.add_embedding_length(self.n_embd)
        w.add_block_count(self.n_layer)
        w.add_feed_forward_length(self.n_ff)
        w.add_head_count(self.n_head)
        w.add_head_count_kv(self.n_head_kv or self.n_head)
        w.add_rope_dimension_count(self.n_embd // self.n_head)
        if self.rope_base is not None:
            w.add_rope_freq_base(self.rope_base)
        w.add_layer_norm_rms_eps(self.rms_eps)
        if self.n_vocab is not None:
            w.add_vocab_size(self.n_vocab)
        if self.file_type is not None:
            w.add_file_type(self.file_type)


def vocab_size(vocab_gguf: Path) -> int:
    """Number of tokens in a GGUF's vocabulary (from the header; the list itself is not decoded)."""
    return read_header(vocab_gguf).lengths.get(Keys.Tokenizer.LIST, 0)


def copy_tokenizer(w: GGUFWriter, vocab_gguf: Path) -> None:
    """Copy every `tokenizer.*` key of `vocab_gguf` (e.g. a vocab-only GGUF of llama.cpp's tree), typed."""
    header = read_header(vocab_gguf, arrays=ALL_ARRAYS)
    for key, value in header.values().items():
        if not key.startswith("tokenizer."):
            continue
        vtype = GGUFValueType(header.value_at[key][1])
        item = header.item_type(key)
        if isinstance(value, np.ndarray):
            value = value.tolist()
        w.add_key_value(key, value, vtype, sub_type=GGUFValueType(item) if item is not None else None)


def write_gguf(dest: Path, arch: str, tensors: Iterable[Tensor], hparams: Hparams | None = None,
               vocab_from: Path | None = None, metadata: Callable[[GGUFWriter], object] | None = None) -> Path:
    """Write a GGUF of architecture `arch`: `hparams`, the tokenizer of `vocab_from`, whatever `metadata(w)`
    adds, then `tensors`; written to `dest.tmp` and renamed, so `dest` is complete or absent."""
    dest = Path(dest)
    tmp = dest.with_name(dest.name + ".tmp")
    try:
        w = GGUFWriter(tmp, arch)
        if hparams is not None:
            hparams.write(w)
        if vocab_from is not None:
            copy_tokenizer(w, vocab_from)
        if metadata is not None:
            metadata(w)
        for name, data, raw_dtype in tensors:
            w.add_tensor(name, data, raw_dtype=raw_dtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest
