"""`invoke compare`: the seeds' prompts on catalog models, graded side by side (kept tiny: 8 tokens)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lowbit import LowbitError
from lowbit.lessons import compare
from lowbit.paths import kit_root


def test_sampling_is_deepseeks_from_the_catalog():
    assert compare.sampling_defaults() == {"temp": 0.6, "top_p": 0.95, "min_p": 0.01, "seed": 3407}


def test_bad_prompts_and_budgets_are_refused_before_any_model_loads():
    with pytest.raises(LowbitError, match="unknown prompt.*chickens"):
        compare.compare("smollm2", "chikens")
    with pytest.raises(LowbitError, match="max_tokens"):
        compare.compare("smollm2", "oneplusone", max_tokens=0)


@pytest.mark.slow
def test_compare_writes_table_plot_and_a_json_record_that_loads_back(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lowbit", "lowbit.lessons.compare:compare_command", json.dumps(
        {"models": "smollm2,r1", "prompts": "oneplusone,chickens", "max_tokens": 8, "threads": 2,
         "out": str(tmp_path)})], capture_output=True, text=True, cwd=kit_root(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "[4/4]" in proc.stdout and "passed" in proc.stdout
    result = compare.load(tmp_path / "compare.json")
    assert result.models == ["smollm2", "r1"] and result.prompts == ["oneplusone", "chickens"]
    assert result.sampling["temp"] == 0.6 and len(result.cells) == 4
    for cell in result.cells:
        assert 0 < cell.generated_tokens <= 8 and cell.tokens_per_s > 0
        assert (tmp_path / cell.answer_file).read_text(encoding="utf-8")  # the raw answer is kept
        assert isinstance(cell.passed, bool) and cell.detail
    assert (tmp_path / "compare.png").stat().st_size > 5000
    table = (tmp_path / "table.md").read_text(encoding="utf-8")
    assert table.count("\n| smollm2 |") >= 1 and "| r1 |" in table


def test_a_model_that_is_not_on_disk_fails_before_anything_runs_and_says_how_to_fetch_it(tmp_path):
    with pytest.raises(LowbitError, match="invoke fetch --model deepseek-r1"):
        compare.compare("deepseek-r1,smollm2", "oneplusone", max_tokens=4, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()
