"""`invoke run`: real llama-completion runs on a small runnable deepseek2 split set (MoE, MLA)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import requires_gpu

from lowbit import LowbitError
from lowbit.files.gguf_layout import runnable_deepseek2
from lowbit.paths import kit_root
from lowbit.run import engine

ROOT = Path(__file__).resolve().parents[1]


def make_runnable(directory: Path) -> Path:
    return runnable_deepseek2(directory)


@pytest.fixture(scope="module")
def model(tmp_path_factory, llama_build) -> Path:
    return make_runnable(tmp_path_factory.mktemp("run"))


def test_parse_timings_of_a_real_run(model):
    r = engine.run_model(
        str(model),
        "-Hello: a prompt may start with a dash",
        n_predict=6,
        greedy=True,
        ignore_eos=True,
        echo=False,
        timeout=300,
    )
    assert r.gen_tokens == 5 and r.gen_tokens_per_s > 0  # the first token comes out of the prompt pass
    assert r.prompt_tokens >= 1 and r.text.strip()
    assert r.command[r.command.index("--temp") + 1] == "0"  # greedy
    assert r.command[r.command.index("-ngl") + 1] == "0"  # no --vram and no GPU: cpu-only plan
    # MLA model: the V cache type follows K (llama.cpp refuses different types for MLA)
    assert (
        r.command[r.command.index("--cache-type-v") + 1] == r.command[r.command.index("--cache-type-k") + 1]
    )
    # a split set: llama.cpp is given the first shard and finds the rest
    assert r.command[r.command.index("-m") + 1].endswith("-00001-of-00003.gguf")


def test_default_sampling_and_r1_turn(model):
    cmd = engine.build_command(
        model, ["-ngl", "0"], engine.format_prompt("Hi", "deepseek2"), binary=Path("x")
    )
    assert cmd[cmd.index("--temp") + 1] == "0.6" and cmd[cmd.index("--top-p") + 1] == "0.95"
    assert cmd[cmd.index("--min-p") + 1] == "0.01" and cmd[cmd.index("--seed") + 1] == "3407"
    assert cmd[-1] == "<｜User｜>Hi<｜Assistant｜>" and "-no-cnv" in cmd
    assert engine.format_prompt("Hi", "llama") == "Hi"
    assert engine.format_prompt("<｜User｜>x<｜Assistant｜>", "deepseek2") == "<｜User｜>x<｜Assistant｜>"


def test_experts_cpu_plan_runs(model):
    """The experts-on-CPU flags are accepted by llama.cpp (a CPU build ignores -ngl, but parses -ot)."""
    from lowbit.files import gguf_header as gguf_meta
    from lowbit.run import plan

    meta = gguf_meta.read_model(model)
    ref = plan.make_plan(meta, [4], ctx=2048)
    base = ref.non_expert_bytes + ref.kv_bytes + ref.compute_bytes + plan.GPU_RESERVE
    vram = (base + 0.5 * meta.layers[-1].routed_experts) / plan.GiB  # room for no expert layer
    r = engine.run_model(
        str(model),
        "Hi",
        plan="experts-cpu",
        vram=[vram],
        n_predict=3,
        greedy=True,
        ignore_eos=True,
        echo=False,
        timeout=300,
    )
    assert r.plan == "experts-cpu" and r.gen_tokens == 2
    i = r.command.index("-ot")
    assert r.command[i + 1] == ".ffn_.*_exps.=CPU" and r.command[r.command.index("-ngl") + 1] == "5"


def test_rpc_passthrough_and_bad_rpc():
    assert engine.parse_rpc("10.0.0.2:50052, host-b:50052") == ["--rpc", "10.0.0.2:50052,host-b:50052"]
    with pytest.raises(LowbitError, match="host:port"):
        engine.parse_rpc("10.0.0.2")


def test_bad_input_fails_before_a_run(model, tmp_path):
    with pytest.raises(LowbitError, match="does not accept: --no-such-flag"):
        engine.run_model(str(model), extra="--no-such-flag 3", echo=False)
    with pytest.raises(LowbitError, match="trained context"):
        engine.run_model(str(model), ctx=4096, echo=False)
    with pytest.raises(LowbitError, match="non-expert tensors"):
        engine.run_model(str(model), plan="experts-cpu", vram=[0.5], echo=False)
    shards = sorted(model.parent.glob("tiny-ds2-*.gguf"))
    for p in shards:
        os.link(p, tmp_path / p.name)
    (tmp_path / shards[2].name).unlink()
    with pytest.raises(LowbitError, match="missing " + shards[2].name):
        engine.run_model(str(tmp_path / shards[0].name), echo=False)


def test_flag_value_llama_cpp_rejects_is_reported(model):
    """A known flag with a value llama.cpp refuses: its own error comes back, with the command."""
    with pytest.raises(LowbitError, match="flash-attn") as exc:
        engine.run_model(str(model), extra="--flash-attn maybe", n_predict=2, echo=False, timeout=120)
    assert "command:" in str(exc.value)


def test_run_task_prints_command_and_json(model):
    args = {"model": str(model), "prompt": "Hi", "n_predict": 3, "greedy": True, "json": True}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "lowbit", "lowbit.run.engine:run_command", json.dumps(args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(out.stdout)
    assert data["gen_tokens"] >= 1 and data["command_line"].startswith(data["command"][0])
    assert data["command_line"] in out.stderr  # the copyable command is printed before the run


def test_run_the_r1_replica():
    """`invoke run` on the r1 replica (DeepSeek-R1 architecture and tokenizer, dynamic 1.58-bit shards)."""
    try:
        from lowbit.models.replicas import replica_path
    except ImportError:
        pytest.skip("this checkout has no lowbit.models.replicas module")
    path = replica_path("r1")
    if path is None or not Path(path).exists():
        pytest.skip("the r1 replica is not built here (`invoke setup` builds it)")
    r = engine.run_model(
        "r1", "What is 1+1?", n_predict=8, greedy=True, ignore_eos=True, echo=False, timeout=300
    )
    assert (
        r.gen_tokens == 7 and r.prompt_tokens >= 4
    )  # <｜User｜>…<｜Assistant｜> are single tokens in R1's vocab
    assert r.command[r.command.index("-m") + 1] == str(path)


@requires_gpu
def test_planned_layers_are_offloaded_on_a_gpu(model):
    """With a GPU build, llama.cpp reports exactly the layers the plan asked for on the GPU."""
    from lowbit.toolchain.build import active_build

    if active_build().backend != "cuda":
        pytest.skip(
            "a GPU is present but the active llama.cpp build is not CUDA: `invoke build-llama --backend cuda`"
        )
    r = engine.run_model(
        str(model), "Hi", plan="ngl=3", vram=[8], n_predict=2, greedy=True, echo=False, timeout=300
    )
    assert "offloaded 3/5 layers to GPU" in r.log


def test_greedy_completion_repeats_itself(model):
    first = engine.greedy_completion(model, "Hello", n_predict=4)
    assert first.startswith("Hello") and len(first) > len("Hello")
    assert engine.greedy_completion(model, "Hello", n_predict=4) == first


def test_llama_cpp_tools_never_lose_the_end_of_their_output(tmp_path, llama_build):
    """At the pinned commit nothing drained llama.cpp's log queue at exit, so a run could exit 0 with its text
    and perf report cut short (about 1 run in 20 on a busy 2-core machine); patch 0004 drains it."""
    from concurrent.futures import ThreadPoolExecutor

    from gguf_factory import write_llama_model

    model = write_llama_model(tmp_path / "tiny.gguf")
    cmd = [str(llama_build.tool("llama-completion")), "-m", str(model), "-p", "hello", "-n", "12",
           *engine.GREEDY_SAMPLING, "-no-cnv", "-t", "1", "--no-warmup"]  # fmt: skip
    with ThreadPoolExecutor(4) as pool:  # runs side by side: the lost tail shows under load
        runs = list(pool.map(lambda _: subprocess.run(cmd, capture_output=True, timeout=120), range(80)))
    assert [r.returncode for r in runs] == [0] * len(runs)
    cut = [r.stderr[-120:] for r in runs if b"total time =" not in r.stderr]
    assert not cut, f"{len(cut)} of {len(runs)} runs lost the end of their log, e.g. {cut[0]!r}"
    assert len({r.stdout for r in runs}) == 1  # and every run printed the whole (greedy, identical) text


def test_invoke_run_types_ctx_and_survives_broken_utf8():
    """`invoke run --ctx 4096` (invoke hands an untyped flag over as a string) on the r1 replica: 256 tokens of
    random weights write byte sequences that are not UTF-8; the run must finish and keep the text (item 7)."""
    out = subprocess.run(
        [sys.executable, "-m", "invoke", "run", "--model", "r1", "--ctx", "4096", "--n-predict", "256",
         "--threads", "2", "--json"],
        capture_output=True, text=True, cwd=ROOT, stdin=subprocess.DEVNULL, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    data = json.loads(out.stdout)
    assert data["command"][data["command"].index("--ctx-size") + 1] == "4096"
    assert data["gen_tokens"] > 0 and data["text"]


def test_plan_json_stdout_is_json_only_under_a_terminal():
    """With stdout on a terminal, warnings must still go to stderr, not into the JSON (item 9)."""
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "plan", "--model", "r1", "--ram", "0.01", "--json"],
                            stdout=slave, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=ROOT)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    os.close(master)
    assert proc.returncode == 0, err
    data = json.loads(b"".join(chunks).decode())  # nothing but JSON
    assert data["model"] == "r1"
    assert "larger than RAM + VRAM" in err  # the warning went to stderr


@pytest.mark.parametrize(
    ("target", "kwargs", "flag"),
    [
        ("lowbit.lessons.compare:compare_command", {"max_tokens": "many"}, "--max-tokens"),
        ("lowbit.run.quality:quality_command", {"model": "r1", "threads": "two"}, "--threads"),
        ("lowbit.run.rpc:rpc_worker_command", {"threads": "1.5"}, "--threads"),
        ("lowbit.bitnet.convert:perplexity_command", {"gguf": "x.gguf", "text": "t.txt", "chunks": "x"}, "--chunks"),
        ("lowbit.run.engine:run_command", {"model": "r1", "ctx": "4k"}, "--ctx"),
    ],
)
def test_bad_numbers_are_named_not_tracebacks(target, kwargs, flag):
    """invoke hands over text for flags whose default is None: the package names a bad value (exit 2)."""
    proc = subprocess.run([sys.executable, "-m", "lowbit", target, json.dumps(kwargs)], capture_output=True,
                          text=True, timeout=120, cwd=kit_root())  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-1500:]
    assert flag in proc.stderr
