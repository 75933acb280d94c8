"""Padding-token audit and fix for HF tokenizer directories and GGUF files.

Why it matters: with pad = EOS a causal-LM data collator masks every EOS label to -100 (it cannot tell
padding from a real end of turn), so fine-tuning never teaches the model to stop. The fix points the pad
token at the family's dedicated pad token (R1 `<｜▁pad▁｜>`, Qwen `<|vision_pad|>`, Llama 3.1
`<|finetune_right_pad_id|>`, which is Llama 3.0's `<|reserved_special_token_2|>`), found by name in the
vocabulary - never by a fixed ID.
"""

from __future__ import annotations

import contextlib
import errno
import json
import mmap
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFValueType, GGUFWriter, Keys
from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

from lowbit import LowbitError
from lowbit.files.gguf_header import ALL_ARRAYS, read_header
from lowbit.files.shard_set import ShardSet, shard_number
from lowbit.models.catalog import ANY_KIND, locate
from lowbit.prompts.chat import build_prompt
from lowbit.prompts.tokens import Vocab, dedicated_pad, load_vocab
from lowbit.ui import print_table, step

NEW_PAD = "<|lowbit_pad|>"
PAD_KEY = Keys.Tokenizer.PAD_ID

SAMPLE_CONVERSATIONS = [
    [
        {"role": "user", "content": "What is the capital of France?"},
        {
            "role": "assistant",
            "content": "<think>A geography question.</think>The capital of France is Paris.",
        },
    ],
    [
        {"role": "user", "content": "Write a haiku about autumn."},
        {
            "role": "assistant",
            "content": "Red leaves drift and fall,\ncold wind hums through empty trees,\n"
            "the year exhales slow.",
        },
        {"role": "user", "content": "Now one about spring, please."},
        {
            "role": "assistant",
            "content": "Buds break through the frost,\nrain wakes the sleeping garden,\n"
            "light returns to stay.",
        },
    ],
    [{"role": "user", "content": "2 + 2 = ?"}, {"role": "assistant", "content": "4"}],
    [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "Explain what a padding token is in one sentence."},
        {
            "role": "assistant",
            "content": "A padding token fills the unused positions of shorter sequences in a "
            "batch so that all sequences have the same length.",
        },
    ],
]


# ---------------------------------------------------------------------------------------------
# audit


@dataclass
class Audit:
    source: Path
    kind: str
    pad_id: int | None
    pad_token: str | None
    eos_id: int | None
    problems: list[str]
    suggestion: tuple[str, int] | None  # dedicated pad (token, id) if the vocabulary has one
    details: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def audit(source: str | os.PathLike | Vocab) -> Audit:
    """Detect pad = EOS, pad missing, pad ID out of range."""
    v = source if isinstance(source, Vocab) else load_vocab(source)
    problems = []
    if v.pad_id is None:
        missing = v.metadata.get("pad_missing")
        problems.append(f"pad token {missing!r} is not in the vocabulary" if missing else "no pad token set")
    elif not 0 <= v.pad_id < v.size:
        problems.append(f"pad ID {v.pad_id} is out of range (vocabulary has {v.size} tokens)")
    elif v.pad_id == v.eos_id:
        problems.append(f"pad = EOS ({v.eos_token!r}, ID {v.eos_id}): collators will mask every EOS label")
    return Audit(v.source, v.kind, v.pad_id, v.token(v.pad_id), v.eos_id, problems, dedicated_pad(v))


def choose_pad(v: Vocab, pad: str | None = None) -> tuple[str, int | None]:
    """(token, id) to use as pad: the one asked for, else the dedicated one; id None means "add it"."""
    if pad is not None:
        i = v.id_of(pad)
        if i is None:
            raise LowbitError(
                f"pad token {pad!r} is not in the vocabulary of {v.source}; pick an existing token "
                "(see `invoke tokens`) or leave --pad out to use the family's dedicated pad"
            )
        if i == v.eos_id:
            raise LowbitError(f"{pad!r} is the EOS token; a pad token must differ from EOS")
        return pad, i
    found = dedicated_pad(v)
    return found if found else (NEW_PAD, None)


# ---------------------------------------------------------------------------------------------
# fix an HF tokenizer directory


