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


def test_a_failing_or_hanging_tool_is_one_error_naming_it(tmp_path):
    """The one runner llama-bench and llama-fit-params go through: a non-zero exit names the tool, its last log
    lines and the command; a timeout says so."""
    import sys

    from lowbit import LowbitError
    from lowbit.toolchain.llama_tools import run_tool

    tool = tmp_path / "llama-fake"
    tool.write_text(f"#!{sys.executable}\nimport sys, time\nprint('bad model', file=sys.stderr)\n"
                    "time.sleep(float(sys.argv[1])); sys.exit(3)\n")
    tool.chmod(0o755)
    with pytest.raises(LowbitError, match=r"(?s)llama-fake exited with 3:\nbad model\ncommand: .*llama-fake 0"):
        run_tool([str(tool), "0"], timeout=30)
    with pytest.raises(LowbitError, match="llama-fake did not finish in 0.5 s; try less: "):
        run_tool([str(tool), "5"], timeout=0.5, hint="; try less")
    # a token piece cut mid-character: replaced, not a UnicodeDecodeError
    out = run_tool([sys.executable, "-c", "import sys; sys.stdout.buffer.write(b'\\xef\\xff ok')"], timeout=30).stdout
    assert out.endswith(" ok") and "\ufffd" in out
