"""Replica models: everything is read back from the built files (gguf-py, transformers, llama.cpp).

random weights: the text is meaningless; tokens, templates, speed paths and file layout are real.
"""

from __future__ import annotations

import hashlib
import re
import subprocess

import pytest

from lowbit import LowbitError
from lowbit.models import replicas
from lowbit.models.replicas import (
    RECIPES_DIR,
    SPECS,
    ensure_replica,
    hf_dir,
    quantizable,
    read_recipe,
    replica_files,
    replica_path,
    tensor_types,
)
from lowbit.toolchain import llama_tools


def _gguf_vocab(path):
    """token text -> id, and the tokenizer.ggml.* scalar keys, from a GGUF's own metadata."""
    meta, _ = replicas.gguf_header(path, arrays=("tokenizer.ggml.tokens",))
    tokens = meta["tokenizer.ggml.tokens"]
    ids = {tok: i for i, tok in enumerate(tokens)}
    keys = {key: meta.get(f"tokenizer.ggml.{key}")
            for key in ("bos_token_id", "eos_token_id", "padding_token_id")}
    keys["chat_template"] = meta.get("tokenizer.chat_template", "")
    keys["n_vocab"] = len(tokens)
    keys["tokens"] = tokens
    return ids, keys


def _shards(first):
    m = re.match(r"(.*)-00001-of-(\d{5})\.gguf$", first.name)
    assert m, first.name
    n = int(m.group(2))
    return [first.with_name(f"{m.group(1)}-{i:05d}-of-{n:05d}.gguf") for i in range(1, n + 1)]


@pytest.fixture(scope="module")
def r1():
    ensure_replica("r1")
    return replica_files("r1")


def test_r1_special_token_ids_come_from_the_real_tokenizer(r1):
    ids, keys = _gguf_vocab(r1["UD-IQ1_S"])
    assert ids["<think>"] == 128798 and ids["</think>"] == 128799
    assert ids["<｜User｜>"] == 128803 and ids["<｜Assistant｜>"] == 128804
    assert keys["bos_token_id"] == 0 and keys["eos_token_id"] == 1
    assert ids["<｜begin▁of▁sentence｜>"] == 0 and ids["<｜end▁of▁sentence｜>"] == 1
    # The seed's padding bug, reproduced by the real conversion: pad = EOS.
    assert keys["padding_token_id"] == 1
    assert "<｜Assistant｜>" in keys["chat_template"]
    assert keys["n_vocab"] == SPECS["r1"].config["vocab_size"]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(r1["hf"])
    assert tok.convert_tokens_to_ids(["<think>", "</think>", "<｜User｜>", "<｜Assistant｜>"]) == [
        ids["<think>"], ids["</think>"], ids["<｜User｜>"], ids["<｜Assistant｜>"]]


def test_r1_dynamic_quant_follows_the_recipe(r1):
    shards = _shards(r1["UD-IQ1_S"])
    assert len(shards) >= 3 and all(p.exists() for p in shards)
    types = tensor_types(shards)
    recipe = read_recipe(RECIPES_DIR / "deepseek-r1-UD-IQ1_S.tensor-types")
    experts = {n: t for n, t in types.items() if re.search(r"ffn_(gate|up|down)_exps", n)}
    assert experts and set(experts.values()) <= {"IQ1_S", "IQ2_XXS"}
    assert sum(t == "IQ1_S" for t in experts.values()) > len(experts) / 2
    assert all(t == "IQ1_S" for n, t in experts.items() if "gate_exps" in n or "up_exps" in n)
    higher = {n: t for n, t in types.items() if quantizable(n, 2) and n not in experts}
    assert higher and not any(t.startswith("IQ1") for t in higher.values())
    assert types["token_embd.weight"] == "Q4_K" and types["output.weight"] == "Q6_K"
    assert {t for n, t in types.items() if "attn_k_b" in n} == {"Q8_0"}
    for name, got in types.items():
        if name.endswith("_norm.weight") or "ffn_gate_inp" in name or name.endswith(".bias"):
            assert got == "F32", name
            continue
        want = next(t for p, t in recipe if re.search(p, name))
        assert got == want, name
    q8 = tensor_types([r1["Q8_0"]])
    assert {t for n, t in q8.items() if quantizable(n, 2) and "gate_inp" not in n} == {"Q8_0"}


