"""`invoke run`: build the llama.cpp command from a plan, check it, run it, report tokens/s.

The command is `llama-completion` (one-shot, `-no-cnv`) with the planner's placement flags and
DeepSeek's recommended sampling (`--temp 0.6 --top-p 0.95 --min-p 0.01 --seed 3407`) unless
greedy sampling is asked for. It is printed in full so people can copy it. Everything that can be
checked before loading weights is: the model's shards, the plan's fit, `--ctx` against the model,
and every flag against the binary's own `--help`.
"""

from __future__ import annotations

import difflib
import json as _json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

from gguf import Keys

from lowbit import LowbitError, flag_number, procs
from lowbit.files.gguf_header import read_header, read_model
from lowbit.machine import vram_gib
from lowbit.models.catalog import locate
from lowbit.models.entries import R1_SAMPLING, sampling_flags
from lowbit.prompts.chat import build_prompt
from lowbit.run import plan as planner
from lowbit.run.rpc import RPC_WORKER_GONE, check_reachable, rpc_flags, worker_failure
from lowbit.toolchain.build import active_build
from lowbit.ui import console, print_table, step, warn

DEEPSEEK_SAMPLING = sampling_flags()
GREEDY_SAMPLING = ["--temp", "0", "--top-k", "1", "--seed", str(R1_SAMPLING["seed"])]
DEFAULT_PROMPT = "What is 1+1?"
R1_USER, R1_ASSISTANT = "<｜User｜>", "<｜Assistant｜>"

# common_perf_print:  eval time = 1234.56 ms / 31 runs ( 39.82 ms per token, 25.11 tokens per second)
_PERF_RE = re.compile(
    r"(?P<kind>prompt eval|eval) time\s*=\s*(?P<ms>[\d.]+) ms\s*/\s*(?P<n>\d+) (?:tokens|runs)"
    r".*?(?P<tps>[\d.]+|inf|nan) tokens per second"
)


@dataclass
class RunResult:
    """What one llama.cpp run did, parsed from its timing lines."""

    command: list[str]
    text: str
    prompt_tokens: int = 0
    prompt_tokens_per_s: float = 0.0
    gen_tokens: int = 0
    gen_tokens_per_s: float = 0.0
    seconds: float = 0.0
    plan: str = ""
    stderr_tail: str = ""
    log: str = ""  # llama.cpp's whole stderr (load and perf lines)
    extra: dict = field(default_factory=dict)

    @property
    def command_line(self) -> str:
        return shlex.join(self.command)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["command_line"] = self.command_line
        return d


def greedy_completion(model_file: str | Path, prompt: str = "Hello", n_predict: int = 16) -> str:
    """The text `llama-completion` writes for `prompt` with greedy sampling on 2 threads: deterministic,
    so two files holding the same model (shards and their merge) must give the same text."""

    cmd = [str(active_build().tool("llama-completion")), "-m", str(model_file), "-p", prompt,
           "-n", str(n_predict), *GREEDY_SAMPLING, "-no-cnv", "-t", "2", "--no-warmup"]
    proc = subprocess.run(cmd, capture_output=True, timeout=300, check=True)
    return proc.stdout.decode("utf-8", "replace")


def parse_timings(log: str) -> dict[str, float]:
    """Prompt and generation token counts and tokens/s from llama.cpp's perf lines."""
    out: dict[str, float] = {}
    for m in _PERF_RE.finditer(log):
        key = "prompt" if m["kind"] == "prompt eval" else "gen"
        tps = float(m["tps"]) if m["tps"] not in ("inf", "nan") else 0.0
        out[f"{key}_tokens"] = int(m["n"])
        out[f"{key}_tokens_per_s"] = tps
        out[f"{key}_ms"] = float(m["ms"])
    return out


@lru_cache(maxsize=8)
def known_flags(binary: str) -> frozenset[str]:
    """Every option spelling the binary's `--help` lists (e.g. -ngl, --n-gpu-layers, -no-cnv)."""
    out = subprocess.run([binary, "--help"], capture_output=True, text=True, errors="replace", timeout=60)
    flags: set[str] = set()
    for line in (out.stdout + out.stderr).splitlines():
        if line.startswith("-"):  # option lines; a flag named in a description is a real flag too
            flags.update(re.findall(r"(?<![\w-])(-{1,2}[A-Za-z][\w-]*)", line))
    return frozenset(flags)


