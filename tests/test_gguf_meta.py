"""The one GGUF header reader every module uses (metadata and tensor infos, never tensor data)."""

from __future__ import annotations

import pytest


def test_header_reader_matches_gguf_py_across_value_types(tmp_path):
    """The header walk reads what gguf-py reads, across value types; arrays are skipped unless asked for."""
    from gguf import GGUFReader, GGUFWriter

    from lowbit.files.gguf_header import read_header

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


def _all_kinds(path):
    """A header holding every GGUF value type, scalar and array (numeric, string, nested), then a tensor."""
    import numpy as np
    from gguf import GGUFValueType, GGUFWriter

    w = GGUFWriter(str(path), "llama")
    w.add_string("general.name", "kinds ✓")
    w.add_uint32("tokenizer.ggml.padding_token_id", 7)
    w.add_float32("llama.rope.freq_base", 10000.5)
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    w.add_int64("test.big", -(2**40))
    w.add_array("tokenizer.ggml.tokens", ["a", "bb", "<｜User｜>", ""] * 500)
    w.add_array("tokenizer.ggml.token_type", [1, 2, 3, 4] * 500)
    w.add_array("tokenizer.ggml.scores", [0.25, -1.5] * 1000)
    w.add_array("test.nested", [[1, 2], [3, 4, 5]])
    for vtype in (GGUFValueType.UINT8, GGUFValueType.INT8, GGUFValueType.UINT16, GGUFValueType.INT16,
                  GGUFValueType.UINT32, GGUFValueType.INT32, GGUFValueType.UINT64, GGUFValueType.INT64,
                  GGUFValueType.FLOAT64, GGUFValueType.BOOL):  # fmt: skip
        values = [True, False, True] if vtype == GGUFValueType.BOOL else [0, 1, 100]
        w.add_key_value(f"test.array_{vtype.name.lower()}", values, GGUFValueType.ARRAY, sub_type=vtype)
    w.add_uint16("test.after_arrays", 65535)
    w.add_tensor("x", np.arange(64, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_all_arrays_value_offsets_and_types_match_gguf_py(tmp_path):
    """arrays="all" reads every array (numeric ones as numpy arrays of the stored type), and value_at says
    where each value starts and its GGUF type, as gguf-py's GGUFReader sees them."""
    import struct

    import numpy as np
    from gguf import GGUFReader, GGUFValueType

    from lowbit.files.gguf_header import ALL_ARRAYS, read_header

    path = _all_kinds(tmp_path / "all.gguf")
    reader = GGUFReader(str(path))
    fields = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    header = read_header(path, arrays=ALL_ARRAYS)
    assert header.kv.keys() == fields.keys() == header.value_at.keys()
    assert header.version == int(reader.fields["GGUF.version"].contents())
    assert [t.name for t in header.tensors] == [t.name for t in reader.tensors] == ["x"]
    assert header.tensors[0].data_offset == reader.tensors[0].data_offset
    raw = path.read_bytes()
    for key, f in fields.items():
        offset, vtype = header.value_at[key]
        assert offset == f.offset + 8 + int(f.parts[0][0]) + 4, key  # after the key and its type
        assert vtype == f.types[0], key
        ours, theirs = header.value(key), f.contents()
        if f.types[:2] == [GGUFValueType.ARRAY, GGUFValueType.ARRAY]:
            assert [x for sub in ours for x in sub.tolist()] == theirs, key  # gguf-py flattens nested arrays
        elif f.types[0] == GGUFValueType.ARRAY and f.types[1] != GGUFValueType.STRING:
            assert isinstance(ours, np.ndarray), key
            assert ours.dtype == reader.gguf_scalar_to_np[f.types[1]], key
            assert ours.tolist() == theirs, key
        elif f.types[0] == GGUFValueType.ARRAY:
            assert ours == theirs, key
        else:
            assert ours == (pytest.approx(theirs) if isinstance(theirs, float) else theirs), key
    offset, vtype = header.value_at["tokenizer.ggml.padding_token_id"]
    assert struct.unpack_from("<I", raw, offset)[0] == 7 and vtype == GGUFValueType.UINT32


def test_named_arrays_only_and_default_skips_all(tmp_path):
    """Only the arrays asked for are read (numeric or string); by default every array is None, while the
    offsets, tensors and scalars stay the same in every mode."""
    import numpy as np

    from lowbit.files.gguf_header import ALL_ARRAYS, read_header

    path = _all_kinds(tmp_path / "named.gguf")
    full = read_header(path, arrays=ALL_ARRAYS)
    arrays = [k for k, (_o, vtype) in full.value_at.items() if vtype == 9]
    assert len(arrays) == 14
    plain = read_header(path)
    named = read_header(path, arrays=("tokenizer.ggml.token_type", "tokenizer.ggml.tokens"))
    for h in (plain, named):
        assert h.value_at == full.value_at and h.tensors == full.tensors and h.data_offset == full.data_offset
        assert {k: v[:2] for k, v in h.kv.items()} == {k: v[:2] for k, v in full.kv.items()}
    assert all(plain.value(k) is None for k in arrays)
    assert named.value("tokenizer.ggml.tokens") == full.value("tokenizer.ggml.tokens")
    assert np.array_equal(named.value("tokenizer.ggml.token_type"), full.value("tokenizer.ggml.token_type"))
    assert [k for k in arrays if named.value(k) is not None] == ["tokenizer.ggml.tokens", "tokenizer.ggml.token_type"]
    assert plain.value("test.after_arrays") == named.value("test.after_arrays") == 65535


@pytest.mark.parametrize("arrays", [(), "all"])
@pytest.mark.parametrize("inside", ["tokenizer.ggml.tokens", "tokenizer.ggml.scores"])
def test_cut_header_is_a_clear_error(tmp_path, arrays, inside):
    """A file cut inside a string or numeric metadata array is a LowbitError, whether arrays are read or
    skipped."""
    from lowbit import LowbitError
    from lowbit.files.gguf_header import read_header

    path = _all_kinds(tmp_path / "cut.gguf")
    offset, _ = read_header(path).value_at[inside]
    cut = tmp_path / "cut-short.gguf"
    cut.write_bytes(path.read_bytes()[: offset + 100])
    with pytest.raises(LowbitError, match="not a readable GGUF"):
        read_header(cut, arrays=arrays)
