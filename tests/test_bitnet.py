"""BitNet b1.58 2B4T: conversion, the patched ReLU² graph against transformers' reference, bad input."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest

from lowbit import LowbitError
from lowbit.bitnet import checkpoint
from lowbit.bitnet import convert as bitnet
from lowbit.models import replicas


@pytest.fixture(scope="module")
def patched(llama_build):
    try:
        return bitnet.require_patched_build(llama_build)
    except LowbitError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def hf(tmp_path_factory) -> Path:
    """The bitnet replica's checkpoint (hidden 256, 2 layers, seed 0)."""
    try:
        from lowbit.models.replicas import ensure_replica, hf_dir

        ensure_replica("bitnet")
        return hf_dir("bitnet")
    except ImportError:
        dest = tmp_path_factory.mktemp("bitnet") / "hf"
        return replicas.make_bitnet_checkpoint(dest, seed=0, hidden=256, layers=2)


@pytest.fixture(scope="module")
def tq2(hf, patched, tmp_path_factory) -> Path:
    return bitnet.convert(hf, "tq2_0", tmp_path_factory.mktemp("tq2") / "model-tq2_0.gguf")


def _fields(path: Path) -> tuple[dict, dict]:
    from gguf import GGUFReader

    reader = GGUFReader(path)
    kv = {}
    names = ("general.architecture", "bitnet.hidden_activation", "tokenizer.ggml.model", "tokenizer.ggml.pre",
             "tokenizer.chat_template")
    for name in names:
        if name in reader.fields:
            kv[name] = bytes(reader.fields[name].parts[-1]).decode()
    kv["n_vocab"] = len(reader.fields["tokenizer.ggml.tokens"].data)
    return kv, {t.name: t.tensor_type.name for t in reader.tensors}


def test_checkpoint_is_2b4t_layout(hf):
    cfg = json.loads((hf / "config.json").read_text())
    assert cfg["hidden_act"] == "relu2" and cfg["tie_word_embeddings"] is True
    assert cfg["quantization_config"] == bitnet.ONLINE_QUANT
    names = checkpoint._tensor_names(hf)
    assert any(n.endswith("self_attn.attn_sub_norm.weight") for n in names)
    assert not any(n.startswith("lm_head") for n in names)


def test_convert_writes_2b4t_gguf(tq2):
    kv, types = _fields(tq2)
    assert kv["general.architecture"] == "bitnet"
    assert kv["bitnet.hidden_activation"] == "relu2"
    assert (kv["tokenizer.ggml.model"], kv["tokenizer.ggml.pre"]) == ("gpt2", "llama-bpe")
    assert kv["n_vocab"] == replicas.LLAMA_VOCAB
    assert "Assistant: " in kv["tokenizer.chat_template"]
    assert "blk.0.attn_sub_norm.weight" in types and "blk.1.ffn_sub_norm.weight" in types
    assert "output.weight" not in types  # tied embeddings
    ternary = {n: t for n, t in types.items() if n.split(".")[-2] in bitnet.TERNARY_KINDS}
    assert len(ternary) == 2 * len(bitnet.TERNARY_KINDS) and set(ternary.values()) == {"TQ2_0"}
    assert bitnet.verify_ternary(tq2) == ternary


def test_reference_check_passes_with_relu2(hf, tq2):
    result = bitnet.reference_check(hf, tq2, positions=256)
    assert result.passed, result.as_dict()


def test_reference_check_fails_on_silu_graph(hf, tq2):
    """Mainline's graph (SiLU, forced through the GGUF key the patch reads) must fail the same check."""
    result = bitnet.reference_check(hf, tq2, positions=256, activation="silu")
    assert not result.passed, result.as_dict()
    assert result.correlation < 0.9


def test_reference_check_other_seed_and_size_tq1(patched, tmp_path):
    hf = replicas.make_bitnet_checkpoint(tmp_path / "hf", seed=7, hidden=512, layers=3)
    gguf = bitnet.convert(hf, "tq1_0", tmp_path / "model-tq1_0.gguf")
    assert set(bitnet.verify_ternary(gguf).values()) == {"TQ1_0"}
    assert bitnet.reference_check(hf, gguf, positions=200).passed


def test_not_a_2b4t_checkpoint(hf, tmp_path):
    other = tmp_path / "silu"
    shutil.copytree(hf, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["hidden_act"] = "silu"
    (other / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out.gguf"
    with pytest.raises(LowbitError, match="not a BitNet b1.58 2B4T"):
        bitnet.convert(other, "tq2_0", out)
    cfg.update(model_type="llama", architectures=["LlamaForCausalLM"])
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LowbitError, match="not a BitNet checkpoint"):
        bitnet.convert(other, "tq2_0", out)
    with pytest.raises(LowbitError, match="no config.json"):
        bitnet.convert(tmp_path, "tq2_0", out)
    with pytest.raises(LowbitError, match="unknown --quant"):
        bitnet.convert(hf, "q2_k", out)
    assert not out.exists()


def test_command_refuses_a_bad_quant_before_looking_up_the_model(tmp_path, monkeypatch):
    monkeypatch.setattr(bitnet, "locate", lambda *a, **k: pytest.fail("looked up (or built) the model first"))
    with pytest.raises(LowbitError, match="unknown --quant 'q9_9'"):
        bitnet.convert_command("bitnet", quant="q9_9")


def test_quant_type_the_build_lacks(hf, tmp_path, monkeypatch):
    assert {"TQ1_0", "TQ2_0"} <= bitnet.build_quant_types()
    monkeypatch.setattr(bitnet, "build_quant_types", lambda build=None: {"Q4_0"})
    with pytest.raises(LowbitError, match="no TQ2_0 quantization"):
        bitnet.convert(hf, "tq2_0", tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_not_ternary_after_quantization(tq2, llama_build, tmp_path):
    q4 = tmp_path / "q4.gguf"
    subprocess.run([str(llama_build.tool("llama-quantize")), "--allow-requantize", str(tq2), str(q4), "Q4_0"],
                   check=True, capture_output=True)
    with pytest.raises(LowbitError, match="not ternary after quantization"):
        bitnet.verify_ternary(q4)


def test_perplexity_runs(tq2, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(bitnet.SAMPLE_TEXT * 12)
    ppl = bitnet.perplexity(tq2, text, ctx=128, chunks=2)
    assert math.isfinite(ppl) and ppl > 1


@pytest.mark.parametrize("engine", ["llama.cpp", "bitnet.cpp"])
def test_generate_names_a_missing_model_before_running_anything(monkeypatch, tmp_path, engine):
    """`invoke bitnet-generate` on a path that is not there says so in one line, instead of llama-completion's
    log (or bitnet.cpp's build on first use)."""
    monkeypatch.setattr(bitnet, "active_build", lambda: pytest.fail("a tool was looked up"))
    monkeypatch.setattr(bitnet, "generate", lambda *a, **k: pytest.fail("the engine was started"))
    with pytest.raises(LowbitError, match=r"nothing\.gguf does not exist"):
        bitnet.generate_command(str(tmp_path / "nothing.gguf"), engine=engine)
