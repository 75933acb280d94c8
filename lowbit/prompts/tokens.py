"""Special tokens of any tokenizer (HF dir, tokenizer.json, GGUF) and the token-ID remap table across models.

Nothing here knows an ID in advance: BOS/EOS/PAD/UNK come from the tokenizer's own configuration
(tokenizer_config.json / special_tokens_map.json or GGUF `tokenizer.ggml.*_token_id`), the think tags
are looked up by name, and the role markers are found by rendering the model's own chat template.
GGUF files are read with lowbit.files.gguf_header's header reader (metadata and tensor index; never tensor data).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from gguf import Keys

from lowbit import LowbitError
from lowbit.files.gguf_header import ALL_ARRAYS, read_header
from lowbit.files.shard_set import shard_number
from lowbit.models.catalog import ANY_KIND, locate
from lowbit.prompts.template import render
from lowbit.ui import print_json, print_table

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
# GGUF token types (llama.cpp's llama_token_type): 2 unknown, 3 control, 4 user-defined, 6 byte.
_GGUF_CONTROL, _GGUF_USER_DEFINED, _GGUF_UNKNOWN = 3, 4, 2


@dataclass
class Vocab:
    """What lowbit needs to know about one tokenizer, read from its files."""

    source: Path
    kind: str  # "hf" (directory or tokenizer.json) or "gguf"
    tokens: list[str | None]  # id -> token string (None for holes)
    added: frozenset[int]  # added/control/user-defined tokens: the "special" ones
    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None
    unk_id: int | None = None
    add_bos: bool | None = None  # does encoding (HF) / llama.cpp prepend BOS by itself?
    chat_template: str | None = None
    name: str = ""
    metadata: dict = field(default_factory=dict)  # extra facts (file names, GGUF keys) for reports
    _index: dict[str, int] | None = field(default=None, repr=False)

    def id_of(self, token: str) -> int | None:
        """The ID of a token string, or None if the vocabulary lacks it."""
        if self._index is None:
            self._index = {t: i for i, t in enumerate(self.tokens) if t is not None}
        return self._index.get(token)

    def token(self, token_id: int | None) -> str | None:
        if token_id is None or not 0 <= token_id < len(self.tokens):
            return None
        return self.tokens[token_id]

    @property
    def size(self) -> int:
        return len(self.tokens)

    @property
    def bos_token(self) -> str | None:
        return self.token(self.bos_id)

    @property
    def eos_token(self) -> str | None:
        return self.token(self.eos_id)


# ---------------------------------------------------------------------------------------------
# loading


def load_vocab(path: str | os.PathLike) -> Vocab:
    """Read a tokenizer from an HF tokenizer directory, a `tokenizer.json` file or a GGUF file."""
    p = Path(path).expanduser()
    if not p.exists():
        raise LowbitError(
            f"{p} does not exist; give an HF tokenizer directory, a tokenizer.json or a .gguf file"
        )
    stat = p.stat()
    return _load_cached(str(p.resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=16)
def _load_cached(path: str, _size: int, _mtime: int) -> Vocab:
    p = Path(path)
    if p.is_dir():
        if (p / "tokenizer.json").exists():
            return _load_hf(p / "tokenizer.json", p)
        ggufs = sorted(p.glob("*.gguf"))
        hint = f" (it holds {ggufs[0].name}: pass that file)" if ggufs else ""
        raise LowbitError(f"{p} is not a tokenizer directory: no tokenizer.json in it{hint}")
    if p.suffix == ".gguf" or _is_gguf(p):
        return _load_gguf(p)
    if p.name.endswith(".json"):
        return _load_hf(p, p.parent if (p.parent / "tokenizer_config.json").exists() else None)
    raise LowbitError(f"{p} is neither a GGUF file nor a tokenizer.json / HF tokenizer directory")


def _is_gguf(p: Path) -> bool:
    with open(p, "rb") as f:
        return f.read(4) == b"GGUF"


def _token_content(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _load_hf(tokenizer_json: Path, directory: Path | None) -> Vocab:
    try:
        data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
        raw_vocab = data["model"]["vocab"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise LowbitError(f"{tokenizer_json} is not a Hugging Face tokenizer.json ({exc})") from exc
    if isinstance(raw_vocab, list):  # unigram models store [piece, score] pairs
        vocab = {piece: i for i, (piece, _score) in enumerate(raw_vocab)}
    else:
        vocab = dict(raw_vocab)
    added = {a["id"]: a["content"] for a in data.get("added_tokens", [])}
    size = max([*vocab.values(), *added, -1]) + 1
    tokens: list[str | None] = [None] * size
    for tok, i in vocab.items():
        tokens[i] = tok
    for i, tok in added.items():
        tokens[i] = tok
    config: dict = {}
    files = ["tokenizer.json"]
    if directory is not None:
        for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the config wins
            f = directory / name
            if f.exists():
                config.update(json.loads(f.read_text(encoding="utf-8")))
                files.append(name)
    v = Vocab(
        source=directory or tokenizer_json,
        kind="hf",
        tokens=tokens,
        added=frozenset(added),
        name=(directory or tokenizer_json).name,
        metadata={"files": files},
    )
    ids = {}
    for role in ("bos", "eos", "pad", "unk"):
        content = _token_content(config.get(f"{role}_token"))
        ids[role] = v.id_of(content) if content is not None else None
        if content is not None and ids[role] is None:
            v.metadata[f"{role}_missing"] = content
    if ids["unk"] is None and data["model"].get("unk_token"):
        ids["unk"] = v.id_of(data["model"]["unk_token"])
    v.bos_id, v.eos_id, v.pad_id, v.unk_id = ids["bos"], ids["eos"], ids["pad"], ids["unk"]
    v.add_bos = _hf_adds_bos(tokenizer_json, config, v.bos_id)
    v.chat_template = _hf_chat_template(directory, config) if directory else None
    return v


def _hf_adds_bos(tokenizer_json: Path, config: dict, bos_id: int | None) -> bool | None:
    """Whether encoding with special tokens prepends BOS: transformers honours `add_bos_token` when the
    config sets it; otherwise the tokenizer.json post-processor decides (asked by encoding one word)."""
    if isinstance(config.get("add_bos_token"), bool):
        return config["add_bos_token"]
    if bos_id is None:
        return False
    from tokenizers import Tokenizer  # heavy, optional (the `replicas` extra): imported on use

    ids = Tokenizer.from_file(str(tokenizer_json)).encode("a", add_special_tokens=True).ids
    return bool(ids) and ids[0] == bos_id


def _hf_chat_template(directory: Path, config: dict) -> str | None:
    """The template as transformers finds it: chat_template.jinja, chat_template.json, the config."""
    jinja = directory / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text(encoding="utf-8")
    as_json = directory / "chat_template.json"
    if as_json.exists():
        tpl = json.loads(as_json.read_text(encoding="utf-8")).get("chat_template")
        if tpl:
            return _pick_template(tpl)
    tpl = config.get("chat_template")
    return _pick_template(tpl) if tpl else None


def _pick_template(tpl) -> str | None:
    if isinstance(tpl, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        named = {t.get("name"): t.get("template") for t in tpl}
        return named.get("default") or next(iter(named.values()), None)
    return tpl


def gguf_metadata(path: str | os.PathLike) -> dict:
    """All key/value metadata of a GGUF file (arrays as lists / numpy arrays), plus `GGUF.version` and
    `GGUF.tensor_count`; read by lowbit.files.gguf_header's header reader (tensor data is never read)."""

    header = read_header(path, arrays=ALL_ARRAYS)
    return {"GGUF.version": header.version, "GGUF.tensor_count": len(header.tensors), **header.values()}


