"""Serve a model to a room with llama.cpp's own `llama-server` (OpenAI-compatible API), done safely.

`invoke serve` starts llama-server from the active build with the model's own chat template
(`--jinja`), `--reasoning-format deepseek` (the `<think>` part comes back separately as
`message.reasoning_content`, the answer as `message.content`), DeepSeek's recommended sampling as
server defaults (requests may override them), the planner's offload flags, and optional RPC workers.
It waits for `/health`, prints the URL with copy-paste examples, and stops the server on Ctrl-C.

Safety: anything but loopback needs a strong API key (at least 16 characters); without one `invoke serve`
generates a key and prints it (`--insecure` serves without, loudly). The key reaches llama-server through
its environment, never a command line (which every local user can read in `ps`): tasks.py hands it to the
kit process in the environment too. Requests without `max_tokens` stop at `--max-tokens` (1024), not at
the end of the context.
Without a key, cross-origin browser requests are limited to localhost pages (`--cors-origins localhost`).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from gguf import Keys

from lowbit import LowbitError, procs
from lowbit.files.gguf_header import read_header
from lowbit.files.shard_set import model_stem
from lowbit.models.catalog import locate, resolve_model
from lowbit.models.entries import sampling_flags
from lowbit.paths import runs_dir
from lowbit.run.plan import flags_for
from lowbit.run.rpc import RPC_WORKER_GONE, check_reachable, parse_rpc, rpc_flags, worker_failure
from lowbit.toolchain.build import active_build
from lowbit.ui import console, step, warn

# DeepSeek's recommendation for R1 (docs/facts.md); llama-server applies them to every request that
# does not set its own values.
RECOMMENDED_SAMPLING = sampling_flags()
RECOMMENDED_CACHE = ["--cache-type-k", "q4_0"]
# MLA models (deepseek2: R1, V3) keep one compressed latent for K and V; llama.cpp 0c1e5709 refuses
# different K and V types for them ("model does not support different K (q4_0) and V (f16) cache
# types"), and a quantized V needs flash attention, which llama.cpp's default `-fa auto` turns on.
RECOMMENDED_CACHE_MLA = ["--cache-type-k", "q4_0", "--cache-type-v", "q4_0"]
# `deepseek`: thoughts go to message.reasoning_content (delta.reasoning_content when streaming).
REASONING_FORMAT = "deepseek"
API_KEY_ENV = "LOWBIT_API_KEY"
LLAMA_API_KEY_ENV = "LLAMA_API_KEY"  # llama-server's own variable: accepted too, so llama.cpp habits carry over


def default_api_key() -> str | None:
    """The key from the environment: LOWBIT_API_KEY, else llama-server's LLAMA_API_KEY."""
    return os.environ.get(API_KEY_ENV) or os.environ.get(LLAMA_API_KEY_ENV) or None


# Shorter keys can be guessed; secrets.token_urlsafe(24) gives 32 characters (192 bits).
MIN_KEY_CHARS = 16
# llama-server's default for a request without max_tokens is -1: generate until the context is full (an
# empty `messages: []` then runs for minutes). This is the server-wide default; a request may still ask for
# more with its own max_tokens (up to its context), and `invoke serve --max-tokens N` raises the default.
DEFAULT_MAX_TOKENS = 1024


