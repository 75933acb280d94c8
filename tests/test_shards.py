"""Shard sets: recognise, check, merge (verified, atomic, never overwriting), split with advice; Modelfile."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest
from gguf_factory import R1_TOKENS, split_gguf, write_gguf
from invoke import MockContext, Result

from lowbit import LowbitError
from lowbit.cli import load_tasks
from lowbit.files import shards
from lowbit.models import ollama


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Path:
    return write_gguf(tmp_path_factory.mktemp("orig") / "m.gguf", layers=3, rows=64, vocab=R1_TOKENS)


@pytest.fixture
def shard_dir(tmp_path, original, llama_build) -> Path:
    split_gguf(llama_build.tool("llama-gguf-split"), original, tmp_path / "set" / "m", max_tensors=4)
    return tmp_path / "set"


def test_recognises_sets_and_names_missing_parts(shard_dir):
    s = shards.shard_set(shard_dir / "m-00002-of-00003.gguf")
    assert (s.prefix, s.count, s.first.name, s.merged_name) == ("m", 3, "m-00001-of-00003.gguf", "m.gguf")
    assert shards.shard_set(shard_dir / "m.gguf") is None
    assert [x.prefix for x in shards.find_shard_sets(shard_dir.parent)] == ["m"]
    assert shards.check_set(s).ok and shards.check_set(s).tensors == 10
    (shard_dir / "m-00002-of-00003.gguf").unlink()
    check = shards.check_set(s)
    assert not check.ok and "m-00002-of-00003.gguf" in check.problems[0]
    with pytest.raises(LowbitError, match="m-00002-of-00003.gguf"):
        shards.merge(s.first)
    assert sorted(p.name for p in shard_dir.iterdir()) == ["m-00001-of-00003.gguf", "m-00003-of-00003.gguf"]


def test_parts_of_different_splits_do_not_belong_together(shard_dir, tmp_path, llama_build):
    other = write_gguf(tmp_path / "o.gguf", layers=2, rows=64, seed=5)
    parts = split_gguf(llama_build.tool("llama-gguf-split"), other, tmp_path / "other" / "m", max_tensors=4)
    assert len(parts) == 2
    shutil.copyfile(parts[1], shard_dir / "m-00002-of-00003.gguf")  # right name, wrong set
    problems = " ".join(shards.check_set(shards.shard_set(shard_dir / "m-00001-of-00003.gguf")).problems)
    assert "split.count = 2" in problems and "m-00002-of-00003.gguf" in problems


def test_merge_is_verified_tensor_by_tensor_and_never_overwrites(shard_dir, original):
    first = shard_dir / "m-00001-of-00003.gguf"
    merged, report = shards.merge(first)
    assert merged == shard_dir / "m.gguf" and report.ok and len(report.tensors) == 10
    assert merged.read_bytes() != original.read_bytes()  # not byte-identical (split.* keys dropped, offsets)
    assert shards.verify_tensors([merged], original).ok  # but the same tensors as before the split
    assert not list(shard_dir.glob(".*"))  # no temporary left
    before = merged.stat().st_mtime_ns
    with pytest.raises(LowbitError, match="never overwrites"):
        shards.merge(first)
    assert merged.stat().st_mtime_ns == before


def test_verification_catches_one_flipped_byte(shard_dir, tmp_path):
    merged, _ = shards.merge(shard_dir / "m-00001-of-00003.gguf", out=tmp_path / "merged.gguf")
    from gguf import GGUFReader

    t = next(t for t in GGUFReader(merged).tensors if t.name == "blk.1.ffn_down.weight")
    data = bytearray(merged.read_bytes())
    data[int(t.data_offset) + 17] ^= 0x01
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data))
    report = shards.verify_tensors(
        shards.shard_set(shard_dir / "m-00001-of-00003.gguf").parts, bad, hashes=True
    )
    assert report.problems == ["tensor blk.1.ffn_down.weight: data differs"]
    good = {t.name: t.sha256 for t in report.tensors if t.sha256}
    assert len(good) == 9 and "blk.1.ffn_down.weight" not in good


def test_comparison_across_chunk_boundaries_finds_a_late_flipped_byte(shard_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "_BUF", 1000)  # tensors span many chunks, the last one partial
    parts = shards.shard_set(shard_dir / "m-00001-of-00003.gguf").parts
    merged, report = shards.merge(parts[0], out=tmp_path / "merged.gguf")
    assert report.ok
    from gguf import GGUFReader

    t = next(t for t in GGUFReader(merged).tensors if t.name == "blk.0.attn_q.weight")
    assert int(t.n_bytes) > 4 * 1000 and int(t.n_bytes) % 1000
    data = bytearray(merged.read_bytes())
    data[int(t.data_offset) + int(t.n_bytes) - 1] ^= 0x80  # last byte of the tensor: the final, partial chunk
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data))
    assert shards.verify_tensors(parts, bad).problems == ["tensor blk.0.attn_q.weight: data differs"]


def test_merged_data_reaches_the_disk_before_it_gets_its_name(shard_dir, monkeypatch):
    synced: set[int] = set()
    real_fsync, real_link = shards.os.fsync, shards.os.link

    def fsync(fd: int) -> None:
        synced.add(shards.os.fstat(fd).st_ino)
        real_fsync(fd)

    def link(src, dst) -> None:
        assert Path(src).stat().st_ino in synced, "final name given before the data was flushed"
        real_link(src, dst)

    monkeypatch.setattr(shards.os, "fsync", fsync)
    monkeypatch.setattr(shards.os, "link", link)
    merged, report = shards.merge(shard_dir / "m-00001-of-00003.gguf")
    assert report.ok and merged.exists()
    assert shard_dir.stat().st_ino in synced  # and the new name itself is flushed


def test_merge_checks_disk_first(shard_dir, monkeypatch):
    monkeypatch.setattr(shards, "free_disk", lambda path: 1000)
    with pytest.raises(LowbitError, match="not enough disk space"):
        shards.merge(shard_dir / "m-00001-of-00003.gguf")
    assert not (shard_dir / "m.gguf").exists() and not list(shard_dir.glob(".*"))


def test_split_by_tensors_and_advice_when_a_tensor_exceeds_max_size(tmp_path, llama_build):
    src = write_gguf(tmp_path / "big.gguf", layers=1, rows=64, big_rows=4096)  # token_embd: 4.2 MB
    with pytest.raises(LowbitError) as err:
        shards.split(src, max_size="1M")
    msg = str(err.value)
    assert "token_embd.weight" in msg and "--max-tensors" in msg and "5M" in msg
    assert not list(tmp_path.glob("big-*")) and not list(tmp_path.glob(".*"))
    s = shards.split(src, max_tensors=2)
    assert s.count == 2 and shards.check_set(s).ok and shards.verify_tensors(s.parts, src).ok
    with pytest.raises(LowbitError, match="never overwrites"):
        shards.split(src, max_tensors=2)
    with pytest.raises(LowbitError, match="500M or 2G"):
        shards.split(src, max_size="2 gigs", out=tmp_path / "x")


def test_ollama_modelfile_for_merged_r1(shard_dir):
    with pytest.raises(LowbitError, match="merge"):
        ollama.write_modelfile(shard_dir / "m-00001-of-00003.gguf")
    merged, _ = shards.merge(shard_dir / "m-00001-of-00003.gguf")
    path = ollama.write_modelfile(merged)
    text = path.read_text(encoding="utf-8")
    assert path.name == "m.Modelfile" and "FROM ./m.gguf" in text.splitlines()
    stops = [
        line.split(" ", 2)[2].strip('"') for line in text.splitlines() if line.startswith("PARAMETER stop")
    ]
    assert stops == [R1_TOKENS[0], R1_TOKENS[1], "<｜User｜>", "<｜Assistant｜>"]
    assert "PARAMETER temperature 0.6" in text and "PARAMETER min_p 0.05" in text
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert "<｜User｜>{{ .Content }}" in template and "<｜Assistant｜>" in template
    assert R1_TOKENS[0] not in template  # BOS comes from the runtime, never twice
    assert f"{{{{- if not $last }}}}{R1_TOKENS[1]}" in template  # past answers end with EOS
    with pytest.raises(LowbitError, match="already exists"):
        ollama.write_modelfile(merged)


def test_ollama_refuses_a_model_without_r1_markers(tmp_path):
    plain = write_gguf(tmp_path / "p.gguf", layers=1, vocab=["a", "b", "c"])
    with pytest.raises(LowbitError, match="not a DeepSeek-R1-family"):
        ollama.write_modelfile(plain)


def test_llama_cpp_runs_the_shards_directly_and_the_merge_gives_the_same_tokens(tmp_path, llama_build):
    import subprocess

    from gguf_factory import write_llama_model

    src = write_llama_model(tmp_path / "tiny.gguf")
    parts = split_gguf(llama_build.tool("llama-gguf-split"), src, tmp_path / "set" / "tiny", max_tensors=5)
    merged, report = shards.merge(parts[0])
    assert len(parts) > 2 and report.ok

    def complete(model: Path) -> bytes:
        tool = str(llama_build.tool("llama-completion"))
        cmd = [tool, "-m", str(model), "-p", "hello", "-n", "12", "--temp", "0", "--top-k", "1",
               "--seed", "1", "-no-cnv", "-t", "1", "--no-warmup"]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, check=True, timeout=120)
        assert b"total time =" in proc.stderr  # the run's whole output came through (patch 0004)
        return proc.stdout

    from_shards = complete(parts[0])
    assert b"hello" in from_shards  # the prompt is echoed, then greedy tokens follow
    assert from_shards == complete(merged)


def test_merge_layout_is_predicted_so_data_is_checked_while_written(shard_dir):
    from gguf import GGUFReader

    parts = shards.shard_set(shard_dir / "m-00001-of-00003.gguf").parts
    layout = shards._predicted_layout(parts)
    merged, report = shards.merge(parts[0])
    actual = {t.name: int(t.data_offset) for t in GGUFReader(merged).tensors}
    assert {t.name: off for _, t, off in layout} == actual
    assert report.ok and report.bytes_compared == sum(int(t.n_bytes) for _, t, _ in layout)


def test_header_reader_agrees_with_gguf_py(shard_dir, original):
    from gguf import GGUFReader

    for path in [original, *sorted(shard_dir.glob("*.gguf"))]:
        ours, theirs = shards.read_header(path), GGUFReader(path)
        assert [(t.name, t.tensor_type, t.shape, t.n_bytes, t.data_offset) for t in ours.tensors] == [
            (t.name, t.tensor_type, tuple(int(x) for x in t.shape), int(t.n_bytes), int(t.data_offset))
            for t in theirs.tensors
        ]
        assert ours.data_offset == theirs.data_offset
        scalars = {k: f.contents() for k, f in theirs.fields.items() if not k.startswith("GGUF.") and f.types
                   and len(f.types) == 1}  # fmt: skip
        assert scalars and {k: ours.value(k) for k in scalars} == scalars
        assert list(ours.kv) == [k for k in theirs.fields if not k.startswith("GGUF.")]


# --- sets that do not belong together, bad flags, a full disk --------------------------------------------


def _quantized_splits(tmp_path: Path, llama_build) -> dict[str, list[Path]]:
    """One tiny model quantized twice (Q8_0, Q4_0) and each split at the same tensor boundaries."""
    import subprocess

    from gguf_factory import write_llama_model

    f32 = write_llama_model(tmp_path / "f32.gguf")
    out = {}
    for qtype in ("Q8_0", "Q4_0"):
        q = tmp_path / f"m-{qtype}.gguf"
        subprocess.run([str(llama_build.tool("llama-quantize")), str(f32), str(q), qtype], check=True,
                       capture_output=True)  # fmt: skip
        out[qtype] = split_gguf(llama_build.tool("llama-gguf-split"), q, tmp_path / qtype / "m", max_tensors=4)
    return out


def test_a_part_from_another_quant_is_refused_with_evidence(tmp_path, llama_build):
    sets = _quantized_splits(tmp_path, llama_build)
    q4 = sets["Q4_0"]
    assert len(q4) >= 3 and [p.name for p in q4] == [p.name for p in sets["Q8_0"]]
    clean = shards.check_set(shards.shard_set(q4[0]))
    assert clean.ok and clean.unverified and "could only be checked" in clean.unverified
    shutil.copyfile(sets["Q8_0"][1], q4[1])  # same name, same boundaries, same split keys: another quant
    with pytest.raises(LowbitError) as err:
        shards.merge(q4[0])
    assert q4[1].name in str(err.value) and "Q8_0 here but Q4_0 in the other parts" in str(err.value)
    assert not (q4[0].parent / "m.gguf").exists() and not list(q4[0].parent.glob(".*"))


def test_merge_says_when_parts_could_not_be_verified(shard_dir, caplog):
    with caplog.at_level("WARNING", logger="lowbit"):
        shards.merge(shard_dir / "m-00001-of-00003.gguf")
    assert "could not verify that the parts of m come from one model" in caplog.text


@pytest.mark.parametrize("bad", ["1.5", "0", "-1", "many", ""])
def test_split_refuses_a_bad_tensor_count_clearly(original, tmp_path, bad):
    with pytest.raises(LowbitError, match="--max-tensors .*whole number"):
        shards.split(original, max_tensors=bad, out=tmp_path / "s" / "m")
    assert not (tmp_path / "s").exists() or not list((tmp_path / "s").iterdir())


def test_split_max_tensors_task_passes_the_text_through():
    """tasks.py hands --max-tensors over as typed (invoke gives text), so the package can name bad values."""
    c = MockContext(run=Result())
    load_tasks()["split"](c, file="m.gguf", max_tensors="12x")
    (call,) = c.run.call_args_list
    assert json.loads(shlex.split(call.args[0])[-1])["max_tensors"] == "12x"  # not cast, not dropped


def test_disk_full_during_merge_is_named_with_numbers(shard_dir, tmp_path, monkeypatch):
    import subprocess

    small = tmp_path / "small-disk"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(small)],
                      capture_output=True).returncode:  # fmt: skip
        pytest.skip("needs root to mount a small tmpfs (a disk that fills up)")
    try:
        monkeypatch.setattr(shards, "_check_disk", lambda *a: None)  # let it start, so the disk really fills
        with pytest.raises(LowbitError) as err:
            shards.merge(shard_dir / "m-00001-of-00003.gguf", out=small / "m.gguf")
        msg = str(err.value)
        assert msg.startswith("disk full in") and "needed" in msg and "free" in msg, msg
        assert "gdb" not in msg and "backtrace" not in msg.lower()
        assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)
