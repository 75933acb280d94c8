"""The quantization quality lab: recipes, KLD parsing, bad inputs refused before the long work, a real run.

Real runs use the r1 replica (random weights: KLD measures numerical error) with a short text.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lowbit import LowbitError
from lowbit.paths import kit_root
from lowbit.run import quality as q

DATA = Path(__file__).with_name("data")
# llama-perplexity --kl-divergence output captured from real runs of this build (work paths shortened)
KLD_LOGS = sorted(DATA.glob("llama-perplexity-kld-*.txt"))
KLD_LOG = DATA / "llama-perplexity-kld-smollm2-Q6_K.txt"


@pytest.fixture(scope="module")
def r1_tensors(llama_build):
    from lowbit.models.replicas import ensure_replica, replica_files

    ensure_replica("r1")
    return q.weight_bpw(replica_files("r1")["Q8_0"])[2]


@pytest.fixture(scope="module")
def types(llama_build):
    return q.quantize_types(str(llama_build.tool("llama-quantize")))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private results cache: each test measures for itself (the replica and build stay shared)."""
    from lowbit.paths import cache_dir

    real = cache_dir()
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    os.symlink(real / "builds", tmp_path / "cache" / "builds")
    if (real / "src").exists():
        os.symlink(real / "src", tmp_path / "cache" / "src")
    (real / "quality" / "models").mkdir(parents=True, exist_ok=True)  # references are shared: made once
    (tmp_path / "cache" / "quality").mkdir()
    os.symlink(real / "quality" / "models", tmp_path / "cache" / "quality" / "models")
    return tmp_path / "cache"


# --- parsing llama-perplexity ---------------------------------------------------------------


@pytest.mark.parametrize("log", KLD_LOGS, ids=lambda p: p.stem)
def test_parses_real_kld_summary(log):
    text = log.read_text()
    stats = q.parse_kld_output(text)
    assert stats["mean_kld"] > 0 and stats["mean_kld_err"] > 0
    assert stats["median_kld"] <= stats["kld_99"] <= stats["kld_999"] <= stats["max_kld"]
    assert 0 <= stats["same_top_pct"] <= 100 and stats["same_top_pct_err"] >= 0
    assert stats["ppl"] > 1 and stats["ppl_base"] > 1

    def value(prefix: str, index: int = 0) -> float:  # the figure printed after the prefix, read by hand
        line = next(ln for ln in text.splitlines() if ln.startswith(prefix))
        return float(line[len(prefix):].replace("±", " ").replace("%", " ").split()[index])

    # the summary block's own figures, so a parser that picks a chunk-table line or the Δp block fails
    assert stats["mean_kld"] == value("Mean    KLD:") and stats["mean_kld_err"] == value("Mean    KLD:", 1)
    assert stats["kld_99"] == value("99.0%   KLD:") and stats["kld_999"] == value("99.9%   KLD:")
    assert stats["max_kld"] == value("Maximum KLD:") and stats["median_kld"] == value("Median  KLD:")
    assert stats["same_top_pct"] == value("Same top p:") and stats["ppl"] == value("Mean PPL(Q)                   :")
    assert stats["ppl_base"] == value("Mean PPL(base)                :")


def test_kld_fixtures_are_real_captures():
    assert len(KLD_LOGS) >= 2
    for log in KLD_LOGS:
        text = log.read_text()
        assert "kl_divergence: computing over" in text and "====== KL divergence statistics ======" in text


def test_truncated_or_broken_kld_output_is_an_error():
    text = KLD_LOG.read_text()
    cut = text[: text.index("====== KL divergence statistics")]
    with pytest.raises(LowbitError, match="mean_kld"):
        q.parse_kld_output(cut)
    broken = "\n".join(ln.replace(ln.split(":")[1].split()[0], "nan") if ln.startswith("Mean    KLD:") else ln
                       for ln in text.splitlines())
    with pytest.raises(LowbitError, match="broken"):
        q.parse_kld_output(broken)
    assert q.parse_final_ppl("Final estimate: PPL = 12.3456 +/- 0.12345\n") == (12.3456, 0.12345)
    with pytest.raises(LowbitError, match="no final PPL"):
        q.parse_final_ppl("llama_perplexity: tokenizing the input ..\n")


# --- recipes ---------------------------------------------------------------------------------


