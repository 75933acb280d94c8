"""The one GGUF header reader every module uses (metadata and tensor infos, never tensor data)."""

from __future__ import annotations

import pytest


def test_header_reader_matches_gguf_py_across_value_types(tmp_path):
    """The header walk reads what gguf-py reads, across value types; arrays are skipped unless asked for."""
    from gguf import GGUFReader, GGUFWriter

    from lowbit.gguf_meta import read_header

    path = tmp_path / "kinds.gguf"
    w = GGUFWriter(str(path), "llama")
    w.add_string("general.name", "kinds ✓")
    w.add_uint32("llama.block_count", 7)
    w.add_float32("llama.rope.freq_base", 10000.5)
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    w.add_int64("test.big", -(2**40))
    w.add_float64("test.f64", 0.1)
    w.add_array("tokenizer.ggml.tokens", ["a", "bb", "<｜User｜>"] * 1000)
    w.add_array("tokenizer.ggml.token_type", [1, 2, 3] * 1000)
    w.add_uint16("test.after_arrays", 65535)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    reader = GGUFReader(str(path))
    scalars = {k: f.contents() for k, f in reader.fields.items()
               if not k.startswith("GGUF.") and not isinstance(f.contents(), list)}
    header = read_header(path)
    ours = {k: v for k, (_s, _e, v) in header.kv.items() if v is not None}
    assert ours.keys() == scalars.keys() and "test.after_arrays" in ours
    for key, value in scalars.items():
        assert ours[key] == (pytest.approx(value) if isinstance(value, float) else value), key
    tokens = read_header(path, arrays=("tokenizer.ggml.tokens",)).value("tokenizer.ggml.tokens")
    assert tokens == reader.fields["tokenizer.ggml.tokens"].contents()