def _load_gguf(path: Path) -> Vocab:
    meta = gguf_metadata(path)
    tokens = meta.get(Keys.Tokenizer.LIST)
    if tokens is None:
        part = shard_number(path.name)
        hint = "; the tokenizer lives in shard 00001 of a split set" if part and part[0] != 1 else ""
        raise LowbitError(f"{path} has no tokenizer (no tokenizer.ggml.tokens key){hint}")
    added: set[int] = set()
    types = meta.get(Keys.Tokenizer.TOKEN_TYPE)
    if types is not None:
        types = np.asarray(types)
        added = set(np.flatnonzero((types == _GGUF_CONTROL) | (types == _GGUF_USER_DEFINED)).tolist())

    def key(k):
        return meta.get(f"tokenizer.ggml.{k}")

    add_bos = key("add_bos_token")
    v = Vocab(
        source=path,
        kind="gguf",
        tokens=list(tokens),
        added=frozenset(added),
        bos_id=_int(key("bos_token_id")),
        eos_id=_int(key("eos_token_id")),
        pad_id=_int(key("padding_token_id")),
        unk_id=_int(key("unknown_token_id")),
        add_bos=None if add_bos is None else bool(add_bos),
        chat_template=meta.get(Keys.Tokenizer.CHAT_TEMPLATE),
        name=str(meta.get(Keys.General.NAME) or path.stem),
        metadata={
            "architecture": meta.get(Keys.General.ARCHITECTURE),
            "tokenizer_model": key("model"),
            "pre": key("pre"),
            "tensor_count": meta["GGUF.tensor_count"],
        },
    )
    return v


