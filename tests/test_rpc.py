"""RPC workers: `--rpc` validation, a generation across two local workers equals the single-process one,
and a worker that dies mid-run is an error, not a hang. Workers and servers bind 127.0.0.1 at free ports."""

from __future__ import annotations

import re
import socket

import psutil
import pytest

from lowbit import LowbitError
from lowbit.run.rpc import (
    parse_rpc,
    rpc_arg,
    rpc_flags,
    rpc_worker_command,
    start_worker,
    start_workers,
    stop_workers,
)
from lowbit.serve.server import start_server

PROMPT = [{"role": "user", "content": "Count from one to ten."}]


@pytest.fixture(autouse=True, scope="module")
def no_process_left_behind():
    yield
    left = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.name() in ("llama-server", "ggml-rpc-server") and p.status() != psutil.STATUS_ZOMBIE:
                left.append(p)
        except psutil.NoSuchProcess:
            pass
    for p in left:
        p.kill()
    assert not left, f"processes left running: {[p.cmdline() for p in left]}"


@pytest.fixture(scope="module")
def r1_model(llama_build):
    """The r1 replica (DeepSeek2 architecture: MLA + MoE), built by `invoke setup`."""
    from lowbit.models.replicas import ensure_replica, replica_path

    ensure_replica("r1")
    return replica_path("r1")


def test_rpc_flags_validate_host_port_lists():
    assert rpc_flags(None) == [] and rpc_flags("") == []
    assert rpc_flags("127.0.0.1:50052, 10.0.0.2:50053") == ["--rpc", "127.0.0.1:50052,10.0.0.2:50053"]
    assert rpc_flags(["gpu-box.lan:50052", "[::1]:50052"]) == ["--rpc", "gpu-box.lan:50052,[::1]:50052"]
    assert [e.port for e in parse_rpc("a:1,b:65535")] == [1, 65535]
    bad_values = ("127.0.0.1", "127.0.0.1:0", "host:70000", "host:port", ":50052", "a b:1", "a:1,a:1",
                  "::1:50052")
    for bad in bad_values:
        with pytest.raises(LowbitError, match="--rpc"):
            rpc_flags(bad)


def test_worker_mem_option_is_explained():
    with pytest.raises(LowbitError, match="tensor-split"):
        rpc_worker_command(mem=4)


def test_worker_port_in_use(llama_build, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(LowbitError, match="in use"):
            start_worker("127.0.0.1", s.getsockname()[1], log_dir=tmp_path)


def test_unreachable_worker_refused_before_loading(r1_model, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here
    with pytest.raises(LowbitError, match="not reachable"):
        start_server(str(r1_model), port=None, rpc=f"127.0.0.1:{port}", log_dir=tmp_path)


def _greedy(server, max_tokens: int = 24) -> tuple[str, str, int]:
    r = server.client().chat.completions.create(
        model=server.model_name, messages=PROMPT, max_tokens=max_tokens, temperature=0.0, seed=3407,
        extra_body={"ignore_eos": True})
    msg = r.choices[0].message
    return msg.content or "", getattr(msg, "reasoning_content", None) or "", r.usage.completion_tokens


def test_generation_across_two_workers_equals_single_process(r1_model, tmp_path):
    # RPC workers keep weights in plain CPU buffers; a local CPU by default repacks them for its faster
    # kernels, which sums in another order. On a random-weight model (flat logits) that alone can flip a
    # greedy token after a dozen steps, so the single-process reference runs the same kernels.
    with start_server(str(r1_model), port=None, parallel=1, ctx=512, timeout=180, log_dir=tmp_path,
                      extra=["--no-repack"]) as single:
        expected = _greedy(single)
    workers = start_workers(2, threads=1, log_dir=tmp_path)
    try:
        # -lv 4: llama.cpp then logs where each buffer went.
        with start_server(str(r1_model), port=None, parallel=1, ctx=512, rpc=rpc_arg(workers), timeout=180,
                          log_dir=tmp_path, extra=["-lv", "4"]) as spread:
            got = _greedy(spread)
            log = spread.log_path.read_text(errors="replace")
        assert all(w.alive() for w in workers)
    finally:
        stop_workers(workers)
    assert expected[2] == 24
    assert got == expected  # token for token
    # Model weights really went to both workers.
    for w in workers:
        sizes = re.findall(rf"RPC\d\[127\.0\.0\.1:{w.port}\] model buffer size =\s+([\d.]+) MiB", log)
        assert sizes and float(sizes[0]) > 0, f"no weights on the worker at port {w.port}"


def test_worker_killed_mid_run_is_an_error_not_a_hang(r1_model, tmp_path):
    import httpx
    import openai

    workers = start_workers(2, threads=1, log_dir=tmp_path)
    try:
        with start_server(str(r1_model), port=None, parallel=1, ctx=2048, rpc=rpc_arg(workers), timeout=180,
                          log_dir=tmp_path) as server:
            client = server.client(timeout=60.0)
            stream = client.chat.completions.create(model=server.model_name, messages=PROMPT, stream=True,
                                                    max_tokens=1500, extra_body={"ignore_eos": True})
            chunks = 0
            finished = False
            with pytest.raises((openai.APIError, httpx.HTTPError, RuntimeError)):
                for chunk in stream:
                    chunks += 1
                    if chunks == 3:
                        workers[1].proc.kill()  # the worker vanishes mid-generation
                    if chunk.choices and chunk.choices[0].finish_reason is not None:
                        finished = True
                if not finished:
                    raise RuntimeError("stream ended without a finish_reason")  # cut off: also an error
            assert not finished
            server.proc.wait(timeout=60)  # llama-server stops instead of hanging
            with pytest.raises(LowbitError, match="RPC worker"):
                server.check()
    finally:
        stop_workers(workers)


def test_invoke_run_puts_layers_on_the_workers(r1_model, tmp_path):
    """`invoke run --rpc`: the planner's CPU-only `-ngl 0` would keep every layer here; with workers, llama.cpp
    fits the layers over them (issue 13, item 7)."""
    from lowbit.run.engine import run_model

    workers = start_workers(2, threads=1, log_dir=tmp_path)
    try:
        r = run_model(str(r1_model), prompt="Hi", n_predict=4, greedy=True, rpc=rpc_arg(workers), threads=1,
                      extra="-lv 4", echo=False, timeout=180)
        assert all(w.alive() for w in workers)
    finally:
        stop_workers(workers)
    assert r.command[r.command.index("-ngl") + 1] != "0"
    assert r.gen_tokens >= 1
    for w in workers:
        sizes = re.findall(rf"RPC\d\[127\.0\.0\.1:{w.port}\] model buffer size =\s+([\d.]+) MiB", r.log)
        assert sizes and float(sizes[0]) > 0, f"no weights on the worker at port {w.port}"


def test_invoke_run_worker_killed_mid_run_is_the_serve_error(r1_model, tmp_path):
    """A worker that dies during `invoke run` gives the same clear error as `serve --rpc` (issue 13, item 7)."""
    import threading

    from lowbit.run.engine import run_model

    workers = start_workers(2, threads=1, log_dir=tmp_path)
    killer = threading.Timer(4.0, workers[1].proc.kill)  # the tiny replica loads in about a second
    try:
        killer.start()
        with pytest.raises(LowbitError, match="RPC worker went away") as info:
            run_model(str(r1_model), prompt="Count.", n_predict=100000, ctx=2048, greedy=True, ignore_eos=True,
                      rpc=rpc_arg(workers), threads=1, echo=False, timeout=120)
        assert "Traceback" not in str(info.value)
    finally:
        killer.cancel()
        stop_workers(workers)