def check_flags(binary: Path, args: list[str]) -> None:
    """Refuse flags the binary does not know, before anything loads (llama.cpp would stop later)."""
    known = known_flags(str(binary))
    unknown = [a for a in args if re.match(r"^--?[A-Za-z]", a) and a.split("=", 1)[0] not in known]
    if unknown:
        hints = [
            f"{u} (did you mean {', '.join(difflib.get_close_matches(u, known, n=2))}?)"
            if difflib.get_close_matches(u, known, n=2)
            else u
            for u in unknown
        ]
        raise LowbitError(f"{binary.name} does not accept: {'; '.join(hints)}. See `{binary.name} --help`.")


def parse_rpc(rpc: str | list | None) -> list[str]:
    """`--rpc host:port,...` for llama.cpp's RPC workers (ggml-rpc-server), validated like `invoke serve`'s."""
    return rpc_flags(rpc)


# Flags that place layers and tensors on devices: with RPC workers the planner's choice (made for this
# machine's GPUs) is replaced by llama.cpp's own fit over the workers' memory.
PLACEMENT_FLAGS = {"-ngl", "--gpu-layers", "--n-gpu-layers", "-ot", "--override-tensor", "-ncmoe", "--n-cpu-moe",
                   "-ts", "--tensor-split", "-sm", "--split-mode", "-mg", "--main-gpu"}
PLACEMENT_SWITCHES = {"-cmoe", "--cpu-moe"}


def rpc_placement(flags: list[str]) -> list[str]:
    """The planner's flags for a run over RPC workers: its placement dropped, every layer offered to the
    devices (`-ngl auto`: llama.cpp fits as many layers as the workers' reported memory holds, the rest
    stay on this machine). A planned `-ngl 0` on a CPU-only client would give the workers nothing."""
    return ["-ngl", "auto", *procs.drop_flags(flags, PLACEMENT_FLAGS, PLACEMENT_SWITCHES)]


def format_prompt(prompt: str, arch: str, raw: bool = False) -> str:
    """DeepSeek-R1's chat turn around a bare prompt (BOS is added by llama.cpp, so it is not written here)."""
    if raw or not arch.startswith("deepseek") or R1_USER in prompt:
        return prompt
    return f"{R1_USER}{prompt}{R1_ASSISTANT}"


def chat_prompt(model: Path, prompt: str, arch: str, raw: bool = False) -> str:
    """The prompt llama-completion gets: R1's turn for DeepSeek models, else the GGUF's own chat template
    (sandboxed, exactly one BOS) when it has one, else the text as is."""
    if raw or arch.startswith("deepseek") or R1_USER in prompt:
        return format_prompt(prompt, arch, raw)

    if not read_header(model).value(Keys.Tokenizer.CHAT_TEMPLATE):
        return prompt  # a base model (e.g. gemma3-270m): plain text to continue
    return build_prompt(model, [{"role": "user", "content": prompt}]).text


def build_command(
    model: Path,
    placement: list[str],
    prompt: str,
    n_predict: int = 256,
    greedy: bool = False,
    extra: str | list | None = None,
    rpc: str | list | None = None,
    binary: Path | None = None,
    ignore_eos: bool = False,
) -> list[str]:
    """The llama-completion command line for one plan (placement flags from `lowbit.run.plan`)."""
    if binary is None:
        binary = active_build().tool("llama-completion")
    extra_args = shlex.split(extra) if isinstance(extra, str) else list(extra or [])
    cmd = [
        str(binary),
        "-m",
        str(model),
        *placement,
        *parse_rpc(rpc),
        *(GREEDY_SAMPLING if greedy else DEEPSEEK_SAMPLING),
        "-n",
        str(n_predict),
        "-no-cnv",
        *(["--ignore-eos"] if ignore_eos else []),
        *extra_args,
        "-p",
        prompt,
    ]
    return cmd