def test_r1_shards_load_directly_in_llama_cpp_and_generate(r1, llama_build):
    cmd = [str(llama_build.tool("llama-completion")), "-m", str(r1["UD-IQ1_S"]), "-p", "Hello", "-n", "8",
           "-no-cnv", "--ignore-eos", "--temp", "0", "-t", "2", "-c", "256", "--no-warmup"]
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = proc.stdout + proc.stderr
    # Loading from the first shard needs the tensors of the others: generating proves all were read.
    m = re.search(r"eval time =\s+[\d.]+ ms /\s+(\d+) runs", log)
    assert m and int(m.group(1)) >= 7, log[-2000:]


@pytest.mark.parametrize("name, want", [
    ("distill-qwen", {"<｜end▁of▁sentence｜>": 151643, "<｜User｜>": 151644, "<｜Assistant｜>": 151645,
                      "<｜begin▁of▁sentence｜>": 151646, "<|EOT|>": 151647, "<think>": 151648,
                      "</think>": 151649, "<|vision_pad|>": 151654}),
    ("distill-llama", {"<｜begin▁of▁sentence｜>": 128000, "<｜end▁of▁sentence｜>": 128001,
                       "<|finetune_right_pad_id|>": 128004, "<|eot_id|>": 128009, "<｜User｜>": 128011,
                       "<｜Assistant｜>": 128012, "<think>": 128013, "</think>": 128014}),
])
def test_distill_replicas_carry_the_remapped_ids(name, want):
    path = ensure_replica(name)
    assert path.name.endswith("-Q8_0.gguf")
    ids, keys = _gguf_vocab(path)
    assert {tok: ids[tok] for tok in want} == want
    assert keys["bos_token_id"] == want["<｜begin▁of▁sentence｜>"]
    assert keys["eos_token_id"] == want["<｜end▁of▁sentence｜>"]
    assert keys["padding_token_id"] == keys["eos_token_id"]  # as the original release: pad = EOS
    assert "<think>" in keys["chat_template"]
    assert keys["n_vocab"] == SPECS[name].config["vocab_size"]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir(name))
    chat = [{"role": "user", "content": "hi"}]
    text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    enc = tok(text, add_special_tokens=False)["input_ids"]
    assert enc[0] == want["<｜begin▁of▁sentence｜>"] and want["<｜Assistant｜>"] in enc
    assert tok.pad_token_id == tok.eos_token_id == want["<｜end▁of▁sentence｜>"]


def test_llama3_tokenizer_has_the_real_vocab_size():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(replicas.llama3_tokenizer_dir())
    assert len(tok) == replicas.LLAMA_VOCAB
    assert tok("hi")["input_ids"][0] == tok.convert_tokens_to_ids("<|begin_of_text|>")


def test_same_seed_gives_the_same_weights(r1, tmp_path):
    from safetensors import safe_open

    def digest(folder):
        h = hashlib.sha256()
        with safe_open(folder / "model.safetensors", "pt") as f:
            for key in sorted(f.keys()):
                h.update(key.encode() + f.get_tensor(key).float().numpy().tobytes())
        return h.hexdigest()

    replicas.make_hf_checkpoint(SPECS["r1"], tmp_path / "again")
    assert digest(tmp_path / "again") == digest(r1["hf"])


def test_a_fallback_quantization_fails_and_leaves_no_file(r1, tmp_path, llama_build):
    recipe = tmp_path / "bad.tensor-types"
    recipe.write_text("attn_k_b=Q4_K\n")  # attn_k_b rows are 128 wide: no 256-blocks
    dst = tmp_path / "bad.gguf"
    with pytest.raises(LowbitError, match="required fallback quantization"):
        llama_tools.quantize(r1["Q8_0"], dst, "Q8_0", tensor_type_file=recipe, allow_requantize=True)
    assert not dst.exists() and not list(tmp_path.glob("*.part"))


