"""The model catalog: required entries, replica links, --model resolution, and `invoke models` output."""

from __future__ import annotations

import pytest

from lowbit import LowbitError
from lowbit.models.catalog import ANY_KIND, HF_KIND, locate, resolve_model
from lowbit.models.entries import find_quant, load_catalog, replica_for
from lowbit.models.replicas import REPLICAS


def test_catalog_has_the_models_the_lessons_use():
    cat = load_catalog()
    r1 = cat["deepseek-r1"]
    sizes = {q["name"]: q["size_gb"] for q in r1["quants"]}
    assert sizes == {"UD-IQ1_S": 131, "UD-IQ1_M": 158, "UD-IQ2_XXS": 183, "UD-Q2_K_XL": 212}
    assert r1["layers"] == 61 and r1["arch"] == "deepseek2"
    assert {q["name"] for q in cat["deepseek-r1-0528"]["quants"]} == {
        "TQ1_0", "UD-IQ1_S", "UD-IQ1_M", "UD-IQ2_XXS", "UD-Q2_K_XL"}
    distills = {e["original_repo"] for e in cat.values() if e["name"].startswith("r1-distill-")}
    assert distills == {f"deepseek-ai/DeepSeek-R1-Distill-{m}" for m in
                        ("Qwen-1.5B", "Qwen-7B", "Qwen-14B", "Qwen-32B", "Llama-8B", "Llama-70B")}
    bitnet_repos = {e.get("repo") for e in cat.values() if e.get("arch") == "bitnet-b1.58"}
    assert {"microsoft/bitnet-b1.58-2B-4T-bf16", "microsoft/bitnet-b1.58-2B-4T-gguf"} <= bitnet_repos


def test_every_real_entry_names_an_existing_replica_and_quant():
    cat = load_catalog()
    assert {e["name"] for e in cat.values() if e["kind"] == "replica"} == set(REPLICAS)
    for entry in cat.values():
        if entry["kind"] != "hub":
            continue
        assert entry["replica"] in REPLICAS, entry["name"]
        replica_quants = {q["name"] for q in cat[entry["replica"]]["quants"]}
        for q in entry["quants"]:
            assert q["files"], (entry["name"], q["name"])
            assert q["replica_quant"] in replica_quants, (entry["name"], q["name"])
        assert find_quant(entry)["name"] == entry["default_quant"]
        for field in ("repo", "arch", "layers", "template"):
            assert entry.get(field), (entry["name"], field)


def test_resolve_names_aliases_repos_and_paths(tmp_path):
    r1 = resolve_model("r1")
    assert r1.is_replica and r1.entry["replica_of"] == "deepseek-r1"
    assert resolve_model("r1-replica").name == "r1"
    real = resolve_model("unsloth/DeepSeek-R1-GGUF")
    assert real.name == "deepseek-r1" and not real.is_replica and replica_for(real.entry) == "r1"
    other = resolve_model("someone/Some-Model-GGUF")
    assert other.entry is None and other.repo_id == "someone/Some-Model-GGUF"
    gguf = tmp_path / "x.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve_model(str(gguf)).path == gguf.resolve()


def test_unknown_names_suggest_close_catalog_names():
    with pytest.raises(LowbitError) as err:
        resolve_model("deepseek-r2")
    assert "deepseek-r1" in str(err.value)
    with pytest.raises(LowbitError) as err:
        find_quant(load_catalog()["deepseek-r1"], "IQ1_S")
    assert "UD-IQ1_S" in str(err.value)


def test_models_table_is_not_truncated_when_piped(capsys):
    from lowbit.models.catalog import models_command

    assert models_command() == 0
    out = capsys.readouterr().out
    for entry in load_catalog().values():
        assert entry["name"] in out
        if entry.get("repo"):
            assert entry["repo"] in out
    assert "UD-IQ1_S 131 GB" in out and "UD-Q2_K_XL 251 GB" in out
    assert "random weights: the text is meaningless" in out
    assert "…" not in out


def test_fetched_hub_model_resolves_to_its_first_shard(tmp_path, monkeypatch):
    """After `invoke fetch`, `--model deepseek-r1` finds the default quant's first shard on disk."""
    monkeypatch.setenv("LOWBIT_MODELS", str(tmp_path))
    entry = load_catalog()["deepseek-r1"]
    assert resolve_model("deepseek-r1").path is None
    folder = tmp_path / entry["repo"] / "DeepSeek-R1-UD-IQ1_M"
    folder.mkdir(parents=True)
    for k in (1, 2):
        (folder / f"DeepSeek-R1-UD-IQ1_M-0000{k}-of-00002.gguf").write_bytes(b"GGUF")
    assert resolve_model("deepseek-r1").path == folder / "DeepSeek-R1-UD-IQ1_M-00001-of-00002.gguf"
    default = tmp_path / entry["repo"] / "DeepSeek-R1-UD-IQ1_S"
    default.mkdir()
    (default / "DeepSeek-R1-UD-IQ1_S-00001-of-00003.gguf").write_bytes(b"GGUF")
    assert resolve_model("deepseek-r1").path == default / "DeepSeek-R1-UD-IQ1_S-00001-of-00003.gguf"


def test_locate_finds_the_file_behind_any_model(tmp_path):
    folder = tmp_path / "split"
    folder.mkdir()
    for part in ("m-00002-of-00002.gguf", "m-00001-of-00002.gguf"):
        (folder / part).write_bytes(b"GGUF")
    assert locate(str(folder)) == folder / "m-00001-of-00002.gguf"  # a folder: its set's first shard
    assert locate(str(folder), kind=ANY_KIND) == folder
    single = folder / "m-00001-of-00002.gguf"
    assert locate(str(single)) == single
    with pytest.raises(LowbitError, match="not an HF checkpoint folder"):
        locate(str(single), kind=HF_KIND)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LowbitError, match="no GGUF file in"):
        locate(str(empty))


def test_locate_says_how_to_get_a_missing_model(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_MODELS", str(tmp_path))  # nothing fetched or built here
    with pytest.raises(LowbitError, match=r"invoke fetch --model deepseek-r1.*--sizes-from"):
        locate("deepseek-r1", hint="; or plan from its size with --sizes-from SIZE:LAYERS")
    with pytest.raises(LowbitError, match="invoke replicas"):
        locate("r1")
    with pytest.raises(LowbitError, match="deepseek-r1"):  # did you mean
        locate("deepseek-r2")
    with pytest.raises(ValueError, match="kind"):
        locate("r1", kind="safetensors")
