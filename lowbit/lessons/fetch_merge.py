"""What lesson 03 (fetch, verify, merge) needs: where to fetch from, offline included, and a scratch folder.

Offline (no endpoint) the lesson serves the `r1` replica's shard set through lowbit's workshop mirror —
the same Hub protocol an instructor serves to a room with `invoke mirror` — so the download, the sha256
checks, the shard run and the merge all run for real without the Hub.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lowbit.lessons.runner import output_dir
from lowbit.models.catalog import resolve_model
from lowbit.models.mirror import MirrorServer, serve_replica_shards


@dataclass
class FetchSource:
    """A repo to fetch: its endpoint (a started offline mirror, or the one given), patterns and destination."""

    repo_id: str
    endpoint: str
    include: list[str] | None  # patterns selecting the files (None: the quant's patterns)
    dest: Path
    work: Path  # the lesson's scratch folder (the mirror and, without a chosen dest, the download)
    mirror: MirrorServer | None = None

    def close(self) -> None:
        """Stop the mirror and delete the scratch folder; a `dest` the user chose stays."""
        if self.mirror is not None:
            self.mirror.close()
            self.mirror = None
        shutil.rmtree(self.work, ignore_errors=True)


def scratch_dir(prefix: str) -> Path:
    """A fresh folder in the run folder (`output_dir()`), named relative to the working directory when it
    can be: what a lesson prints about it then shows no absolute path of this machine."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=output_dir()))
    try:
        return Path(os.path.relpath(path))
    except ValueError:  # another drive (Windows): no relative form
        return path


def open_source(model: str, quant: str | None = None, endpoint: str | None = None,
                dest: str | os.PathLike | None = None) -> FetchSource:
    """Where lesson 03 fetches `model` from. With `endpoint` (the Hub, a mirror URL) the catalog's repo;
    without, a local mirror serving the replica's shard set (hard links, no copy), selected by its own
    pattern unless a `quant` is given. Downloads go to `dest`, else into the scratch folder."""
    work = scratch_dir("lesson-03-")
    mirror, include = None, None
    if endpoint:
        repo_id = resolve_model(model).repo_id
    else:
        mirror, repo_id, pattern = serve_replica_shards(model, work / "mirror")
        endpoint = mirror.url
        include = None if quant else [pattern]
    target = Path(dest) if dest else work / "models" / repo_id
    return FetchSource(repo_id, endpoint, include, target, work, mirror)
