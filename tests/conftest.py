"""Shared fixtures. Tests run against the real llama.cpp build and real replicas prepared by `invoke setup`."""

from __future__ import annotations

import os
import signal

import pytest

from lowbit import LowbitError


@pytest.fixture(scope="session", autouse=True)
def _private_hf_cache(tmp_path_factory):
    """`fetch` reuses and fills the Hugging Face cache: the suite (module fixtures, notebooks) never touches the real
    one."""
    saved = {k: os.environ.get(k) for k in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")}
    os.environ["HF_HUB_CACHE"] = str(tmp_path_factory.mktemp("hf-hub-cache"))
    os.environ.pop("HUGGINGFACE_HUB_CACHE", None)
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(autouse=True)
def _fresh_hf_cache(monkeypatch, tmp_path_factory):
    """Each test starts with an empty Hugging Face cache: files one test fetched are not another's cache hits."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path_factory.mktemp("hf-hub-cache")))


@pytest.fixture(scope="session")
def llama_build():
    """The active llama.cpp build; the suite needs it (`invoke setup` makes it)."""
    from lowbit.toolchain.build import active_build

    try:
        return active_build()
    except LowbitError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def toy_model(tmp_path_factory, llama_build):
    """The toy reasoner GGUF (tests/toy_reasoner.py), built once for every test file that serves it."""
    from toy_reasoner import build_toy_reasoner

    return build_toy_reasoner(tmp_path_factory.mktemp("toy-reasoner"))


def gpu_available() -> bool:
    from lowbit.toolchain.build import gpu_names

    return bool(gpu_names())


requires_gpu = pytest.mark.skipif(not gpu_available(), reason="needs an NVIDIA GPU (nvidia-smi lists none)")


def default_sigint() -> None:
    """`preexec_fn` for a child a test interrupts with SIGINT: the signal back to its default. A shell that starts
    a job in the background without job control (`cmd &` in a script) has the job ignore SIGINT, and a Python
    that starts with SIGINT ignored installs no KeyboardInterrupt handler, so the test's Ctrl-C would reach
    nothing: the CI runner's way of starting must not decide the test."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)

