"""BitNet b1.58 2B4T on llama.cpp: replicas, conversion to TQ2_0/TQ1_0, reference check, perplexity.

2B4T differs from the 1bitLLM BitNet models mainline llama.cpp was written for: a squared-ReLU FFN
(`hidden_act: relu2`), `attn_sub_norm`/`ffn_sub_norm` tensor names, tied embeddings and the Llama 3 BPE
vocabulary. The kit's llama.cpp patch series (`patches/`) teaches the converter and the graph all
three; this module drives them and proves the result against transformers' `BitNetForCausalLM`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import dequantize

from lowbit import LowbitError, flag_number
from lowbit.bitnet import LOAD_FLAGS
from lowbit.bitnet import engine as bitnet_cpp
from lowbit.bitnet.checkpoint import check_checkpoint
from lowbit.bitnet.engine import generate, perplexity_tool
from lowbit.files.gguf_header import read_header
from lowbit.models.catalog import ANY_KIND, HF_KIND, locate, resolve_model
from lowbit.models.replicas import ONLINE_QUANT
from lowbit.procs import run_checked
from lowbit.toolchain import llama_tools
from lowbit.toolchain.build import active_build, llama_source, patched_source
from lowbit.ui import human_bytes, print_table, step

QUANTS = {"tq2_0": "TQ2_0", "tq1_0": "TQ1_0"}
# The BitLinear layers: ternary in 2B4T, everything else (embeddings, norms) stays higher precision.
TERNARY_KINDS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
PATCHES = ("0001-bitnet-2b4t-convert.patch", "0002-bitnet-relu2-ffn.patch")
# Thresholds of the reference check (see `reference_check` and docs/bitnet.md for why these).
MIN_CORRELATION = 0.95
MIN_TOP10_OVERLAP = 0.6
MAX_REL_ERROR = 0.35
ENGINES = ("llama.cpp", "bitnet.cpp")  # bitnet.cpp: optional, see lowbit.bitnet.engine


# ---------------------------------------------------------------------------------------------
# checks


def build_quant_types(build=None) -> set[str]:
    """Quant type names the build's llama-quantize accepts (parsed from its --help)."""

    build = build or active_build()
    proc = subprocess.run([str(build.tool("llama-quantize")), "--help"], capture_output=True, text=True,
                          errors="replace")
    return set(re.findall(r"^\s+\d+\s+or\s+(\w+)\s+:", proc.stdout + proc.stderr, flags=re.M))


def require_patched_build(build=None):
    """The active build, if it carries the BitNet patches (else the graph would run 2B4T with SiLU)."""

    build = build or active_build()
    missing = [p for p in PATCHES if p not in build.patches]
    if missing:
        raise LowbitError(
            f"the active llama.cpp build ({build.directory}) lacks {', '.join(missing)}: it would "
            "run BitNet 2B4T with a SiLU FFN. Rebuild with `invoke build-llama`."
        )
    return build


