"""The helpers the lessons call (lowbit/lessons/*), on inputs made here: no model, no kernel."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lowbit import LowbitError
from lowbit.lessons.bitnet_cpu import MEMORY_COLUMNS, memory_table
from lowbit.lessons.fetch_merge import scratch_dir
from lowbit.lessons.padding_fix import scratch_tokenizer
from lowbit.lessons.serve_scale import weight_placement
from lowbit.lessons.template_ids import received_table


def test_received_table_counts_bos_and_warnings():
    runs = {"double BOS": {"prompt_ids": [7, 7, 3, 4], "warnings": ["W two BOS"]},
            "right": {"prompt_ids": [7, 3, 4], "warnings": []}}
    columns, rows = received_table(runs, bos_id=7)
    assert columns[:3] == ["prompt", "tokens", "BOS"]
    assert rows == [("double BOS", 4, 2, "7 7 3 4", True), ("right", 3, 1, "7 3 4", False)]


def test_weight_placement_reads_every_device_buffer_of_a_llama_cpp_log():
    log = (
        "load_tensors: offloading 3 repeating layers to GPU\n"
        "load_tensors:   CPU_Mapped model buffer size =    17.75 MiB\n"
        "load_tensors: RPC0[127.0.0.1:48643] model buffer size =     2.45 MiB\n"
        "llama_context:        CPU  output buffer size =     0.49 MiB\n"
        "load_tensors: RPC0[127.0.0.1:56867] model buffer size =    28.24 MiB\n"
    )
    assert weight_placement(log) == [("CPU_Mapped", 17.75), ("RPC0[127.0.0.1:48643]", 2.45),
                                     ("RPC0[127.0.0.1:56867]", 28.24)]
    assert weight_placement("no buffers here") == []


def test_memory_table_in_gb_with_the_papers_row():
    result = {"memory": {"TQ2_0": {"weights": 500e6, "embeddings": 250e6, "kv": 10e6, "buffers": 40e6,
                                   "peak_rss": 800e6}}}
    columns, rows = memory_table(result)
    assert columns == MEMORY_COLUMNS and len(rows[0]) == len(columns)
    assert rows[0] == ("TQ2_0", "0.500", "0.250", "0.010", "0.040", "0.800")
    assert rows[-1][0].startswith("paper") and rows[-1][2] == "not counted"


def test_scratch_tokenizer_copies_only_tokenizer_files_and_refuses_a_folder_without_one(tmp_path):
    src = tmp_path / "tok"
    src.mkdir()
    (src / "tokenizer.json").write_text("{}")
    (src / "tokenizer_config.json").write_text("{}")
    (src / "model.safetensors").write_text("weights")
    copy = scratch_tokenizer(str(src), tmp_path / "copy")
    assert sorted(p.name for p in copy.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    with pytest.raises(LowbitError, match="no tokenizer.json"):
        scratch_tokenizer(str(tmp_path / "copy" / ".."), tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_scratch_dir_is_fresh_inside_the_run_folder_and_relative(tmp_path, monkeypatch):
    from lowbit.lessons.runner import RUN_DIR_ENV

    monkeypatch.setenv(RUN_DIR_ENV, str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    a, b = scratch_dir("lesson-"), scratch_dir("lesson-")
    assert a != b and not a.is_absolute() and a.is_dir()
    assert Path(os.path.abspath(a)).parent == tmp_path / "run"
