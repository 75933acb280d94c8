"""llama.cpp build: backend choice, preflight errors, flags, cache, patches, failure safety."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from lowbit import LowbitError
from lowbit.toolchain import build


def test_unknown_backend_lists_choices():
    with pytest.raises(LowbitError) as exc:
        build.resolve_backend("rocm")
    for choice in build.BACKENDS:
        assert choice in str(exc.value)


def test_auto_backend_needs_a_listed_gpu_not_just_nvcc(monkeypatch):
    monkeypatch.setattr(build, "gpu_names", lambda: [])
    monkeypatch.setattr(build.sys, "platform", "linux")
    assert build.resolve_backend("auto") == "cpu"
    monkeypatch.setattr(build, "gpu_names", lambda: ["GPU 0: NVIDIA H100 (UUID: x)"])
    assert build.resolve_backend("auto") == "cuda"


def test_unknown_source_lists_choices(tmp_path):
    with pytest.raises(LowbitError) as exc:
        build.llama_source(str(tmp_path / "nowhere"))
    assert "sdist" in str(exc.value) and "git" in str(exc.value)


def test_flags_are_right_for_current_llama_cpp():
    flags = build.cmake_flags("cpu", None, None)
    assert "-DBUILD_SHARED_LIBS=ON" in flags and "-DGGML_RPC=ON" in flags and "-DGGML_NATIVE=ON" in flags
    assert not any("LLAMA_CURL" in f for f in flags), "LLAMA_CURL is ignored by current llama.cpp"
    assert f"-DLLAMA_OPENSSL={'ON' if build.openssl_headers() else 'OFF'}" in flags
    cuda = build.cmake_flags("cuda", "90", Path("/opt/tk"))
    assert "-DGGML_CUDA=ON" in cuda and "-DCMAKE_CUDA_ARCHITECTURES=90" in cuda
    assert "-DCUDAToolkit_ROOT=/opt/tk" in cuda
    # the last RPATH wins: it must let tools and the loader find cuBLAS inside the toolkit root
    rpath = [f for f in cuda if f.startswith("-DCMAKE_INSTALL_RPATH=")][-1]
    assert rpath == "-DCMAKE_INSTALL_RPATH=$ORIGIN;/opt/tk/lib64"


def test_preflight_names_missing_cmake_and_compiler(monkeypatch, tmp_path):
    monkeypatch.setattr(build.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(LowbitError) as exc:
        build.preflight("cpu", tmp_path)
    assert "CMake is not installed" in str(exc.value) and "C++ compiler" in str(exc.value)


def test_preflight_cuda_without_nvcc(monkeypatch, tmp_path):
    monkeypatch.setattr(build, "find_nvcc", lambda: None)
    with pytest.raises(LowbitError, match="needs nvcc"):
        build.preflight("cuda", tmp_path)


def test_preflight_refuses_too_little_disk(monkeypatch, tmp_path):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(build.shutil, "disk_usage", lambda p: usage._replace(free=100_000_000))
    with pytest.raises(LowbitError, match="GB free"):
        build.preflight("cpu", tmp_path)


def test_cuda_without_gpu_asks_for_arch(monkeypatch, tmp_path):
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path))
    monkeypatch.setattr(build, "gpu_names", lambda: [])
    monkeypatch.setattr(build, "find_nvcc", lambda: Path("/usr/bin/true"))
    with pytest.raises(LowbitError, match="--cuda-arch"):
        build.build_llama(backend="cuda")


def test_cached_build_is_reused_without_work(llama_build):
    again = build.build_llama(backend=llama_build.backend)
    assert again.key == llama_build.key and not again.fresh
    for target in build.TARGETS:
        assert (again.bin_dir / target).exists()


def test_binaries_are_relocatable(llama_build):
    """$ORIGIN runpath: the binaries find the build's own libraries, not system ones."""
    import subprocess

    out = subprocess.run(["ldd", str(llama_build.tool("llama-completion"))], capture_output=True, text=True).stdout
    libllama = [line for line in out.splitlines() if "libllama.so" in line]
    assert libllama and str(llama_build.bin_dir) in libllama[0]


