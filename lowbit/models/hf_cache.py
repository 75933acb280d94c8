"""The Hugging Face cache (where `hf download`, transformers and llama-cpp-python keep models), both ways.

Reuse: before downloading, `fetch` looks for each selected file in the cache (`--cache-dir`, else
`HF_HUB_CACHE`, `HF_HOME/hub`, `~/.cache/huggingface/hub`) with huggingface_hub's own lookup
(`try_to_load_from_cache` at the resolved commit) and, since the cache stores every file once under
its content hash (`blobs/<sha256>` for LFS files, `blobs/<git blob sha1>` for the others), by that
hash for any other commit. A candidate is linked into the destination (a hard link where the
filesystem allows, else a symlink, never a copy) and hashed through the link before it takes the
file's name: a cache entry with the right name but other bytes is never trusted.

Offline (`HF_HUB_OFFLINE=1`, as huggingface_hub reads it): the repo's file list comes from the cache's
snapshot of the revision instead of the Hub, and every file is checked against the hash its blob is named by.

Register: files lowbit fetched and verified are entered into the same layout
(`models--OWNER--NAME/{blobs/HASH, snapshots/COMMIT/PATH -> ../../blobs/HASH, refs/REVISION}`) by
hard links only, so they cost no disk and `hf_hub_download`, `snapshot_download`, `Llama.from_pretrained`
or `hf cache ls` find them without a download. Where a hard link is impossible (the cache is on another
filesystem) nothing is written: a symlink into `models/` would break when that folder is removed.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from lowbit import LowbitError
from lowbit.files.hashes import hash_file
from lowbit.paths import unsafe_repo_path

log = logging.getLogger("lowbit")
_DIGEST = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_REF = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*(?:/[A-Za-z0-9_][A-Za-z0-9._-]*)*$")


def hub_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """The Hugging Face hub cache: `cache_dir`, else what huggingface_hub would use.

    Same precedence as `huggingface_hub.constants` (HF_HUB_CACHE, the legacy HUGGINGFACE_HUB_CACHE,
    HF_HOME/hub, XDG_CACHE_HOME/huggingface/hub, ~/.cache/huggingface/hub), read now rather than from
    the constants, which froze the environment when huggingface_hub was first imported.
    """
    if cache_dir:
        return Path(os.path.expandvars(str(cache_dir))).expanduser()
    env = os.environ
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(name):
            return Path(os.path.expandvars(env[name])).expanduser()
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                                              "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def repo_cache(repo_id: str, cache_dir: str | Path | None = None) -> Path:
    """`<cache>/models--OWNER--NAME`, named by huggingface_hub itself."""
    from huggingface_hub.file_download import repo_folder_name  # reads the environment at import

    return hub_cache_dir(cache_dir) / repo_folder_name(repo_id=repo_id, repo_type="model")


def _safe_relpath(path: str) -> PurePosixPath | None:
    """`path` as a relative path that stays inside a folder, or None (a name from a server is never trusted)."""
    return None if unsafe_repo_path(path) else PurePosixPath(path)


def find(repo_id: str, path: str, size: int, digest: str, commit: str | None = None,
         cache_dir: str | Path | None = None) -> Path | None:
    """A cached file that should hold `path` (right size; content is checked when linking), or None."""
    from huggingface_hub import try_to_load_from_cache  # reads the environment at import

    if not _DIGEST.match(digest or "") or _safe_relpath(path) is None:
        return None
    root = repo_cache(repo_id, cache_dir)
    candidates = []
    try:
        found = try_to_load_from_cache(repo_id, path, cache_dir=str(hub_cache_dir(cache_dir)), revision=commit)
    except (ValueError, OSError):
        found = None
    if isinstance(found, str):
        candidates.append(Path(found))
    candidates.append(root / "blobs" / digest)  # the same bytes cached for another commit
    try:  # the same path in other snapshots (a cache whose blobs are not named by content hash)
        candidates += [s / path for s in sorted((root / "snapshots").iterdir()) if _COMMIT.match(s.name)]
    except OSError:
        pass
    for c in candidates:
        try:
            blob = c.resolve(strict=True)
            if blob.is_file() and blob.stat().st_size == size:
                log.debug(f"{path}: candidate in the Hugging Face cache: {blob}")
                return blob
        except OSError:
            continue
    return None


def offline() -> bool:
    """Hub offline mode: HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) read now, or huggingface_hub's own flag."""
    from huggingface_hub import constants  # reads the environment at import: imported after fetch._import_hub sets it

    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in ("1", "ON", "YES", "TRUE") or constants.is_offline_mode()


@dataclass
class CachedFile:
    path: str  # in the repo
    size: int
    digest: str  # the blob's name: sha256 (LFS files) or git blob sha1
    blob: Path


