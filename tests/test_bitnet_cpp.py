"""bitnet.cpp, the optional engine: preflight, clone/build orchestration and caching, conversion, running.

The orchestration tests put stand-ins for git, cmake and clang on PATH (tests/fake_bitnet_cpp_tools.py): they
record every command line and create what the real tools would, so the command construction, the
temporary-folder-then-rename caching and the error paths run for real without network. The last test
builds and runs the real engine, and skips with the preflight's own words where that cannot work.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import fake_bitnet_cpp_tools as fake
import pytest

from lowbit import LowbitError
from lowbit.bitnet import convert as bitnet
from lowbit.bitnet import engine as bitnet_cpp

ALL_TOOLS = ["git", "cmake", "clang-19", "clang++-19"]
REAL_GIT = shutil.which("git")


@pytest.fixture
def kit(tmp_path, monkeypatch):
    """An empty cache and a PATH holding only the chosen fake tools; returns a helper namespace."""

    class Kit:
        cache = tmp_path / "cache"
        bin = tmp_path / "bin"
        log = tmp_path / "argv.jsonl"

        def tools(self, *names: str) -> None:
            fake.install(self.bin, list(names))

        def calls(self, tool: str | None = None) -> list[list[str]]:
            if not self.log.exists():
                return []
            rows = [json.loads(line) for line in self.log.read_text().splitlines()]
            return [r["argv"] for r in rows if tool is None or r["tool"] == tool]

        def records(self, tool: str) -> list[dict]:
            rows = [json.loads(line) for line in self.log.read_text().splitlines()]
            return [r for r in rows if r["tool"] == tool]

    k = Kit()
    k.bin.mkdir()
    monkeypatch.setenv("PATH", str(k.bin))
    monkeypatch.setenv("LOWBIT_CACHE", str(k.cache))
    monkeypatch.setenv("FAKE_LOG", str(k.log))
    for var in ("FAKE_GIT_OFFLINE", "FAKE_GIT_FAIL", "FAKE_FORK_SHA", "FAKE_CMAKE_FAIL", "FAKE_QUANT_FAIL",
                "FAKE_CLANG_VERSION", "CC", "CXX"):
        monkeypatch.delenv(var, raising=False)
    return k


def _offline_socket(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("simulated: no route to github.com")

    monkeypatch.setattr(socket, "create_connection", refuse)


def _leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name.endswith(".tmp")) if root.exists() else []


# ---------------------------------------------------------------------------------------------
# preflight


def test_preflight_lists_every_missing_piece_and_creates_nothing(kit, monkeypatch):
    _offline_socket(monkeypatch)  # no git on PATH: the probe falls back to a socket
    with pytest.raises(LowbitError) as err:
        bitnet_cpp.build_engine()
    msg = str(err.value)
    assert msg.startswith("cannot use --engine bitnet.cpp:")
    assert "clang >= 18 with clang++ (none found)" in msg and "apt install clang-19" in msg
    assert "CMake is not installed" in msg
    assert "git is not installed" in msg
    assert "GitHub is unreachable" in msg and "simulated: no route" in msg
    assert msg.count("\n  - ") == 4
    assert not kit.cache.exists()


def test_old_clang_is_named_with_its_version(kit):
    kit.tools("git", "cmake", "clang-17", "clang++-17")
    with pytest.raises(LowbitError) as err:
        bitnet_cpp.preflight()
    msg = str(err.value)
    assert "found: clang-17 17" in msg and "apt install clang-19" in msg
    assert msg.count("\n  - ") == 1, msg  # git, cmake and GitHub are fine
    assert not kit.cache.exists()


def test_clang_without_clangxx_is_not_enough(kit):
    kit.tools("git", "cmake", "clang-19")
    with pytest.raises(LowbitError, match=r"clang-19 19 \(no clang\+\+\)"):
        bitnet_cpp.preflight()


def test_offline_github_is_reported_with_gits_own_error(kit, monkeypatch):
    kit.tools(*ALL_TOOLS)
    monkeypatch.setenv("FAKE_GIT_OFFLINE", "1")
    with pytest.raises(LowbitError) as err:
        bitnet_cpp.build_engine()
    msg = str(err.value)
    assert "GitHub is unreachable" in msg and "Could not resolve host: github.com" in msg
    assert msg.count("\n  - ") == 1
    assert ["ls-remote", "--exit-code", bitnet_cpp.BITNET_CPP_GIT, "HEAD"] in kit.calls("git")
    assert not kit.cache.exists()


def test_preflight_picks_the_newest_clang(kit):
    kit.tools("git", "cmake", "clang-18", "clang++-18", "clang-19", "clang++-19", "clang-17", "clang++-17")
    clang = bitnet_cpp.preflight()
    assert clang.version == 19 and clang.cc.endswith("/clang-19") and clang.cxx.endswith("/clang++-19")
    assert not kit.cache.exists()


def test_cc_and_cxx_naming_a_new_clang_win(kit, monkeypatch):
    kit.tools("git", "cmake", "clang-18", "clang++-18", "clang-19", "clang++-19", "gcc", "g++")
    monkeypatch.setenv("CC", "clang-18")
    monkeypatch.setenv("CXX", "clang++-18")
    assert bitnet_cpp.preflight().cc == f"{kit.bin}/clang-18"
    monkeypatch.setenv("CC", "gcc")  # not clang: the newest clang on PATH is used instead
    monkeypatch.setenv("CXX", "g++")
    assert bitnet_cpp.preflight().cc == f"{kit.bin}/clang-19"


def test_convert_command_refuses_llama_cpp_quant_types(kit):
    with pytest.raises(LowbitError, match="I2_S only"):
        bitnet.convert_command("anything", quant="tq2_0", engine="bitnet.cpp")
    with pytest.raises(LowbitError, match="unknown --engine"):
        bitnet.convert_command("anything", engine="ik_llama")


# ---------------------------------------------------------------------------------------------
# clone and build


def test_build_clones_pinned_commit_builds_with_clang_and_caches(kit):
    kit.tools(*ALL_TOOLS)
    engine = bitnet_cpp.build_engine()
    assert engine.fresh and engine.version == "version: 3962 (1f86f058)"

    src = bitnet_cpp.source_dir()
    git = kit.calls("git")
    assert git[0] == ["ls-remote", "--exit-code", bitnet_cpp.BITNET_CPP_GIT, "HEAD"]
    tmp_src = f"{src}.tmp"
    assert git[1:6] == [
        ["init", "-q", tmp_src],
        ["-C", tmp_src, "remote", "add", "origin", "https://github.com/microsoft/BitNet"],
        ["-C", tmp_src, "fetch", "--depth", "1", "--progress", "origin", bitnet_cpp.BITNET_CPP_COMMIT],
        ["-C", tmp_src, "checkout", "-q", "--detach", "FETCH_HEAD"],
        ["-C", tmp_src, "submodule", "update", "--init", "--recursive", "--depth", "1", "--progress"],
    ]
    # the source: renamed into place, clang fix applied, kernel header generated with setup_env.py's 2B4T args
    assert (src / bitnet_cpp.SOURCE_MARK).exists()
    mad = (src / "src" / "ggml-bitnet-mad.cpp").read_text()
    assert re.search(r"(?<!const )int8_t \* y_col", mad) is None and mad.count("const int8_t * y_col") == 2
    header = (src / "include" / "bitnet-lut-kernels.h").read_text()
    assert "--model bitnet_b1_58-3B --BM 160,320,320" in header

    configure, compile_ = kit.records("cmake")
    build_tmp = f"{engine.directory}.tmp"
    assert configure["argv"][:4] == ["-S", str(src), "-B", build_tmp]
    flags = configure["argv"][4:]
    assert f"-DCMAKE_C_COMPILER={kit.bin}/clang-19" in flags and f"-DCMAKE_CXX_COMPILER={kit.bin}/clang++-19" in flags
    assert bitnet_cpp.ARCH_FLAGS[bitnet_cpp.machine_arch()][0] in flags
    assert "-DBUILD_SHARED_LIBS=OFF" in flags
    assert configure["cc"] == f"{kit.bin}/clang-19" and configure["cxx"] == f"{kit.bin}/clang++-19"
    assert compile_["argv"][:2] == ["--build", build_tmp]
    assert compile_["argv"][-4:] == ["--target", "llama-cli", "llama-quantize", "llama-perplexity"]

    final = Path(engine.directory)
    assert final.parent == kit.cache / "builds" and final.name.startswith("bitnet.cpp-01eb415772c3-")
    assert (final / bitnet_cpp.STAMP).exists() and (final / "build.log").exists()
    assert not (final / "CMakeCache.txt").exists()
    assert _leftovers(kit.cache) == []
    logs = sorted(p.name for p in (kit.cache / "logs").iterdir())
    assert any(n.startswith("bitnet-cpp-clone-") for n in logs) and any(n.startswith("bitnet-cpp-build-") for n in logs)

    # cached: no clone, no compiler, no network needed any more
    n_calls = len(kit.calls())
    for tool in ALL_TOOLS:
        (kit.bin / tool).unlink()
    again = bitnet_cpp.build_engine()
    assert again.directory == engine.directory and not again.fresh
    assert len(kit.calls()) == n_calls


def _git(*args: str, cwd: Path) -> str:
    assert REAL_GIT
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    proc = subprocess.run([REAL_GIT, *args], cwd=cwd, env=env, check=True, capture_output=True, text=True)
    return proc.stdout.strip()


@pytest.mark.skipif(REAL_GIT is None, reason="needs git")
def test_clone_with_real_git_at_non_tip_commits(kit, tmp_path, monkeypatch):
    """The clone's git command lines against a local BitNet-shaped repo whose pinned commits are not branch tips."""
    fork, main = tmp_path / "fork", tmp_path / "main"
    fork.mkdir()
    _git("init", "-q", cwd=fork)
    (fork / "CMakeLists.txt").write_text("project(llama.cpp)\n")
    (fork / "gguf-py" / "gguf").mkdir(parents=True)
    (fork / "gguf-py" / "gguf" / "__init__.py").write_text("FORK = True\n")
    _git("add", ".", cwd=fork)
    _git("commit", "-qm", "pinned fork commit", cwd=fork)
    fork_pin = _git("rev-parse", "HEAD", cwd=fork)
    (fork / "later.txt").write_text("later\n")
    _git("add", ".", cwd=fork)
    _git("commit", "-qm", "later fork commit", cwd=fork)

    main.mkdir()
    _git("init", "-q", cwd=main)
    for rel, text in {"src/ggml-bitnet-mad.cpp": fake.MAD_CPP, "utils/codegen_tl2.py": fake.CODEGEN,
                      "utils/codegen_tl1.py": fake.CODEGEN, "CMakeLists.txt": "project(bitnet.cpp)\n"}.items():
        (main / rel).parent.mkdir(parents=True, exist_ok=True)
        (main / rel).write_text(text)
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")  # local file:// submodules are refused by default since git 2.38
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "protocol.file.allow")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "always")
    monkeypatch.setenv("PATH", f"{kit.bin}{os.pathsep}{Path(REAL_GIT).parent}")
    _git("submodule", "add", "-q", fork.as_uri(), "3rdparty/llama.cpp", cwd=main)
    _git("checkout", "-q", fork_pin, cwd=main / "3rdparty" / "llama.cpp")
    _git("add", ".", cwd=main)
    _git("commit", "-qm", "pinned commit", cwd=main)
    pin = _git("rev-parse", "HEAD", cwd=main)
    (main / "later.txt").write_text("later\n")
    _git("add", "later.txt", cwd=main)
    _git("commit", "-qm", "later commit (the regression)", cwd=main)

    monkeypatch.setattr(bitnet_cpp, "BITNET_CPP_GIT", main.as_uri())
    monkeypatch.setattr(bitnet_cpp, "BITNET_CPP_COMMIT", pin)
    monkeypatch.setattr(bitnet_cpp, "LLAMA_FORK_COMMIT", fork_pin)
    kit.tools("cmake", "clang-19", "clang++-19")
    engine = bitnet_cpp.build_engine()
    src = bitnet_cpp.source_dir()
    assert engine.commit == pin and _git("rev-parse", "HEAD", cwd=src) == pin
    assert _git("rev-parse", "HEAD", cwd=src / "3rdparty" / "llama.cpp") == fork_pin
    assert not (src / "later.txt").exists() and not (src / "3rdparty" / "llama.cpp" / "later.txt").exists()
    assert "const int8_t * y_col = y + col * by;" in (src / "src" / "ggml-bitnet-mad.cpp").read_text()
    clone_log = next((kit.cache / "logs").glob("bitnet-cpp-clone-*.log")).read_text()
    assert "Receiving objects: 100%" in clone_log or "Unpacking objects: 100%" in clone_log


