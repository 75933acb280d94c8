"""llama-server through lowbit: chat via the OpenAI client, reasoning apart, the safety rules, clean stops.

The model is a toy GGUF (see toy_reasoner.py) that always thinks, then answers, so the reasoning
split is checked against known text; it goes through the real R1 tokenizer, template and server.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest
from toy_reasoner import ANSWER, REASONING

from lowbit import LowbitError
from lowbit.paths import kit_root
from lowbit.serve.loadtest import run_load
from lowbit.serve.server import check_host, start_server
from tests.conftest import default_sigint

LLAMA_CHILDREN = ("llama-server", "ggml-rpc-server")


def _our_llama_processes() -> list[psutil.Process]:
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.name() in LLAMA_CHILDREN and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.fixture(autouse=True, scope="module")
def no_process_left_behind():
    """Every llama-server / worker a test starts must be stopped when the module ends."""
    yield
    left = _our_llama_processes()
    for p in left:
        p.kill()
    assert not left, f"processes left running: {[p.cmdline() for p in left]}"


@pytest.fixture(scope="module")
def toy_server(toy_model, tmp_path_factory):
    with start_server(str(toy_model), port=None, parallel=2, ctx=512, timeout=120,
                      log_dir=tmp_path_factory.mktemp("serve-logs")) as server:
        yield server
    assert server.proc.poll() is not None


def test_chat_completion_separates_reasoning(toy_server):
    client = toy_server.client()
    r = client.chat.completions.create(model=toy_server.model_name,
                                       messages=[{"role": "user", "content": "Say hello."}])
    msg = r.choices[0].message
    assert msg.content == ANSWER
    assert msg.reasoning_content == REASONING
    assert "<think>" not in msg.content and "</think>" not in msg.content
    assert r.usage.completion_tokens > 0

    thinking, answer = [], []
    for chunk in client.chat.completions.create(model=toy_server.model_name, stream=True,
                                                messages=[{"role": "user", "content": "Again."}]):
        if chunk.choices:
            delta = chunk.choices[0].delta
            thinking.append(getattr(delta, "reasoning_content", None) or "")
            answer.append(delta.content or "")
    assert "".join(thinking) == REASONING
    assert "".join(answer) == ANSWER


def test_server_uses_recommended_settings(toy_server):
    cmd = toy_server.command
    assert "--jinja" in cmd
    assert cmd[cmd.index("--reasoning-format") + 1] == "deepseek"
    assert cmd[cmd.index("--temp") + 1] == "0.6" and cmd[cmd.index("--top-p") + 1] == "0.95"
    assert cmd[cmd.index("--seed") + 1] == "3407"
    assert cmd[cmd.index("--cache-type-k") + 1] == "q4_0"
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"


def test_load_burst_all_succeed(toy_server):
    result = run_load(toy_server.base_url, toy_server.model_name, requests=6, concurrency=2, max_tokens=12)
    s = result.summary()
    assert s["succeeded"] == 6, s["errors"]
    assert s["total_tokens"] == 6 * 12  # ignore_eos: every request generates exactly max_tokens
    assert s["latency_p95_s"] >= s["latency_p50_s"] > 0
    assert s["aggregate_tokens_per_s"] > 0


def test_load_test_refuses_remote_servers():
    with pytest.raises(LowbitError, match="loopback"):
        run_load("http://192.0.2.10:8080/v1", "m", requests=1)


def test_api_key_enforced_and_kept_off_the_command_line(toy_model, tmp_path):
    import openai

    with start_server(str(toy_model), port=None, api_key="s3cret-key", parallel=1, ctx=512, timeout=120,
                      log_dir=tmp_path) as server:
        assert "s3cret-key" not in " ".join(psutil.Process(server.proc.pid).cmdline())
        assert server.health() == 200  # /health stays public
        anonymous = openai.OpenAI(base_url=server.base_url, api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            anonymous.chat.completions.create(model=server.model_name,
                                              messages=[{"role": "user", "content": "x"}])
        r = server.client().chat.completions.create(model=server.model_name,
                                                    messages=[{"role": "user", "content": "x"}])
        assert r.choices[0].message.content == ANSWER


def test_refuses_non_loopback_without_key(toy_model):
    before = len(_our_llama_processes())
    with pytest.raises(LowbitError, match="--api-key"):
        start_server(str(toy_model), host="0.0.0.0", port=None)
    assert len(_our_llama_processes()) == before  # refused before anything started
    assert check_host("127.0.0.1", None, insecure=False) is None
    assert "INSECURE" in check_host("0.0.0.0", None, insecure=True)
    assert "plain HTTP" in check_host("192.168.1.20", "a-strong-key-0123456789", insecure=False)


def test_port_in_use_is_a_clear_error(toy_model, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(LowbitError, match=f"port {port} .* in use"):
            start_server(str(toy_model), port=port, log_dir=tmp_path)


def test_bad_model_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(4096))
    # plan "none": straight to llama-server, whose load failure must come back as a clear error
    with pytest.raises(LowbitError, match="failed to load") as info:
        start_server(str(bad), port=None, plan="none", timeout=120, log_dir=tmp_path)
    assert "broken.gguf" in str(info.value)
    # the default plan reads the header first (when the planner is present): also a clear error
    with pytest.raises(LowbitError, match="broken.gguf"):
        start_server(str(bad), port=None, timeout=120, log_dir=tmp_path)


def test_serve_task_stops_cleanly_on_ctrl_c(toy_model, tmp_path):
    """The foreground command prints the URL and examples, then Ctrl-C stops llama-server and exits 0."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kwargs = {"model": str(toy_model), "port": port, "parallel": 1, "ctx": 512}
    env = {**os.environ, "LOWBIT_RUNS": str(tmp_path)}
    cmd = [sys.executable, "-m", "lowbit", "lowbit.serve.server:serve_command", json.dumps(kwargs)]
    proc = subprocess.Popen(cmd, cwd=kit_root(), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, preexec_fn=default_sigint)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Press Ctrl-C" in line:
                break
        text = "".join(lines)
        assert "Press Ctrl-C" in text, text
        assert f"http://127.0.0.1:{port}/v1/chat/completions" in text  # the curl example
        assert "OpenAI(base_url=" in text
        servers = [p for p in psutil.Process(proc.pid).children(recursive=True) if p.name() == "llama-server"]
        assert len(servers) == 1
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert "stopped" in out
        assert not servers[0].is_running() or servers[0].status() == psutil.STATUS_ZOMBIE
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_kv_cache_flags_follow_the_attention(toy_model, tmp_path):
    """MLA (deepseek2) needs K and V cache types equal at this llama.cpp; other models quantize K only."""
    from gguf import GGUFWriter

    from lowbit.serve.server import RECOMMENDED_CACHE, RECOMMENDED_CACHE_MLA, cache_flags, uses_mla

    assert not uses_mla(toy_model)
    assert cache_flags(toy_model) == RECOMMENDED_CACHE
    mla = tmp_path / "mla-header.gguf"
    w = GGUFWriter(str(mla), "deepseek2")
    w.add_uint32("deepseek2.attention.kv_lora_rank", 512)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    assert uses_mla(mla)
    assert cache_flags(mla) == RECOMMENDED_CACHE_MLA
    assert not uses_mla(tmp_path / "missing.gguf")