def run_model(
    model: str,
    prompt: str = DEFAULT_PROMPT,
    plan: str = "auto",
    vram: list | None = None,
    ram: float | None = None,
    ctx: int | None = None,
    cache_type_k: str = "q4_0",
    n_predict: int = 256,
    greedy: bool = False,
    extra: str | None = None,
    rpc: str | None = None,
    threads: int | None = None,
    raw: bool = False,
    ignore_eos: bool = False,
    timeout: float | None = None,
    echo: bool = True,
) -> RunResult:
    """Plan, check and run `model` once; return the parsed result (the exact command included)."""

    # invoke hands untyped flags over as strings: type them here, once
    ctx = flag_number("ctx", ctx, int, 1)
    ram = flag_number("ram", ram, float, 0)
    threads = flag_number("threads", threads, int, 1)
    n_predict = int(n_predict)
    path = locate(model)
    meta = read_model(path)  # a missing shard or a cut file fails here
    vram_gb = [float(v) for v in vram] if vram else vram_gib()
    the_plan = planner.make_plan(meta, vram_gb, ram, ctx, cache_type_k, threads=threads)
    option = planner.choose(the_plan, plan)
    for w in the_plan.warnings:
        warn(w)
    build = active_build()
    workers = check_reachable(rpc)  # validated, and each must answer before anything loads
    placement = option.flags
    if workers and plan == "auto":
        placement = rpc_placement(option.flags)
    elif option.n_gpu_layers and build.backend == "cpu" and not workers:
        warn(
            f"this llama.cpp build is CPU-only: -ngl {option.n_gpu_layers} is ignored"
            " (GPU numbers need a GPU)"
        )
    binary = build.tool("llama-completion")
    cmd = build_command(
        Path(meta.shards[0]),
        placement,
        chat_prompt(Path(meta.shards[0]), prompt, meta.arch, raw),
        n_predict,
        greedy,
        extra,
        rpc,
        binary,
        ignore_eos,
    )
    check_flags(binary, cmd[1:-1])  # everything but the prompt text, which may start with a dash
    if echo:
        name = f"{option.name}, layers over RPC workers {rpc}" if placement is not option.flags else option.name
        step(f"plan {name}: {option.note or ''}".rstrip(": "))
        print(shlex.join(cmd), file=sys.stderr, flush=True)
    # On an abort (e.g. an RPC worker gone) ggml would attach gdb for a backtrace: slow, and noise.
    env = {**os.environ, "GGML_NO_BACKTRACE": os.environ.get("GGML_NO_BACKTRACE", "1")}
    t0 = time.monotonic()
    try:
        # bytes, decoded tolerantly: llama.cpp writes token pieces, which may split a UTF-8 character
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, env=env)
    except subprocess.TimeoutExpired as exc:
        raise LowbitError(
            f"llama-completion did not finish in {timeout:g} s; lower -n or check the plan"
        ) from exc
    seconds = time.monotonic() - t0
    stdout = proc.stdout.decode("utf-8", errors="replace")
    stderr = proc.stderr.decode("utf-8", errors="replace")
    log = stderr + stdout
    tail = "\n".join(line for line in stderr.strip().splitlines()[-15:] if not line.startswith("#"))
    if proc.returncode != 0:
        if workers and worker_failure(stderr, proc.returncode, workers):
            raise LowbitError(f"llama-completion stopped: {RPC_WORKER_GONE}.\n{tail}\ncommand: {shlex.join(cmd)}")
        raise LowbitError(
            f"llama-completion exited with {proc.returncode}:\n{tail}\ncommand: {shlex.join(cmd)}"
        )
    t = parse_timings(log)
    return RunResult(
        command=cmd,
        text=stdout,
        prompt_tokens=int(t.get("prompt_tokens", 0)),
        prompt_tokens_per_s=t.get("prompt_tokens_per_s", 0.0),
        gen_tokens=int(t.get("gen_tokens", 0)),
        gen_tokens_per_s=t.get("gen_tokens_per_s", 0.0),
        seconds=round(seconds, 3),
        plan=option.name,
        stderr_tail=tail,
        log=stderr,
    )


def run_command(
    model: str,
    prompt: str = DEFAULT_PROMPT,
    plan: str = "auto",
    vram: list | None = None,
    ram: float | None = None,
    ctx: int | None = None,
    cache_type_k: str = "q4_0",
    n_predict: int = 256,
    greedy: bool = False,
    extra: str | None = None,
    rpc: str | None = None,
    threads: int | None = None,
    raw: bool = False,
    json: bool = False,
) -> int:
    """`invoke run`: the generated text on stdout, then the command and the speeds."""

    r = run_model(
        model,
        prompt,
        plan,
        vram,
        ram,
        ctx,
        cache_type_k,
        n_predict,
        greedy,
        extra,
        rpc,
        threads,
        raw,
        echo=True,  # the command goes to stderr, so --json stdout stays clean
    )
    if json:
        sys.stdout.write(_json.dumps(r.to_dict(), indent=1) + "\n")
        return 0
    console.print(r.text.strip(), markup=False)
    print_table(
        f"plan {r.plan}",
        ["phase", "tokens", "tokens/s"],
        [
            ("prompt", r.prompt_tokens, f"{r.prompt_tokens_per_s:.2f}"),
            ("generation", r.gen_tokens, f"{r.gen_tokens_per_s:.2f}"),
        ],
    )
    console.print("command:", r.command_line, markup=False)
    return 0