@dataclass
class LlamaServer(procs.Child):
    """A running llama-server started by lowbit. Use as a context manager, or call stop()."""

    proc: subprocess.Popen | None
    host: str
    port: int
    log_path: Path
    model_name: str
    api_key: str | None = None
    command: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        host = procs.connect_host(self.host)
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL (`.../v1`)."""
        return self.url + "/v1"

    def health(self, timeout: float = 2.0) -> int | None:
        """HTTP status of GET /health (200 ready, 503 loading), or None if nothing answers."""
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=timeout) as r:
                return r.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except (OSError, ValueError):
            return None

    def check(self) -> None:
        """Raise a LowbitError that says why, if the server has exited."""
        if self.proc.poll() is not None:
            raise LowbitError(explain_exit(self.proc.returncode, self.log_path))

    def client(self, **kwargs):
        """An `openai.OpenAI` client for this server (no retries: a failure shows at once)."""
        from openai import OpenAI  # slow to import (pydantic models); only the API clients need it

        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", 120.0)
        return OpenAI(base_url=self.base_url, api_key=self.api_key or "no-key", **kwargs)


# ---------------------------------------------------------------------------------------------
# policy and flags


def check_host(host: str, api_key: str | None, insecure: bool) -> str | None:
    """Refuse a non-loopback bind without an API key unless `insecure`; return a warning to show, if any."""
    if "," in host or not host.strip():
        raise LowbitError(f"--host {host!r}: give one address (127.0.0.1 for this machine, 0.0.0.0 for all "
                          "interfaces)")
    if procs.is_loopback(host):
        return None
    if api_key and len(api_key) < MIN_KEY_CHARS:
        raise LowbitError(
            f"refusing to listen on {host} with an API key of {len(api_key)} characters: anyone on the network "
            f"could guess it. Use at least {MIN_KEY_CHARS} random characters, e.g. "
            "`python -c \"import secrets; print(secrets.token_urlsafe(24))\"`, or leave the key out and "
            "`invoke serve` generates one and prints it.")
    if api_key:
        return (f"listening on {host}: reachable from the network. Requests need the API key, but traffic is "
                "plain HTTP (the key and chats travel unencrypted): use a trusted network or a TLS proxy.")
    if not insecure:
        raise LowbitError(
            f"refusing to listen on {host} without an API key: anyone who can reach this machine could use "
            f"the model and this machine's CPU/GPU time, unseen. Pass --api-key KEY (or set "
            f"{API_KEY_ENV} or {LLAMA_API_KEY_ENV}) and share it with your attendees; keep --host 127.0.0.1 for this "
            "machine only; or add --insecure if this network is truly private.")
    return (f"INSECURE: listening on {host} with NO API key (--insecure). Anyone who can reach this machine "
            f"on that port can use the server. Stop it with Ctrl-C when the session ends.")


def plan_flags(plan: str | None, model_path: Path, ctx_total: int, rpc: str | None = None) -> list[str]:
    """Placement flags from the offload planner (`lowbit.run.plan.flags_for`) for `ctx_total` KV tokens.

    The planner models this machine's GPUs and RAM, not RPC workers: with `--rpc`, `auto` leaves
    placement to llama.cpp (it fills the workers by their free memory), since a planned `-ngl 0` on a
    CPU-only client would keep every layer off the workers. An explicit choice is passed through.
    """
    if plan in (None, "", "none") or (plan == "auto" and parse_rpc(rpc)):
        return []
    return [str(f) for f in flags_for(plan, str(model_path), ctx=ctx_total)]


def uses_mla(model_path: Path) -> bool:
    """True if the GGUF's attention is MLA (it has `<arch>.attention.kv_lora_rank`), from its header."""

    try:
        header = read_header(model_path)
    except (OSError, LowbitError):
        return False  # unreadable: llama-server's own load error will say what is wrong
    arch = header.value(Keys.General.ARCHITECTURE)
    return isinstance(arch, str) and f"{arch}.attention.kv_lora_rank" in header.kv


def cache_flags(model_path: Path) -> list[str]:
    """The recommended 4-bit KV cache flags for this model's attention."""
    return RECOMMENDED_CACHE_MLA if uses_mla(model_path) else RECOMMENDED_CACHE


def server_command(model_path: Path, host: str, port: int, alias: str, parallel: int = 4, ctx: int = 4096,
                   extra: list[str] | None = None, rpc: str | None = None,
                   placement: list[str] | None = None, max_tokens: int = DEFAULT_MAX_TOKENS) -> list[str]:
    """The llama-server command line (without the API key, which goes through the environment).

    Order matters (llama.cpp keeps the last value of a repeated flag): the planner's `placement`
    first, then lowbit's own context, sampling and cache flags, then `extra` (the caller's last word).
    """

    if parallel < 1:
        raise LowbitError(f"--parallel must be at least 1 (got {parallel})")
    if ctx < 256:
        raise LowbitError(f"--ctx {ctx} is too small for a chat; use at least 256 tokens per request")
    if max_tokens < 1:
        raise LowbitError(f"--max-tokens must be at least 1 (got {max_tokens})")
    cmd = [str(active_build().tool("llama-server")), "--model", str(model_path), "--host", host,
           "--port", str(port), "--alias", alias, "--jinja", "--reasoning-format", REASONING_FORMAT,
           *procs.drop_flags(placement or [], OWN_VALUE_FLAGS),
           "--parallel", str(parallel),
           # --ctx is per request: the server divides its context among the slots.
           "--ctx-size", str(ctx * parallel),
           # the default for requests without max_tokens (llama-server's own is: until the context is full)
           "--n-predict", str(max_tokens),
           *RECOMMENDED_SAMPLING, *cache_flags(model_path)]
    return cmd + list(extra or []) + rpc_flags(rpc)


# Flags lowbit sets itself; dropped (with their values) from the planner's list so each appears once.
OWN_VALUE_FLAGS = {"--ctx-size", "-c", "--cache-type-k", "-ctk", "--cache-type-v", "-ctv", "--parallel",
                   "-np", "--n-predict", "-n", "--predict"}




