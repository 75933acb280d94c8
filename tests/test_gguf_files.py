"""The GGUF file layer: shard names on gguf-py's format, the one synthetic-model writer, tensor bytes and
array item types from the bounded header reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader
from gguf.gguf_writer import SHARD_NAME_FORMAT
from gguf.quants import dequantize, quantize

from lowbit.files import gguf_layout
from lowbit.files.gguf_header import ALL_ARRAYS, read_header
from lowbit.files.shard_set import ShardSet, is_first_shard, model_stem, shard_number, shards_named
from lowbit.files.synthetic import Hparams, vocab_size, write_gguf


def test_shard_names_are_gguf_pys():
    s = ShardSet(Path("d"), "m-of-x", 12)
    assert s.part(3).name == SHARD_NAME_FORMAT.format("m-of-x", 3, 12) == "m-of-x-00003-of-00012.gguf"
    assert ShardSet.of(s.part(7)) == s and ShardSet.of("d/m-of-x.gguf") is None
    assert shard_number(s.part(7).name) == (7, 12) and shard_number("m.gguf") is None
    assert is_first_shard(s.first.name) and not is_first_shard(s.part(2).name) and not is_first_shard("m.gguf")
    assert model_stem(s.part(2).name) == "m-of-x" and model_stem("m.gguf") == "m"
    assert ShardSet.of("d/m-00001-of-0002.gguf") is None  # four digits: not a shard name


def test_sets_gguf_py_splits_are_recognised_whole(tmp_path):
    first = gguf_layout.r1_header(tmp_path, shards=3)
    s = ShardSet.of(first)
    assert s is not None and s.count == 3 and all(p.is_file() for p in s.parts)
    (tmp_path / "R1-shape-x-00001-of-00001.gguf").write_bytes(b"")  # another prefix sharing the start
    assert s.on_disk() == s.parts == shards_named(tmp_path, "R1-shape")


def _tensors(rng):
    q = quantize(rng.standard_normal((4, 256)).astype(np.float32), GGMLQuantizationType.Q8_0)
    yield "blk.0.ffn_down.weight", q, GGMLQuantizationType.Q8_0
    yield "output_norm.weight", np.arange(256, dtype=np.float32), None


def test_writer_copies_the_tokenizer_typed_and_header_reads_tensor_bytes(tmp_path):
    from lowbit.toolchain.build import sdist_tree

    vocab = sdist_tree() / "vendor" / "llama.cpp" / "models" / "ggml-vocab-gpt-2.gguf"
    rng = np.random.default_rng(0)
    out = write_gguf(tmp_path / "m.gguf", "llama", _tensors(rng), Hparams(256, 1, 512, 4, n_vocab=vocab_size(vocab)),
                     vocab_from=vocab)
    src, got = read_header(vocab, arrays=ALL_ARRAYS), read_header(out, arrays=ALL_ARRAYS)
    keys = [k for k in src.kv if k.startswith("tokenizer.")]
    assert keys and all(k in got.kv for k in keys)
    for k in keys:
        assert got.value_at[k][1] == src.value_at[k][1] and got.item_type(k) == src.item_type(k), k
        a, b = src.value(k), got.value(k)
        assert (np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b), k
    assert got.value("llama.vocab_size") == vocab_size(vocab) == len(src.value("tokenizer.ggml.tokens"))
    assert got.item_type("general.architecture") is None

    q = next(_tensors(np.random.default_rng(0)))[1]
    t = got.tensor("blk.0.ffn_down.weight")
    assert np.array_equal(got.data(t), q)
    theirs = next(x for x in GGUFReader(out).tensors if x.name == t.name)  # gguf-py agrees on the bytes
    assert np.array_equal(dequantize(got.data(t), t.tensor_type), dequantize(theirs.data, theirs.tensor_type))
    norm = got.tensor("output_norm.weight")
    assert np.array_equal(got.data(norm).view(np.float32).ravel(), np.arange(256, dtype=np.float32))


def test_a_failed_write_leaves_no_file(tmp_path):
    def broken():
        yield from _tensors(np.random.default_rng(0))
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_gguf(tmp_path / "m.gguf", "llama", broken())
    assert list(tmp_path.iterdir()) == []