def test_forced_rebuild_reuses_the_cached_source(kit):
    kit.tools(*ALL_TOOLS)
    first = bitnet_cpp.build_engine()
    fetches = [c for c in kit.calls("git") if "fetch" in c]
    second = bitnet_cpp.build_engine(force=True)
    assert second.fresh and second.directory == first.directory
    assert [c for c in kit.calls("git") if "fetch" in c] == fetches  # not cloned again
    assert len(kit.calls("cmake")) == 4
    assert not [c for c in kit.calls("git") if c and c[0] == "ls-remote"][1:]  # source cached: no network probe


def test_failed_build_names_its_log_and_leaves_no_build(kit, monkeypatch):
    kit.tools(*ALL_TOOLS)
    monkeypatch.setenv("FAKE_CMAKE_FAIL", "build")
    with pytest.raises(LowbitError) as err:
        bitnet_cpp.build_engine()
    msg = str(err.value)
    assert "the bitnet.cpp build failed (cmake --build" in msg and "fake compile error" in msg
    log = Path(re.search(r"Full log: (\S+)", msg).group(1))
    assert log.exists() and "fake compile error" in log.read_text()
    assert not list((kit.cache / "builds").iterdir())
    assert bitnet_cpp.cached_engine() is None
    assert bitnet_cpp.source_ready()  # the clone completed and stays cached for the next attempt