def explain_exit(code: int | None, log_path: Path) -> str:
    """Why llama-server stopped, in words, from its exit status and log."""
    tail = procs.log_tail(log_path)
    log = log_path.read_text(errors="replace") if log_path.exists() else ""
    if "couldn't bind" in log:
        reason = "it could not listen on the port (in use by another program?); pick another with --port"
    elif "exiting due to model loading error" in log or "failed to load model" in log:
        reason = ("the model failed to load (not a GGUF llama.cpp can read, truncated, or too large for "
                  "memory)")
    elif worker_failure(log):
        reason = RPC_WORKER_GONE
    elif code is not None and code < 0:
        reason = f"it was killed by signal {-code}" + (" (out of memory?)" if -code == signal.SIGKILL else "")
    else:
        reason = f"it exited with status {code}"
    return f"llama-server stopped: {reason}. Last lines of {log_path}:\n{tail}"


# ---------------------------------------------------------------------------------------------
# start


def start_server(model: str, host: str = "127.0.0.1", port: int | None = 8080, api_key: str | None = None,
                 parallel: int = 4, ctx: int = 4096, plan: str | None = "auto", rpc: str | None = None,
                 insecure: bool = False, extra: list[str] | None = None, timeout: float = 600.0,
                 log_dir: Path | None = None, on_wait=None, max_tokens: int = DEFAULT_MAX_TOKENS) -> LlamaServer:
    """Start llama-server for `model` and return once /health says ready (port None: a free one).

    Raises LowbitError (and leaves no process behind) when the host policy refuses, the port is taken,
    a worker is unreachable, or the model fails to load.
    """

    api_key = api_key or default_api_key()
    check_host(host, api_key, insecure)
    resolved = resolve_model(model)
    path = locate(model)  # the GGUF (a folder: its first shard); not on disk: the command that puts it there
    bind_probe = host if procs.is_loopback(host) or host in ("0.0.0.0", "::") else "0.0.0.0"
    if port is None:
        port = procs.free_port("127.0.0.1" if procs.is_loopback(host) else "0.0.0.0")
    elif procs.port_in_use(bind_probe, port):
        raise LowbitError(f"port {port} on {host} is already in use (another server?); stop it, or pick "
                          "another port with --port")
    check_reachable(rpc)
    alias = resolved.entry["name"].removesuffix(".gguf") if resolved.entry else model_stem(path.name)
    cmd = server_command(path, host, port, alias, parallel, ctx, extra, rpc,
                         placement=plan_flags(plan, path, ctx * parallel, rpc), max_tokens=max_tokens)
    env = procs.env_without(["LLAMA_ARG_", "LLAMA_API_KEY"])
    # On an abort (e.g. an RPC worker gone) ggml would attach gdb for a backtrace: slow, and noise in the log.
    env.setdefault("GGML_NO_BACKTRACE", "1")
    if api_key:
        env["LLAMA_API_KEY"] = api_key
    else:
        cmd += ["--cors-origins", "localhost"]

    log_dir = Path(log_dir) if log_dir else runs_dir() / "serve"
    log_path = log_dir / f"llama-server-{port}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    server = LlamaServer(None, host, port, log_path, alias, api_key, cmd)
    started = time.monotonic()

    def ready() -> bool:
        if on_wait is not None:
            on_wait(time.monotonic() - started)
        return server.health() == 200

    server.launch(cmd, log_path, ready, timeout, "llama-server", env=env, interval=0.25, explain=explain_exit)
    return server


# ---------------------------------------------------------------------------------------------
# the task


def examples(server: LlamaServer, public_host: str | None = None) -> str:
    """Copy-paste examples (curl and the OpenAI Python client) for this server."""
    base = server.base_url if public_host is None else f"http://{public_host}:{server.port}/v1"
    auth_curl = f' \\\n  -H "Authorization: Bearer ${API_KEY_ENV}"' if server.api_key else ""
    key_py = f'os.environ["{API_KEY_ENV}"]' if server.api_key else '"no-key"'
    question = "Why is the sky blue?"
    body = json.dumps({"model": server.model_name, "messages": [{"role": "user", "content": question}]})
    lines = [
        "curl:",
        f"  curl {base}/chat/completions \\\n  -H \"Content-Type: application/json\"{auth_curl} \\\n"
        f"  -d '{body}'",
        "",
        "OpenAI SDK tools (openai, LangChain, LlamaIndex, ...) read these:",
        f"  export OPENAI_BASE_URL={base}",
        f"  export OPENAI_API_KEY={'$' + API_KEY_ENV if server.api_key else 'no-key'}",
        "",
        "OpenAI Python client (pip install openai):",
        "  import os",
        "  from openai import OpenAI",
        f'  client = OpenAI(base_url="{base}", api_key={key_py})',
        f'  r = client.chat.completions.create(model="{server.model_name}",',
        f'                                     messages=[{{"role": "user", "content": "{question}"}}])',
        '  print("thinking:", getattr(r.choices[0].message, "reasoning_content", None))',
        '  print("answer:  ", r.choices[0].message.content)',
    ]
    if server.api_key:
        lines[:0] = [f"export {API_KEY_ENV}=<the server's key (--api-key, {API_KEY_ENV} or {LLAMA_API_KEY_ENV})>   "
                     "# share it with attendees", ""]
    return "\n".join(lines)