def test_recipe_forms(tmp_path):
    r = q.parse_recipe("q4_k_m")
    assert (r.label, r.base, r.dynamic) == ("Q4_K_M", "Q4_K_M", False)
    ud = q.parse_recipe("ud-iq1_s")
    assert ud.label == "UD-IQ1_S" and ud.base == "IQ1_S" and ud.dynamic
    assert ud.overrides[0] == ("^token_embd\\.weight", "Q4_K")
    # first match wins, as in llama-quantize: the per-layer down_proj line precedes the general one
    downs = [p for p, _t in ud.overrides if "ffn_down_exps" in p]
    assert downs == ["blk\\.[3-5]\\.ffn_down_exps", "ffn_down_exps"]
    inline = q.parse_recipe("IQ1_S:attn_v=q4_k:FFN_DOWN=Q4_K")
    assert inline.overrides == (("attn_v", "Q4_K"), ("ffn_down", "Q4_K"))  # patterns lowercased like llama.cpp
    assert inline.tensor_types_text() == "attn_v=Q4_K\nffn_down=Q4_K\n"
    f = tmp_path / "mine.tensor-types"
    f.write_text("attn_.*=Q6_K\nffn_up=IQ2_XXS\n")
    assert q.parse_recipe(f"IQ2_XXS:{f}").overrides == (("attn_.*", "Q6_K"), ("ffn_up", "IQ2_XXS"))
    for bad, msg in (("", "empty"), ("IQ1_S:attn_v", "PATTERN=TYPE"), ("Q4 K", "not a type name"),
                     ("IQ1_S:=Q4_K", "PATTERN=TYPE")):
        with pytest.raises(LowbitError, match=msg):
            q.parse_recipe(bad)


def test_every_named_recipe_fits_the_r1_replica(r1_tensors, types):
    ud = [q.parse_recipe(n) for n in q.SEED_ORDER]
    q.check_recipes(ud, r1_tensors, types, model="r1", arch="deepseek2")  # no error: types known, layout fits
    with pytest.raises(LowbitError, match="made for dense models"):
        q.check_recipes([q.parse_recipe("DYN-IQ1_S")], r1_tensors, types, model="r1", arch="deepseek2")
    # the seed's description: experts low, down_proj mixed per layer, shared experts and attention higher
    by = {r.label: dict(r.overrides) for r in ud}
    assert by["UD-IQ1_S"]["ffn_gate_exps"] == "IQ1_S" and by["UD-IQ1_S"]["blk\\.[3-5]\\.ffn_down_exps"] == "IQ2_XXS"
    assert by["UD-IQ1_M"]["ffn_down_exps"] == "IQ2_XXS" and by["UD-IQ1_M"]["ffn_up_exps"] == "IQ1_S"
    assert by["UD-IQ2_XXS"]["blk\\.[3-5]\\.ffn_down_exps"] == "Q2_K" and by["UD-IQ2_XXS"]["ffn_up_exps"] == "IQ2_XXS"
    assert by["UD-Q2_K_XL"]["blk\\.[3-5]\\.ffn_down_exps"] == "Q3_K" and by["UD-Q2_K_XL"]["ffn_up_exps"] == "Q2_K"
    assert all(by[n]["ffn_up_shexp"] == "Q6_K" and by[n]["attn_output"] == "Q4_K" for n in by)


def test_bad_recipes_are_refused_with_what_to_fix(r1_tensors, types):
    cases = {
        "Q5_X": "does not know the type Q5_X",
        "IQ1_S:ffn_down_exps=Q9_K": "Q9_K is not a GGML type",
        "IQ1_S:ffn_nope=Q4_K": "matches no tensor of r1",
        "IQ1_S:ffn_down=Q4_K:ffn_down_exps=Q6_K": "only matches tensors an earlier pattern already sets",
        "IQ1_S:attn_(=Q4_K": "not a valid regex",
        "F16:attn=Q4_K": "need a quantized base type",
    }
    for spec, msg in cases.items():
        with pytest.raises(LowbitError, match=msg):
            q.check_recipes([q.parse_recipe(spec)], r1_tensors, types, model="r1")
    with pytest.raises(LowbitError, match="listed twice"):
        q.check_recipes([q.parse_recipe("Q2_K"), q.parse_recipe("q2_k")], r1_tensors, types)
    ggml = q.tensor_type_names()
    assert {"Q4_K", "Q6_K", "IQ2_XXS", "IQ1_S", "TQ2_0"} <= ggml and "Q4_K_M" not in ggml


# --- texts, reference -----------------------------------------------------------------------


def test_builtin_texts_are_disjoint_and_sized():
    calib, evaluation = q.builtin_texts(eval_chars=40_000, calib_chars=20_000)
    assert len(evaluation) >= 40_000 and len(calib) >= 15_000
    assert not q.shared_lines(calib, evaluation)
    assert "pydoc_data.topics" in q.TEXT_SOURCE and "PSF" in q.TEXT_SOURCE


