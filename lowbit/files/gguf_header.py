"""What a GGUF model is made of, read from the headers of every shard (never the tensor data).

gguf-py's `GGUFReader` memory-maps a file and parses only the header (metadata and tensor infos);
tensor data stays untouched on disk unless someone reads `ReaderTensor.data`, which this module never
does. So a 131 GB split set is summarised in seconds: bytes per layer split into attention, dense
FFN, shared experts and routed experts, plus embeddings and output, and the hyper-parameters the
planner needs (layer count, context length, KV head sizes, MLA, experts).
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, Keys

from lowbit import LowbitError
from lowbit.files.shard_set import SPLIT_COUNT, ShardSet, is_first_shard, shard_number

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
NUMERIC_ARRAYS = "numeric"  # read_header(path, arrays=NUMERIC_ARRAYS): numeric arrays only (cheap: one copy each)


@dataclass
class GGUFHeader:
    """A GGUF header: key/values (raw byte ranges, values, where each value sits), tensor infos.

    Why not gguf-py's GGUFReader: it builds numpy views for every element of every array, so a DeepSeek
    vocabulary (~130k tokens + merges) takes 5-15 s per file on a small machine, and it trusts every count
    in the file (an array declaring 2^60 items makes it allocate until memory runs out). This walks the same
    format (docs/gguf.md in ggml) with `struct`, checking every count and length against the bytes left in
    the file before anything is allocated, skipping array contents unless asked for; gguf-py still supplies
    the type tables, and tests check that both readers agree on well-formed files.
    """

    path: Path
    kv: dict[str, tuple[int, int, object]]  # key -> (start, end, value; None for a skipped array)
    tensors: list[HeaderTensor]
    alignment: int
    data_offset: int
    value_at: dict[str, tuple[int, int]] = field(default_factory=dict)  # key -> (value offset, GGUF value type)
    version: int = 3
    lengths: dict[str, int] = field(default_factory=dict)  # array key -> number of items (read or skipped)

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

    def item_type(self, key: str) -> int | None:
        """The GGUF type of the items of array `key` (None when `key` is not an array)."""
        offset, vtype = self.value_at[key]
        if vtype != _ARRAY:
            return None
        with open(self.path, "rb") as f:
            f.seek(offset)
            return _U32.unpack(f.read(_U32.size))[0]

    def tensor(self, name: str) -> HeaderTensor:
        """The tensor info named `name` (LowbitError if the file has none)."""
        found = next((t for t in self.tensors if t.name == name), None)
        if found is None:
            raise LowbitError(f"{self.path} has no tensor {name}")
        return found

    def data(self, tensor: HeaderTensor):
        """A tensor's bytes as a read-only uint8 memory map shaped (rows, bytes per row): what
        `gguf.quants.dequantize` takes. `read_header` checked that they lie inside the file."""
        import numpy as np  # numpy is only needed by the callers that read tensor data

        rows = 1
        for d in tensor.shape[1:]:
            rows *= int(d)
        return np.memmap(self.path, np.uint8, "r", tensor.data_offset, (rows, tensor.n_bytes // max(rows, 1)))


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
# The smallest encoding of one value of each type: a count is checked against `count * minimum` bytes left
# before anything is read or allocated.
_MIN_SIZE = {**{t: struct.calcsize(f) for t, f in _SCALARS.items()}, _STRING: 8, _ARRAY: 12}
MAX_DEPTH = 8  # arrays of arrays nested deeper than this are refused (real files nest at most twice)
MAX_ITEMS = 2_000_000  # strings and inner arrays materialised per header (real vocabularies: < 600k)
MAX_DIMS = 4  # GGML_MAX_DIMS: llama.cpp refuses tensors with more dimensions
_I64_MAX = 2**63 - 1


class GGUFFormatError(ValueError):
    """A header that breaks the format, at a byte offset."""

    def __init__(self, offset: int, message: str):
        super().__init__(message)
        self.offset = offset


class _Cursor:
    """Reads a header from a buffer, refusing any read past its end."""

    def __init__(self, buf, size: int):
        self.buf, self.size, self.pos = buf, size, 0

    def need(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise GGUFFormatError(
                self.pos, f"{what} needs {n} bytes but only {self.size - self.pos} are left (truncated or corrupt)"
            )

    def unpack(self, fmt: struct.Struct, what: str) -> tuple:
        self.need(fmt.size, what)
        values = fmt.unpack_from(self.buf, self.pos)
        self.pos += fmt.size
        return values

    def string(self, what: str) -> str:
        (n,) = self.unpack(_U64, f"{what} length")
        self.need(n, what)
        text = bytes(self.buf[self.pos : self.pos + n]).decode("utf-8", "replace")
        self.pos += n
        return text


_U32, _U64, _TYPE_COUNT = struct.Struct("<I"), struct.Struct("<Q"), struct.Struct("<IQ")


def read_header(path: Path | str, arrays: Collection[str] | str = ()) -> GGUFHeader:
    """Parse a GGUF file's header (little-endian GGUF v2/v3), bounded by the file.

    Arrays named in `arrays` (e.g. tokenizer.ggml.tokens), all of them with `arrays="all"`, or every numeric
    one with `arrays="numeric"` are read: string arrays as lists, numeric arrays as numpy arrays, arrays of
    arrays as lists; other arrays are skipped (value None) without decoding them. Every count and length is
    checked against the bytes left in the file before anything is allocated, nesting is capped, tensor data
    must lie inside the file. Any violation is a LowbitError naming the file and the byte offset."""
    path = Path(path)
    if arrays in (ALL_ARRAYS, NUMERIC_ARRAYS):
        keep: frozenset[str] | str = arrays
    else:
        keep = frozenset([arrays] if isinstance(arrays, str) else arrays)
    try:
        return _parse_header(path, keep)
    except GGUFFormatError as exc:
        raise LowbitError(
            f"{path} is not a readable GGUF file: {exc} at byte offset {exc.offset}; "
            "is it truncated, or something else than a GGUF model?"
        ) from None
    except (OSError, ValueError) as exc:  # mmap of an empty file, a folder, a permission problem
        raise LowbitError(f"{path} is not a readable GGUF file ({exc})") from None


def _parse_header(path: Path, keep: frozenset[str] | str) -> GGUFHeader:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 24:
            raise GGUFFormatError(0, f"the file has {size} bytes, fewer than a GGUF header's 24 (truncated)")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            cur = _Cursor(mm, size)
            if mm[:4] != b"GGUF":
                raise GGUFFormatError(0, f"bad magic {bytes(mm[:4])!r}: not a GGUF file")
            cur.pos = 4
            version, n_tensors, n_kv = cur.unpack(struct.Struct("<IQQ"), "header")
            if version not in (2, 3):
                raise GGUFFormatError(4, f"GGUF version {version} is not supported (2 and 3 are; a big-endian "
                                         "file shows a huge version)")  # fmt: skip
            items = 0

            def read_value(vtype: int, read: bool, numeric_only: bool, depth: int, what: str):
                nonlocal items
                if vtype in _SCALARS:
                    return cur.unpack(struct.Struct(_SCALARS[vtype]), what)[0]
                if vtype == _STRING:
                    return cur.string(what)
                if vtype != _ARRAY:
                    raise GGUFFormatError(cur.pos - 4, f"{what}: unknown GGUF value type {vtype}")
                if depth >= MAX_DEPTH:
                    raise GGUFFormatError(cur.pos, f"{what}: arrays nested deeper than {MAX_DEPTH}")
                at = cur.pos
                etype, count = cur.unpack(_TYPE_COUNT, f"{what} array header")
                if etype not in _MIN_SIZE:
                    raise GGUFFormatError(at, f"{what}: unknown GGUF array item type {etype}")
                if count > (cur.size - cur.pos) // _MIN_SIZE[etype]:
                    raise GGUFFormatError(
                        at, f"{what}: array declares {count} items, more than the {cur.size - cur.pos} bytes left "
                        "can hold (truncated or corrupt)")  # fmt: skip
                if etype in _SCALARS:
                    n_bytes = _MIN_SIZE[etype] * count
                    arr = np.frombuffer(mm, _SCALARS[etype], count, cur.pos).copy() if read else None
                    cur.pos += n_bytes
                    return arr
                if read and not (numeric_only and etype == _STRING):
                    items += count * (1 if etype == _STRING else 3)
                    if items > MAX_ITEMS:
                        raise GGUFFormatError(at, f"{what}: more than {MAX_ITEMS} strings/arrays in one header")
                    return [read_value(etype, True, numeric_only, depth + 1, what) for _ in range(count)]
                if etype == _STRING:  # skipped: follow the length prefixes, decode nothing
                    for _ in range(count):
                        (n,) = cur.unpack(_U64, f"{what} string length")
                        cur.need(n, what)
                        cur.pos += n
                else:
                    for _ in range(count):
                        read_value(etype, False, numeric_only, depth + 1, what)
                return None

            kv: dict[str, tuple[int, int, object]] = {}
            value_at: dict[str, tuple[int, int]] = {}
            lengths: dict[str, int] = {}
            if n_kv > (size - cur.pos) // 13:  # key length 8 + type 4 + the smallest value 1
                raise GGUFFormatError(16, f"the header declares {n_kv} keys, more than the file can hold")
            for i in range(n_kv):
                start = cur.pos
                key = cur.string(f"key #{i}")
                if key in kv:
                    raise GGUFFormatError(start, f"duplicate key {key!r}")
                (vtype,) = cur.unpack(_U32, f"type of {key}")
                value_at[key] = (cur.pos, vtype)
                if vtype == _ARRAY:
                    lengths[key] = _TYPE_COUNT.unpack_from(mm, cur.pos)[1] if cur.pos + 12 <= size else 0
                read = keep in (ALL_ARRAYS, NUMERIC_ARRAYS) or key in keep
                value = read_value(vtype, read, keep == NUMERIC_ARRAYS, 0, key)
                kv[key] = (start, cur.pos, value)
            alignment = kv[Keys.General.ALIGNMENT][2] if Keys.General.ALIGNMENT in kv else 32
            if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0 or (
                    alignment & (alignment - 1)):  # fmt: skip
                raise GGUFFormatError(value_at[Keys.General.ALIGNMENT][0],
                                      f"general.alignment = {alignment!r} is not a power of two")  # fmt: skip
            if n_tensors > (size - cur.pos) // 24:  # name length 8 + n_dims 4 + type 4 + offset 8
                raise GGUFFormatError(8, f"the header declares {n_tensors} tensors, more than the file can hold")
            infos = []
            names: set[str] = set()
            for i in range(n_tensors):
                info_offset = cur.pos
                name = cur.string(f"tensor #{i} name")
                if name in names:
                    raise GGUFFormatError(info_offset, f"duplicate tensor name {name!r}")
                names.add(name)
                (n_dims,) = cur.unpack(_U32, f"tensor {name} dimension count")
                if n_dims > MAX_DIMS:
                    raise GGUFFormatError(cur.pos - 4, f"tensor {name} has {n_dims} dimensions (at most {MAX_DIMS})")
                dims = cur.unpack(struct.Struct(f"<{n_dims}Q"), f"tensor {name} shape")
                ttype, offset = cur.unpack(_TYPE_COUNT, f"tensor {name} type and offset")
                infos.append((name, dims, ttype, offset, info_offset))
            data_offset = (cur.pos + alignment - 1) // alignment * alignment
    tensors = []
    for name, dims, ttype, offset, info_offset in infos:
        try:
            qtype = GGMLQuantizationType(ttype)
            block, type_size = GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise GGUFFormatError(info_offset, f"tensor {name} has unknown type {ttype}") from None
        n_elements = 1
        for d in dims:
            n_elements *= int(d)
            if n_elements > _I64_MAX:
                raise GGUFFormatError(info_offset, f"tensor {name}: shape {list(dims)} overflows")
        if dims and dims[0] % block:
            raise GGUFFormatError(info_offset, f"tensor {name}: row of {dims[0]} is not a whole number of "
                                               f"{qtype.name} blocks of {block}")  # fmt: skip
        n_bytes = n_elements // block * type_size
        if offset % alignment:
            raise GGUFFormatError(info_offset, f"tensor {name}: data offset {offset} is not aligned to {alignment}")
        if data_offset + offset + n_bytes > size:
            raise GGUFFormatError(
                info_offset, f"tensor {name}: its data ends at byte {data_offset + offset + n_bytes}, past the end "
                f"of the file ({size} bytes): truncated")  # fmt: skip
        tensors.append(HeaderTensor(name, qtype, tuple(int(d) for d in dims), n_bytes, data_offset + offset,
                                    info_offset))  # fmt: skip
    return GGUFHeader(path, kv, tensors, alignment, data_offset, value_at, version, lengths)


def shard_paths(path: str | os.PathLike) -> list[Path]:
    """All shards of the split set `path` belongs to (or `[path]`), checked complete.

    Any shard may be given; a missing part is an error naming it, before anything is loaded.
    """
    path = Path(path)
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        firsts = [p for p in ggufs if is_first_shard(p.name)]
        singles = [p for p in ggufs if shard_number(p.name) is None]
        candidates = firsts + singles
        if len(candidates) != 1:
            raise LowbitError(
                f"{path} holds {len(candidates)} GGUF models ({', '.join(p.name for p in candidates)}); "
                "pass the file (for a split set, its -00001-of-N shard)"
            )
        path = candidates[0]
    if not path.exists():
        raise LowbitError(f"{path} does not exist; fetch the model first or pass the path of its first shard")
    shard_set = ShardSet.of(path)
    if shard_set is None:
        return [path]
    missing = [p.name for p in shard_set.missing]
    if missing:
        raise LowbitError(
            f"split set {shard_set.prefix} is incomplete: missing {', '.join(missing)} in {path.parent}; "
            "fetch the missing shards (all parts are needed)"
        )
    return shard_set.parts


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
    headers = [read_header(p, arrays=NUMERIC_ARRAYS) for p in shards]
    first = headers[0]
    arch = first.value(Keys.General.ARCHITECTURE)
    arch = arch if isinstance(arch, str) and arch else "unknown"
    split_count = first.value(SPLIT_COUNT)
    if split_count is not None and split_count != len(shards):
        raise LowbitError(
            f"{shards[0]} says the split set has {split_count} shards, the file names say "
            f"{len(shards)}; fetch the set again"
        )

    def hp(key: str, default=0) -> int:  # key: a gguf.Keys template such as "{arch}.block_count"
        key = key.format(arch=arch)
        v = first.value(key)
        if v is None:
            return default
        if hasattr(v, "__len__"):  # per-layer arrays (e.g. head_count_kv): the planner uses the max
            v = max(v) if len(v) else default
        try:
            return int(v)
        except (TypeError, ValueError):
            raise LowbitError(f"{shards[0]}: metadata {key} = {v!r} is not a number") from None

    block_count = int(hp(Keys.LLM.BLOCK_COUNT))
    nextn = int(hp(Keys.LLM.NEXTN_PREDICT_LAYERS, 0))
    n_layers = block_count - nextn
    n_tensors = sum(len(h.tensors) for h in headers)
    if not 0 < n_layers <= n_tensors:  # every block has tensors: a larger count is a corrupt header
        raise LowbitError(
            f"{shards[0]}: `{Keys.LLM.BLOCK_COUNT.format(arch=arch)}` = {block_count} (minus {nextn} MTP blocks) "
            f"does not fit the {n_tensors} tensors in the file; is this a model GGUF?"
        )
    n_embd = int(hp(Keys.LLM.EMBEDDING_LENGTH))
    n_head = int(hp(Keys.Attention.HEAD_COUNT))
    n_head_kv = int(hp(Keys.Attention.HEAD_COUNT_KV, n_head) or n_head)
    head_dim = n_embd // n_head if n_head else 0
    key_length = int(hp(Keys.Attention.KEY_LENGTH, head_dim))
    value_length = int(hp(Keys.Attention.VALUE_LENGTH, head_dim))
    is_mla = arch.startswith("deepseek") and first.value(Keys.Attention.KEY_LENGTH_MLA.format(arch=arch)) is not None
    n_vocab = int(hp(Keys.LLM.VOCAB_SIZE, 0)) or first.lengths.get(Keys.Tokenizer.LIST, 0)

    layers = {i: LayerBytes(i) for i in range(n_layers)}
    embeddings = output = unused = 0
    types: dict[str, int] = {}
    for header in headers:
        for t in header.tensors:  # name, type, n_bytes from the header; tensor data is never touched
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
    return ModelMeta(
        name=Path(shards[0]).name,
        shards=list(shards),
        arch=arch,
        n_layers=n_layers,
        n_ctx_train=int(hp(Keys.LLM.CONTEXT_LENGTH, 0)),
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        key_length=key_length,
        value_length=value_length,
        is_mla=is_mla,
        n_expert=int(hp(Keys.LLM.EXPERT_COUNT, 0)),
        n_expert_used=int(hp(Keys.LLM.EXPERT_USED_COUNT, 0)),
        n_vocab=n_vocab,
        file_bytes=sum(os.path.getsize(p) for p in shards),
        embeddings=embeddings,
        output=output,
        layers=[layers[i] for i in range(n_layers)],
        unused=unused,
        tensor_types=types,
    )
