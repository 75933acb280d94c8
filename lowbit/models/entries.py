"""The model catalog (`models.yaml`): its entries and their fields, read once. `lowbit.models.catalog` resolves
a `--model` against it."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

from lowbit import LowbitError
from lowbit.paths import models_dir

CATALOG_FILE = Path(__file__).with_name("models.yaml")


@lru_cache(maxsize=1)
def _catalog_data() -> dict:
    return yaml.safe_load(CATALOG_FILE.read_text())


@lru_cache(maxsize=1)
def load_catalog() -> dict[str, dict]:
    """Catalog entries by name (see models.yaml for the fields)."""
    return {entry["name"]: entry for entry in _catalog_data()["models"]}


def sampling_defaults() -> dict[str, float]:
    """DeepSeek's recommended sampling for R1 (temp, top_p, min_p, seed), as the catalog's defaults hold it."""
    return dict(_catalog_data()["defaults"]["deepseek-r1-sampling"])


def sampling_flags(sampling: dict | None = None) -> list[str]:
    """`sampling` (DeepSeek's recommendation by default) as llama.cpp flags: --temp, --top-p, --min-p, --seed."""
    s = sampling or sampling_defaults()
    return ["--temp", str(s["temp"]), "--top-p", str(s["top_p"]), "--min-p", str(s["min_p"]), "--seed", str(s["seed"])]


# The one place the kit's sampling defaults come from (models.yaml); every generator defaults to these.
R1_SAMPLING = sampling_defaults()


def aliases() -> dict[str, str]:
    """Alternative names (e.g. `r1-replica`) -> catalog name."""
    return {alias: e["name"] for e in load_catalog().values() for alias in e.get("aliases", [])}


def find_quant(entry: dict, quant: str | None = None) -> dict:
    """A catalog entry's quant by name (case-insensitive), or its default; unknown names list the choices."""
    quants = entry.get("quants", [])
    wanted = quant or entry.get("default_quant")
    for q in quants:
        if wanted is not None and q["name"].lower() == wanted.lower():
            return q
    names = ", ".join(q["name"] for q in quants)
    raise LowbitError(f"{entry['name']} has no quant {wanted!r}; choose one of: {names}")


def replica_for(entry: dict) -> str | None:
    """The replica standing in for a catalog entry (itself, for a replica)."""
    return entry["name"] if entry.get("kind") == "replica" else entry.get("replica")


def real_file(entry: dict) -> Path:
    """Where a real offline model's GGUF lives once fetched: models/real/<name>/<file>
    (`lowbit.models.real` fetches and verifies it)."""
    file = str(entry["file"])
    if not file or "/" in file or "\\" in file or file in (".", ".."):
        raise LowbitError(f"catalog entry {entry['name']}: file {file!r} must be a plain file name")
    return models_dir() / "real" / entry["name"] / file
