"""llama.cpp's own memory projection: parsing, and the real tool when the build has it."""

from __future__ import annotations

import pytest

from lowbit import LowbitError
from lowbit.run import llama_fit


def test_parse_print_reads_devices_and_host():
    out = llama_fit.parse_print("some log line\nCUDA0 1200 64 300\nHost 97 12 103\n")
    assert out["Host"] == {"model": 97 * 2**20, "context": 12 * 2**20, "compute": 103 * 2**20}
    assert out["CUDA0"]["compute"] == 300 * 2**20


def test_parse_print_without_host_line_is_an_error():
    with pytest.raises(LowbitError, match="no host memory line"):
        llama_fit.parse_print("error: something else\n")


def test_real_tool_projects_the_model_buffer(llama_build, tmp_path):
    """On a small synthetic model: llama.cpp's model buffer is the weights' bytes, the KV buffer grows with -c."""
    if llama_fit.available() is None:
        pytest.fail("the active build lacks llama-fit-params: run `invoke build-llama`")
    from lowbit.run import predict as P

    path = P.calibration_model(tmp_path / "m.gguf", 2)
    w = P.workload(path)
    small, big = llama_fit.projected(path, 256), llama_fit.projected(path, 2048)
    weights = sum(t.n_bytes for t in w.tensors if not t.name.startswith("output(tied"))
    assert abs(small["Host"]["model"] - weights) <= 2**20  # MiB rounding
    assert big["Host"]["context"] > small["Host"]["context"]
    assert llama_fit.fitted_args(path, 512).startswith("-c 512 -ngl")