def test_planner_placement_comes_first_and_rpc_keeps_llama_cpp_placement(toy_model):
    """lowbit's own --ctx-size (ctx x parallel) and cache flags replace the planner's; with --rpc, `auto`
    leaves placement to llama.cpp (a planned -ngl 0 would keep every layer off the workers)."""
    from lowbit.serve.server import plan_flags, server_command

    cmd = server_command(toy_model, "127.0.0.1", 8080, "toy", parallel=3, ctx=1000,
                         placement=["-ngl", "0", "--ctx-size", "1000"])
    assert cmd.count("--ctx-size") == 1 and cmd[cmd.index("--ctx-size") + 1] == "3000"
    assert cmd[cmd.index("-ngl") + 1] == "0"
    assert plan_flags("auto", toy_model, 3000, rpc="127.0.0.1:50052") == []
    assert plan_flags("none", toy_model, 3000) == []


def test_open_bind_needs_a_strong_key_or_gets_one(tmp_path, monkeypatch):
    """Issue 13 item 9: a one-character key on 0.0.0.0 is refused; no key at all gets a generated one."""
    from lowbit.serve.server import MIN_KEY_CHARS, resolve_key

    monkeypatch.delenv("LOWBIT_API_KEY", raising=False)
    with pytest.raises(LowbitError, match=f"at least {MIN_KEY_CHARS}"):
        check_host("0.0.0.0", "x", insecure=False)
    with pytest.raises(LowbitError, match=f"at least {MIN_KEY_CHARS}"):
        start_server("anything", host="0.0.0.0", api_key="short", port=None)
    key, generated = resolve_key("0.0.0.0")
    assert generated and len(key) >= MIN_KEY_CHARS and check_host("0.0.0.0", key, False)
    assert resolve_key("0.0.0.0") != (key, True)  # fresh each time
    assert resolve_key("127.0.0.1") == (None, False)  # loopback: no key needed
    assert resolve_key("0.0.0.0", insecure=True) == (None, False)
    keyfile = tmp_path / "key.txt"
    keyfile.write_text("from-a-file-0123456789\n")
    assert resolve_key("0.0.0.0", api_key_file=str(keyfile)) == ("from-a-file-0123456789", False)
    monkeypatch.setenv("LOWBIT_API_KEY", "from-the-environment-42")
    assert resolve_key("0.0.0.0") == ("from-the-environment-42", False)