def _fake_tree(root: Path, cmake_body: str) -> Path:
    (root / "include").mkdir(parents=True)
    (root / "include" / "llama.h").write_text("/* fake */\n")
    (root / "CMakeLists.txt").write_text(cmake_body)
    return root


def test_failed_build_keeps_previous_build_active_and_names_log(llama_build, tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(build, "patch_files", lambda: [])  # the kit's patches target real llama.cpp
    cmake = 'cmake_minimum_required(VERSION 3.14)\nproject(x)\nmessage(FATAL_ERROR "boom")\n'
    src = _fake_tree(tmp_path / "src", cmake)
    with pytest.raises(LowbitError) as exc:
        build.build_llama(backend="cpu", source=str(src))
    text = str(exc.value)
    assert "boom" in text and "Full log:" in text and "previous build stays active" in text
    log = Path(text.rsplit("Full log: ", 1)[1].strip())
    assert log.exists()
    assert build.active_build().key == llama_build.key
    assert not list((tmp_path / "cache" / "builds").glob(f"*/{build.STAMP}"))


def test_patch_that_does_not_apply_fails_loudly(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))
    src = _fake_tree(tmp_path / "src", "project(x)\n")
    bad = tmp_path / "0001-bad.patch"
    bad.write_text("what: nothing\n--- a/CMakeLists.txt\n+++ b/CMakeLists.txt\n@@ -1 +1 @@\n-project(y)\n+project(z)\n")
    monkeypatch.setattr(build, "patch_files", lambda: [bad])
    with pytest.raises(LowbitError, match="0001-bad.patch no longer applies"):
        build.patched_source(src, "abc")


def test_patches_apply_and_change_the_cache_key(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))
    src = _fake_tree(tmp_path / "src", "project(x)\n")
    good = tmp_path / "0001-good.patch"
    good.write_text("What: rename\n--- a/CMakeLists.txt\n+++ b/CMakeLists.txt\n@@ -1 +1 @@\n-project(x)\n+project(z)\n")
    monkeypatch.setattr(build, "patch_files", lambda: [good])
    patched = build.patched_source(src, "abc")
    assert (patched / "CMakeLists.txt").read_text() == "project(z)\n"
    assert (src / "CMakeLists.txt").read_text() == "project(x)\n", "the pristine tree is never modified"
    flags = build.cmake_flags("cpu", None, None)
    assert build.build_key("abc", "cpu", flags, [good]) != build.build_key("abc", "cpu", flags, [])


def test_linked_cuda_toolkit_merges_cublas(tmp_path):
    """The toolkit root of links has a real bin/ (so nvcc's TOP is the merged root) and cuBLAS headers/libs."""
    system = tmp_path / "cuda-13.0"
    for d in ("bin", "include", "lib64", "nvvm", "targets/x86_64-linux/include", "targets/x86_64-linux/lib"):
        (system / d).mkdir(parents=True)
    (system / "bin" / "nvcc").write_text("#!/bin/sh\n")
    (system / "include" / "cuda_runtime.h").write_text("")
    (system / "lib64" / "libcudart.so").write_text("")
    wheel = tmp_path / "wheel" / "nvidia" / "cu13"
    (wheel / "include").mkdir(parents=True)
    (wheel / "lib").mkdir()
    (wheel / "include" / "cublas_v2.h").write_text("")
    (wheel / "lib" / "libcublas.so.13").write_text("")
    root = build._linked_toolkit(system, wheel, tmp_path / "tk")
    assert (root / "bin").is_dir() and not (root / "bin").is_symlink()
    assert (root / "bin" / "nvcc").resolve() == (system / "bin" / "nvcc").resolve()
    for header in ("cuda_runtime.h", "cublas_v2.h"):
        assert (root / "include" / header).exists()
        assert (root / "targets" / "x86_64-linux" / "include" / header).exists()
    assert (root / "lib64" / "libcublas.so").resolve() == (wheel / "lib" / "libcublas.so.13").resolve()
    assert build._find_cublas(root)


