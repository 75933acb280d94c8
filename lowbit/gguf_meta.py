"""What a GGUF model is made of, read from the headers of every shard (never the tensor data).

gguf-py's `GGUFReader` memory-maps a file and parses only the header (metadata and tensor infos);
tensor data stays untouched on disk unless someone reads `ReaderTensor.data`, which this module never
does. So a 131 GB split set is summarised in seconds: bytes per layer split into attention, dense
FFN, shared experts and routed experts, plus embeddings and output, and the hyper-parameters the
planner needs (layer count, context length, KV head sizes, MLA, experts).
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

from lowbit import LowbitError

SPLIT_RE = re.compile(r"^(?P<stem>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
BLOCK_RE = re.compile(r"^blk\.(?P<layer>\d+)\.(?P<rest>.+)$")

# Per-layer groups, in the order tables show them.
GROUPS = ("attention", "dense_ffn", "shared_experts", "routed_experts", "other")


@dataclass
class LayerBytes:
    """Bytes of one transformer block, by group (`other`: norms, router, MTP/nextn parts)."""

    index: int
    attention: int = 0
    dense_ffn: int = 0
    shared_experts: int = 0
    routed_experts: int = 0
    other: int = 0

    @property
    def total(self) -> int:
        return self.attention + self.dense_ffn + self.shared_experts + self.routed_experts + self.other

    @property
    def non_expert(self) -> int:
        """Everything but the routed experts (what stays on the GPU with experts on CPU)."""
        return self.total - self.routed_experts


@dataclass
class ModelMeta:
    """A model's layout as the planner needs it. Byte counts are exact tensor sizes from the headers."""

    name: str
    shards: list[str]
    arch: str
    n_layers: int  # transformer blocks llama.cpp runs (block_count minus MTP/nextn blocks)
    n_ctx_train: int
    n_embd: int
    n_head: int
    n_head_kv: int
    key_length: int  # per KV head, as stored in the cache
    value_length: int
    is_mla: bool  # deepseek2 with split attn_k_b/attn_v_b: the cache holds only the compressed K
    n_expert: int
    n_expert_used: int
    n_vocab: int
    file_bytes: int  # sum of shard file sizes
    embeddings: int  # token_embd (stays on CPU in llama.cpp; one row read per token)
    output: int  # output + output_norm (on GPU only when -ngl > n_layers)
    layers: list[LayerBytes] = field(default_factory=list)
    unused: int = 0  # blocks llama.cpp does not run by default (MTP/nextn)
    tensor_types: dict[str, int] = field(default_factory=dict)  # bytes per ggml type

    @property
    def tensor_bytes(self) -> int:
        return self.embeddings + self.output + sum(layer.total for layer in self.layers) + self.unused

    @property
    def is_moe(self) -> bool:
        return any(layer.routed_experts for layer in self.layers)

    def group_totals(self) -> dict[str, int]:
        return {g: sum(getattr(layer, g) for layer in self.layers) for g in GROUPS}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tensor_bytes"] = self.tensor_bytes
        d["group_totals"] = self.group_totals()
        return d


@dataclass
class HeaderTensor:
    name: str
    tensor_type: object  # gguf.GGMLQuantizationType
    shape: tuple[int, ...]  # GGUF order (ne0 first), as gguf-py reports it
    n_bytes: int
    data_offset: int  # absolute, in the file
    info_offset: int  # where its tensor-info record starts


ALL_ARRAYS = "all"  # read_header(path, arrays=ALL_ARRAYS): read every array


@dataclass
class GGUFHeader:
    """A GGUF header: key/values (raw byte ranges, values, where each value sits), tensor infos.

    Why not gguf-py's GGUFReader: it builds numpy views for every element of every array, so a DeepSeek
    vocabulary (~130k tokens + merges) takes 5-15 s per file on a small machine, and a verified merge reads
    several headers. This walks the same format (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md)
    with `struct`, skipping array contents unless asked for, in milliseconds; gguf-py still supplies the
    type tables, and tests check that both readers agree.
    """

    path: Path
    kv: dict[str, tuple[int, int, object]]  # key -> (start, end, value; None for a skipped array)
    tensors: list[HeaderTensor]
    alignment: int
    data_offset: int
    value_at: dict[str, tuple[int, int]] = field(default_factory=dict)  # key -> (value offset, GGUF value type)
    version: int = 3

    def value(self, key: str):
        item = self.kv.get(key)
        return None if item is None else item[2]

    def values(self) -> dict[str, object]:
        """key -> value for every key (skipped arrays as None)."""
        return {key: value for key, (_start, _end, value) in self.kv.items()}

    def raw(self, key: str) -> bytes:
        start, end, _ = self.kv[key]
        with open(self.path, "rb") as f:
            f.seek(start)
            return f.read(end - start)