def fix_hf_dir(src: str | os.PathLike, out: str | os.PathLike | None = None, pad: str | None = None) -> Path:
    """Write a copy of an HF model/tokenizer directory with a proper pad token in every file that
    carries one (tokenizer_config.json, special_tokens_map.json, tokenizer.json padding, config.json,
    generation_config.json). The original is untouched; the copy appears under its final name only
    when complete."""
    src = Path(src)
    v = load_vocab(src)
    token, pid = choose_pad(v, pad)
    out = Path(out) if out else src.with_name(src.name + "-padfix")
    if out.exists():
        raise LowbitError(f"{out} already exists; choose another --out (the original is never overwritten)")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as exc:
        raise _write_error(exc, out) from None
    try:
        for f in src.iterdir():
            if f.is_file():
                _link_or_copy(f, tmp / f.name)
        if pid is None:  # add a new token at the end of the vocabulary
            pid = v.size
            tj = json.loads((tmp / "tokenizer.json").read_text(encoding="utf-8"))
            tj.setdefault("added_tokens", []).append(
                {
                    "id": pid,
                    "content": token,
                    "single_word": False,
                    "lstrip": False,
                    "rstrip": False,
                    "normalized": False,
                    "special": True,
                }
            )
            _write_json(tmp / "tokenizer.json", tj)
        changed = _set_pad_in_hf_files(tmp, token, pid)
        check = load_vocab(tmp)
        if check.pad_id != pid:
            raise LowbitError(
                f"internal check failed: the fixed tokenizer reports pad {check.pad_id}, not {pid}"
            )
        os.replace(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise _write_error(exc, out) from None
        raise
    (out / ".lowbit-padfix.json").write_text(
        json.dumps(
            {"pad_token": token, "pad_id": pid, "files": changed, "source": src.name},
            ensure_ascii=False,
            indent=2,
        )
    )
    return out


def _link_or_copy(src: Path, dst: Path) -> None:
    """Copy small files; large unchanged ones (weights) become hard links when the filesystem allows."""
    if src.stat().st_size > 64 * 2**20 and src.suffix in (".safetensors", ".bin", ".gguf"):
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)