def test_failed_configure_is_reported_too(kit, monkeypatch):
    kit.tools(*ALL_TOOLS)
    monkeypatch.setenv("FAKE_CMAKE_FAIL", "configure")
    with pytest.raises(LowbitError, match=r"(?s)build failed \(cmake -S .*fake configure failed"):
        bitnet_cpp.build_engine()
    assert not list((kit.cache / "builds").iterdir())


@pytest.mark.parametrize("failure", ["fetch", "submodule"])
def test_failed_clone_removes_the_partial_tree(kit, monkeypatch, failure):
    kit.tools(*ALL_TOOLS)
    monkeypatch.setenv("FAKE_GIT_FAIL", failure)
    with pytest.raises(LowbitError) as err:
        bitnet_cpp.build_engine()
    msg = str(err.value)
    assert "preparing bitnet.cpp failed" in msg and "Full log:" in msg
    if failure == "submodule":
        assert "not our ref" in msg and "force-pushed" in msg
    assert not list((kit.cache / "src").iterdir())
    assert not (kit.cache / "builds").exists()


def test_a_clone_at_another_fork_commit_is_refused(kit, monkeypatch):
    kit.tools(*ALL_TOOLS)
    monkeypatch.setenv("FAKE_FORK_SHA", "0" * 40)
    expected = f"expected {bitnet_cpp.BITNET_CPP_COMMIT} with {bitnet_cpp.LLAMA_FORK_COMMIT}"
    with pytest.raises(LowbitError, match=expected):
        bitnet_cpp.build_engine()
    assert not list((kit.cache / "src").iterdir())