def snapshot(repo_id: str, revision: str | None = None,
             cache_dir: str | Path | None = None) -> tuple[str, list[CachedFile]]:
    """(commit, files) of `revision` (default main) as the cache holds it, without the network."""
    root = repo_cache(repo_id, cache_dir)
    rev = revision or "main"
    if _COMMIT.match(rev):
        commit = rev
    elif _REF.match(rev) and ".." not in rev:
        try:
            commit = (root / "refs" / rev).read_text().strip()
        except OSError:
            commit = ""
    else:
        raise LowbitError(f"--revision {rev!r} is not a branch, tag or commit name")
    snap = root / "snapshots" / commit
    if not _COMMIT.match(commit) or not snap.is_dir():
        raise LowbitError(
            f"offline (HF_HUB_OFFLINE is set) and the Hugging Face cache {hub_cache_dir(cache_dir)} holds no "
            f"{repo_id} at {rev}: unset HF_HUB_OFFLINE to download it, or pass --cache-dir where it is")
    blobs = (root / "blobs").resolve()
    files = []
    for p in sorted(snap.rglob("*")):
        try:
            blob = p.resolve(strict=True)
        except OSError:
            continue  # a link whose blob is gone
        if blob.parent == blobs and _DIGEST.match(blob.name) and blob.is_file():
            files.append(CachedFile(p.relative_to(snap).as_posix(), blob.stat().st_size, blob.name, blob))
    return commit, files


def _link(source: Path, target: Path, symlink_ok: bool) -> str | None:
    """Link `source` at `target` (which must not exist): 'hard link', 'symlink', or None if neither works."""
    try:
        os.link(source, target)
        return "hard link"
    except OSError:
        if not symlink_ok:
            return None
    try:
        os.symlink(source.resolve(), target)
        return "symlink"
    except OSError:
        return None


def link_verified(source: Path, target: Path, size: int, digest: str, lfs: bool,
                  progress: Callable[[int], object] | None = None) -> str | None:
    """Link `source` at `target` if its bytes hash to `digest`: 'hard link' or 'symlink', else None.

    The link is made under a temporary name next to `target` and hashed through it (the bytes that
    will be used), then renamed into place: `target` is never a file that failed the check.
    `progress(n)` is called as bytes are hashed.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.hf-cache")
    tmp.unlink(missing_ok=True)
    kind = _link(source, tmp, symlink_ok=True)
    if kind is None:
        return None
    try:
        good = tmp.stat().st_size == size and hash_file(tmp, lfs=lfs, progress=progress) == digest
        if good:
            os.replace(tmp, target)
            log.debug(f"{target.name}: {kind} to {source} (hash checked)")
            return kind
        log.debug(f"{source} is not the repo's {target.name}: its hash differs")
    except OSError:
        pass
    tmp.unlink(missing_ok=True)
    return None


@dataclass
class Registered:
    files: int  # files now in the cache's snapshot for this commit
    added: int  # of which lowbit linked just now
    skipped: str | None = None  # why nothing could be entered, if so


def register(repo_id: str, commit: str, revision: str | None, files: Iterable[tuple[str, str, Path]],
             cache_dir: str | Path | None = None) -> Registered:
    """Enter verified local files `(repo path, content hash, local file)` into the HF cache by hard link.

    Existing cache entries are left alone; `refs/REVISION` is written for a branch or tag name.
    """
    if not _COMMIT.match(commit or ""):
        return Registered(0, 0, f"the revision {commit!r} is not a commit hash")
    root = repo_cache(repo_id, cache_dir)
    snapshot = root / "snapshots" / commit
    count = added = 0
    for path, digest, local in files:
        rel = _safe_relpath(path)
        if rel is None or not _DIGEST.match(digest or ""):
            continue
        blob = root / "blobs" / digest
        pointer = snapshot / rel
        try:
            blob.parent.mkdir(parents=True, exist_ok=True)
            if not blob.exists():
                tmp = blob.with_name(f"{digest}.{os.getpid()}.lowbit")
                tmp.unlink(missing_ok=True)
                if _link(Path(local), tmp, symlink_ok=False) is None:
                    return Registered(count, added, f"{blob.parent} is on another filesystem than {local} "
                                                    "(hard links impossible; a copy would double the disk used)")
                os.replace(tmp, blob)
                added += 1
            elif not os.path.samefile(blob, local):
                continue  # the cache's own copy, unverified by us: point nothing new at it
            if not pointer.exists():
                pointer.parent.mkdir(parents=True, exist_ok=True)
                pointer.unlink(missing_ok=True)  # a dangling link from an older entry
                # Relative, as huggingface_hub makes them, so the cache folder can be moved.
                os.symlink(os.path.relpath(blob, pointer.parent), pointer)
            count += 1
        except OSError as exc:
            return Registered(count, added, f"cannot write to {root}: {exc.strerror or exc}")
    if revision and revision != commit and _REF.match(revision) and ".." not in revision:
        ref = root / "refs" / revision
        try:
            ref.parent.mkdir(parents=True, exist_ok=True)
            ref.write_text(commit)
        except OSError as exc:
            return Registered(count, added, f"cannot write {ref}: {exc.strerror or exc}")
    return Registered(count, added)