def test_a_failed_build_leaves_nothing_under_the_final_name(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_MODELS", str(tmp_path))

    def broken(spec, dest, **kwargs):
        dest.mkdir(parents=True)
        (dest / "model.safetensors").write_bytes(b"half")
        raise LowbitError("simulated failure midway")

    monkeypatch.setattr(replicas, "make_hf_checkpoint", broken)
    with pytest.raises(LowbitError, match="simulated"):
        replicas.build_all(only=["distill-qwen"])
    assert replica_path("distill-qwen") is None
    assert not (tmp_path / "replicas" / "distill-qwen").exists()
    assert [p.name for p in (tmp_path / "replicas").iterdir()] == [".build.lock"]


def test_missing_torch_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setenv("LOWBIT_MODELS", str(tmp_path))
    real = replicas.importlib.util.find_spec
    monkeypatch.setattr(replicas.importlib.util, "find_spec", lambda m: None if m == "torch" else real(m))
    with pytest.raises(LowbitError, match=r"pip install -e \.\[replicas\]"):
        replicas.build_all(only=["r1"])


def test_replica_files_say_what_they_are(r1, tmp_path):
    assert replicas.replica_note(r1["UD-IQ1_S"]) == replicas.HONESTY
    assert replicas.replica_note(tmp_path / "model.gguf") is None
    meta, _ = replicas.gguf_header(r1["UD-IQ1_S"])
    assert meta["general.description"] == replicas.HONESTY and "replica" in meta["general.name"]


def test_unknown_replica_lists_the_names():
    with pytest.raises(LowbitError, match="distill-qwen"):
        replicas.replica_path("distill-qwn")


def test_cached_build_is_reused(r1):
    manifest = replicas.replica_dir("r1") / "manifest.json"
    before = manifest.stat().st_mtime_ns
    assert replicas.build_all(only=["r1"]) == {"r1": r1["UD-IQ1_S"]}
    assert manifest.stat().st_mtime_ns == before


def test_header_reader_agrees_with_gguf_py(r1):
    """lowbit's fast header read (used by the build) against gguf-py's GGUFReader on the small shards."""
    from gguf import GGUFReader

    for path in _shards(r1["UD-IQ1_S"])[1:]:
        meta, tensors = replicas.gguf_header(path)
        reader = GGUFReader(path)
        theirs = [(t.name, tuple(int(x) for x in t.shape), t.tensor_type.name) for t in reader.tensors]
        assert theirs == tensors
        for key in ("split.no", "split.count", "split.tensors.count"):
            assert int(reader.fields[key].parts[-1][0]) == meta[key]


def test_gguf_vocab_matches_the_hf_tokenizer(r1):
    from transformers import AutoTokenizer

    _, keys = _gguf_vocab(r1["Q8_0"])
    tok = AutoTokenizer.from_pretrained(r1["hf"])
    sample = [0, 1, 2, 100, 5000, 128798, 128799, 128803, 128804]
    assert [keys["tokens"][i] for i in sample] == tok.convert_ids_to_tokens(sample)


def test_bitnet_replica_is_a_2b4t_layout_hf_checkpoint():
    pytest.importorskip("lowbit.bitnet.convert", reason="lowbit.bitnet.convert (make_hf_checkpoint) is not merged yet")
    import json

    from transformers import AutoTokenizer

    path = ensure_replica("bitnet")
    assert path == hf_dir("bitnet") and (path / "config.json").exists()
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["BitNetForCausalLM"] and config["tie_word_embeddings"] is True
    assert config["quantization_config"]["quant_method"] == "bitnet"
    assert len(AutoTokenizer.from_pretrained(path)) == replicas.LLAMA_VOCAB