def test_api_key_given_to_invoke_serve_is_in_no_child_command_line(toy_model, tmp_path):
    """`invoke serve --api-key KEY`: the kit process and llama-server get the key by environment, so only
    invoke's own argv (which the user typed) shows it; clients still need it."""
    import urllib.request

    from lowbit.procs import can_connect, free_port

    key = "k3y-that-must-stay-out-of-ps"
    port = free_port()
    env = {**os.environ, "LOWBIT_RUNS": str(tmp_path)}
    env.pop("LOWBIT_API_KEY", None)
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "serve", "--model", str(toy_model), "--port", str(port),
                             "--api-key", key, "--parallel", "1", "--ctx", "512"], cwd=kit_root(), env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if can_connect("127.0.0.1", port):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                        if r.status == 200:
                            break
                except (urllib.error.URLError, OSError):
                    pass  # 503 while loading
            time.sleep(0.2)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert any(p.name() == "llama-server" for p in children)
        for p in children:
            assert key not in " ".join(p.cmdline()), p.name()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": "Bearer nope"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=10)
        assert info.value.code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def test_empty_messages_without_max_tokens_stop_at_the_default_cap(tmp_path, llama_build):
    """`messages: []` and no max_tokens used to generate until the context was full (issue 13 item 9)."""
    import urllib.request

    from lowbit.models.replicas import ensure_replica, replica_path
    from lowbit.serve.server import DEFAULT_MAX_TOKENS, server_command

    ensure_replica("r1")
    cmd = server_command(replica_path("r1"), "127.0.0.1", 8080, "r1")
    assert cmd[cmd.index("--n-predict") + 1] == str(DEFAULT_MAX_TOKENS)
    with start_server("r1", port=None, parallel=1, ctx=512, max_tokens=24, timeout=180, log_dir=tmp_path) as server:
        body = json.dumps({"model": server.model_name, "messages": [], "ignore_eos": True}).encode()
        req = urllib.request.Request(server.base_url + "/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            usage = json.loads(r.read())["usage"]
        assert usage["completion_tokens"] == 24
        # a request may still ask for more than the default
        body = json.dumps({"model": server.model_name, "messages": [{"role": "user", "content": "hi"}],
                           "max_tokens": 40, "ignore_eos": True}).encode()
        req = urllib.request.Request(server.base_url + "/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            assert json.loads(r.read())["usage"]["completion_tokens"] == 40