def read_key_file(path: str | os.PathLike) -> str:
    """The API key stored in `path` (first line, surrounding whitespace dropped)."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LowbitError(f"--api-key-file {path}: cannot read it ({exc})") from None
    key = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not key:
        raise LowbitError(f"--api-key-file {path} is empty; put the key on its first line")
    return key


def resolve_key(host: str, api_key: str | None = None, api_key_file: str | None = None,
                insecure: bool = False) -> tuple[str | None, bool]:
    """The API key to serve with and whether it was generated: `api_key`, else `api_key_file`'s, else
    $LOWBIT_API_KEY, else llama-server's own $LLAMA_API_KEY; a non-loopback bind with none of them (and
    not `insecure`) gets a fresh
    `secrets.token_urlsafe(24)`. Strength is checked by `check_host`."""

    if api_key_file and not api_key:
        api_key = read_key_file(api_key_file)
    api_key = api_key or default_api_key()
    if api_key is None and not insecure and host.strip() and "," not in host and not procs.is_loopback(host):
        return secrets.token_urlsafe(24), True
    return api_key, False


def serve_command(model: str, host: str = "127.0.0.1", port: int = 8080, api_key: str | None = None,
                  parallel: int = 4, ctx: int = 4096, plan: str | None = "auto", rpc: str | None = None,
                  insecure: bool = False, timeout: float = 1800.0, api_key_file: str | None = None,
                  max_tokens: int = DEFAULT_MAX_TOKENS) -> int:
    """`invoke serve`: start llama-server, print how to reach it, run until Ctrl-C.

    The key comes from `api_key`, `api_key_file`, $LOWBIT_API_KEY or $LLAMA_API_KEY. A non-loopback bind
    without one (and
    without `insecure`) gets a generated key, printed once. `api_key` is what was typed as
    `--api-key KEY`, which other local users can read in `ps` while invoke runs (the variables and the file are
    read here, not passed in).
    """

    port, parallel, ctx, max_tokens = int(port), int(parallel), int(ctx), int(max_tokens)
    key_on_command_line = bool(api_key)
    api_key, generated = resolve_key(host, api_key, api_key_file, insecure)
    note = check_host(host, api_key, insecure)
    if key_on_command_line and not procs.is_loopback(host):
        warn(f"--api-key KEY is readable by every local user in `ps` while invoke runs; prefer "
             f"${API_KEY_ENV} or --api-key-file PATH.")
    if note:
        warn(note)
    if rpc:
        warn("RPC workers have no authentication: keep them on loopback or a trusted private network.")
    if ignored := sorted(k for k in os.environ if k.startswith("LLAMA_ARG_")):
        warn(f"{', '.join(ignored)} not passed on: lowbit starts llama-server with the flags it prints and plans "
             "(a stray LLAMA_ARG_* could silently change them); use this task's flags instead.")
    resolved = resolve_model(model)
    if resolved.is_replica:
        warn(f"{resolved.name} is an offline replica with random weights: the text it writes is meaningless.")
    # SIGTERM/SIGHUP (a process manager, a closed terminal) arrive as KeyboardInterrupt (lowbit.__main__).
    server = None
    try:
        with console.status("starting llama-server ...") as status:
            server = start_server(
                model, host, port, api_key, parallel, ctx, plan, rpc, insecure, timeout=timeout,
                on_wait=lambda s: status.update(f"llama-server: loading the model ... {s:.0f} s"),
                max_tokens=max_tokens)
        public = procs.lan_address() if host in ("0.0.0.0", "::") else None
        step(f"llama-server ready: {server.url}  (model {server.model_name!r}, {parallel} parallel slots, "
             f"{ctx} tokens each = llama-server --ctx-size {ctx * parallel} --parallel {parallel}; "
             f"log: {server.log_path})")
        if public:
            step(f"attendees connect to http://{public}:{port}")
        if generated:
            print(f"API key (generated for this session; share it with attendees):\n  {API_KEY_ENV}={api_key}",
                  flush=True)
        print(examples(server, public), flush=True)
        print("\nPress Ctrl-C to stop the server.", flush=True)
        while server.alive():
            time.sleep(0.5)
        server.check()
        return 1
    except KeyboardInterrupt:
        if server is not None:
            server.stop()
            print("\nllama-server stopped.", flush=True)
        return 0 if server is not None else 130
    finally:
        if server is not None:
            server.stop()