def verify_ternary(gguf_path: Path) -> dict[str, str]:
    """Check every BitLinear weight is TQ1_0/TQ2_0 with one scale per tensor; return name -> type."""
    import numpy as np
    from gguf.quants import dequantize

    header = read_header(gguf_path)
    types: dict[str, str] = {}
    bad = []
    for t in header.tensors:
        kind = t.name.split(".")[-2] if t.name.startswith("blk.") else ""
        if kind not in TERNARY_KINDS:
            continue
        types[t.name] = t.tensor_type.name
        if t.tensor_type not in (GGMLQuantizationType.TQ1_0, GGMLQuantizationType.TQ2_0):
            bad.append(f"{t.name} is {t.tensor_type.name}")
            continue
        rows = header.data(t)
        sample = rows[:: max(1, rows.shape[0] // 64)]  # a spread of rows keeps this fast on 2 B weights
        values = dequantize(sample, t.tensor_type)
        scales = np.unique(np.abs(values[values != 0]))
        if scales.size > 1 and (scales.max() - scales.min()) > 1e-3 * scales.max():
            bad.append(f"{t.name} has {scales.size} magnitudes (ternary needs one per tensor)")
    if not types:
        raise LowbitError(f"{gguf_path} has no BitLinear weights ({', '.join(TERNARY_KINDS)})")
    if bad:
        raise LowbitError(
            f"{gguf_path}: weights are not ternary after quantization:\n  - " + "\n  - ".join(bad[:8])
        )
    return types


# ---------------------------------------------------------------------------------------------
# conversion


def converter_script() -> Path:
    """convert_hf_to_gguf.py of the patched llama.cpp tree (the patch series teaches it 2B4T)."""

    return patched_source(*llama_source("sdist")) / "convert_hf_to_gguf.py"


def quant_type(quant: str) -> str:
    """The GGML type a `--quant` name (tq2_0, tq1_0) stands for; anything else is refused."""
    if quant.lower() not in QUANTS:
        raise LowbitError(f"unknown --quant {quant!r}; choose one of: {', '.join(QUANTS)}")
    return QUANTS[quant.lower()]


def convert(src: Path, quant: str = "tq2_0", out: Path | None = None, threads: int | None = None) -> Path:
    """Convert a 2B4T-layout HF checkpoint to TQ2_0/TQ1_0: written to a temporary name, verified, renamed."""
    from lowbit.toolchain.build import active_build

    qtype = quant_type(quant)
    src = Path(src)
    check_checkpoint(src)
    build = active_build()
    if qtype not in build_quant_types(build):
        raise LowbitError(
            f"the llama.cpp build at {build.bin_dir} has no {qtype} quantization; "
            "rebuild it with `invoke build-llama --force`"
        )
    out = Path(out) if out else src / f"ggml-model-{quant.lower()}.gguf"
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".bitnet-convert-", dir=out.parent))
    try:
        master = work / "model-bf16.gguf"
        step(f"converting {src.name} (ternarizing BitLinear weights) with the patched convert_hf_to_gguf.py")
        # the converter must use the patched tree's gguf-py (it knows the 2B4T tensor names)
        env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
        llama_tools.convert_hf_to_gguf(src, master, "bf16", script=converter_script(), env=env)
        step(f"quantizing to {qtype} with llama-quantize")
        tmp = work / out.name
        llama_tools.quantize(master, tmp, qtype, threads=threads or os.cpu_count() or 2, build=build)
        verify_ternary(tmp)
        act = read_header(tmp).value("bitnet.hidden_activation")
        if act != "relu2":
            raise LowbitError(
                f"the converted GGUF records hidden_activation={act!r}, not 'relu2': the converter "
                "lacks the BitNet patch (patches/0001-bitnet-2b4t-convert.patch)"
            )
        os.replace(tmp, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise LowbitError(f"unknown --engine {engine!r}; choose llama.cpp (default) or bitnet.cpp")
    return engine


def convert_command(
    src: str, quant: str | None = None, out: str | None = None, engine: str = "llama.cpp"
) -> int:
    """`invoke bitnet-convert SRC`: a catalog name, Hub repo id (fetched) or a checkpoint folder."""

    if check_engine(engine) == "bitnet.cpp":
        return bitnet_cpp.convert_command(src, out=out, quant=quant)
    quant_type(quant or "tq2_0")  # refused before the checkpoint is looked up (or a replica built)
    path = locate(src, kind=ANY_KIND, obtain=True)
    if not path.is_dir():
        raise LowbitError(f"{src!r} is not a checkpoint folder ({path}); bitnet-convert reads HF checkpoints")
    result = convert(path, quant=quant or "tq2_0", out=Path(out) if out else None)
    print(f"wrote {result} ({human_bytes(result.stat().st_size)})")
    return 0


# ---------------------------------------------------------------------------------------------
# correctness against transformers' BitNetForCausalLM


SAMPLE_TEXT = (
    "BitNet b1.58 stores every weight of its linear layers as minus one, zero or plus one, with one scale "
    "per "
    "matrix, and quantizes the activations to eight bits per token. The model was trained that way from the "
    "start on four trillion tokens, so nothing is lost when it runs with ternary weights. On a laptop CPU "
    "the "
    "matrix products become additions and subtractions, memory traffic drops by a factor of eight compared "
    "with sixteen-bit weights, and decoding speed is limited by how fast the cores can unpack two-bit codes. "
)


@dataclass
class CheckResult:
    """How closely llama.cpp's logits follow the reference over `positions` positions."""

    positions: int
    correlation: float  # mean over positions of Pearson r between the two logit vectors
    top1: float  # fraction of positions whose argmax agrees
    top10_overlap: float  # mean |top10(ref) ∩ top10(llama.cpp)| / 10
    rel_error: float  # median over positions of mean|Δlogit| / std(reference logits)
    activation: str  # the FFN activation llama.cpp ran

    @property
    def passed(self) -> bool:
        return (
            self.correlation >= MIN_CORRELATION
            and self.top10_overlap >= MIN_TOP10_OVERLAP
            and self.rel_error <= MAX_REL_ERROR
        )

    def as_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def sample_tokens(hf_dir: Path, n: int) -> list[int]:
    """`n` token ids of a fixed English text (BOS first), with the checkpoint's own tokenizer."""
    from transformers import AutoTokenizer  # heavy, optional (the `replicas` extra): imported on use

    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    ids = tok(SAMPLE_TEXT * (1 + n // 60))["input_ids"]
    if len(ids) < n:
        raise LowbitError(f"sample text gives only {len(ids)} tokens, {n} asked")
    return ids[:n]


def reference_logits(hf_dir: Path, tokens: list[int]):
    """Logits of transformers' BitNetForCausalLM, online BitNet quantization (ternary weights, int8 acts)."""
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # the quantizer's @torch.compile needs no compiler then
    import torch  # heavy, optional (the `replicas` extra): imported on use
    from transformers import BitNetForCausalLM  # heavy, optional (the `replicas` extra): imported on use

    cfg = json.loads((Path(hf_dir) / "config.json").read_text())
    if (cfg.get("quantization_config") or {}).get("quantization_mode") != "online":
        raise LowbitError(
            f"{hf_dir}/config.json has no online BitNet quantization_config {ONLINE_QUANT}: the "
            "reference would run full-precision weights that nothing ternary can match"
        )
    model = BitNetForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].float().numpy()


def llama_logits(gguf_path: Path, tokens: list[int], activation: str | None = None, threads: int = 2):
    """Logits of every position from the kit's llama.cpp (Python bindings on the active build).

    `activation` overrides the GGUF's `bitnet.hidden_activation` (e.g. "silu" to run mainline's graph).
    """

    llama_cpp = import_llama_cpp()
    overrides = {"bitnet.hidden_activation": activation} if activation else None
    llm = llama_cpp.Llama(
        model_path=str(gguf_path),
        n_ctx=len(tokens) + 8,
        n_batch=len(tokens) + 8,
        n_ubatch=len(tokens) + 8,
        logits_all=True,
        n_threads=threads,
        kv_overrides=overrides,
        verbose=False,
        seed=0,
    )
    try:
        llm.eval(tokens)
        return np.array(llm.scores[: len(tokens)], dtype=np.float32)
    finally:
        llm.close()


def import_llama_cpp():
    """llama_cpp bound to the active build's shared libraries."""

    os.environ.setdefault("LLAMA_CPP_LIB_PATH", str(active_build().bin_dir))
    import llama_cpp  # the bindings: installed by setup against the kit's build, loaded on use

    return llama_cpp


def compare_logits(ref, got, activation: str) -> CheckResult:
    """The check's measures; see CheckResult."""

    ref = ref.astype(np.float64)
    got = got.astype(np.float64)
    rc = ref - ref.mean(axis=1, keepdims=True)
    gc = got - got.mean(axis=1, keepdims=True)
    corr = (rc * gc).sum(1) / np.sqrt((rc * rc).sum(1) * (gc * gc).sum(1))
    top_ref = np.argsort(-ref, axis=1)[:, :10]
    top_got = np.argsort(-got, axis=1)[:, :10]
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top_ref, top_got, strict=True)])
    rel = np.median(np.abs(ref - got).mean(1) / ref.std(1))
    return CheckResult(
        positions=len(ref),
        correlation=float(corr.mean()),
        top1=float((top_ref[:, 0] == top_got[:, 0]).mean()),
        top10_overlap=float(overlap),
        rel_error=float(rel),
        activation=activation,
    )


