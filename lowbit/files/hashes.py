"""File hashes as the Hub states them (sha256 for LFS files, the git blob sha1 for the rest) and the record of
verified hashes a fetched repo keeps (`.cache/lowbit/verified.json`), so nothing is hashed twice."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

# Where `lowbit.models.fetch` records verified hashes inside a downloaded repo; the mirror and shard checks reuse them.
RECORD_FILE = Path(".cache") / "lowbit" / "verified.json"
CHUNK = 8 * 1024 * 1024


def hash_file(path: Path, lfs: bool, progress: Callable[[int], object] | None = None) -> str:
    """sha256 (LFS files) or the git blob sha1 (regular files) of `path`, reading it once.

    `progress(n)` is called with the bytes of each chunk read (for a progress bar over big files).
    """
    size = path.stat().st_size
    h = hashlib.sha256() if lfs else hashlib.sha1(f"blob {size}\0".encode())
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
            if progress is not None:
                progress(n)
    return h.hexdigest()


def load_records(repo_dir: Path) -> dict[str, dict]:
    """Verified hashes recorded by `lowbit.models.fetch` (path -> {size, mtime_ns, sha256|git_sha1})."""
    try:
        return json.loads((repo_dir / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return {}


def save_records(repo_dir: Path, records: dict[str, dict]) -> None:
    """Store `records` in `repo_dir` (atomic replace; a read-only folder keeps them in memory only)."""
    target = repo_dir / RECORD_FILE
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(records, indent=1, sort_keys=True))
        os.replace(tmp, target)
    except OSError:
        pass  # a read-only models dir is fine: hashes are then kept in memory only