def test_const_fix_is_checked(tmp_path):
    mad = tmp_path / "src" / "ggml-bitnet-mad.cpp"
    mad.parent.mkdir()
    mad.write_text("        const int8_t * y_col = y + col * by;\n")
    assert "already const-correct" in bitnet_cpp.apply_const_fix(tmp_path)
    mad.write_text("// the y_col line moved away\n")
    with pytest.raises(LowbitError, match="pinned source changed"):
        bitnet_cpp.apply_const_fix(tmp_path)


# ---------------------------------------------------------------------------------------------
# conversion and running (fake engine)


def _checkpoint(dest: Path) -> Path:
    """A config/tokenizer/safetensors folder that passes bitnet.check_checkpoint (values do not matter here)."""
    import torch
    from safetensors.torch import save_file

    dest.mkdir(parents=True)
    (dest / "config.json").write_text(json.dumps({
        "model_type": "bitnet", "architectures": ["BitNetForCausalLM"], "hidden_act": "relu2",
        "hidden_size": 256, "intermediate_size": 768}))
    (dest / "tokenizer.json").write_text("{}")
    save_file({"model.layers.0.mlp.ffn_sub_norm.weight": torch.ones(768)}, str(dest / "model.safetensors"))
    return dest


def test_convert_runs_bitnet_cpps_tools_on_a_scratch_copy(kit, tmp_path):
    kit.tools(*ALL_TOOLS)
    ckpt = _checkpoint(tmp_path / "ckpt")
    original = (ckpt / "model.safetensors").read_bytes()
    out = bitnet_cpp.convert(ckpt)
    assert out == ckpt / "ggml-model-i2_s.gguf" and out.read_bytes().startswith(b"GGUF-i2s GGUF-f32 ")
    assert (ckpt / "model.safetensors").read_bytes() == original  # the original is never moved or rewritten
    assert sorted(p.name for p in ckpt.iterdir()) == ["config.json", "ggml-model-i2_s.gguf", "model.safetensors",
                                                       "tokenizer.json"]
    (quantize,) = kit.calls("llama-quantize")
    assert quantize[2:] == ["I2_S", "1"] and quantize[0].endswith("/ggml-model-f32.gguf")
    (smoke,) = kit.calls("llama-cli")[1:]  # [0] is the build's --version
    assert smoke[smoke.index("-n") + 1] == "1" and smoke[-4:] == ["--temp", "0", "-b", "1"]