def reference_check(
    hf_dir: Path, gguf_path: Path, positions: int = 256, activation: str | None = None, threads: int = 2
) -> CheckResult:
    """Compare llama.cpp's logits on `gguf_path` with the reference's on `hf_dir` over `positions` tokens."""
    tokens = sample_tokens(hf_dir, positions)
    ref = reference_logits(hf_dir, tokens)
    got = llama_logits(gguf_path, tokens, activation=activation, threads=threads)
    return compare_logits(ref, got, activation or "from GGUF (relu2)")


def check_command(
    model: str, gguf: str | None = None, positions: int = 256, activation: str | None = None
) -> int:
    """`invoke bitnet-check`: print the reference check's measures; exit 1 if it fails."""

    hf = resolve_model(model).path
    if hf is None or not Path(hf).is_dir():
        raise LowbitError(f"{model!r} has no local checkpoint folder to use as the reference")
    gguf_path = Path(gguf) if gguf else Path(hf) / "ggml-model-tq2_0.gguf"
    if not gguf_path.exists():
        gguf_path = convert(Path(hf), "tq2_0", gguf_path)
    if activation is None:
        require_patched_build()
    r = reference_check(Path(hf), gguf_path, positions=positions, activation=activation)
    print_table(
        "llama.cpp vs transformers BitNetForCausalLM (online quantization)",
        ["measure", "value", "needs"],
        [
            ["mean per-position correlation", f"{r.correlation:.4f}", f">= {MIN_CORRELATION}"],
            ["top-10 overlap", f"{r.top10_overlap:.3f}", f">= {MIN_TOP10_OVERLAP}"],
            ["median mean|Δlogit| / std", f"{r.rel_error:.3f}", f"<= {MAX_REL_ERROR}"],
            ["top-1 agreement", f"{r.top1:.3f}", "(reported)"],
        ],
    )
    print("PASS" if r.passed else "FAIL", f"({r.positions} positions, activation {r.activation})")
    return 0 if r.passed else 1


