"""Planner and header reader, on deepseek2-style GGUFs written with gguf-py's GGUFWriter."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from lowbit import LowbitError
from lowbit.files import gguf_header as gguf_meta
from lowbit.files.gguf_layout import write_deepseek2
from lowbit.run import plan

GiB = 1024**3


@pytest.fixture(scope="module")
def ds2(tmp_path_factory) -> Path:
    return write_deepseek2(tmp_path_factory.mktemp("ds2") / "ds2.gguf")[0]


@pytest.fixture(scope="module")
def ds2_split(tmp_path_factory) -> list[Path]:
    return write_deepseek2(tmp_path_factory.mktemp("ds2s") / "ds2s.gguf", split_max_tensors=40)


# --- header reader ---------------------------------------------------------------------------


def test_groups_follow_tensor_names(ds2):
    meta = gguf_meta.read_model(ds2)
    assert (meta.arch, meta.n_layers, meta.n_ctx_train, meta.n_expert, meta.n_expert_used) == (
        "deepseek2",
        6,
        4096,
        16,
        4,
    )
    assert meta.is_mla and meta.n_head_kv == 1 and meta.key_length == 576
    dense, moe = meta.layers[0], meta.layers[1]
    assert dense.dense_ffn > 0 and dense.routed_experts == 0 and dense.shared_experts == 0
    assert (
        moe.dense_ffn == 0
        and moe.routed_experts > moe.shared_experts > 0
        and moe.attention == dense.attention
    )
    assert meta.embeddings > 0 and meta.output > meta.embeddings  # Q6_K output vs Q4_K embeddings
    # every tensor byte is accounted for exactly once, and the data region is the file's bulk
    from gguf import GGUFReader

    reader = GGUFReader(ds2)
    assert meta.tensor_bytes == sum(int(t.n_bytes) for t in reader.tensors)
    assert meta.file_bytes == ds2.stat().st_size > meta.tensor_bytes


def test_split_set_read_as_one_and_missing_part_named(ds2_split, ds2, tmp_path):
    assert len(ds2_split) > 2
    whole, split = gguf_meta.read_model(ds2), gguf_meta.read_model(ds2_split[1])  # any shard names the set
    assert split.layers == whole.layers and split.shards == [str(p) for p in ds2_split]
    assert (split.embeddings, split.output) == (whole.embeddings, whole.output)
    # a set with a missing part fails before anything is read, naming the part
    for p in ds2_split:
        os.link(p, tmp_path / p.name)
    (tmp_path / ds2_split[1].name).unlink()
    with pytest.raises(LowbitError, match=ds2_split[1].name):
        gguf_meta.read_model(tmp_path / ds2_split[0].name)


def test_truncated_shard_is_a_clear_error(ds2, tmp_path):
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(ds2.read_bytes()[:5000])
    with pytest.raises(LowbitError, match="truncated"):
        gguf_meta.read_model(bad)


def test_no_tensor_data_is_read(tmp_path):
    """A >1 GiB-data model (sparse) is read with a handful of page faults: only headers are touched."""
    path = write_deepseek2(
        tmp_path / "big.gguf", n_layers=8, n_embd=2048, n_expert=128, n_ff_exp=1024, n_vocab=32000
    )[0]
    assert path.stat().st_size > 1 * GiB
    code = (
        f"import resource; from lowbit.files.gguf_header import read_model\n"
        f"r0 = resource.getrusage(resource.RUSAGE_SELF)\n"
        f"m = read_model({str(path)!r})\n"
        f"r1 = resource.getrusage(resource.RUSAGE_SELF)\n"
        f"print(r1.ru_minflt - r0.ru_minflt + r1.ru_majflt - r0.ru_majflt, m.tensor_bytes)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**os.environ}
    ).stdout.split()
    faults, tensor_bytes = int(out[0]), int(out[1])
    pages = tensor_bytes // resource.getpagesize()
    assert pages > 200_000 and faults < pages / 50  # touching the data would fault once per page


# --- planner ----------------------------------------------------------------------------------


def test_seed_table_through_the_rule():
    rows = plan.seed_table_rows()
    assert len(rows) == 12 and sum(r["agree"] for r in rows) == 11
    (bad,) = [r for r in rows if not r["agree"]]
    assert (bad["file_gb"], bad["vram"], bad["table"], bad["rule"]) == (212, "2x80 GB", 32, 42)
    assert plan.rule_layers(128, 212, 61) == 32  # the explanation given for the 12th entry
    assert "128" in plan.SEED_DISAGREEMENT


def test_best_ngl_is_the_largest_that_fits(ds2):
    meta = gguf_meta.read_model(ds2)
    seen = set()
    for vram in (0.6, 0.62, 0.64, 0.66, 0.7):
        p = plan.make_plan(meta, [vram], ram_gb=16, ctx=2048)
        ngl = p.option("ngl")
        seen.add(ngl.n_gpu_layers)
        budget = int(vram * GiB) - plan.GPU_RESERVE
        assert ngl.vram_bytes <= budget or ngl.n_gpu_layers == 0
        if ngl.n_gpu_layers <= meta.n_layers:  # one more layer would not fit
            more = plan.choose(p, f"ngl={ngl.n_gpu_layers + 1}")
            assert more.flags[:2] == ["-ngl", str(ngl.n_gpu_layers + 1)]
            last = (
                meta.layers[meta.n_layers - ngl.n_gpu_layers - 1]
                if ngl.n_gpu_layers < meta.n_layers
                else None
            )
            extra = (last.total + p.kv_bytes_per_layer) if last else meta.output
            if ngl.n_gpu_layers == 0:
                extra += p.compute_bytes
            assert ngl.vram_bytes + extra > budget
    assert len(seen) >= 4 and 0 < min(seen - {0}) < meta.n_layers  # partial offloads were exercised


def test_experts_cpu_brings_back_expert_layers_as_vram_grows(ds2):
    meta = gguf_meta.read_model(ds2)
    ref = plan.make_plan(meta, [4], ram_gb=16, ctx=1024)
    base = ref.non_expert_bytes + ref.kv_bytes + ref.compute_bytes + plan.GPU_RESERVE
    per_layer = meta.layers[-1].routed_experts

    def at(k: float) -> plan.Option:  # VRAM for the non-expert part plus k expert layers
        return plan.make_plan(meta, [(base + k * per_layer) / GiB], ram_gb=16, ctx=1024).option("experts-cpu")

    none, two, all_ = at(0.5), at(2.5), ref.option("experts-cpu")
    assert none.fits and none.expert_layers_on_gpu == 0 and none.flags[2:4] == ["-ot", plan.EXPERTS_CPU_REGEX]
    assert two.expert_layers_on_gpu == 2 and all_.expert_layers_on_gpu == 5
    i = two.flags.index("--n-cpu-moe")  # the experts of the first N blocks stay on the CPU
    assert int(two.flags[i + 1]) == meta.n_layers - 2
    assert "--n-cpu-moe" not in all_.flags and "-ot" not in all_.flags  # everything came back
    assert none.vram_bytes < two.vram_bytes <= (base + 2.5 * per_layer) - plan.GPU_RESERVE
    assert none.est_tokens_per_s < two.est_tokens_per_s < all_.est_tokens_per_s
    # with experts on the CPU the GPU holds more of what each token reads than plain -ngl at the same VRAM
    p = plan.make_plan(meta, [(base + 0.5 * per_layer) / GiB], ram_gb=16, ctx=1024)
    assert p.option("ngl").n_gpu_layers < meta.n_layers
    assert none.est_tokens_per_s > p.option("ngl").est_tokens_per_s


def test_mla_cache_is_k_only_and_scales_with_ctx_and_type(ds2, tmp_path):
    meta = gguf_meta.read_model(ds2)
    assert plan.kv_bytes_per_layer(meta, 1024, "f16", "f16") == 576 * 1024 * 2
    assert plan.kv_bytes_per_layer(meta, 1024, "q4_0", "f16") == 576 * 1024 * 18 // 32
    legacy = gguf_meta.read_model(write_deepseek2(tmp_path / "legacy.gguf", mla=False)[0])
    assert not legacy.is_mla
    assert plan.kv_bytes_per_layer(legacy, 1024, "f16", "f16") == 16 * (192 + 128) * 1024 * 2


def test_multi_gpu_and_cpu_only(ds2):
    meta = gguf_meta.read_model(ds2)
    p = plan.make_plan(meta, [0.7, 0.7], ram_gb=16, ctx=1024, threads=3)
    multi = p.option("multi-gpu")
    assert multi.flags[multi.flags.index("--tensor-split") + 1] == "0.7,0.7"
    assert multi.n_gpu_layers >= p.option("ngl").n_gpu_layers
    cpu = p.option("cpu-only")
    assert cpu.flags[:4] == ["-ngl", "0", "-t", "3"] and cpu.vram_bytes == 0
    p0 = plan.make_plan(meta, [], ram_gb=16, ctx=1024)
    assert [o.name for o in p0.options] == ["unsloth-rule", "cpu-only"] and p0.recommended == "cpu-only"
    assert plan.make_plan(meta, [], ram_gb=16).option("cpu-only").threads == plan.physical_cores()


def test_bad_input_is_refused(ds2):
    meta = gguf_meta.read_model(ds2)
    with pytest.raises(LowbitError, match="trained context"):
        plan.make_plan(meta, [8], ctx=meta.n_ctx_train + 1)
    tiny = plan.make_plan(meta, [0.52], ram_gb=16, ctx=4096)
    assert not tiny.option("experts-cpu").fits
    with pytest.raises(LowbitError, match="non-expert tensors"):
        plan.choose(tiny, "experts-cpu")
    with pytest.raises(LowbitError, match="cache type"):
        plan.make_plan(meta, [8], cache_type_k="q3_0")
    with pytest.raises(LowbitError, match="needs a GPU"):
        plan.choose(plan.make_plan(meta, [], 16), "experts-cpu")
    with pytest.raises(LowbitError, match="SIZE:LAYERS"):
        plan.sizes_meta("131GB")


def test_sizes_from_and_file_larger_than_memory_warning():
    p = plan.make_plan(plan.sizes_meta("131GB:61"), [24], ram_gb=64)
    assert p.option("unsloth-rule").n_gpu_layers == 7
    assert p.option("ngl").n_gpu_layers == int((24 * GiB - plan.GPU_RESERVE) // (131e9 / 61))
    assert any("larger than RAM + VRAM" in w for w in p.warnings)
    assert not any(
        "larger than RAM" in w for w in plan.make_plan(plan.sizes_meta("131GB:61"), [24], 128).warnings
    )


def test_json_output_has_the_issue_keys(ds2):
    env = {**os.environ, "PYTHONPATH": str(Path(plan.__file__).resolve().parents[1])}
    args = {"model": str(ds2), "vram": [1, 1], "ram": 16, "ctx": 1024, "json": True}
    out = subprocess.run(
        [sys.executable, "-m", "lowbit", "lowbit.run.plan:plan_command", json.dumps(args)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    data = json.loads(out.stdout)  # stdout is only JSON
    assert data["model"] == str(ds2)
    names = {o["name"] for o in data["options"]}
    assert names == {"unsloth-rule", "ngl", "experts-cpu", "multi-gpu", "cpu-only"}
    for o in data["options"]:
        assert {
            "name",
            "vram_gb",
            "n_gpu_layers",
            "vram_bytes",
            "ram_bytes",
            "est_tokens_per_s",
            "flags",
        } <= set(o)


def test_flags_for_api(ds2):
    flags = plan.flags_for("experts-cpu", str(ds2), vram_gb=[4], ram_gb=16, ctx=1024)
    assert flags[:2] == ["-ngl", "7"] and "--ctx-size" in flags
    assert plan.flags_for("ngl=3", str(ds2), vram_gb=[4], ctx=1024)[:2] == ["-ngl", "3"]
    assert plan.flags_for("auto", str(ds2), vram_gb=[], ctx=1024)[:2] == ["-ngl", "0"]
    with pytest.raises(LowbitError, match="at most"):
        plan.flags_for("ngl=99", str(ds2), vram_gb=[4], ctx=1024)


@pytest.mark.slow
def test_lesson_04_runs_with_parameters(tmp_path):
    """The lesson's parameter interface, through papermill: CPU-only plan, a short run, the final checks."""
    import papermill

    nb = Path(__file__).resolve().parents[1] / "notebooks" / "04_gpu_offload.ipynb"
    out = tmp_path / "04.ipynb"
    papermill.execute_notebook(
        str(nb),
        str(out),
        parameters={"vram": [], "ram": 16.0, "n_predict": 8},
        kernel_name="lowbit",
        cwd=str(nb.parent),
        progress_bar=False,
    )
    import nbformat

    text = "".join(
        o.get("text", "")
        for c in nbformat.read(out, 4).cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
    )
    assert "11 of 12 agree" in text and "recommended: cpu-only" in text and text.rstrip().endswith("ok")