def _int(x) -> int | None:
    return None if x is None else int(x)


# ---------------------------------------------------------------------------------------------
# what the tokens are


# Dedicated pad tokens by name, in order of preference. The Llama 3.0 vocabulary has the same slot
# under its reserved name (Llama 3.1 renamed reserved_special_token_2 to finetune_right_pad_id).
DEDICATED_PADS = (
    "<｜▁pad▁｜>",
    "<|vision_pad|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>",
    "<|pad|>",
    "<pad>",
    "[PAD]",
)


def dedicated_pad(v: Vocab) -> tuple[str, int] | None:
    """The family's dedicated pad token in this vocabulary, by name; None if it has none."""
    for name in DEDICATED_PADS:
        i = v.id_of(name)
        if i is not None and i not in (v.bos_id, v.eos_id):
            return name, i
    return None


@dataclass
class SpecialToken:
    role: str  # BOS, EOS, PAD, UNK, think, /think, user, assistant
    token: str | None
    id: int | None
    note: str = ""


def role_markers(v: Vocab) -> dict[str, tuple[str, int] | None]:
    """The special tokens that open a user turn and an assistant turn.

    Found by rendering the model's own chat template around a sentinel message and taking the added
    token closest to the content on each side; without a template, by an added token named User /
    Assistant.
    """
    out: dict[str, tuple[str, int] | None] = {"user": None, "assistant": None}
    if v.chat_template:
        sentinel = "\u2063lowbit-sentinel\u2063"
        try:
            text = render(
                v.chat_template,
                [{"role": "user", "content": sentinel}],
                add_generation_prompt=True,
                bos_token=v.bos_token or "",
                eos_token=v.eos_token or "",
            )
        except LowbitError:
            text = ""
        if sentinel in text:
            before, after = text.split(sentinel, 1)
            skip = {v.bos_id, v.eos_id, v.id_of(THINK_OPEN), v.id_of(THINK_CLOSE)}
            user = [t for t in _added_in(v, before) if t[1] not in skip]
            assistant = [t for t in _added_in(v, after) if t[1] not in skip]
            out["user"] = user[-1] if user else None
            out["assistant"] = assistant[-1] if assistant else None
    for role in ("user", "assistant"):
        if out[role] is None:
            hits = [
                (v.tokens[i], i)
                for i in sorted(v.added)
                if v.tokens[i] and re.fullmatch(rf"<[|｜]{role}[|｜]>", v.tokens[i], re.IGNORECASE)
            ]
            out[role] = hits[0] if hits else None
    return out


def _added_in(v: Vocab, text: str) -> list[tuple[str, int]]:
    """Added tokens occurring in `text`, in order, longest match first at each position."""
    names = sorted({v.tokens[i] for i in v.added if v.tokens[i]}, key=len, reverse=True)
    if not names or not text:
        return []
    pattern = re.compile("|".join(re.escape(n) for n in names))
    return [(m.group(0), v.id_of(m.group(0))) for m in pattern.finditer(text)]


def special_tokens(v: Vocab) -> list[SpecialToken]:
    """BOS, EOS, PAD, UNK, the think tags and the role tokens of one tokenizer, with IDs."""
    rows = []
    for role, tid in (("BOS", v.bos_id), ("EOS", v.eos_id), ("PAD", v.pad_id), ("UNK", v.unk_id)):
        note = ""
        if role == "PAD" and tid is not None and tid == v.eos_id:
            note = "pad = EOS"
        if tid is not None and not 0 <= tid < v.size:
            note = f"out of range (vocabulary has {v.size})"
        if tid is None and f"{role.lower()}_missing" in v.metadata:
            note = f"{v.metadata[role.lower() + '_missing']!r} not in vocabulary"
        rows.append(SpecialToken(role, v.token(tid), tid, note))
    pad = dedicated_pad(v)
    rows.append(
        SpecialToken(
            "dedicated pad",
            pad[0] if pad else None,
            pad[1] if pad else None,
            "" if pad else "none in vocabulary",
        )
    )
    for role, name in (("think", THINK_OPEN), ("/think", THINK_CLOSE)):
        rows.append(SpecialToken(role, name if v.id_of(name) is not None else None, v.id_of(name)))
    for role, hit in role_markers(v).items():
        rows.append(SpecialToken(role, hit[0] if hit else None, hit[1] if hit else None))
    return rows


