"""`fetch` and the Hugging Face cache both ways, and `hf download`'s flags, against a local Hub-compatible server.

The HF cache is built by hand in tmp with the real layout (models--OWNER--NAME/{blobs,snapshots/<sha>,refs/main});
huggingface_hub itself then reads what lowbit entered into it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
from pathlib import Path

import pytest

from lowbit import LowbitError
from lowbit.models import fetch as hub
from lowbit.models import hf_cache
from lowbit.models.mirror import MirrorHandler, MirrorServer

REPO = "acme/Tiny-GGUF"
Q4 = "tiny-Q4_K_M.gguf"
FILES = {
    Q4: 300_000,
    "tiny-Q8_0.gguf": 200_000,
    "config.json": 40,
    "README.md": 30,
    "extra/notes.txt": 20,
    "extra/big-Q4_K_M.gguf": 10_000,
}


class LoggingHandler(MirrorHandler):
    log: list = []

    def _route(self):
        self.log.append((self.command, self.path))
        super()._route()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hfc") / "models"
    rng = random.Random(7)
    for name, size in FILES.items():
        p = root / REPO / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(size))
    return root


@pytest.fixture
def server(models):
    handler = type("Logged", (LoggingHandler,), {"log": []})
    with MirrorServer(models, handler=handler) as s:
        s.log = handler.log
        yield s


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # never the real cache of this machine


def file_gets(log, name=""):
    return [e for e in log if e[0] == "GET" and "/resolve/" in e[1] and name in e[1]]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fake_cache(cache: Path, models: Path, commit: str, names: list[str], data: dict[str, bytes] | None = None) -> Path:
    """An HF cache laid out as huggingface_hub writes it: blobs by sha256, snapshot symlinks, refs/main."""
    repo = cache / "models--acme--Tiny-GGUF"
    for name in names:
        content = (data or {}).get(name, (models / REPO / name).read_bytes())
        digest = sha256(models / REPO / name)  # the name the repo's hash gives (content may lie)
        blob = repo / "blobs" / digest
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(content)
        pointer = repo / "snapshots" / commit / name
        pointer.parent.mkdir(parents=True, exist_ok=True)
        pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return repo


def test_file_in_hf_cache_is_linked_and_verified_not_downloaded(models, server, tmp_path, capsys):
    commit = server.mirror.repo(REPO).sha
    repo_cache = fake_cache(tmp_path / "hf-home" / "hub", models, commit, [Q4])  # found through HF_HOME
    dest = tmp_path / "dl"
    result = hub.fetch(REPO, include=["*Q4_K_M*"], exclude=["extra/*"], dest=str(dest), endpoint=server.url,
                       show_progress=False)
    assert "from HF cache" in capsys.readouterr().out  # the plan table
    assert result.linked == [Q4] and result.downloaded == [] and result.bytes_downloaded == 0
    assert not file_gets(server.log)  # the server sent no file
    got, blob = dest / Q4, repo_cache / "blobs" / sha256(models / REPO / Q4)
    assert got.stat().st_ino == blob.stat().st_ino  # a hard link: no second copy on disk
    assert sha256(got) == sha256(models / REPO / Q4)
    again = hub.fetch(REPO, include=["*Q4_K_M*"], exclude=["extra/*"], dest=str(dest), endpoint=server.url,
                      show_progress=False)
    assert again.skipped == [Q4] and not again.linked and not file_gets(server.log)


def test_same_bytes_cached_for_another_commit_are_found_by_hash(models, server, tmp_path, monkeypatch):
    cache = tmp_path / "elsewhere"
    fake_cache(cache, models, "0" * 40, [Q4])
    monkeypatch.setattr(os, "link", _no_hard_links)  # e.g. the cache is on another filesystem
    dest = tmp_path / "dl"
    result = hub.fetch(REPO, include=[Q4], local_dir=str(dest), cache_dir=str(cache), endpoint=server.url,
                       show_progress=False)
    assert result.linked == [Q4] and not file_gets(server.log)
    assert (dest / Q4).is_symlink() and sha256(dest / Q4) == sha256(models / REPO / Q4)


def _no_hard_links(src, dst, *args, **kwargs):
    raise OSError(errno.EXDEV, "Invalid cross-device link")


def test_cache_entry_with_wrong_bytes_is_downloaded_and_left_alone(models, server, tmp_path):
    commit = server.mirror.repo(REPO).sha
    good = (models / REPO / Q4).read_bytes()
    bad = bytes([good[0] ^ 0xFF]) + good[1:]  # same size, one byte off
    repo_cache = fake_cache(tmp_path / "hf-home" / "hub", models, commit, [Q4], {Q4: bad})
    dest = tmp_path / "dl"
    result = hub.fetch(REPO, include=[Q4], dest=str(dest), endpoint=server.url, show_progress=False)
    assert result.downloaded == [Q4] and not result.linked and len(file_gets(server.log, Q4)) == 1
    assert (dest / Q4).read_bytes() == good
    blob = repo_cache / "blobs" / sha256(models / REPO / Q4)
    assert blob.read_bytes() == bad and blob.stat().st_ino != (dest / Q4).stat().st_ino
    assert not list(dest.glob(".*hf-cache"))  # no leftover temporary link


def test_fetched_files_are_visible_to_huggingface_hub(models, server, tmp_path):
    from huggingface_hub import hf_hub_download, scan_cache_dir, snapshot_download, try_to_load_from_cache

    cache, dest = tmp_path / "hf-home" / "hub", tmp_path / "dl"
    hub.fetch(REPO, include=["*.gguf", "*.json"], exclude=["*Q8_0*", "extra/"], dest=str(dest),
              endpoint=server.url, show_progress=False)
    commit = server.mirror.repo(REPO).sha
    assert sorted(p.name for p in (cache / "models--acme--Tiny-GGUF" / "snapshots" / commit).iterdir()) == [
        "config.json", Q4]
    found = try_to_load_from_cache(REPO, Q4, cache_dir=cache)  # huggingface_hub's own lookup
    assert isinstance(found, str) and Path(found).stat().st_ino == (dest / Q4).stat().st_ino
    info = scan_cache_dir(cache)
    (repo,) = info.repos
    assert repo.repo_id == REPO and {f.file_name for r in repo.revisions for f in r.files} == {"config.json", Q4}
    assert repo.size_on_disk == FILES[Q4] + FILES["config.json"]
    n = len(server.log)
    path = hf_hub_download(REPO, Q4, endpoint=server.url, cache_dir=cache)  # online: metadata only
    assert Path(path).read_bytes() == (models / REPO / Q4).read_bytes() and not file_gets(server.log[n:])
    offline = Path(snapshot_download(REPO, cache_dir=cache, local_files_only=True))  # refs/main -> the commit
    assert offline.name == commit and (offline / Q4).read_bytes() == (models / REPO / Q4).read_bytes()


def test_no_hf_cache_neither_reuses_nor_registers(models, server, tmp_path):
    cache = tmp_path / "hf-home" / "hub"
    fake_cache(cache, models, server.mirror.repo(REPO).sha, [Q4])
    before = sorted(p.relative_to(cache) for p in cache.rglob("*"))
    dest = tmp_path / "dl"
    result = hub.fetch(REPO, include=["*.gguf"], exclude=["extra/*"], dest=str(dest), endpoint=server.url,
                       show_progress=False, hf_cache_links=False)
    assert sorted(result.downloaded) == sorted([Q4, "tiny-Q8_0.gguf"]) and not result.linked
    assert len(file_gets(server.log)) == 2
    assert sorted(p.relative_to(cache) for p in cache.rglob("*")) == before


@pytest.mark.parametrize(
    ("include", "exclude"),
    [
        (["*.gguf"], ["*Q8_0*"]),
        ([], ["*.gguf"]),
        ([], ["extra/"]),  # a folder, as hf download reads it (extra/*)
        (["*Q4_K_M*"], ["extra/*"]),
        (["extra/*", "*.md"], ["*.txt"]),
    ],
)
def test_include_exclude_select_what_hf_download_selects(server, tmp_path, include, exclude):
    from huggingface_hub import snapshot_download

    ours = hub.plan_fetch(REPO, include, tmp_path / "dl", endpoint=server.url, exclude=exclude)
    theirs = snapshot_download(REPO, endpoint=server.url, allow_patterns=include or None,
                               ignore_patterns=exclude or None, local_dir=tmp_path / "hf", dry_run=True)
    assert sorted(f.path for f in ours.files) == sorted(f.filename for f in theirs)


def test_local_dir_is_dest_and_disagreement_is_an_error(server, tmp_path):
    result = hub.fetch(REPO, include=["config.json"], local_dir=str(tmp_path / "here"), endpoint=server.url,
                       show_progress=False)
    assert result.downloaded == ["config.json"] and (tmp_path / "here" / "config.json").is_file()
    with pytest.raises(LowbitError, match="--local-dir"):
        hub.fetch(REPO, include=["config.json"], local_dir=str(tmp_path / "a"), dest=str(tmp_path / "b"),
                  endpoint=server.url)
    with pytest.raises(LowbitError, match="--exclude"):
        hub.fetch(REPO, include=["*.gguf"], exclude=["*.gguf"], dest=str(tmp_path / "c"), endpoint=server.url)


def test_hf_hub_disable_progress_bars_silences_the_bar(server, tmp_path, monkeypatch):
    seen = []
    real = hub.download
    monkeypatch.setattr(hub, "download", lambda plan, **kw: seen.append(kw["show_progress"]) or real(plan, **kw))
    import huggingface_hub.utils

    # huggingface_hub's own switch is process-wide (and froze the variable at its import): hold it off here.
    switch = {"off": False}
    monkeypatch.setattr(huggingface_hub.utils, "are_progress_bars_disabled", lambda name=None: switch["off"])
    monkeypatch.delenv("LOWBIT_LOG_LEVEL", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    hub.fetch(REPO, include=["README.md"], dest=str(tmp_path / "a"), endpoint=server.url)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")
    hub.fetch(REPO, include=["README.md"], dest=str(tmp_path / "b"), endpoint=server.url)
    monkeypatch.setenv("LOWBIT_LOG_LEVEL", "WARNING")  # `lowbit -q`
    hub.fetch(REPO, include=["README.md"], dest=str(tmp_path / "c"), endpoint=server.url)
    monkeypatch.delenv("LOWBIT_LOG_LEVEL")
    switch["off"] = True  # huggingface_hub.utils.disable_progress_bars() in the calling program
    hub.fetch(REPO, include=["README.md"], dest=str(tmp_path / "d"), endpoint=server.url)
    assert seen == [False, True, False, False]


def test_hostile_names_and_hashes_never_leave_the_cache(tmp_path):
    cache = tmp_path / "cache"
    assert hf_cache.find(REPO, "../../etc/passwd", 1, "a" * 64, cache_dir=cache) is None
    assert hf_cache.find(REPO, "x.gguf", 1, "../../../etc/passwd", cache_dir=cache) is None
    local = tmp_path / "f"
    local.write_bytes(b"x")
    out = hf_cache.register(REPO, "b" * 40, "../../evil", [("../escape", "a" * 64, local),
                                                          ("ok.bin", "../x", local)], cache_dir=cache)
    assert out.files == 0 and not list(tmp_path.glob("escape*")) and not (cache / "evil").exists()
    assert not (cache / "models--acme--Tiny-GGUF" / "refs").exists()


def test_hashing_a_cache_hit_reports_progress_and_logs_for_library_users(models, server, tmp_path, caplog):
    import logging

    blob = fake_cache(tmp_path / "hf-home" / "hub", models, "1" * 40, [Q4]) / "blobs" / sha256(models / REPO / Q4)
    seen: list[int] = []
    kind = hf_cache.link_verified(blob, tmp_path / "out" / Q4, FILES[Q4], sha256(blob), lfs=True,
                                  progress=seen.append)
    assert kind == "hard link" and sum(seen) == FILES[Q4]
    caplog.set_level(logging.INFO, logger="lowbit")
    hub.fetch(REPO, include=[Q4], dest=str(tmp_path / "dl"), endpoint=server.url, show_progress=False)
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("lowbit")]
    assert any("1 linked from the Hugging Face cache" in m for m in messages), messages


def test_offline_fetch_links_from_the_cache_without_any_network(models, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    commit = "2" * 40
    cache = tmp_path / "hf-home" / "hub"
    fake_cache(cache, models, commit, [Q4, "config.json", "tiny-Q8_0.gguf"])
    git_sha1 = hashlib.sha1(b"blob %d\0" % FILES["config.json"] + (models / REPO / "config.json").read_bytes())
    (cache / "models--acme--Tiny-GGUF" / "blobs" / sha256(models / REPO / "config.json")).rename(
        cache / "models--acme--Tiny-GGUF" / "blobs" / git_sha1.hexdigest())  # small files: git blob sha1
    pointer = cache / "models--acme--Tiny-GGUF" / "snapshots" / commit / "config.json"
    pointer.unlink()
    pointer.symlink_to(f"../../blobs/{git_sha1.hexdigest()}")
    dest = tmp_path / "dl"
    result = hub.fetch(REPO, include=["*.gguf", "*.json"], exclude=["*Q8_0*"], dest=str(dest),
                       endpoint="http://127.0.0.1:9", show_progress=False)  # nothing listens there
    assert sorted(result.linked) == ["config.json", Q4] and not result.downloaded
    assert (dest / "config.json").read_bytes() == (models / REPO / "config.json").read_bytes()
    blob = cache / "models--acme--Tiny-GGUF" / "blobs" / sha256(models / REPO / "tiny-Q8_0.gguf")
    blob.write_bytes(b"\0" * FILES["tiny-Q8_0.gguf"])  # damaged: no longer its own hash
    with pytest.raises(LowbitError, match="tiny-Q8_0.gguf.*damaged cache"):
        hub.fetch(REPO, include=["*Q8_0*"], dest=str(dest), show_progress=False)
    assert not (dest / "tiny-Q8_0.gguf").exists()
    with pytest.raises(LowbitError, match="HF_HUB_OFFLINE"):
        hub.fetch("acme/Not-Cached", dest=str(tmp_path / "x"), show_progress=False)


def test_a_cache_with_plain_files_in_another_snapshot_is_used_after_hashing(models, server, tmp_path):
    # Where symlinks are unavailable huggingface_hub stores real files in snapshots/ (blob names are etags).
    snap = tmp_path / "hf-home" / "hub" / "models--acme--Tiny-GGUF" / "snapshots" / ("3" * 40)
    snap.mkdir(parents=True)
    (snap / Q4).write_bytes((models / REPO / Q4).read_bytes())
    result = hub.fetch(REPO, include=[Q4], dest=str(tmp_path / "dl"), endpoint=server.url, show_progress=False)
    assert result.linked == [Q4] and not file_gets(server.log)
    assert (tmp_path / "dl" / Q4).stat().st_ino == (snap / Q4).stat().st_ino