# ---------------------------------------------------------------------------------------------
# perplexity: the gate for a real download


def _require_files(*paths: Path) -> None:
    """A one-line error for the first of `paths` that is not a file, before any tool starts."""
    missing = next((p for p in paths if not Path(p).is_file()), None)
    if missing is not None:
        raise LowbitError(f"{missing} does not exist")


def perplexity(
    gguf_path: Path,
    text_file: Path,
    ctx: int = 512,
    chunks: int | None = None,
    threads: int | None = None,
    engine: str = "llama.cpp",
) -> float:
    """llama-perplexity's final estimate on `text_file` (real 2B4T on wikitext-2: ≈17 expected).

    `engine="bitnet.cpp"` runs bitnet.cpp's own llama-perplexity (built on first use) on an I2_S GGUF.
    """
    _require_files(gguf_path, text_file)
    own = check_engine(engine) != "bitnet.cpp"
    tool = active_build().tool("llama-perplexity") if own else perplexity_tool()
    cmd = [
        str(tool),
        "-m",
        str(gguf_path),
        "-f",
        str(text_file),
        "-c",
        str(ctx),
        "-t",
        str(threads or os.cpu_count() or 2),
        "-b",
        str(ctx),
    ]
    if chunks:
        cmd += ["--chunks", str(chunks)]
    if own:
        cmd += LOAD_FLAGS
    log = run_checked(cmd, "llama-perplexity")
    m = re.search(r"Final estimate: PPL = ([0-9.]+|nan|inf)", log)
    if not m:
        raise LowbitError(f"llama-perplexity printed no final estimate:\n{log[-1500:]}")
    return float(m.group(1))


def perplexity_command(
    gguf: str,
    text: str,
    ctx: int = 512,
    chunks: int | None = None,
    max_ppl: float | None = None,
    engine: str = "llama.cpp",
) -> int:
    """`invoke bitnet-perplexity`: print PPL; with --max-ppl, fail above it (real-model gate: ≈17)."""
    chunks, max_ppl = flag_number("chunks", chunks, int, 1), flag_number("max_ppl", max_ppl, float)
    ppl = perplexity(Path(gguf), Path(text), ctx=ctx, chunks=chunks, engine=engine)
    print(f"perplexity {ppl:.3f} on {text} (ctx {ctx}, {engine})")
    if max_ppl is not None and not ppl <= max_ppl:
        print(f"FAIL: above {max_ppl} — a SiLU graph or a broken conversion gives ~100 on wikitext-2")
        return 1
    return 0


def generate_command(
    gguf: str, prompt: str = "The capital of France is", n: int = 32, engine: str = "llama.cpp"
) -> int:
    """`invoke bitnet-generate`: greedy completion of `prompt` with the chosen engine's CLI."""
    _require_files(Path(gguf))
    if check_engine(engine) == "bitnet.cpp":
        print(generate(Path(gguf), prompt, n=n))
        return 0

    tool = active_build().tool("llama-completion")
    cmd = [str(tool), "-m", str(gguf), "-p", prompt, "-n", str(n), "--temp", "0", "-no-cnv",
           "-t", str(os.cpu_count() or 2), *LOAD_FLAGS]
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise LowbitError(f"llama-completion failed (exit {proc.returncode}):\n{proc.stderr[-2500:]}")
    print(proc.stdout)
    return 0


# ---------------------------------------------------------------------------------------------
# for the lesson


def gguf_for(model: str, quant: str = "tq2_0") -> Path:
    """The converted GGUF next to the checkpoint (converted on first use)."""
    hf = locate(model, kind=HF_KIND, obtain=True)
    out = hf / f"ggml-model-{quant.lower()}.gguf"
    return out if out.exists() else convert(hf, quant, out)


def ternary_view(gguf_path: Path, tensor: str = "blk.0.ffn_up.weight", rows: int = 4, cols: int = 12):
    """(codes in {-1,0,+1}, scale) of the top-left corner of one BitLinear weight."""
    import numpy as np

    header = read_header(gguf_path)
    t = header.tensor(tensor)
    values = dequantize(np.asarray(header.data(t)[:rows]), t.tensor_type)[:, :cols]
    scale = float(np.abs(values[values != 0]).max())
    return np.rint(values / scale).astype(int), scale
