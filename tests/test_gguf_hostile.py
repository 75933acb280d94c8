"""Hostile and broken GGUF headers: every tool that reads a header fails with a clear LowbitError that names
the file and the offset, quickly and within a small memory budget — never a traceback, never gigabytes."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from gguf_factory import write_llama_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lowbit import LowbitError
from lowbit.files.gguf_header import read_header, read_model

ROOT = Path(__file__).resolve().parent.parent
U32, U64, ARRAY, STRING = "<I", "<Q", 9, 8


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack(U64, len(data)) + data


def _gguf(kvs: list[bytes], n_kv: int | None = None, n_tensors: int = 0, tail: bytes = b"") -> bytes:
    """A GGUF v3 file from raw key/value records (and whatever follows them)."""
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, len(kvs) if n_kv is None else n_kv) + b"".join(kvs) + tail


def _kv(key: str, vtype: int, payload: bytes) -> bytes:
    return _string(key) + struct.pack(U32, vtype) + payload


def _nested_arrays(depth: int) -> bytes:
    """`depth` arrays, each holding one array, the innermost holding one uint8."""
    inner = struct.pack("<IQ", 0, 1) + b"\x07"
    return struct.pack("<IQ", ARRAY, 1) * (depth - 1) + inner


HOSTILE = {
    # an array of 2^60 arrays in a file of a few bytes (gguf-py allocated until memory ran out)
    "huge-array-of-arrays": _gguf([_kv("general.architecture", STRING, _string("llama")),
                                   _kv("x.arrays", ARRAY, struct.pack("<IQ", ARRAY, 2**60))], tail=b"\0" * 4096),
    "huge-string-array": _gguf([_kv("tokenizer.ggml.tokens", ARRAY, struct.pack("<IQ", STRING, 2**62))]),
    "huge-string": _gguf([_kv("general.name", STRING, struct.pack(U64, 2**63))]),
    "huge-key-count": _gguf([], n_kv=2**60),
    "huge-tensor-count": _gguf([_kv("general.architecture", STRING, _string("llama"))], n_tensors=2**61),
    "deep-nesting": _gguf([_kv("x.deep", ARRAY, _nested_arrays(100_000))]),
    "unknown-value-type": _gguf([_kv("x.bad", 77, b"\0" * 16)]),
    "unknown-array-type": _gguf([_kv("x.bad", ARRAY, struct.pack("<IQ", 99, 1) + b"\0" * 8)]),
    "bad-alignment": _gguf([_kv("general.alignment", 4, struct.pack(U32, 3))]),
    "zero-alignment": _gguf([_kv("general.alignment", 4, struct.pack(U32, 0))]),
    "duplicate-key": _gguf([_kv("a", 4, struct.pack(U32, 1)), _kv("a", 4, struct.pack(U32, 2))]),
    "too-many-dims": _gguf([], n_tensors=1, tail=_string("t") + struct.pack(U32, 100) + b"\0" * 1024),
    "unknown-tensor-type": _gguf([], n_tensors=1, tail=_string("t") + struct.pack("<IQIQ", 1, 32, 999, 0)),
    "tensor-past-end": _gguf([], n_tensors=1, tail=_string("t") + struct.pack("<IQIQ", 1, 2**40, 0, 0)),
    "shape-overflow": _gguf([], n_tensors=1, tail=_string("t") + struct.pack("<I4QIQ", 4, *[2**62] * 4, 0, 0)),
    "big-endian": b"GGUF" + struct.pack(">IQQ", 3, 0, 0),
    "not-gguf": b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64 + b"\nsize 12\n",
    "empty": b"",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_header_is_a_clear_error(tmp_path, name):
    path = tmp_path / f"{name}.gguf"
    path.write_bytes(HOSTILE[name])
    for arrays in ((), "all", "numeric"):
        with pytest.raises(LowbitError, match=r"not a readable GGUF") as err:
            read_header(path, arrays=arrays)
        assert str(path) in str(err.value)
    with pytest.raises(LowbitError):
        read_model(path)


def test_errors_name_the_offset(tmp_path):
    path = tmp_path / "deep.gguf"
    path.write_bytes(HOSTILE["deep-nesting"])
    with pytest.raises(LowbitError, match=r"nested deeper than \d+ at byte offset \d+"):
        read_header(path, arrays="all")
    path.write_bytes(HOSTILE["huge-array-of-arrays"])
    with pytest.raises(LowbitError, match=r"declares 1152921504606846976 items.* at byte offset \d+"):
        read_header(path)


def _real_header(tmp_path) -> tuple[Path, int]:
    path = write_llama_model(tmp_path / "real.gguf")
    return path, read_header(path).data_offset


def test_truncation_at_every_offset_of_a_real_header(tmp_path):
    """A real model file cut anywhere inside its header (or its tensor data) is a LowbitError."""
    path, header_end = _real_header(tmp_path)
    data = path.read_bytes()
    cut = tmp_path / "cut.gguf"
    offsets = list(range(0, header_end)) + [header_end + 1, len(data) - 1]
    for n in offsets:
        cut.write_bytes(data[:n])
        with pytest.raises(LowbitError, match="not a readable GGUF"):
            read_header(cut, arrays="all")
    cut.write_bytes(data)
    assert read_header(cut).tensors  # the whole file still reads


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_headers_parse_or_fail_cleanly(tmp_path, data):
    """Random byte changes anywhere in a real header: the reader returns a header or raises LowbitError."""
    path, header_end = _real_header(tmp_path)
    raw = bytearray(path.read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, header_end - 1))
        raw[at] = data.draw(st.integers(0, 255))
    bad = tmp_path / "mutated.gguf"
    bad.write_bytes(bytes(raw))
    for arrays in ((), "all"):
        try:
            header = read_header(bad, arrays=arrays)
        except LowbitError as exc:
            assert "not a readable GGUF" in str(exc)
        else:
            assert all(t.data_offset + t.n_bytes <= len(raw) for t in header.tensors)


@pytest.mark.slow
def test_every_tool_fails_fast_and_small_on_hostile_headers(tmp_path):
    """plan, run, tokens, template and fix-padding on each hostile file: exit 2 with `error: ...` on stderr,
    no traceback, within 5 s and 200 MB peak memory per input (the child's own high-water mark, VmHWM: getrusage's
    ru_maxrss survives exec and would report the test runner's)."""
    probe = (
        "import json, sys, time\n"
        "from lowbit.__main__ import main\n"
        "t0 = time.monotonic()\n"
        "code = main(sys.argv[1:])\n"
        "peak = [int(line.split()[1]) * 1024 for line in open('/proc/self/status') if line.startswith('VmHWM')][0]\n"
        "print(json.dumps({'code': code, 'seconds': time.monotonic() - t0, 'peak': peak}))\n"
    )
    targets = {
        "plan": ("lowbit.run.plan:plan_command", "model"),
        "run": ("lowbit.run.engine:run_command", "model"),
        "tokens": ("lowbit.prompts.tokens:tokens_command", "model"),
        "template": ("lowbit.prompts.chat:template_command", "model"),
        "fix-padding": ("lowbit.prompts.padding:fix_padding_command", "path"),
    }
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name in ("huge-array-of-arrays", "deep-nesting", "huge-tensor-count", "tensor-past-end"):
        path = tmp_path / f"{name}.gguf"
        path.write_bytes(HOSTILE[name])
        for tool, (target, arg) in targets.items():
            value = [str(path)] if tool == "tokens" else str(path)
            proc = subprocess.run(
                [sys.executable, "-c", probe, target, json.dumps({arg: value})],
                capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path,
            )  # fmt: skip
            where = f"{tool} on {name}: {proc.stderr[-800:]}"
            assert "Traceback" not in proc.stderr, where
            assert "error:" in proc.stderr and str(path.name) in proc.stderr, where
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            assert result["code"] == 2, where
            assert result["seconds"] < 5 and result["peak"] < 200 * 1024 * 1024, (where, result)