def test_low_bit_reference_is_refused_unless_allowed(llama_build, cache, tmp_path):
    from lowbit.models.replicas import replica_files

    low = tmp_path / "r1-Q2_K-pure.gguf"  # every weight 2.6 bpw: what a 1.58-bit R1 download looks like
    subprocess.run([llama_build.tool("llama-quantize"), "--allow-requantize", "--pure", replica_files("r1")["Q8_0"],
                    low, "Q2_K", "2"], check=True, capture_output=True)
    started = __import__("time").monotonic()
    with pytest.raises(LowbitError, match="allow-quantized-reference") as err:
        q.prepare_reference(str(low))
    assert "2.6" in str(err.value) and __import__("time").monotonic() - started < 10  # refused before any work
    assert not list((cache / "quality" / "models").glob("r1-Q2_K-pure*"))


def test_text_too_short_and_overlapping_texts_fail_before_any_work(cache, tmp_path, llama_build):
    with pytest.raises(LowbitError, match="too short"):
        q.run_quality("r1", ["Q8_0"], tokens=2_000_000, ctx=512)
    with pytest.raises(LowbitError, match="2 x ctx"):
        q.run_quality("r1", ["Q8_0"], tokens=100, ctx=128)
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("one line that is long enough to count as shared text\nother\n" * 50)
    b.write_text("one line that is long enough to count as shared text\n" * 50)
    with pytest.raises(LowbitError, match="share lines"):
        q.run_quality("r1", ["Q8_0"], tokens=256, ctx=128, eval_text=str(a), calibration_text=str(b))
    assert not list((cache / "quality").glob("work-*")) and not (cache / "quality" / "results").exists()


def test_cli_bad_pattern_is_a_clear_error_exit_2():
    proc = subprocess.run([sys.executable, "-m", "lowbit", "lowbit.run.quality:quality_command",
                           json.dumps({"model": "r1", "recipe": ["IQ1_S:ffn_nope=Q4_K"], "tokens": 256, "ctx": 128})],
                          capture_output=True, text=True, cwd=kit_root())
    assert proc.returncode == 2, proc.stderr
    assert "error:" in proc.stderr and "ffn_nope" in proc.stderr and "Traceback" not in proc.stderr


# --- a real run -------------------------------------------------------------------------------


def test_pareto_and_equal_size_logic():
    rows = [{"recipe": "A", "dynamic": False, "size": 100, "mean_kld": 0.5},
            {"recipe": "B", "dynamic": False, "size": 200, "mean_kld": 0.1},
            {"recipe": "C", "dynamic": False, "size": 150, "mean_kld": 0.6},  # bigger and worse than A
            {"recipe": "D", "dynamic": True, "size": 102, "mean_kld": 0.2}]
    assert q.pareto_front(rows) == ["A", "D", "B"]
    (c,) = q.equal_size_comparison(rows)
    assert c["uniform"] == "A" and c["equal"] and c["winner"] == "D" and math.isclose(c["kld_ratio"], 2.5)
    assert q.seed_order_holds(rows) is None


@pytest.mark.slow
def test_r1_ladder_measured_cached_and_plotted(cache, tmp_path):
    recipes = ["Q8_0", "Q2_K", "UD-IQ1_S"]
    report = q.run_quality("r1", recipes, tokens=512, ctx=128, calibration_chunks=2)
    assert [r["recipe"] for r in report.rows] == recipes
    by = {r["recipe"]: r for r in report.rows}
    assert by["Q8_0"]["size"] > by["Q2_K"]["size"] and by["Q8_0"]["bpw"] > by["UD-IQ1_S"]["bpw"]
    assert by["Q8_0"]["mean_kld"] < by["Q2_K"]["mean_kld"]  # 8 bits cost less than 2.6
    assert "numerical error, not knowledge" in report.reference.note
    assert not list((cache / "quality").glob("work-*")), "base logits and quants are deleted after use"
    assert len(list((cache / "quality" / "results").glob("*.log"))) == 3
    again = q.run_quality("r1", recipes, tokens=512, ctx=128, calibration_chunks=2)
    assert again.rows == report.rows and set(again.seconds) == {"total"}  # all cached: no stage ran
    out = q.save_report(report, tmp_path / "out")
    assert (out / "kld_vs_size.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((out / "results.json").read_text())
    assert saved["pareto_front"] == q.pareto_front(report.rows)
    assert "Pareto front" in (out / "results.md").read_text()


def test_task_declares_repeatable_recipe_flag():
    out = subprocess.run([sys.executable, "-m", "invoke", "--help", "quality"], capture_output=True, text=True,
                         cwd=kit_root())
    assert out.returncode == 0, out.stderr
    for flag in ("--model", "--recipe", "--tokens", "--ctx", "--allow-quantized-reference", "--eval-text",
                 "--keep-quants"):
        assert flag in out.stdout