def test_active_build_stamp_round_trips(llama_build):
    stamp = json.loads((Path(llama_build.directory) / build.STAMP).read_text())
    assert stamp["commit"] == build.LLAMA_CPP_COMMIT or llama_build.source != "sdist"
    assert os.access(llama_build.tool("llama-server"), os.X_OK)


def test_git_source_failure_explains_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path))
    monkeypatch.setattr(build, "LLAMA_CPP_GIT_URL", "https://127.0.0.1:9/ggml-org/llama.cpp")
    with pytest.raises(LowbitError) as exc:
        build.llama_source("git")
    assert "--source sdist" in str(exc.value)
    assert not any((tmp_path / "src").glob("llama.cpp-*")), "no half-cloned tree under the final name"


def test_cached_build_missing_a_target_is_topped_up_in_place(llama_build):
    """A kit update that adds a target rebuilds only that target, in the same build (same key)."""
    tool = llama_build.bin_dir / "llama-tokenize"
    tool.unlink(missing_ok=True)
    again = build.build_llama(backend=llama_build.backend)
    assert again.key == llama_build.key and again.fresh
    assert tool.exists() and build.active_build().key == llama_build.key


def test_build_key_derivation_is_unchanged(llama_build, tmp_path, monkeypatch):
    """The shared cache is keyed by `build_key`: a change in its derivation recompiles llama.cpp everywhere.
    The literal keys were computed with the derivation every existing cache was built with."""
    assert build.build_key(llama_build.commit, llama_build.backend, llama_build.flags, build.patch_files()) \
        == llama_build.key
    monkeypatch.setattr(build, "cpu_fingerprint", lambda: "Test CPU @ 1.00GHz")
    patch = tmp_path / "0001-x.patch"
    patch.write_bytes(b"--- a\n+++ b\n")
    commit = "0c1e57098bba43ac29e6e3b677cdceebdd22334f"
    flags = ["-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON"]
    assert build.build_key(commit, "cpu", flags, [patch]) == "0c1e57098bba-cpu-b04682043407"
    assert build.build_key(commit, "metal", ["-DX=1"], []) == "0c1e57098bba-metal-42d4202c5b80"


def test_two_builds_of_one_key_take_turns(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path))
    final, order = tmp_path / "builds" / "k", []

    def second():
        with build.build_lock(final):
            order.append("second")

    with build.build_lock(final):
        waiter = threading.Thread(target=second)
        waiter.start()
        waiter.join(0.5)
        order.append("first")
    waiter.join(10)
    assert order == ["first", "second"]


def test_a_build_finished_while_waiting_is_reused_not_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path))
    final = tmp_path / "builds" / "k"
    (final / "bin").mkdir(parents=True)
    (final / "bin" / "tool").write_text("")
    (final / "stamp.json").write_text(json.dumps({"key": "k"}))
    args = dict(what="x", title="x", header="", log_path=tmp_path / "log", stamp="stamp.json",
                describe=lambda d, s: pytest.fail("rebuilt a complete build"))
    data, fresh = build.cached_cmake_build(tmp_path / "no-source", final, [], ["tool"], **args)
    assert data == {"key": "k"} and not fresh
    (final / "bin" / "tool").unlink()  # incomplete: built (and here the source is missing, so it fails)
    with pytest.raises(LowbitError, match="the x build failed"):
        build.cached_cmake_build(tmp_path / "no-source", final, [], ["tool"], **args)
    assert not (tmp_path / "builds" / "k.new").exists() and (final / "stamp.json").exists()
