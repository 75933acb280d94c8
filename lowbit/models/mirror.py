"""The workshop mirror: a read-only, Hugging Face Hub-compatible HTTP endpoint over a models directory.

An instructor downloads once (`invoke fetch`), runs `invoke mirror --dir models`, and every laptop
fetches with `invoke fetch --endpoint http://INSTRUCTOR:PORT ...` (or `HF_ENDPOINT=...` for any
huggingface_hub client). Repos are the folders `DIR/<owner>/<name>/`.

No library provides a Hub *server* (huggingface_hub is a client only), so this is a small
standard-library `ThreadingHTTPServer` answering exactly the requests huggingface_hub's download path
makes (see docs/facts.md):

- `GET /api/models/{repo}` and `/api/models/{repo}/revision/{rev}`  -> JSON with `sha`, `siblings`
- `GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=true`     -> entries with `size`, `oid`,
  and for large files `lfs: {oid: sha256, size, pointerSize}` (no `xetHash`: files come over HTTP)
- `HEAD`/`GET /{repo}/resolve/{rev}/{path}` with `X-Repo-Commit`, `ETag`/`X-Linked-Etag`,
  `X-Linked-Size`, `Content-Length`, `Accept-Ranges`; `Range: bytes=a-b` -> 206
- errors: 404 + `X-Error-Code: RepoNotFound | RevisionNotFound | EntryNotFound`

Safety: only files found by walking `--dir` are ever served (requests are looked up in that listing, never
joined onto the filesystem), hidden paths (`.cache`, `.git`) and symlinks leading outside or into a hidden
folder are skipped, and nothing but GET/HEAD is answered.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from lowbit import LowbitError, procs
from lowbit.files import shards
from lowbit.files.hashes import CHUNK, hash_file, load_records, save_records
from lowbit.models.replicas import replica_path
from lowbit.ui import human_bytes, print_table, step, warn

# Files stored through Git LFS on the Hub: weights and anything large. They get `lfs` (sha256) entries.
LFS_SUFFIXES = {".gguf", ".safetensors", ".bin", ".pt", ".pth", ".onnx", ".msgpack", ".h5", ".model", ".npz"}
LFS_MIN_SIZE = 10 * 1000 * 1000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def is_lfs(path: str, size: int) -> bool:
    """Whether the Hub would store this file through LFS (and list a sha256 for it)."""
    return Path(path).suffix.lower() in LFS_SUFFIXES or size >= LFS_MIN_SIZE


def _servable(path: Path, root: Path) -> bool:
    """A regular file whose real location (symlinks resolved) is inside `root` and in no hidden folder
    there: a link to `.git/config` or `.cache/...` inside the served tree is never served."""
    real = path.resolve()
    if not real.is_file() or (real != root and root not in real.parents):
        return False
    return not any(part.startswith(".") for part in real.relative_to(root).parts)


@dataclass(frozen=True)
class MirrorFile:
    path: str  # repo-relative, forward slashes
    abspath: Path
    size: int
    mtime_ns: int
    lfs: bool
    digest: str  # sha256 (lfs) or git blob sha1

    def tree_entry(self) -> dict:
        if not self.lfs:
            return {"type": "file", "path": self.path, "size": self.size, "oid": self.digest}
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.digest}\nsize {self.size}\n"
        pointer_oid = hashlib.sha1(f"blob {len(pointer)}\0{pointer}".encode()).hexdigest()
        return {
            "type": "file",
            "path": self.path,
            "size": self.size,
            "oid": pointer_oid,
            "lfs": {"oid": self.digest, "size": self.size, "pointerSize": len(pointer)},
        }


class Repo:
    """One served repository: its files (hashed once, cached by size+mtime) and a revision sha."""

    def __init__(self, repo_id: str, directory: Path, root: Path):
        self.repo_id, self.directory, self.root = repo_id, directory, root
        self._lock = threading.Lock()
        self._files: dict[str, MirrorFile] = {}
        self.sha = ""

    def scan(self) -> None:
        """Re-list the folder; hash new or changed files only."""
        with self._lock:
            records = load_records(self.directory)
            files: dict[str, MirrorFile] = {}
            changed = False
            for abspath in sorted(self._walk()):
                rel = abspath.relative_to(self.directory).as_posix()
                st = abspath.stat()
                lfs = is_lfs(rel, st.st_size)
                old = self._files.get(rel)
                if old and (old.size, old.mtime_ns, old.lfs) == (st.st_size, st.st_mtime_ns, lfs):
                    files[rel] = old
                    continue
                key = "sha256" if lfs else "git_sha1"
                rec = records.get(rel, {})
                if rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns and rec.get(key):
                    digest = rec[key]
                else:
                    digest = hash_file(abspath, lfs)
                    records[rel] = {**rec, "size": st.st_size, "mtime_ns": st.st_mtime_ns, key: digest}
                    changed = True
                files[rel] = MirrorFile(rel, abspath, st.st_size, st.st_mtime_ns, lfs, digest)
            if changed:
                save_records(self.directory, records)
            self._files = files
            listing = json.dumps([(f.path, f.size, f.digest) for f in files.values()])
            self.sha = hashlib.sha1(f"{self.repo_id}\n{listing}".encode()).hexdigest()

    def _walk(self):
        root = self.root.resolve()
        for dirpath, dirnames, filenames in os.walk(self.directory, followlinks=False):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if name.startswith("."):
                    continue
                p = Path(dirpath) / name
                if _servable(p, root):
                    yield p

    @property
    def files(self) -> dict[str, MirrorFile]:
        return self._files


class Mirror:
    """The served models directory: repos are `DIR/<owner>/<name>/` folders."""

    def __init__(self, directory: Path | str):
        self.root = Path(directory).expanduser().resolve()
        if not self.root.is_dir():
            raise LowbitError(
                f"mirror directory {self.root} does not exist; pass --dir MODELS (a folder of "
                "<owner>/<name>/ repos, e.g. what `invoke fetch` wrote)"
            )
        self._repos: dict[str, Repo] = {}
        self._lock = threading.Lock()

    def repo_ids(self) -> list[str]:
        ids = []
        for owner in sorted(self.root.iterdir()):
            if owner.is_dir() and _NAME.match(owner.name):
                ids += [
                    f"{owner.name}/{r.name}"
                    for r in sorted(owner.iterdir())
                    if r.is_dir() and _NAME.match(r.name)
                ]
        return ids

    def repo(self, repo_id: str) -> Repo | None:
        parts = repo_id.split("/")
        if len(parts) != 2 or not all(_NAME.match(p) for p in parts):
            return None
        directory = self.root / parts[0] / parts[1]
        if not directory.is_dir() or directory.is_symlink():
            return None
        with self._lock:
            repo = self._repos.setdefault(repo_id, Repo(repo_id, directory, self.root))
        repo.scan()
        return repo

    def index(self) -> list[Repo]:
        """Scan (and hash) every repo up front, so the first client waits for nothing."""
        return [r for r in (self.repo(i) for i in self.repo_ids()) if r is not None and r.files]


class MirrorHandler(BaseHTTPRequestHandler):
    """Answers the Hub requests listed in the module docstring. Subclasses may override `send_body`."""

    protocol_version = "HTTP/1.1"
    server_version = "lowbit-mirror"
    mirror: Mirror  # set on the subclass made by `make_server`
    verbose = False

    # -- plumbing ------------------------------------------------------------------------------------
    def log_message(self, format: str, *args) -> None:  # noqa: A002 (stdlib signature)
        if self.verbose:
            super().log_message(format, *args)

    def _reply(
        self,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data: object, headers: dict[str, str] | None = None) -> None:
        self._reply(200, json.dumps(data).encode(), headers)

    def _error(self, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        self._reply(status, body, {"X-Error-Code": code, "X-Error-Message": message})

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        self._route()

    def do_HEAD(self) -> None:  # noqa: N802
        self._route()

    def _refuse(self) -> None:
        self._error(405, "MethodNotAllowed", "this mirror is read-only")

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse  # noqa: N815

    # -- routing -------------------------------------------------------------------------------------
    def _route(self) -> None:
        split = urlsplit(self.path)
        raw = split.path
        # Percent-decode once, then judge the decoded segments: `%2e%2e`, `%2f` and absolute paths are
        # looked up like any other name and never reach the filesystem.
        segments = [unquote(s) for s in raw.split("/")[1:]]
        if any(s in ("", ".", "..") or "\\" in s or "\0" in s for s in segments[:-1]) or not segments:
            return self._error(400, "BadRequest", "malformed path")
        try:
            if segments[:2] == ["api", "models"] and len(segments) >= 4:
                return self._api(segments[2:], parse_qs(split.query))
            if len(segments) >= 5 and segments[2] == "resolve":
                return self._resolve(f"{segments[0]}/{segments[1]}", segments[3], segments[4:])
        except (BrokenPipeError, ConnectionResetError):
            return None
        return self._error(404, "EntryNotFound", "not a Hub endpoint this mirror serves")

    def _repo_or_404(self, repo_id: str, revision: str) -> Repo | None:
        repo = self.mirror.repo(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", f"repository {repo_id} not found on this mirror")
            return None
        if revision not in ("main", repo.sha):
            self._error(
                404, "RevisionNotFound", f"revision {revision} not found (this mirror has main = {repo.sha})"
            )
            return None
        return repo

    def _api(self, parts: list[str], query: dict[str, list[str]]) -> None:
        repo_id = "/".join(parts[:2])
        rest = parts[2:]
        if not rest or rest[0] == "revision":
            revision = rest[1] if len(rest) > 1 else "main"
            if (repo := self._repo_or_404(repo_id, revision)) is None:
                return
            return self._json(
                {
                    "id": repo_id,
                    "modelId": repo_id,
                    "sha": repo.sha,
                    "private": False,
                    "siblings": [{"rfilename": p} for p in repo.files],
                }
            )
        if rest[0] == "tree" and len(rest) >= 2:
            if (repo := self._repo_or_404(repo_id, rest[1])) is None:
                return
            prefix = "/".join(rest[2:]).strip("/")
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            entries = _tree_entries(repo, prefix, recursive)
            if entries is None:
                return self._error(404, "EntryNotFound", f"{prefix} not found in {repo_id}")
            return self._json(entries, {"X-Repo-Commit": repo.sha})
        return self._error(404, "EntryNotFound", "unknown API path")

    def _resolve(self, repo_id: str, revision: str, file_parts: list[str]) -> None:
        if (repo := self._repo_or_404(repo_id, revision)) is None:
            return
        path = "/".join(file_parts)
        f = repo.files.get(path)  # the only way to a file: the listing made by walking --dir
        if f is None:
            return self._error(404, "EntryNotFound", f"{path} not found in {repo_id}")
        headers = {
            "X-Repo-Commit": repo.sha,
            "ETag": f'"{f.digest}"',
            "Accept-Ranges": "bytes",
            "Content-Disposition": f'inline; filename="{Path(f.path).name}"',
        }
        if f.lfs:
            headers.update({"X-Linked-Etag": f'"{f.digest}"', "X-Linked-Size": str(f.size)})
        start, end = 0, f.size - 1
        status = 200
        rng = self.headers.get("Range")
        if rng:
            parsed = _parse_range(rng, f.size)
            if parsed == "invalid":
                headers["Content-Range"] = f"bytes */{f.size}"
                return self._reply(416, b"", headers)
            if parsed is not None:
                start, end = parsed
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end}/{f.size}"
        length = max(0, end - start + 1)
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD" or length == 0:
            return
        self.send_body(f, start, length)

    def send_body(self, f: MirrorFile, start: int, length: int) -> None:
        """Write `length` bytes of `f` from `start` to the client (zero-copy where the OS allows)."""
        self.wfile.flush()
        with open(f.abspath, "rb") as src:
            sock = self.connection
            if hasattr(os, "sendfile"):
                offset, left = start, length
                while left > 0:
                    sent = os.sendfile(sock.fileno(), src.fileno(), offset, min(left, 64 * 1024 * 1024))
                    if sent == 0:
                        break
                    offset += sent
                    left -= sent
                return
            src.seek(start)
            left = length
            while left > 0 and (chunk := src.read(min(left, CHUNK))):
                self.wfile.write(chunk)
                left -= len(chunk)


def _tree_entries(repo: Repo, prefix: str, recursive: bool) -> list[dict] | None:
    files = [f for f in repo.files.values() if not prefix or f.path.startswith(prefix + "/")]
    if prefix and not files:
        return None
    entries: dict[str, dict] = {}
    depth = prefix.count("/") + 1 if prefix else 0
    for f in files:
        parts = f.path.split("/")
        # folders between the prefix and the file
        for i in range(depth + 1, len(parts)):
            if not recursive and i > depth + 1:
                break
            folder = "/".join(parts[:i])
            entries.setdefault(
                folder,
                {
                    "type": "directory",
                    "path": folder,
                    "oid": hashlib.sha1(folder.encode()).hexdigest(),
                    "size": 0,
                },
            )
        if recursive or len(parts) == depth + 1:
            entries[f.path] = f.tree_entry()
    return list(entries.values())


def _parse_range(value: str, size: int) -> tuple[int, int] | str | None:
    """One `bytes=` range -> (start, end) inclusive; None to ignore (multi-range); 'invalid' for 416."""
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", value)
    if not m:
        return None if value.strip().startswith("bytes=") and "," in value else "invalid"
    a, b = m.groups()
    if a == "" and b == "":
        return "invalid"
    if a == "":  # suffix range: the last b bytes
        n = int(b)
        if n == 0:
            return "invalid"
        return max(0, size - n), size - 1
    start = int(a)
    end = min(int(b), size - 1) if b else size - 1
    if start >= size or end < start:
        return "invalid"
    return start, end


def make_server(
    directory: Path | str,
    host: str = "127.0.0.1",
    port: int = 0,
    handler: type[MirrorHandler] = MirrorHandler,
    verbose: bool = False,
) -> ThreadingHTTPServer:
    """A ready (not yet serving) mirror server; port 0 picks a free one (`server.server_address`)."""
    mirror = Mirror(directory)
    cls = type("BoundMirrorHandler", (handler,), {"mirror": mirror, "verbose": verbose})
    server = ThreadingHTTPServer((host, port), cls)
    server.daemon_threads = True
    return server


class MirrorServer(procs.Service):
    """A mirror running in a background thread: `with MirrorServer(dir) as m: m.url`; stop() ends it."""

    def __init__(
        self,
        directory: Path | str,
        host: str = "127.0.0.1",
        port: int = 0,
        handler: type[MirrorHandler] = MirrorHandler,
    ):
        self.server = make_server(directory, host, port, handler)
        self.mirror: Mirror = self.server.RequestHandlerClass.mirror  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self.server.serve_forever, name="lowbit-mirror", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)

    close = stop  # the name lesson 03 uses


def serve_replica_shards(model: str, directory: Path | str) -> tuple[MirrorServer, str, str]:
    """Serve the replica `model`'s shard set as the repo `lowbit/<model>-GGUF` from a mirror folder made
    under `directory` (hard links, copies where the filesystem refuses): returns the running mirror, the
    repo id and the download pattern selecting the set."""

    local_set = shards.shard_set(replica_path(model))
    if local_set is None:
        raise LowbitError(f"replica {model!r} is not a shard set; serve a split replica such as 'r1'")
    repo_id = f"lowbit/{model}-GGUF"
    repo_dir = Path(directory) / repo_id
    repo_dir.mkdir(parents=True)
    for part in local_set.parts:
        try:
            os.link(part, repo_dir / part.name)
        except OSError:
            shutil.copyfile(part, repo_dir / part.name)
    return MirrorServer(directory), repo_id, local_set.glob


def mirror_command(dir: str, host: str = "127.0.0.1", port: int = 8088, verbose: bool = False) -> int:  # noqa: A002
    """`invoke mirror`: serve DIR's repos until Ctrl-C."""

    mirror_dir = Path(dir).expanduser()
    step(f"indexing {mirror_dir} (hashing files not hashed before)")
    server = make_server(mirror_dir, host, port, verbose=verbose)
    repos = server.RequestHandlerClass.mirror.index()  # type: ignore[attr-defined]
    if not repos:
        warn(f"no <owner>/<name>/ repos with files under {mirror_dir}: clients will get RepoNotFound")

    print_table(
        "served repos",
        ["repo", "files", "size"],
        [(r.repo_id, len(r.files), human_bytes(sum(f.size for f in r.files.values()))) for r in repos],
    )
    bound_host, bound_port = server.server_address[:2]
    shown = bound_host if host not in ("0.0.0.0", "::", "") else "THIS-MACHINE"
    step(
        f"serving read-only at http://{bound_host}:{bound_port} — clients: "
        f"`invoke fetch --endpoint http://{shown}:{bound_port} --model OWNER/NAME ...`"
    )
    if host in ("127.0.0.1", "localhost", "::1"):
        step("bound to loopback only; pass --host 0.0.0.0 to serve the room")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