def _write_json(path: Path, data) -> None:
    # Replace, never write through: the copy may share an inode with the original via a hard link.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _set_pad_in_hf_files(d: Path, token: str, pid: int) -> list[str]:
    changed = []
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        f = d / name
        if not f.exists():
            continue
        data = json.loads(f.read_text(encoding="utf-8"))
        old = data.get("pad_token")
        data["pad_token"] = {**old, "content": token} if isinstance(old, dict) else token
        if name == "tokenizer_config.json" and str(pid) not in data.get(
            "added_tokens_decoder", {str(pid): 1}
        ):
            data["added_tokens_decoder"][str(pid)] = {
                "content": token,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
        _write_json(f, data)
        changed.append(name)
    for name in ("config.json", "generation_config.json"):
        f = d / name
        if f.exists():
            data = json.loads(f.read_text(encoding="utf-8"))
            data["pad_token_id"] = pid
            _write_json(f, data)
            changed.append(name)
    tj = json.loads((d / "tokenizer.json").read_text(encoding="utf-8"))
    if tj.get("padding"):
        tj["padding"].update({"pad_id": pid, "pad_token": token})
        _write_json(d / "tokenizer.json", tj)
        changed.append("tokenizer.json")
    if not (d / "tokenizer_config.json").exists() and not (d / "special_tokens_map.json").exists():
        _write_json(d / "special_tokens_map.json", {"pad_token": token})
        changed.append("special_tokens_map.json")
    return changed


# ---------------------------------------------------------------------------------------------
# fix a GGUF file


def fix_gguf(src: str | os.PathLike, out: str | os.PathLike | None = None, pad: str | None = None) -> Path:
    """Write a new GGUF whose only difference is `tokenizer.ggml.padding_token_id`, then verify that
    every tensor and every other key is unchanged. For a split set, give shard 00001: the whole set is
    written (shard 1 fixed, the others hard-linked or copied) under the new name."""
    src = Path(src)
    v = load_vocab(src)
    token, pid = choose_pad(v, pad)
    if pid is None:
        raise LowbitError(
            f"{src} has no spare pad token and a GGUF cannot gain one (its embedding matrix has "
            f"exactly {v.size} rows): fix the HF checkpoint with a new token, resize the "
            "embeddings, and convert again; or pass --pad with an existing unused token"
        )
    src_set = ShardSet.of(src)
    k = shard_number(src.name)[0] if src_set else 0
    default = (ShardSet(src.parent, f"{src_set.prefix}-padfix", src_set.count).part(k).name if src_set
               else src.stem + "-padfix.gguf")
    out = Path(out) if out else src.with_name(default)
    if out.is_dir() or out.suffix != ".gguf":  # a folder: keep the file name
        out = out / src.name
    if out.resolve() == src.resolve():
        raise LowbitError("the fixed GGUF must be a new file; the original is kept (choose another --out)")
    pairs = [(src, out)]
    if src_set:
        out_set = ShardSet.of(out)
        if out_set is None or out_set.count != src_set.count:
            raise LowbitError(
                f"{src.name} is shard {k:05d} of {src_set.count:05d}: --out must be named "
                f"{ShardSet(Path(), '*', src_set.count).first.name}"
            )
        if k != 1:
            raise LowbitError(f"{src.name}: the tokenizer lives in shard 00001; pass that shard")
        pairs += list(zip(src_set.parts[1:], out_set.parts[1:], strict=True))
    for _, dst in pairs:
        if dst.exists():
            raise LowbitError(f"{dst} already exists; choose another --out (nothing is overwritten)")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _write_with_pad(src, tmp, pid)
        verify_only_pad_changed(src, tmp, pid)
        for a, b in pairs[1:]:
            _link_or_copy(a, b.with_name(f".{b.name}.tmp-{os.getpid()}"))
        for _, b in pairs[1:]:
            os.replace(b.with_name(f".{b.name}.tmp-{os.getpid()}"), b)
        os.replace(tmp, out)
    except BaseException as exc:
        for p in [tmp, *(b.with_name(f".{b.name}.tmp-{os.getpid()}") for _, b in pairs[1:])]:
            with contextlib.suppress(OSError):  # on a read-only folder even unlinking nothing fails (EROFS):
                p.unlink(missing_ok=True)  # cleanup must never replace the real error
        if isinstance(exc, OSError):
            raise _write_error(exc, out) from None
        raise
    return out


def _write_error(exc: OSError, out: Path) -> LowbitError:
    """The clear error for a failed write of the fixed copy: which file, why, and what to do."""
    where = exc.filename or out
    hint = {
        errno.EROFS: f"{out.parent} is on a read-only filesystem",
        errno.EACCES: f"{out.parent} is not writable for this user",
        errno.EPERM: f"{out.parent} is not writable for this user",
        errno.ENOSPC: f"the disk holding {out.parent} is full",
    }.get(exc.errno, exc.strerror or str(exc))
    return LowbitError(
        f"cannot write the fixed copy {out.name}: {hint} ({where}: {exc.strerror or exc}). The original is "
        "untouched and nothing was left behind; pass --out PATH in a writable folder."
    )


def _write_with_pad(src: Path, dst: Path, pid: int) -> None:
    """Existing uint32 key: copy the bytes and patch the 4-byte value in the copy (what gguf-py's
    gguf_set_metadata does in place). Missing key: rewrite through gguf-py's GGUFWriter
    (gguf_new_metadata's copy_with_new_metadata)."""

    header = read_header(src)
    if PAD_KEY in header.value_at and header.value_at[PAD_KEY][1] in (4, 5):  # uint32 / int32
        shutil.copyfile(src, dst)
        with open(dst, "r+b") as f:
            f.seek(header.value_at[PAD_KEY][0])
            f.write(struct.pack("<I", pid))
        return

    # gguf-py's own rewrite (its gguf_new_metadata script) takes a GGUFReader; `read_header` above has
    # already checked this file against its size, so the unbounded reader only sees a well-formed header.
    reader = GGUFReader(src)
    arch = reader.get_field(Keys.General.ARCHITECTURE).contents()
    writer = GGUFWriter(dst, arch=arch, endianess=reader.endianess)
    align = reader.get_field(Keys.General.ALIGNMENT)
    if align is not None:
        writer.data_alignment = int(align.contents())
    copy_with_new_metadata(reader, writer, {PAD_KEY: MetadataDetails(GGUFValueType.UINT32, pid)}, [])


def verify_only_pad_changed(original: str | os.PathLike, new: str | os.PathLike, pid: int) -> dict:
    """Raise unless `new` equals `original` in every tensor (name, type, shape, bytes) and every key
    except the pad ID, which must be `pid`. Returns counts of what was compared."""

    a, b = read_header(original, arrays=ALL_ARRAYS), read_header(new, arrays=ALL_ARRAYS)
    if a.version != b.version:
        raise LowbitError("verification failed: key GGUF.version changed")
    keys_a = [k for k in a.kv if k != PAD_KEY]
    keys_b = [k for k in b.kv if k != PAD_KEY]
    if sorted(keys_a) != sorted(keys_b):
        raise LowbitError(f"verification failed: keys differ {sorted(set(keys_a) ^ set(keys_b))}")
    for k in keys_a:
        va, vb = a.value(k), b.value(k)
        same = (a.value_at[k][1] == b.value_at[k][1]) and (
            np.array_equal(va, vb) if isinstance(va, np.ndarray) else va == vb
        )
        if not same:
            raise LowbitError(f"verification failed: key {k} changed")
    if b.value(PAD_KEY) != pid:
        raise LowbitError(f"verification failed: {PAD_KEY} is not {pid} in {new}")
    if [(t.name, t.shape, t.tensor_type) for t in a.tensors] != [(t.name, t.shape, t.tensor_type) for t in b.tensors]:
        raise LowbitError("verification failed: tensor names, shapes or types changed")
    nbytes = 0
    with open(original, "rb") as fa, open(new, "rb") as fb:
        with (
            mmap.mmap(fa.fileno(), 0, access=mmap.ACCESS_READ) as ma,
            mmap.mmap(fb.fileno(), 0, access=mmap.ACCESS_READ) as mb,
        ):
            for ta, tb in zip(a.tensors, b.tensors, strict=True):
                n, sa, sb = ta.n_bytes, ta.data_offset, tb.data_offset
                step = 64 * 2**20
                for i in range(0, n, step):
                    if ma[sa + i : sa + min(n, i + step)] != mb[sb + i : sb + min(n, i + step)]:
                        raise LowbitError(f"verification failed: data of tensor {ta.name} changed")
                nbytes += n
    return {"keys": len(keys_a), "tensors": len(a.tensors), "tensor_bytes": nbytes}


def fix(path: str | os.PathLike, out: str | os.PathLike | None = None, pad: str | None = None) -> Path:
    """Fix an HF directory or a GGUF file (see fix_hf_dir / fix_gguf)."""
    v = load_vocab(path)
    return fix_gguf(path, out, pad) if v.kind == "gguf" else fix_hf_dir(path, out, pad)


# ---------------------------------------------------------------------------------------------
# why it matters: what a standard collator does to EOS labels


def collator_eos_labels(
    tokenizer_dir: str | os.PathLike, conversations: list[list[dict]] | None = None
) -> dict:
    """Tokenize conversations with the model's template and run transformers'
    DataCollatorForLanguageModeling(mlm=False); count the EOS tokens and how many keep their label."""
    from transformers import AutoTokenizer, DataCollatorForLanguageModeling  # heavy, optional (the `replicas` extra)

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    conversations = conversations or SAMPLE_CONVERSATIONS
    v = load_vocab(tokenizer_dir)
    features = []
    for conv in conversations:
        prompt = build_prompt(v, conv, add_generation_prompt=False, consumer_adds_bos=False)
        features.append({"input_ids": tok(prompt.text, add_special_tokens=False)["input_ids"]})
    batch = DataCollatorForLanguageModeling(tok, mlm=False)(features)
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    real = mask.bool()
    eos = (ids == tok.eos_token_id) & real
    return {
        "pad_token": tok.pad_token,
        "pad_id": tok.pad_token_id,
        "eos_id": tok.eos_token_id,
        "sequences": len(features),
        "eos_tokens": int(eos.sum()),
        "eos_labels_kept": int(((labels != -100) & eos).sum()),
        "padding_positions": int((~real).sum()),
        "padding_labels_masked": int(((labels == -100) & ~real).sum()),
    }


# ---------------------------------------------------------------------------------------------
# task


def fix_padding_command(
    path: str, pad: str | None = None, out: str | None = None, check: bool = False
) -> int:
    """`invoke fix-padding PATH [--pad TOKEN] [--out PATH] [--check]`."""

    src = locate(path, kind=ANY_KIND)
    a = audit(src)
    print_table(
        f"padding audit: {src}",
        ["pad", "pad id", "EOS id", "dedicated pad", "problems"],
        [
            (
                a.pad_token,
                a.pad_id,
                a.eos_id,
                f"{a.suggestion[0]} ({a.suggestion[1]})" if a.suggestion else "-",
                "; ".join(a.problems) or "none",
            )
        ],
    )
    if check or (a.ok and pad is None):
        return 0 if a.ok else 1
    step(f"writing a fixed copy of {src.name}")
    fixed = fix(src, out, pad)
    after = audit(fixed)
    print_table(
        f"after: {fixed}",
        ["pad", "pad id", "EOS id", "problems"],
        [(after.pad_token, after.pad_id, after.eos_id, "; ".join(after.problems) or "none")],
    )
    return 0 if after.ok else 1
