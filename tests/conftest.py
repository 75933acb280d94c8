"""Shared fixtures. Tests run against the real llama.cpp build and real replicas prepared by `invoke setup`."""

from __future__ import annotations

import pytest

from lowbit import LowbitError


@pytest.fixture(scope="session")
def llama_build():
    """The active llama.cpp build; the suite needs it (`invoke setup` makes it)."""
    from lowbit.build import active_build

    try:
        return active_build()
    except LowbitError as exc:
        pytest.fail(str(exc))


def gpu_available() -> bool:
    from lowbit.build import gpu_names

    return bool(gpu_names())


requires_gpu = pytest.mark.skipif(not gpu_available(), reason="needs an NVIDIA GPU (nvidia-smi lists none)")
