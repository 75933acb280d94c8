"""`lowbit.models.fetch.fetch` against the mirror on 127.0.0.1: selection, refusals, verification, resume, Ctrl-C."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gguf_factory import split_gguf, write_gguf

from lowbit import LowbitError, machine
from lowbit.models import fetch as hub
from lowbit.models.mirror import MirrorHandler, MirrorServer
from tests.conftest import default_sigint

REPO = "acme/R1-GGUF"
QUANT = "UD-IQ1_S"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _hub_env(monkeypatch):
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_ENDPOINT", raising=False)


@pytest.fixture(scope="module")
def models(tmp_path_factory, llama_build):
    """models/acme/R1-GGUF with an UD-IQ1_S shard set (the r1 replica's if built, else our own) + others."""
    root = tmp_path_factory.mktemp("hub") / "models"
    repo = root / REPO
    (repo / QUANT).mkdir(parents=True)
    try:
        from lowbit.models.replicas import replica_path

        first = replica_path("r1")
    except Exception:  # the replicas are built on another branch / by `invoke setup`
        first = None
    if first is not None and Path(first).exists() and "-of-" in Path(first).name:
        from lowbit.files.shards import shard_set

        parts = shard_set(first).parts
        names = [f"R1-{QUANT}-{k:05d}-of-{len(parts):05d}.gguf" for k in range(1, len(parts) + 1)]
        for p, n in zip(parts, names, strict=True):
            shutil.copyfile(p, repo / QUANT / n)
    else:
        src = write_gguf(root.parent / "r1.gguf", layers=4, rows=512, big_rows=1024)
        split_gguf(llama_build.tool("llama-gguf-split"), src, repo / QUANT / f"R1-{QUANT}", max_tensors=5)
    write_gguf(repo / "R1-Q4_K_M.gguf", layers=1, rows=32, big_rows=64, seed=1)
    (repo / "README.md").write_text("# R1 test repo\n")
    (repo / "config.json").write_text("{}\n")
    return root


def shard_names(models: Path) -> list[str]:
    return sorted(p.name for p in (models / REPO / QUANT).glob("*.gguf"))


class FaultyHandler(MirrorHandler):
    """The mirror with switchable faults; every request is logged (method, path, Range, Authorization)."""

    cfg: dict = {}
    log: list = []

    def _route(self):
        self.log.append(
            (self.command, self.path, self.headers.get("Range"), self.headers.get("Authorization"))
        )
        target = self.cfg.get("redirect_to")
        if target and "/resolve/" in self.path:
            # like the Hub sending LFS files to a CDN: metadata on the redirect, bytes at another origin
            repo_id, rest = self.path.lstrip("/").split("/resolve/", 1)
            revision, file_path = rest.split("/", 1)
            repo = self.mirror.repo(repo_id)
            f = repo.files[file_path]
            self.send_response(302)
            for k, v in {
                "Location": f"{target}{self.path}",
                "X-Repo-Commit": repo.sha,
                "Content-Length": "0",
                "X-Linked-Etag": f'"{f.digest}"',
                "X-Linked-Size": str(f.size),
            }.items():
                self.send_header(k, v)
            self.end_headers()
            return
        super()._route()

    def send_body(self, f, start, length):
        name = Path(f.path).name
        data = f.abspath.read_bytes()[start : start + length]
        if name in self.cfg.get("corrupt", ()):
            pos = f.size // 2 - start
            if 0 <= pos < len(data):
                data = data[:pos] + bytes([data[pos] ^ 0xFF]) + data[pos + 1 :]
        drops = self.cfg.setdefault("dropped", set())
        if name in self.cfg.get("drop_once", ()) and name not in drops and length > 1000:
            drops.add(name)
            self.wfile.write(data[: length // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if self.cfg.get("throttle"):
            try:
                for i in range(0, len(data), 8192):
                    self.wfile.write(data[i : i + 8192])
                    self.cfg["sent"] = self.cfg.get("sent", 0) + 8192
                    time.sleep(self.cfg["throttle"])
            except (BrokenPipeError, ConnectionResetError):
                self.cfg["aborted"] = True
            return
        self.wfile.write(data)


def faulty(**cfg) -> type[FaultyHandler]:
    return type("Faulty", (FaultyHandler,), {"cfg": cfg, "log": []})


@pytest.fixture
def mirror(models):
    servers = []

    def start(**cfg):
        handler = faulty(**cfg)
        server = MirrorServer(models, handler=handler)
        servers.append(server)
        return server, handler.log

    yield start
    for s in servers:
        s.stop()


def gets(log, name=""):
    return [e for e in log if e[0] == "GET" and "/resolve/" in e[1] and name in e[1]]


def test_quant_selects_the_shard_set_and_dry_run_writes_nothing(models, mirror, tmp_path, capsys):
    server, log = mirror()
    dest = tmp_path / "dl"
    assert hub.fetch(REPO, quant=QUANT, dest=str(dest), dry_run=True, endpoint=server.url) is None
    plan = hub.plan_fetch(REPO, hub.quant_patterns(QUANT, None), dest, endpoint=server.url)
    assert sorted(Path(f.path).name for f in plan.files) == shard_names(models)
    assert plan.download_bytes == sum(p.stat().st_size for p in (models / REPO / QUANT).glob("*.gguf"))
    out = capsys.readouterr().out
    assert "TOTAL" in out and "free disk" in out and shard_names(models)[0] in out
    assert not gets(log) and not dest.exists()
    both = hub.plan_fetch(REPO, ["*.md", "*Q4_K_M*"], dest, endpoint=server.url)
    assert sorted(f.path for f in both.files) == ["R1-Q4_K_M.gguf", "README.md"]


def test_zero_matches_is_an_error_listing_the_quants(mirror, tmp_path):
    server, _ = mirror()
    with pytest.raises(LowbitError) as err:
        hub.fetch(REPO, quant="IQ2_XXS", dest=str(tmp_path / "dl"), endpoint=server.url)
    assert "UD-IQ1_S" in str(err.value) and "Q4_K_M" in str(err.value) and "IQ2_XXS" in str(err.value)


def test_too_little_disk_is_refused_before_any_byte(mirror, tmp_path, monkeypatch):
    server, log = mirror()
    monkeypatch.setattr(hub, "free_disk", lambda path: 10_000_000)  # simulated: 10 MB free
    with pytest.raises(LowbitError, match="not enough disk space"):
        hub.fetch(REPO, quant=QUANT, dest=str(tmp_path / "dl"), endpoint=server.url)
    assert not gets(log) and not (tmp_path / "dl").exists()


def test_download_verifies_and_second_fetch_downloads_nothing(models, mirror, tmp_path):
    server, log = mirror()
    dest = tmp_path / "dl"
    orphan = dest / ".cache" / "huggingface" / "download" / "x.3f2a.incomplete"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"left by a killed run")
    result = hub.fetch(REPO, quant=QUANT, dest=str(dest), endpoint=server.url, show_progress=False)
    assert sorted(Path(p).name for p in result.downloaded) == shard_names(models) and not result.bad
    for name in shard_names(models):
        assert (dest / QUANT / name).read_bytes() == (models / REPO / QUANT / name).read_bytes()
    assert not orphan.exists()
    n = len(log)
    again = hub.fetch(REPO, quant=QUANT, dest=str(dest), endpoint=server.url, show_progress=False)
    assert (
        again.downloaded == []
        and again.bytes_downloaded == 0
        and len(again.skipped) == len(shard_names(models))
    )
    assert not gets(log[n:]) and not [e for e in log[n:] if e[0] == "HEAD"]


def test_corrupted_byte_removes_and_names_the_file_good_files_stay(models, mirror, tmp_path):
    bad = shard_names(models)[1]
    server, _ = mirror(corrupt={bad})
    dest = tmp_path / "dl"
    with pytest.raises(LowbitError) as err:
        hub.fetch(REPO, quant=QUANT, dest=str(dest), endpoint=server.url, show_progress=False)
    assert bad in str(err.value)
    assert not (dest / QUANT / bad).exists()
    good = [n for n in shard_names(models) if n != bad]
    assert all((dest / QUANT / n).read_bytes() == (models / REPO / QUANT / n).read_bytes() for n in good)
    server2, log2 = mirror()
    fixed = hub.fetch(REPO, quant=QUANT, dest=str(dest), endpoint=server2.url, show_progress=False)
    assert [Path(p).name for p in fixed.downloaded] == [bad] and len(gets(log2)) == 1


def test_connection_dropped_mid_file_is_recovered(models, mirror, tmp_path):
    name = shard_names(models)[0]
    server, log = mirror(drop_once={name})
    dest = tmp_path / "dl"
    result = hub.fetch(REPO, quant=QUANT, dest=str(dest), endpoint=server.url, show_progress=False)
    assert (dest / QUANT / name).read_bytes() == (
        models / REPO / QUANT / name
    ).read_bytes() and not result.bad
    # huggingface_hub's http_get retries within the run; it resumes with Range from the last 10 MB chunk it
    # wrote (here: none yet, so from 0). Resuming across runs is ours: see the next test.
    assert len(gets(log, name)) == 2


def test_partial_shard_from_an_earlier_run_resumes_with_range(models, mirror, tmp_path):
    name = shard_names(models)[-1]
    original = (models / REPO / QUANT / name).read_bytes()
    server, log = mirror()
    dest = tmp_path / "dl"
    plan = hub.plan_fetch(REPO, [f"*{name}"], dest, endpoint=server.url)
    part = hub.partial_path(dest, plan.files[0])
    part.parent.mkdir(parents=True)
    part.write_bytes(original[: len(original) // 3])
    assert hub.plan_fetch(REPO, [f"*{name}"], dest, endpoint=server.url).files[0].status == "resume"
    result = hub.fetch(REPO, include=[f"*{name}"], dest=str(dest), endpoint=server.url, show_progress=False)
    assert (dest / QUANT / name).read_bytes() == original and not part.exists()
    assert [e[2] for e in gets(log, name)] == [f"bytes={len(original) // 3}-"]
    assert result.bytes_downloaded == len(original) - len(original) // 3


def test_redirect_to_another_origin_keeps_the_token_at_home(models, mirror, tmp_path):
    cdn, cdn_log = mirror()
    origin, origin_log = mirror(redirect_to=cdn.url)
    dest = tmp_path / "dl"
    hub.fetch(
        REPO,
        include=["*Q4_K_M*"],
        dest=str(dest),
        endpoint=origin.url,
        token="hf_secret_token",
        show_progress=False,
    )
    assert (dest / "R1-Q4_K_M.gguf").read_bytes() == (models / REPO / "R1-Q4_K_M.gguf").read_bytes()
    assert gets(cdn_log) and all(e[3] is None for e in cdn_log)
    assert any(e[3] == "Bearer hf_secret_token" for e in origin_log)


def test_file_over_the_plain_http_limit_still_comes_through_the_mirror(models, mirror, tmp_path, monkeypatch):
    from huggingface_hub import constants, hf_hub_download

    server, _ = mirror()
    monkeypatch.setattr(constants, "MAX_HTTP_DOWNLOAD_SIZE", 10_000)  # every shard is now "over 50 GB"
    with pytest.raises(ValueError, match="too large"):  # what plain huggingface_hub does with it
        hf_hub_download(
            REPO, f"{QUANT}/{shard_names(models)[0]}", endpoint=server.url, local_dir=tmp_path / "hf"
        )
    result = hub.fetch(REPO, quant=QUANT, dest=str(tmp_path / "dl"), endpoint=server.url, show_progress=False)
    assert len(result.downloaded) == len(shard_names(models)) and not result.bad


def test_ctrl_c_stops_the_download_promptly(models, mirror, tmp_path):
    name = shard_names(models)[0]
    cfg = {"throttle": 0.05}  # ~160 KB/s: the set would take half a minute
    server, log = mirror(**cfg)
    handler_cfg = server.server.RequestHandlerClass.cfg
    dest = tmp_path / "dl"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_DISABLE_TELEMETRY": "1"}
    kwargs = {"model": REPO, "quant": QUANT, "dest": str(dest), "endpoint": server.url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lowbit", "lowbit.models.fetch:fetch_command", json.dumps(kwargs)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=default_sigint,
    )
    try:
        deadline = time.monotonic() + 60
        while handler_cfg.get("sent", 0) < 100_000:  # the first shard is flowing
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 130, proc.stderr.read().decode()
    sent = handler_cfg["sent"]
    time.sleep(1.0)
    assert handler_cfg.get("aborted") and handler_cfg["sent"] == sent  # the client hung up; nobody reads on
    assert len(gets(log)) == 1 and not (dest / QUANT / name).exists()
    parts = list((dest / hub.PARTIAL_DIR / QUANT).glob("*.part"))
    assert len(parts) == 1 and parts[0].stat().st_size < (models / REPO / QUANT / name).stat().st_size


def test_hf_transfer_gets_one_line_and_memory_rule(monkeypatch):
    monkeypatch.setenv("HF_HUB_ENABLE_HF_TRANSFER", "1")
    notes = hub.transfer_notes(fast=False)
    assert len(notes) == 1 and "hf_xet" in notes[0] and "--fast" in notes[0]
    assert hub.transfer_notes(fast=True)[-1].startswith("--fast")
    assert "RAM + VRAM" in hub.memory_warning(131 * 10**9, ram=24 * 10**9, vram=24 * 10**9)
    assert hub.memory_warning(20 * 10**9, ram=24 * 10**9, vram=0) is None


def test_quants_are_read_from_unsloth_style_names():
    paths = [
        "DeepSeek-R1-UD-IQ1_S/DeepSeek-R1-UD-IQ1_S-00001-of-00003.gguf",
        "DeepSeek-R1-UD-IQ1_S/DeepSeek-R1-UD-IQ1_S-00002-of-00003.gguf",
        "DeepSeek-R1-Q4_K_M/DeepSeek-R1-Q4_K_M-00001-of-00009.gguf",
        "BF16/x-BF16.gguf",
        "README.md",
    ]
    assert set(hub.quants_in(paths)) == {"UD-IQ1_S", "Q4_K_M", "BF16"}
    assert hub.quants_in(paths)["UD-IQ1_S"][0] == 2


# --- hostile and broken servers -----------------------------------------------------------------------

import hashlib  # noqa: E402
import http.server  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402


class HostileHub(http.server.BaseHTTPRequestHandler):
    """A Hub stand-in that lists whatever paths it is given and serves `body` for each."""

    paths: list[str] = []
    body = b"x" * 100
    log: list = []

    def log_message(self, *args) -> None:
        pass

    def _json(self, obj) -> None:
        data = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        self.log.append((self.command, self.path, self.headers.get("Authorization")))
        sha = "a" * 40
        if self.path.startswith("/api/") and "/tree/" not in self.path:
            return self._json({"id": REPO, "sha": sha, "siblings": [{"rfilename": p} for p in self.paths]})
        if self.path.startswith("/api/"):
            oid = hashlib.sha1(b"blob %d\0" % len(self.body) + self.body).hexdigest()
            return self._json([{"type": "file", "path": p, "size": len(self.body), "oid": oid} for p in self.paths])
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.send_header("X-Repo-Commit", sha)
        self.send_header("ETag", '"e"')
        self.end_headers()
        self.wfile.write(self.body)

    do_HEAD = do_GET  # noqa: N815


@pytest.fixture
def hostile_hub():
    servers = []

    def start(paths: list[str]) -> tuple[str, list]:
        handler = type("H", (HostileHub,), {"paths": paths, "log": []})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", handler.log

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


@pytest.mark.parametrize(
    "evil",
    [
        "/etc/cron.d/UD-IQ1_S",
        "../../../home/u/.config/autostart/UD-IQ1_S.desktop",
        "UD-IQ1_S/../../../escape-UD-IQ1_S.gguf",
        "UD-IQ1_S\\..\\..\\escape-UD-IQ1_S.gguf",
        "C:/Windows/UD-IQ1_S.gguf",
        "UD-IQ1_S/\x00.gguf",
        "UD-IQ1_S//x.gguf",
        ".cache/lowbit/verified-UD-IQ1_S.json",
    ],
)
def test_server_paths_never_escape_the_destination(hostile_hub, tmp_path, evil):
    """A tree naming absolute, `..`, backslash, drive, NUL or state-folder paths is refused before any byte."""
    url, log = hostile_hub(["UD-IQ1_S/good-UD-IQ1_S.gguf", evil])
    dest = tmp_path / "a" / "b" / "c" / "dest"
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(LowbitError) as err:
        hub.fetch(REPO, quant=QUANT, dest=str(dest), endpoint=url, show_progress=False)
    assert repr(evil)[1:-1] in str(err.value) or evil in str(err.value)
    assert url in str(err.value) and "outside" in str(err.value)
    assert sorted(tmp_path.rglob("*")) == before  # nothing written anywhere, not even dest
    assert not [e for e in log if "/resolve/" in e[1]]


def test_a_link_inside_the_destination_cannot_lead_out(hostile_hub, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "UD-IQ1_S").symlink_to(outside)
    url, _ = hostile_hub(["UD-IQ1_S/x-UD-IQ1_S.gguf"])
    with pytest.raises(LowbitError, match="outside the destination"):
        hub.fetch(REPO, quant=QUANT, dest=str(dest), endpoint=url, show_progress=False)
    assert not list(outside.iterdir())


def test_saved_hub_token_is_never_sent_to_a_mirror(mirror, tmp_path, monkeypatch):
    """HF_TOKEN (or a saved login) goes to the official Hub only; a mirror gets no Authorization header."""
    monkeypatch.setenv("HF_TOKEN", "hf_saved_login_token")
    server, log = mirror()
    hub.fetch(REPO, include=["*Q4_K_M*"], dest=str(tmp_path / "dl"), endpoint=server.url, show_progress=False)
    assert log and all(e[3] is None for e in log)


def test_token_policy_per_endpoint():
    assert hub.credentials_for("https://huggingface.co", None) is None  # the library's own login lookup
    assert hub.credentials_for("http://127.0.0.1:8080", None) is False
    assert hub.credentials_for("https://mirror.example.org", None) is False
    assert hub.credentials_for("https://mirror.example.org", "hf_x") == "hf_x"
    assert hub.credentials_for("http://localhost:8080", "hf_x") == "hf_x"
    assert hub.credentials_for("http://[::1]:8080", "hf_x") == "hf_x"
    with pytest.raises(LowbitError, match="plain http"):
        hub.credentials_for("http://workshop-mirror.invalid:8080", "hf_x")


def test_explicit_token_over_cleartext_to_another_host_is_refused_before_connecting(tmp_path):
    # `.invalid` never resolves: the refusal must come before any lookup or connection
    with pytest.raises(LowbitError, match="refusing to send --token"):
        hub.fetch(REPO, quant=QUANT, dest=str(tmp_path / "dl"), endpoint="http://mirror.invalid:8080",
                  token="hf_secret", show_progress=False)  # fmt: skip
    assert not (tmp_path / "dl").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_fetch(kwargs: dict) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_DISABLE_TELEMETRY": "1"}
    return subprocess.run([sys.executable, "-m", "lowbit", "lowbit.models.fetch:fetch_command", json.dumps(kwargs)],
                          env=env, capture_output=True, text=True, timeout=180)  # fmt: skip


def test_unreachable_endpoint_is_one_clear_line(tmp_path):
    port = _free_port()  # nothing listens there
    proc = _run_fetch({"model": REPO, "quant": QUANT, "dest": str(tmp_path / "dl"),
                       "endpoint": f"http://127.0.0.1:{port}"})  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "cannot reach" in proc.stderr and str(port) in proc.stderr
    assert not (tmp_path / "dl").exists()


class _DropBeforeFirstByte(threading.Thread):
    """Accepts every connection and closes it without answering."""

    def __init__(self):
        super().__init__(daemon=True)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()


def test_server_dropping_every_connection_is_a_clear_error(tmp_path):
    server = _DropBeforeFirstByte()
    server.start()
    try:
        proc = _run_fetch({"model": REPO, "quant": QUANT, "dest": str(tmp_path / "dl"),
                           "endpoint": f"http://127.0.0.1:{server.port}"})  # fmt: skip
    finally:
        server.sock.close()
    assert server.accepted >= 1
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "cannot reach" in proc.stderr, proc.stderr


def test_downloads_dropped_before_the_first_byte_keep_no_empty_part(models, mirror, tmp_path, monkeypatch):
    """The listing works but every file transfer dies at once: a clear error, nothing half-made left."""
    from huggingface_hub.errors import HTTPError

    server, _ = mirror()

    def dead(*args, **kwargs):
        raise HTTPError("server disconnected without sending a response")

    monkeypatch.setattr("huggingface_hub.file_download.http_get", dead)
    dest = tmp_path / "dl"
    with pytest.raises(LowbitError, match="nothing of it was kept") as err:
        hub.fetch(REPO, quant=QUANT, dest=str(dest), endpoint=server.url, show_progress=False)
    assert server.url in str(err.value) and "run the same command again" in str(err.value)
    assert not list(dest.rglob("*.part"))


def test_disk_margin_scales_with_the_download(mirror, tmp_path, monkeypatch):
    assert hub.disk_margin(9) == 9 and hub.disk_margin(10**9) == machine.MIN_MARGIN
    assert hub.disk_margin(10**12) == 2 * 10**10
    server, _ = mirror()
    monkeypatch.setattr(hub, "free_disk", lambda path: 1000)  # a 9-byte README fits in 1000 free bytes
    monkeypatch.setattr(hub, "memory_warning", lambda *a: None)
    result = hub.fetch(REPO, include=["README.md"], dest=str(tmp_path / "dl"), endpoint=server.url,
                       show_progress=False)  # fmt: skip
    assert result.downloaded == ["README.md"]


def test_lfs_pointer_served_as_a_model_is_named_at_fetch_time(tmp_path):
    from lowbit.models.mirror import MirrorServer

    root = tmp_path / "served"
    (root / REPO).mkdir(parents=True)
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{'ab' * 32}\nsize 131000000000\n"
    (root / REPO / "R1-UD-IQ1_S.gguf").write_text(pointer)  # a git clone without `git lfs pull`
    server = MirrorServer(root)
    try:
        with pytest.raises(LowbitError, match="git-LFS pointer") as err:
            hub.fetch(REPO, quant=QUANT, dest=str(tmp_path / "dl"), endpoint=server.url, show_progress=False)
    finally:
        server.stop()
    assert "git lfs pull" in str(err.value) and not (tmp_path / "dl" / "R1-UD-IQ1_S.gguf").exists()


def test_second_fetch_into_the_same_destination_is_refused_clearly(mirror, tmp_path):
    server, log = mirror()
    dest = tmp_path / "dl"
    dest.mkdir()
    with hub.destination_lock(dest):
        with pytest.raises(LowbitError, match=f"another lowbit fetch \\(pid {os.getpid()}\\)"):
            hub.fetch(REPO, quant=QUANT, dest=str(dest), endpoint=server.url, show_progress=False)
    assert not gets(log) and not list(dest.rglob("*.part"))
    result = hub.fetch(REPO, include=["README.md"], dest=str(dest), endpoint=server.url, show_progress=False)
    assert result.downloaded == ["README.md"]  # the lock is released with its holder


class _Garbage(HostileHub):
    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", "9")
        self.end_headers()
        self.wfile.write(b"not json!")


def test_a_server_answering_garbage_is_a_clear_error(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Garbage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        proc = _run_fetch({"model": REPO, "quant": QUANT, "dest": str(tmp_path / "dl"),
                           "endpoint": f"http://127.0.0.1:{server.server_address[1]}"})  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "does not answer like a Hugging Face Hub" in proc.stderr


def test_merge_uses_the_sha256_recorded_at_fetch_time(models, mirror, tmp_path):
    from lowbit.files import shards

    server, _ = mirror()
    dest = tmp_path / "dl"
    hub.fetch(REPO, quant=QUANT, dest=str(dest), endpoint=server.url, show_progress=False)
    names = shard_names(models)
    first, second = dest / QUANT / names[0], dest / QUANT / names[1]
    check = shards.check_set(shards.shard_set(first))
    assert check.ok and check.identity == "manifest" and check.unverified is None
    data = bytearray(second.read_bytes())
    data[-10] ^= 0xFF  # same header, same size: only the recorded sha256 can tell
    second.write_bytes(bytes(data))
    with pytest.raises(LowbitError, match=f"{names[1]} is not the file fetched from the repo"):
        shards.merge(first)
    second.unlink()
    shutil.copyfile(models / REPO / QUANT / names[1], second)  # the bytes that were fetched: re-hashed, accepted
    assert shards.check_set(shards.shard_set(first)).ok  # identical content to what was recorded: accepted
    other = tmp_path / "dl2"
    hub.fetch(REPO, include=[f"*{names[0]}"], dest=str(other), endpoint=server.url, show_progress=False)
    for name in names[1:]:
        shutil.copyfile(models / REPO / QUANT / name, other / QUANT / name)
    problems = " ".join(shards.check_set(shards.shard_set(other / QUANT / names[0])).problems)
    assert f"{names[1]} was not fetched with the other parts" in problems