# GGUF value types (gguf-py's GGUFValueType) of fixed size: struct format, also a numpy dtype.
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9


def read_header(path: Path | str, arrays: Collection[str] | str = ()) -> GGUFHeader:
    """Parse a GGUF file's header (little-endian GGUF v2/v3).

    Arrays named in `arrays` (e.g. tokenizer.ggml.tokens), or all of them with `arrays="all"`, are read:
    string arrays as lists, numeric arrays as numpy arrays, arrays of arrays as lists; other arrays are
    skipped (value None) without decoding them. Unreadable files raise LowbitError."""
    import struct

    path = Path(path)
    keep = ALL_ARRAYS if arrays == ALL_ARRAYS else frozenset([arrays] if isinstance(arrays, str) else arrays)
    try:
        return _parse_header(path, keep)
    except (struct.error, ValueError, OverflowError, UnicodeError, IndexError) as exc:
        raise LowbitError(f"{path} is not a readable GGUF file ({exc}); is it truncated or something else?") from exc


def _parse_header(path: Path, keep: frozenset[str] | str) -> GGUFHeader:
    import mmap
    import struct

    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    length = struct.Struct("<Q").unpack_from
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        if mm[:4] != b"GGUF":
            raise ValueError("bad magic: not a GGUF file")
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", mm, 4)
        if version < 2:
            raise ValueError(f"GGUF version {version} is not supported")
        file_size = len(mm)
        pos = 24

        def string() -> str:
            nonlocal pos
            (n,) = length(mm, pos)
            end = pos + 8 + n
            if end > file_size:
                raise ValueError("truncated string")
            text = mm[pos + 8 : end].decode("utf-8", "replace")
            pos = end
            return text

        def read_value(vtype: int, read_arrays: bool):
            nonlocal pos
            if vtype in _SCALARS:
                fmt = _SCALARS[vtype]
                (v,) = struct.unpack_from(fmt, mm, pos)
                pos += struct.calcsize(fmt)
                return v
            if vtype == _STRING:
                return string()
            if vtype == _ARRAY:
                etype, count = struct.unpack_from("<IQ", mm, pos)
                pos += 12
                if etype in _SCALARS:
                    end = pos + struct.calcsize(_SCALARS[etype]) * count
                    if end > file_size:
                        raise ValueError("truncated array")
                    arr = np.frombuffer(mm, _SCALARS[etype], count, pos).copy() if read_arrays else None
                    pos = end
                    return arr
                if read_arrays:
                    return [read_value(etype, True) for _ in range(count)]
                if etype == _STRING:  # skipped: follow the length prefixes, decode nothing
                    for _ in range(count):
                        pos += 8 + length(mm, pos)[0]
                    if pos > file_size:
                        raise ValueError("truncated array")
                else:
                    for _ in range(count):
                        read_value(etype, False)
                return None
            raise ValueError(f"unknown GGUF value type {vtype}")

        kv: dict[str, tuple[int, int, object]] = {}
        value_at: dict[str, tuple[int, int]] = {}
        for _ in range(n_kv):
            start = pos
            key = string()
            (vtype,) = struct.unpack_from("<I", mm, pos)
            pos += 4
            value_at[key] = (pos, vtype)
            value = read_value(vtype, keep == ALL_ARRAYS or key in keep)
            kv[key] = (start, pos, value)
        alignment = int(kv["general.alignment"][2]) if "general.alignment" in kv else 32
        infos = []
        for _ in range(n_tensors):
            info_offset = pos
            name = string()
            (n_dims,) = struct.unpack_from("<I", mm, pos)
            dims = struct.unpack_from(f"<{n_dims}Q", mm, pos + 4)
            ttype, offset = struct.unpack_from("<IQ", mm, pos + 4 + 8 * n_dims)
            pos += 4 + 8 * n_dims + 12
            infos.append((name, dims, ttype, offset, info_offset))
        data_offset = (pos + alignment - 1) // alignment * alignment
    tensors = []
    for name, dims, ttype, offset, info_offset in infos:
        qtype = GGMLQuantizationType(ttype)
        block, size = GGML_QUANT_SIZES[qtype]
        n_elements = 1
        for d in dims:
            n_elements *= int(d)
        tensors.append(HeaderTensor(name, qtype, tuple(int(d) for d in dims), n_elements // block * size,
                                    data_offset + offset, info_offset))  # fmt: skip
    return GGUFHeader(path, kv, tensors, alignment, data_offset, value_at, version)