def token_kinds(v: Vocab) -> dict[int, str]:
    """ID -> kind (bos, eos, pad, unk, role, think, special) for every added token; others are text."""
    kinds = {i: "special" for i in v.added}
    for row in special_tokens(v):
        if row.id is None or row.role == "dedicated pad":
            continue
        kind = {"BOS": "bos", "EOS": "eos", "PAD": "pad", "UNK": "unk", "think": "think", "/think": "think"}
        kinds[row.id] = kind.get(row.role, "role")
    if v.pad_id is not None and v.pad_id == v.eos_id:
        kinds[v.pad_id] = "eos"
    return kinds


# ---------------------------------------------------------------------------------------------
# remap table across models


def remap_table(
    models: dict[str, Vocab], bases: dict[str, Vocab] | None = None
) -> tuple[list[str], list[list]]:
    """Columns and rows: one row per role, one column per model ("token (id)"), and for each model
    with a base tokenizer the token that base model has at the same ID."""
    bases = bases or {}
    per_model = {name: {r.role: r for r in special_tokens(v)} for name, v in models.items()}
    roles = [r.role for r in next(iter(per_model.values())).values()] if per_model else []
    columns = ["role"]
    for name in models:
        columns.append(name)
        if name in bases:
            columns.append(f"{name}: same ID in base")
    rows = []
    for role in roles:
        row: list = [role]
        for name in models:
            r = per_model[name][role]
            row.append("-" if r.id is None else f"{r.token} ({r.id})")
            if name in bases:
                row.append("-" if r.id is None else (bases[name].token(r.id) or "(beyond base vocabulary)"))
        rows.append(row)
    return columns, rows


def special_ids(v: Vocab) -> dict[str, int | None]:
    """Role -> ID, handy for assertions and JSON."""
    return {r.role: r.id for r in special_tokens(v)}


# ---------------------------------------------------------------------------------------------
# a transformers tokenizer from a GGUF vocabulary


def hf_tokenizer_from_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write an HF tokenizer directory made by transformers from a GGUF file's vocabulary.

    transformers appends added tokens it invents (e.g. `<|endoftext|>` at 128256 for Llama-3's
    llama-bpe vocab) beyond the GGUF's token count; those are dropped so the result matches the
    model's embedding size. Written under a temporary name, then renamed.
    """

    from transformers import AutoTokenizer  # heavy, optional (the `replicas` extra): imported on use

    gguf_path, out = Path(gguf_path).resolve(), Path(out_dir)
    v = load_vocab(gguf_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        tok.save_pretrained(str(tmp))
        tj = tmp / "tokenizer.json"
        data = json.loads(tj.read_text(encoding="utf-8"))
        extra = [a for a in data.get("added_tokens", []) if a["id"] >= v.size]
        if extra:
            data["added_tokens"] = [a for a in data["added_tokens"] if a["id"] < v.size]
            tj.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
            cfg_path = tmp / "tokenizer_config.json"
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
            dec = cfg.get("added_tokens_decoder", {})
            cfg["added_tokens_decoder"] = {k: d for k, d in dec.items() if int(k) < v.size}
            dropped = {a["content"] for a in extra}
            for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
                if _token_content(cfg.get(key)) in dropped:
                    cfg[key] = None
            cfg_path.write_text(json.dumps(cfg, ensure_ascii=False, indent=2), encoding="utf-8")
        if v.chat_template and not _hf_chat_template(
            tmp, json.loads((tmp / "tokenizer_config.json").read_text())
        ):
            (tmp / "chat_template.jinja").write_text(v.chat_template, encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ---------------------------------------------------------------------------------------------
# task


def tokens_command(
    model: list[str] | None = None, base: list[str] | None = None, json: bool = False  # noqa: A002 (--json)
) -> int:
    """`invoke tokens --model A --model B [--base A=PATH]`: special tokens and the remap table."""

    if not model:
        raise LowbitError(
            "give at least one --model (catalog name, HF tokenizer dir, tokenizer.json or GGUF)"
        )
    models = {m: load_vocab(locate(m, kind=ANY_KIND)) for m in model}
    bases: dict[str, Vocab] = {}
    for spec in base or []:
        name, sep, path = spec.partition("=")
        if not sep or name not in models:
            raise LowbitError(f"--base {spec!r}: write MODEL=PATH where MODEL is one of the --model values")
        bases[name] = load_vocab(locate(path, kind=ANY_KIND))
    if json:
        print_json({m: special_ids(v) for m, v in models.items()}, indent=2)
        return 0
    columns, rows = remap_table(models, bases)
    print_table("special tokens (computed from each tokenizer)", columns, rows)
    for m, v in models.items():
        print(f"{m}: {v.kind} {v.source} · {v.size} tokens · tokenizer adds BOS: {v.add_bos}")
    return 0