def test_failed_quantization_leaves_no_output(kit, tmp_path, monkeypatch):
    kit.tools(*ALL_TOOLS)
    ckpt = _checkpoint(tmp_path / "ckpt")
    monkeypatch.setenv("FAKE_QUANT_FAIL", "1")
    with pytest.raises(LowbitError, match="llama-quantize \\(I2_S\\) failed"):
        bitnet_cpp.convert(ckpt)
    assert sorted(p.name for p in ckpt.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]


def test_conversion_checks_disk_space_first(kit, tmp_path, monkeypatch):
    kit.tools(*ALL_TOOLS)
    ckpt = _checkpoint(tmp_path / "ckpt")
    monkeypatch.setattr(bitnet_cpp.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**12, 10**12, 1000))
    with pytest.raises(LowbitError, match="GB free beside"):
        bitnet_cpp.convert(ckpt)
    assert not kit.cache.exists()
    assert sorted(p.name for p in ckpt.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]


def test_not_a_2b4t_checkpoint_is_refused_before_any_build(kit, tmp_path):
    kit.tools(*ALL_TOOLS)
    ckpt = _checkpoint(tmp_path / "ckpt")
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**cfg, "hidden_act": "silu"}))
    with pytest.raises(LowbitError, match="not a BitNet b1.58 2B4T-layout"):
        bitnet_cpp.convert(ckpt)
    assert not kit.cache.exists()


def test_gguf_repo_file_is_used_as_is_and_runs(kit, tmp_path):
    kit.tools(*ALL_TOOLS)
    repo = tmp_path / "microsoft" / "bitnet-b1.58-2B-4T-gguf"
    repo.mkdir(parents=True)
    (repo / "ggml-model-i2_s.gguf").write_bytes(b"GGUF-i2s")
    assert bitnet_cpp.convert(repo) == repo / "ggml-model-i2_s.gguf"
    text = tmp_path / "text.txt"
    text.write_text("some text\n")
    assert bitnet.perplexity(repo / "ggml-model-i2_s.gguf", text, ctx=128, engine="bitnet.cpp") == 12.3456
    (ppl,) = kit.calls("llama-perplexity")
    assert ppl[ppl.index("-f") + 1] == str(text) and ppl[ppl.index("-c") + 1] == "128"
    assert "Paris." in bitnet_cpp.generate(repo / "ggml-model-i2_s.gguf", "The capital of France is", n=4)