def shard_paths(path: str | os.PathLike) -> list[Path]:
    """All shards of the split set `path` belongs to (or `[path]`), checked complete.

    Any shard may be given; a missing part is an error naming it, before anything is loaded.
    """
    path = Path(path)
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        firsts = [p for p in ggufs if (m := SPLIT_RE.match(p.name)) and int(m["no"]) == 1]
        singles = [p for p in ggufs if not SPLIT_RE.match(p.name)]
        candidates = firsts + singles
        if len(candidates) != 1:
            raise LowbitError(
                f"{path} holds {len(candidates)} GGUF models ({', '.join(p.name for p in candidates)}); "
                "pass the file (for a split set, its -00001-of-N shard)"
            )
        path = candidates[0]
    if not path.exists():
        raise LowbitError(f"{path} does not exist; fetch the model first or pass the path of its first shard")
    m = SPLIT_RE.match(path.name)
    if not m:
        return [path]
    count = int(m["count"])
    shards = [path.with_name(f"{m['stem']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]
    missing = [p.name for p in shards if not p.exists()]
    if missing:
        raise LowbitError(
            f"split set {m['stem']} is incomplete: missing {', '.join(missing)} in {path.parent}; "
            "fetch the missing shards (all parts are needed)"
        )
    return shards


def _field(reader, key: str, default=None):
    f = reader.get_field(key)
    if f is None:
        return default
    value = f.contents()
    return value


LONG_ARRAY = 4096  # arrays longer than this (tokenizer vocab, merges, scores) are skimmed, not itemised


def _reader_class():
    """gguf-py's GGUFReader, minus its per-item parsing of long metadata arrays.

    GGUFReader builds numpy views for every element of every array; R1's tokenizer (129k tokens, 127k
    merges, scores, types) then takes ~14 s on a busy 2-core machine, for metadata the planner never
    reads. This subclass keeps GGUFReader's parsing for everything else and reads a long numeric array
    as one view, and a long string array by walking its length prefixes (its size is all we need).
    """
    import struct

    import numpy as np
    from gguf import GGUFReader, GGUFValueType

    class HeaderReader(GGUFReader):
        def _get_field_parts(self, orig_offs, raw_type):
            if GGUFValueType(raw_type) != GGUFValueType.ARRAY:
                return super()._get_field_parts(orig_offs, raw_type)
            raw_itype = self._get(orig_offs, np.uint32)
            alen = self._get(orig_offs + 4, np.uint64)
            n, itype, offs = int(alen[0]), GGUFValueType(raw_itype[0]), orig_offs + 12
            if n <= LONG_ARRAY or itype == GGUFValueType.ARRAY:
                return super()._get_field_parts(orig_offs, raw_type)
            types = [GGUFValueType.ARRAY, itype]
            if itype == GGUFValueType.STRING:
                mv, fmt, end = memoryview(self.data), ("<Q" if self.byte_order == "I" else ">Q"), offs
                for _ in range(n):
                    end += 8 + struct.unpack_from(fmt, mv, end)[0]
                return end - orig_offs, [raw_itype, alen, self._get(offs, np.uint8, end - offs)], [], types
            arr = self._get(offs, self.gguf_scalar_to_np[itype], n)
            return 12 + int(arr.nbytes), [raw_itype, alen, arr], [2], types

    return HeaderReader


def array_length(reader, key: str) -> int:
    """Number of items of a metadata array (also for arrays the header reader skimmed)."""
    f = reader.get_field(key)
    return int(f.parts[4][0]) if f is not None and len(f.parts) > 4 else 0


def _reader(path: Path):
    try:
        return _reader_class()(path, "r")
    except (ValueError, OSError, IndexError, KeyError, TypeError) as exc:  # gguf-py raises these on cut files
        raise LowbitError(
            f"{path} is not a readable GGUF ({exc}); it may be truncated — fetch it again"
        ) from exc


def classify(rest: str) -> str:
    """The group of a block tensor from its name after `blk.N.` (llama.cpp's naming)."""
    if rest.startswith("nextn.") or ".nextn." in rest:
        return "other"
    if rest.startswith("attn_"):
        return "attention"
    if rest.startswith("ffn_"):
        base = rest.split(".", 1)[0]
        if base.endswith("exps"):  # ffn_{gate,up,down,gate_up}_exps, _chexps
            return "routed_experts"
        if base.endswith("shexp"):
            return "shared_experts"
        if base in ("ffn_gate", "ffn_up", "ffn_down", "ffn_gate_up"):
            return "dense_ffn"
    return "other"  # norms, router (ffn_gate_inp), exp_probs_b, ...


@lru_cache(maxsize=32)
def _read_cached(key: tuple) -> ModelMeta:
    return _read(key[0])


def read_model(path: str | os.PathLike) -> ModelMeta:
    """Layout of the model at `path` (a file, any shard of a split set, or a folder holding one model)."""
    shards = shard_paths(path)
    key = (tuple(str(p) for p in shards), tuple((p.stat().st_size, p.stat().st_mtime_ns) for p in shards))
    return _read_cached(key)


def _read(shards: tuple[str, ...]) -> ModelMeta:
    first = _reader(Path(shards[0]))
    arch = str(_field(first, "general.architecture", "")) or "unknown"
    split_count = _field(first, "split.count")
    if split_count is not None and int(split_count) != len(shards):
        raise LowbitError(
            f"{shards[0]} says the split set has {split_count} shards, the file names say "
            f"{len(shards)}; fetch the set again"
        )

    def hp(key: str, default=0):
        v = _field(first, f"{arch}.{key}", default)
        if isinstance(v, list):  # per-layer arrays (e.g. head_count_kv): the planner uses the max
            v = max(v) if v else default
        return v

    block_count = int(hp("block_count"))
    nextn = int(hp("nextn_predict_layers", 0))
    n_layers = block_count - nextn
    n_embd = int(hp("embedding_length"))
    n_head = int(hp("attention.head_count"))
    n_head_kv = int(hp("attention.head_count_kv", n_head) or n_head)
    head_dim = n_embd // n_head if n_head else 0
    key_length = int(hp("attention.key_length", head_dim))
    value_length = int(hp("attention.value_length", head_dim))
    is_mla = arch.startswith("deepseek") and _field(first, f"{arch}.attention.key_length_mla") is not None
    n_vocab = int(hp("vocab_size", 0)) or array_length(first, "tokenizer.ggml.tokens")

    layers = {i: LayerBytes(i) for i in range(n_layers)}
    embeddings = output = unused = 0
    types: dict[str, int] = {}
    readers = [first] + [_reader(Path(p)) for p in shards[1:]]
    for reader in readers:
        for t in reader.tensors:  # ReaderTensor: name, type, n_bytes from the header; .data is never touched
            n = int(t.n_bytes)
            types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + n
            m = BLOCK_RE.match(t.name)
            if m:
                i = int(m["layer"])
                if i >= n_layers:
                    unused += n
                    continue
                layer = layers[i]
                group = classify(m["rest"])
                setattr(layer, group, getattr(layer, group) + n)
            elif t.name.startswith("token_embd"):
                embeddings += n
            elif t.name.startswith("output"):
                output += n
            else:
                unused += n
    if n_layers <= 0:
        raise LowbitError(f"{shards[0]}: no `{arch}.block_count` in the metadata; is this a model GGUF?")
    return ModelMeta(
        name=Path(shards[0]).name,
        shards=list(shards),
        arch=arch,
        n_layers=n_layers,
        n_ctx_train=int(hp("context_length", 0)),
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        key_length=key_length,
        value_length=value_length,
        is_mla=is_mla,
        n_expert=int(hp("expert_count", 0)),
        n_expert_used=int(hp("expert_used_count", 0)),
        n_vocab=n_vocab,
        file_bytes=sum(os.path.getsize(p) for p in shards),
        embeddings=embeddings,
        output=output,
        layers=[layers[i] for i in range(n_layers)],
        unused=unused,
        tensor_types=types,
    )