def test_r1_true_shape_beats_the_rule(tmp_path):
    """R1's real dimensions (header-only, ~139 GB of sparse data): per-layer sizes vs the rule, 24 GB."""
    from lowbit.files.gguf_layout import r1_header

    meta = gguf_meta.read_model(r1_header(tmp_path))
    assert (meta.n_layers, meta.n_expert, meta.n_expert_used, len(meta.shards)) == (61, 256, 8, 3)
    assert meta.layers[0].routed_experts == 0 < meta.layers[3].routed_experts  # 3 dense layers lead
    assert meta.layers[3].total > 5 * meta.layers[0].total
    p = plan.make_plan(meta, [24], ram_gb=128, ctx=8192, cache_type_k="q4_0")
    assert p.kv_bytes == 61 * 576 * 8192 * 18 // 32  # MLA: 576 K values per token and layer, no V
    rule, ngl, exp = p.option("unsloth-rule"), p.option("ngl"), p.option("experts-cpu")
    assert ngl.fits and ngl.n_gpu_layers > rule.n_gpu_layers  # the rule's -4 is slack the file does not need
    assert exp.fits and exp.expert_layers_on_gpu > 0 and exp.est_tokens_per_s > 2 * ngl.est_tokens_per_s
    assert p.recommended == "experts-cpu"


def test_header_reader_skims_long_arrays_like_gguf_py():
    """The bounded header reader and gguf-py's GGUFReader agree on offsets, keys and array lengths, with
    the long string arrays skimmed (not decoded) and numeric ones read."""
    import numpy as np
    from gguf import GGUFReader

    from lowbit.toolchain.build import sdist_tree

    vocab = sdist_tree() / "vendor/llama.cpp/models/ggml-vocab-gpt-2.gguf"
    fast, ref = gguf_meta.read_header(vocab, arrays=gguf_meta.NUMERIC_ARRAYS), GGUFReader(vocab)
    assert fast.data_offset == ref.data_offset
    assert list(fast.kv) == [k for k in ref.fields if not k.startswith("GGUF.")]
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"):
        assert fast.lengths[key] == len(ref.fields[key].data) > 4096
    assert fast.value("tokenizer.ggml.tokens") is None  # string arrays are skimmed in this mode
    assert np.array_equal(
        fast.value("tokenizer.ggml.token_type"), ref.fields["tokenizer.ggml.token_type"].contents()
    )
    assert fast.value("tokenizer.ggml.model") == "gpt2"