def test_convert_command_resolves_catalog_entries(kit, tmp_path, monkeypatch, capsys):
    """`invoke bitnet-convert bitnet-2b4t --engine bitnet.cpp` after `invoke fetch`: the -gguf repo's file."""
    kit.tools(*ALL_TOOLS)
    models = tmp_path / "models"
    monkeypatch.setenv("LOWBIT_MODELS", str(models))
    gguf_repo = models / "microsoft" / "bitnet-b1.58-2B-4T-gguf"
    gguf_repo.mkdir(parents=True)
    (gguf_repo / "ggml-model-i2_s.gguf").write_bytes(b"GGUF-i2s")
    assert bitnet.convert_command("bitnet-2b4t", engine="bitnet.cpp") == 0
    assert f"ready for bitnet.cpp: {gguf_repo / 'ggml-model-i2_s.gguf'}" in capsys.readouterr().out
    # an HF-format entry resolves to its folder once fetched
    bf16 = _checkpoint(models / "microsoft" / "bitnet-b1.58-2B-4T-bf16")
    assert bitnet.locate("bitnet-2b4t-bf16", kind="any", obtain=True) == bf16
    assert bitnet.convert_command("bitnet-2b4t-bf16", engine="bitnet.cpp", quant="i2_s") == 0
    assert (bf16 / "ggml-model-i2_s.gguf").exists()


def test_convert_command_preflights_before_touching_models(kit, tmp_path, monkeypatch):
    kit.tools(*ALL_TOOLS)
    monkeypatch.setenv("FAKE_GIT_OFFLINE", "1")
    monkeypatch.setenv("LOWBIT_MODELS", str(tmp_path / "models"))
    with pytest.raises(LowbitError, match="GitHub is unreachable"):
        bitnet.convert_command("bitnet", engine="bitnet.cpp")  # the replica would be built first otherwise
    assert not (tmp_path / "models").exists() and not kit.cache.exists()


# ---------------------------------------------------------------------------------------------
# the real thing


def test_real_clang_is_detected_and_configures_a_project(tmp_path):
    clang = bitnet_cpp.find_clang()
    if clang is None:
        pytest.skip(f"no clang >= {bitnet_cpp.MIN_CLANG} with clang++ on PATH")
    banner = subprocess.run([clang.cc, "--version"], capture_output=True, text=True).stdout
    assert f"clang version {clang.version}." in banner
    if not shutil.which("cmake"):
        pytest.skip("no cmake on PATH")
    (tmp_path / "CMakeLists.txt").write_text("cmake_minimum_required(VERSION 3.14)\nproject(t C CXX)\n")
    flags = bitnet_cpp.cmake_flags(clang, bitnet_cpp.machine_arch() or "x86_64")
    proc = subprocess.run(["cmake", "-S", str(tmp_path), "-B", str(tmp_path / "b"), *flags], capture_output=True,
                          text=True, env={**os.environ, "CC": clang.cc, "CXX": clang.cxx})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"The CXX compiler identification is Clang {clang.version}." in proc.stdout


def test_end_to_end_with_the_real_engine(tmp_path):
    """Clone and build bitnet.cpp, convert the bitnet replica to I2_S, generate, measure perplexity."""
    try:
        bitnet_cpp.preflight(need_source=not bitnet_cpp.source_ready(), need_build=bitnet_cpp.cached_engine() is None)
    except LowbitError as exc:
        pytest.skip(str(exc))
    from lowbit.models.replicas import ensure_replica, hf_dir

    ensure_replica("bitnet")
    ckpt = tmp_path / "hf"
    shutil.copytree(hf_dir("bitnet"), ckpt, ignore=shutil.ignore_patterns("*.gguf"))
    out = bitnet_cpp.convert(ckpt, out=tmp_path / "replica-i2_s.gguf", threads=2)
    assert out.stat().st_size > 0
    text = bitnet_cpp.generate(out, "The capital of France is", n=4, threads=2)
    assert "The capital of France is" in text and len(text.strip()) > len("The capital of France is")
    sample = tmp_path / "sample.txt"
    sample.write_text(bitnet.SAMPLE_TEXT * 12)
    ppl = bitnet.perplexity(out, sample, ctx=128, chunks=2, threads=2, engine="bitnet.cpp")
    assert math.isfinite(ppl) and ppl > 1
