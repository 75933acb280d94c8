"""GGUF shard sets (`NAME-0000k-of-0000N.gguf`): recognise, check, merge, split — with llama-gguf-split.

llama.cpp loads a split set directly from its first shard, so merging is only for tools that want one
file (Ollama still refuses sharded GGUF). A merged file is not byte-identical to the shards (split.* keys,
offsets), and shards must never be `cat`-ed together: `merge` therefore runs `llama-gguf-split --merge`
into a temporary name, checks the result tensor by tensor against the shards (names, types, shapes,
data), and only then renames it atomically to a name that does not exist yet.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from lowbit import LowbitError
from lowbit.files.gguf_header import GGUFHeader, read_header
from lowbit.files.hashes import RECORD_FILE, hash_file, load_records
from lowbit.files.shard_set import SPLIT_COUNT, SPLIT_NO, SPLIT_TENSORS, ShardSet, glob_for, shards_named
from lowbit.machine import disk_margin, free_disk
from lowbit.toolchain.build import active_build
from lowbit.ui import err_console, human_bytes, print_table, step, warn

# Compare chunk: small enough that both sides stay in the CPU cache for the memcmp that follows the copy
# (16 MiB chunks made verification cost twice the CPU time of 1 MiB ones; larger reads gain nothing, the
# kernel reads ahead on sequential access anyway).
_BUF = 1024 * 1024


# --- recognising and checking sets ---------------------------------------------------------------


def shard_set(path: Path | str) -> ShardSet | None:
    """The set a shard file name belongs to (any of its parts may be given), or None for a single file."""
    return ShardSet.of(path)


def find_shard_sets(directory: Path | str) -> list[ShardSet]:
    """Every shard set under `directory` (recursively), one entry per set."""
    sets: dict[tuple[Path, str, int], ShardSet] = {}
    for p in sorted(Path(directory).rglob(glob_for("*"))):
        s = shard_set(p)
        if s is not None:
            sets.setdefault((s.directory, s.prefix, s.count), s)
    return list(sets.values())


def read_gguf(path: Path, cache: dict | None = None) -> GGUFHeader:
    """The header of `path`, parsed once per `cache`."""
    path = Path(path)
    if cache is None:
        return read_header(path)
    st = path.stat()
    key = (path.resolve(), st.st_mtime_ns, st.st_size)
    if key not in cache:
        cache[key] = read_header(path)
    return cache[key]


def _field(header: GGUFHeader, key: str):
    return header.value(key)


@dataclass
class SetCheck:
    shard_set: ShardSet
    problems: list[str] = field(default_factory=list)
    tensors: int = 0
    # how the parts were shown to belong to one model: "manifest" (sha256 recorded when fetched) or None,
    # with `unverified` saying why it could not be shown
    identity: str | None = None
    unverified: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


_LAYER_RE = re.compile(r"^blk\.\d+\.")


def _type_profile_problems(s: ShardSet, headers: dict[int, GGUFHeader]) -> list[str]:
    """Parts whose tensors have other types than the same tensors in the other parts (a Q8_0 part in an
    IQ1_S set). Each layer's `blk.N.ffn_up_exps.weight` counts as one role; a dynamic recipe changes the types
    of a few roles between layers, so a part is refused only when most roles it shares disagree."""
    roles: dict[int, dict[str, set[str]]] = {}
    for k, h in headers.items():
        for t in h.tensors:
            roles.setdefault(k, {}).setdefault(_LAYER_RE.sub("blk.N.", t.name), set()).add(t.tensor_type.name)
    problems = []
    for k, mine in roles.items():
        others: dict[str, set[str]] = {}
        for j, theirs in roles.items():
            if j != k:
                for role, types in theirs.items():
                    others.setdefault(role, set()).update(types)
        shared = [r for r in mine if r in others and r.startswith("blk.N.")]
        differ = [r for r in shared if not mine[r] & others[r]]
        if len(shared) >= 2 and len(differ) * 2 > len(shared):
            evidence = "; ".join(
                f"{r} is {'/'.join(sorted(mine[r]))} here but {'/'.join(sorted(others[r]))} in the other parts"
                for r in differ[:3]
            )
            problems.append(
                f"{s.part(k).name} does not belong to this set: {len(differ)} of the {len(shared)} tensor kinds it "
                f"shares with the other parts have other types ({evidence}) — it comes from another quant"
            )
    return problems


def _manifest_problems(s: ShardSet) -> tuple[list[str], bool]:
    """Compare the parts with the sha256 records `invoke fetch` keeps in the destination it wrote to.

    Returns (problems, whether any record was found)."""
    root = s.directory.resolve()
    for folder in (root, *root.parents):
        if (folder / RECORD_FILE).is_file():
            break
    else:
        return [], False
    records = load_records(folder)
    found = {p: records.get(p.resolve().relative_to(folder).as_posix()) for p in s.parts if p.is_file()}
    if not any(found.values()):
        return [], False
    problems = []
    for p, rec in found.items():
        if rec is None:
            problems.append(f"{p.name} was not fetched with the other parts (no sha256 recorded for it in "
                            f"{folder}): it may come from another set")  # fmt: skip
            continue
        st = p.stat()
        if (rec.get("size"), rec.get("mtime_ns")) == (st.st_size, st.st_mtime_ns):
            continue  # unchanged since it was verified
        key = "sha256" if "sha256" in rec else "git_sha1"
        if rec.get("size") != st.st_size or hash_file(p, lfs=key == "sha256") != rec.get(key):
            problems.append(f"{p.name} is not the file fetched from the repo (its {key} differs from the one "
                            "recorded at fetch time): it was replaced or changed")  # fmt: skip
    return problems, True


def check_identity(s: ShardSet, check: SetCheck, cache: dict | None = None) -> None:
    """Show that the parts come from one model, or say why that cannot be shown (adds to `check`)."""
    problems, has_manifest = _manifest_problems(s)
    check.problems += problems
    if has_manifest and not problems:
        check.identity = "manifest"
        return
    headers = {}
    for k, p in enumerate(s.parts, start=1):
        try:
            headers[k] = read_gguf(p, cache)
        except LowbitError:
            return  # reported by check_set
    check.problems += _type_profile_problems(s, headers)
    if not has_manifest:
        check.unverified = (
            "llama-gguf-split writes no model identity into parts 2..N and no sha256 was recorded for them "
            "(fetch with `invoke fetch` to get one), so that all parts come from the same model could only be "
            "checked by their tensor names, shapes and types"
        )


def check_set(s: ShardSet, cache: dict | None = None) -> SetCheck:
    """All parts exist, agree on split.count, are numbered as named, and their tensors add up."""
    check = SetCheck(s)
    missing = s.missing
    if missing:
        check.problems.append(
            f"missing {len(missing)} of {s.count} parts: {', '.join(p.name for p in missing)}"
        )
    declared_totals = set()
    arch = set()
    for k, p in enumerate(s.parts, start=1):
        if not p.is_file():
            continue
        try:
            r = read_gguf(p, cache)
        except LowbitError as exc:  # the bounded reader names what is wrong and where
            check.problems.append(f"{p.name}: {exc}")
            continue
        count, no, total = _field(r, SPLIT_COUNT), _field(r, SPLIT_NO), _field(r, SPLIT_TENSORS)
        if count is None:
            check.problems.append(
                f"{p.name}: has no split.count key, it is not part of a llama-gguf-split set"
            )
            continue
        if count != s.count:
            check.problems.append(f"{p.name}: split.count = {count}, but the name says {s.count} parts")
        if no != k - 1:
            check.problems.append(f"{p.name}: split.no = {no}, expected {k - 1} for part {k}")
        declared_totals.add(total)
        check.tensors += len(r.tensors)
        if k == 1:
            arch.add(_field(r, "general.architecture"))
    if len(declared_totals) > 1:
        check.problems.append(
            f"parts disagree on split.tensors.count ({sorted(declared_totals)}): "
            "they come from different splits"
        )
    elif declared_totals and not missing and check.tensors != next(iter(declared_totals)):
        check.problems.append(
            f"the parts hold {check.tensors} tensors but declare split.tensors.count = "
            f"{next(iter(declared_totals))}: they do not belong together"
        )
    if not check.problems:
        check_identity(s, check, cache)
    return check


def require_complete(path: Path | str, cache: dict | None = None) -> SetCheck:
    """The check of the set `path` belongs to, or LowbitError saying exactly what is wrong or missing."""
    s = shard_set(path)
    if s is None:
        raise LowbitError(f"{path} is not named like a shard (NAME-00001-of-0000N.gguf)")
    check = check_set(s, cache)
    if not check.ok:
        raise LowbitError(
            f"shard set {s.prefix} ({s.count} parts in {s.directory}) is not usable: "
            + "; ".join(check.problems)
            + ". Fetch the missing/bad parts again (`invoke fetch` verifies sha256)."
        )
    return check


# --- tensor-by-tensor verification ---------------------------------------------------------------


@dataclass
class TensorCheck:
    name: str
    type: str
    shape: tuple[int, ...]
    n_bytes: int
    sha256: str | None = None


@dataclass
class VerifyReport:
    tensors: list[TensorCheck]
    problems: list[str]
    bytes_compared: int
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.problems


def _tensor_table(paths: list[Path], cache: dict | None = None) -> list[tuple[Path, object]]:
    out = []
    for p in paths:
        r = read_gguf(p, cache)
        out += [(p, t) for t in sorted(r.tensors, key=lambda t: t.data_offset)]
    return out


class _Buffers:
    """Reusable buffer pairs of exact sizes (tensor sizes repeat), so chunks compare with one memcmp."""

    def __init__(self, keep: int = 4):
        self.keep, self.pairs = keep, {}

    def get(self, n: int) -> tuple[bytearray, bytearray]:
        if n not in self.pairs:
            if len(self.pairs) >= self.keep:
                self.pairs.pop(next(iter(self.pairs)))
            self.pairs[n] = (bytearray(n), bytearray(n))
        return self.pairs[n]


def _read_at(fd: int, buf: bytearray, offset: int) -> int:
    if hasattr(os, "preadv"):
        return os.preadv(fd, [buf], offset)
    data = os.pread(fd, len(buf), offset)  # macOS has no preadv
    buf[: len(data)] = data
    return len(data)


def _compare_ranges(
    fd_a: int, off_a: int, fd_b: int, off_b: int, size: int, pool: ThreadPoolExecutor, buffers: _Buffers, h
) -> str | None:
    """Stream two byte ranges once each (side A read in a helper thread, in parallel) and compare them."""
    done = 0
    while done < size:
        n = min(size - done, _BUF)
        a, b = buffers.get(n)
        fut = pool.submit(_read_at, fd_a, a, off_a + done)
        nb = _read_at(fd_b, b, off_b + done)
        na = fut.result()
        if na != n or nb != n:
            return "file ends early"
        if a != b:  # bytearray == bytearray is a memcmp (memoryview comparison would go item by item)
            return "data differs"
        if h is not None:
            h.update(a)
        done += n
    return None


def _metadata_differences(first: GGUFHeader, single: GGUFHeader) -> list[str]:
    """Keys of the first shard (split.* aside) missing or different in `single`, compared as raw bytes."""
    problems = []
    for key in first.kv:
        if key.startswith("split."):
            continue
        if key not in single.kv or first.raw(key) != single.raw(key):
            problems.append(f"metadata {key} differs")
    return problems


def verify_tensors(
    parts: list[Path],
    single: Path,
    hashes: bool = False,
    data: bool = True,
    expected_offsets: dict[str, int] | None = None,
    cache: dict | None = None,
) -> VerifyReport:
    """Compare the tensors of a shard set (`parts`, in order) with those of one file.

    Names, types, shapes and byte sizes must agree, and every tensor's data must be identical: both sides
    are streamed once (each byte read once) and compared chunk by chunk — exact, and cheaper than hashing
    both sides. `hashes=True` also records each tensor's sha256 (of the shard side, which the comparison
    shows is the single file's too), for display. `data=False` checks everything but the data (used after
    the data was already compared while the file was being written, at `expected_offsets`).
    """
    t0 = time.perf_counter()
    left = _tensor_table(parts, cache)
    right_reader = read_gguf(single, cache)
    right = {t.name: t for t in right_reader.tensors}
    problems: list[str] = []
    if len(right) != len(left):
        problems.append(f"{single.name} has {len(right)} tensors, the shards {len(left)}")
    problems += _metadata_differences(read_gguf(parts[0], cache), right_reader)
    checks: list[TensorCheck] = []
    compared = 0
    fds: dict[Path, int] = {}
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lowbit-verify")
    buffers = _Buffers()
    try:
        fd_single = os.open(single, os.O_RDONLY)
        fds[single] = fd_single
        for path, t in left:
            other = right.get(t.name)
            shape = tuple(int(x) for x in t.shape)
            tc = TensorCheck(t.name, t.tensor_type.name, shape, int(t.n_bytes))
            checks.append(tc)
            if other is None:
                problems.append(f"tensor {t.name} is missing from {single.name}")
                continue
            if (
                other.tensor_type != t.tensor_type
                or tuple(int(x) for x in other.shape) != shape
                or other.n_bytes != t.n_bytes
            ):
                problems.append(
                    f"tensor {t.name}: {t.tensor_type.name}{list(shape)} in the shards, "
                    f"{other.tensor_type.name}{list(other.shape)} in {single.name}"
                )
                continue
            if expected_offsets is not None and expected_offsets.get(t.name) != int(other.data_offset):
                problems.append(f"tensor {t.name}: data is not where it was checked")
                continue
            if not data:
                continue
            if path not in fds:
                fds[path] = os.open(path, os.O_RDONLY)
            h = hashlib.sha256() if hashes else None
            problem = _compare_ranges(
                fds[path],
                int(t.data_offset),
                fd_single,
                int(other.data_offset),
                int(t.n_bytes),
                pool,
                buffers,
                h,
            )
            if problem:
                problems.append(f"tensor {t.name}: {problem}")
                continue
            compared += int(t.n_bytes)
            if h is not None:
                tc.sha256 = h.hexdigest()
    finally:
        pool.shutdown()
        for fd in fds.values():
            os.close(fd)
    return VerifyReport(checks, problems, compared, time.perf_counter() - t0)


# --- running llama-gguf-split -----------------------------------------------------------------------


def gguf_split_tool() -> Path:
    return active_build().tool("llama-gguf-split")



def _check_disk(directory: Path, needed: int, what: str) -> None:
    free = free_disk(directory)
    margin = disk_margin(needed)
    if needed + margin > free:
        raise LowbitError(
            f"not enough disk space in {directory} to {what}: it needs {human_bytes(needed)} "
            f"(+ {human_bytes(margin)} margin), {human_bytes(free)} is free. "
            "Free some space or write elsewhere (--out)."
        )


def _fsync(path: Path) -> None:
    """Flush `path` (a file, or a directory's entries) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        if not path.is_dir():  # some filesystems cannot fsync a directory; a file must reach the disk
            raise
    finally:
        os.close(fd)


def _link_no_overwrite(tmp: Path, final: Path) -> None:
    """Give `tmp` the name `final` atomically, failing if `final` exists (never overwrites).

    `tmp`'s data reaches the disk before it gets the final name, and the name reaches the disk too, so a
    crash or power cut never leaves a final name on a file whose data was still in the page cache.
    """
    _fsync(tmp)
    try:
        os.link(tmp, final)  # atomic, and fails with FileExistsError instead of replacing
    except FileExistsError:
        raise LowbitError(
            f"{final} already exists; lowbit never overwrites it. Remove it or pass --out."
        ) from None
    except OSError:  # filesystems without hard links: check, then rename (same directory)
        if final.exists():
            raise LowbitError(f"{final} already exists; lowbit never overwrites it.") from None
        os.replace(tmp, final)
    else:
        tmp.unlink()
    _fsync(final.parent)


def _run_with_progress(
    cmd: list[str], watch: Path | list[Path], total: int, label: str, on_start=None
) -> subprocess.CompletedProcess:
    """Run `cmd`, showing a bar of how many bytes the watched output file(s) reached.

    `on_start(proc)` is called once the process runs (merge starts its verifier there)."""

    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
        env={**os.environ, "GGML_NO_BACKTRACE": "1"},  # a failing tool prints its error, not a gdb backtrace
    )  # fmt: skip
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    if on_start is not None:
        on_start(proc)

    def written() -> int:
        if isinstance(watch, Path):
            return watch.stat().st_size if watch.exists() else 0
        return sum(p.stat().st_size for d in watch for p in d.glob("*.gguf"))

    try:
        with Progress(
            TextColumn(label),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=err_console,
            transient=True,
            auto_refresh=False,
        ) as progress:
            task = progress.add_task(label, total=total)
            while True:
                progress.update(task, completed=written(), refresh=True)
                try:
                    proc.wait(timeout=0.25)  # returns the moment the tool exits
                    break
                except subprocess.TimeoutExpired:
                    continue
            progress.update(task, completed=written(), refresh=True)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    reader.join(timeout=5)
    return subprocess.CompletedProcess(cmd, proc.returncode, "".join(out), "")


def _tool_failed(what: str, proc: subprocess.CompletedProcess, directory: Path, needed: int) -> LowbitError:
    """The error for a failed llama-gguf-split run: "disk full" with the numbers when the disk filled up."""

    free = free_disk(directory)
    out = proc.stdout or ""
    if free < 16 * 1024 * 1024 or "No space left" in out or "basic_ios" in out:
        return LowbitError(
            f"disk full in {directory} while trying to {what}: {human_bytes(needed)} needed, {human_bytes(free)} "
            "free (the partial output was removed; nothing under the final name). Free some space or write "
            "elsewhere (--out)."
        )
    return LowbitError(f"llama-gguf-split failed to {what} (exit {proc.returncode}):\n{out[-2000:]}")


def _pad(n: int, align: int) -> int:
    return (n + align - 1) // align * align


def _predicted_layout(parts: list[Path], cache: dict | None = None) -> list[tuple[Path, object, int]] | None:
    """Where `llama-gguf-split --merge` will put each tensor's data: (shard, tensor, offset in merged file).

    The merged header is the first shard's key/value section plus one tensor-info record per tensor, padded
    to the alignment; data follows in shard order, each tensor padded to 32 bytes (GGUF_DEFAULT_ALIGNMENT).
    Only a prediction: `merge` checks it against the finished file and verifies again if it was wrong.
    """
    readers = [read_gguf(p, cache) for p in parts]
    if not readers[0].tensors:
        return None
    kv_end = int(readers[0].tensors[0].info_offset)
    infos = sum(8 + len(t.name.encode()) + 4 + 8 * len(t.shape) + 4 + 8 for r in readers for t in r.tensors)
    offset = _pad(kv_end + infos, int(readers[0].alignment))
    layout = []
    for path, r in zip(parts, readers, strict=True):
        for t in r.tensors:  # tensor-info order: the order llama-gguf-split copies data in
            layout.append((path, t, offset))
            offset += _pad(int(t.n_bytes), 32)
    return layout


class _Follower(threading.Thread):
    """Compares each tensor of the growing merged file with its shard as soon as it is written.

    The bytes were just read (shards) and written (merged file) by llama-gguf-split, so both sides come from
    the page cache: verification runs on the other core while the merge is disk-bound, instead of
    re-reading everything from disk afterwards.
    """

    def __init__(self, layout: list[tuple[Path, object, int]], target: Path, proc: subprocess.Popen):
        super().__init__(name="lowbit-merge-verify", daemon=True)
        self.layout, self.target, self.proc = layout, target, proc
        self.problems: list[str] = []
        self.compared = 0
        self.complete = False
        self.error: BaseException | None = None

    def _wait_for(self, size: int) -> bool:
        while True:
            have = self.target.stat().st_size if self.target.exists() else 0
            if have >= size:
                return True
            if self.proc.poll() is not None:
                have = self.target.stat().st_size if self.target.exists() else 0
                return have >= size
            time.sleep(0.005)

    def run(self) -> None:
        fds: dict[Path, int] = {}
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lowbit-verify")
        buffers = _Buffers()
        try:
            for path, t, offset in self.layout:
                n = int(t.n_bytes)
                if not self._wait_for(offset + n):
                    return  # the tool stopped early; merge() reports its exit status
                if self.target not in fds:
                    fds[self.target] = os.open(self.target, os.O_RDONLY)
                if path not in fds:
                    fds[path] = os.open(path, os.O_RDONLY)
                problem = _compare_ranges(fds[path], int(t.data_offset), fds[self.target], offset, n, pool,
                                          buffers, None)  # fmt: skip
                if problem:
                    self.problems.append(f"tensor {t.name}: {problem}")
                self.compared += n
            self.complete = True
        except BaseException as exc:  # reported to merge(), which then verifies the finished file instead
            self.error = exc
        finally:
            pool.shutdown()
            for fd in fds.values():
                os.close(fd)


def merge(
    first: Path | str, out: Path | str | None = None, verify: bool = True
) -> tuple[Path, VerifyReport | None]:
    """Merge a complete shard set into one GGUF next to it (or `out`), verified, never overwriting."""

    cache: dict = {}  # each file's header is parsed once
    check = require_complete(first, cache)
    s = check.shard_set
    if check.unverified is not None:
        warn(f"could not verify that the parts of {s.prefix} come from one model: {check.unverified}")
    final = Path(out) if out else s.directory / s.merged_name
    if final.exists():
        raise LowbitError(f"{final} already exists; lowbit never overwrites it. Remove it or pass --out.")
    final.parent.mkdir(parents=True, exist_ok=True)
    _check_disk(final.parent, s.size, f"merge {s.count} shards")
    tmp = final.with_name(f".{final.name}.lowbit-merging-{os.getpid()}")
    report = None
    layout = _predicted_layout(s.parts, cache) if verify else None
    followers: list[_Follower] = []

    def start_follower(proc: subprocess.Popen) -> None:
        if layout:
            followers.append(_Follower(layout, tmp, proc))
            followers[0].start()

    try:
        step(f"merging {s.count} shards -> {final.name} (temporary name until verified; data is compared "
             "with the shards while it is written)")  # fmt: skip
        proc = _run_with_progress(
            [str(gguf_split_tool()), "--merge", str(s.first), str(tmp)], tmp, s.size, "merge", start_follower
        )
        for f in followers:
            f.join()
        if proc.returncode != 0 or not tmp.exists():
            raise _tool_failed(f"merge {s.count} shards", proc, final.parent, s.size)
        if verify:
            follower = followers[0] if followers else None
            if follower is not None and follower.complete and layout:
                # data already compared at the predicted offsets: check names, types, shapes, metadata, and
                # that the data really is at those offsets
                offsets = {t.name: off for _, t, off in layout}
                report = verify_tensors(s.parts, tmp, data=False, expected_offsets=offsets, cache=cache)
                report.problems = follower.problems + report.problems
                report.bytes_compared = follower.compared
                if any("not where it was checked" in p for p in report.problems):
                    report = None  # the layout prediction was wrong: compare the finished file instead
            if report is None:
                step("verifying tensor by tensor against the shards")
                report = verify_tensors(s.parts, tmp, cache=cache)
            if not report.ok:
                raise LowbitError(
                    f"merged file does not match the shards: {'; '.join(report.problems[:10])}. "
                    "Nothing was written under the final name."
                )
        _link_no_overwrite(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final, report


def merge_command(first: str, out: str | None = None) -> int:
    """`invoke merge FIRST_SHARD [--out FILE]`."""

    final, report = merge(first, out)
    assert report is not None
    step(
        f"{final} written: {len(report.tensors)} tensors checked (names, types, shapes, data; "
        f"{human_bytes(report.bytes_compared)} compared in {report.seconds:.1f} s). "
        "llama.cpp does not need this file (it loads shards directly); Ollama does: `invoke ollama FILE`."
    )
    return 0


_SIZE_RE = re.compile(r"^\s*(\d+)\s*([MG])(?:B|iB)?\s*$", re.IGNORECASE)


def _parse_size(text: str) -> tuple[str, int]:
    """'2G' / '500M' (what llama-gguf-split accepts, 1000-based) -> (its argument, bytes)."""
    m = _SIZE_RE.match(str(text))
    if not m:
        raise LowbitError(
            f"--max-size {text!r}: use a number with M or G, e.g. 500M or 2G "
            "(llama-gguf-split accepts nothing else)"
        )
    n, unit = int(m[1]), m[2].upper()
    return f"{n}{unit}", n * (1000**2 if unit == "M" else 1000**3)


def split(
    file: Path | str,
    max_size: str | None = None,
    max_tensors: int | str | None = None,
    out: Path | str | None = None,
) -> ShardSet:
    """Split one GGUF into a verified shard set (`out` = path prefix, default next to the file)."""

    src = Path(file)
    if not src.is_file():
        raise LowbitError(f"{src} does not exist")
    if shard_set(src) is not None:
        raise LowbitError(f"{src.name} is already a shard; merge the set first (`invoke merge`)")
    if (max_size is None) == (max_tensors is None):
        raise LowbitError("give exactly one of --max-size (e.g. 2G) or --max-tensors N")
    if max_tensors is not None:
        text = str(max_tensors).strip()
        if not text.isdigit() or int(text) < 1:
            raise LowbitError(f"--max-tensors {max_tensors!r}: give a whole number of tensors per shard, 1 or more")
        max_tensors = int(text)
    prefix = Path(out) if out else src.with_suffix("")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    existing = shards_named(prefix.parent, prefix.name)
    if existing:
        raise LowbitError(
            f"{existing[0]} already exists; lowbit never overwrites shards. Remove them or pass --out."
        )
    _check_disk(prefix.parent, src.stat().st_size, "split")
    flags = (
        ["--split-max-tensors", str(max_tensors)]
        if max_tensors is not None
        else ["--split-max-size", _parse_size(max_size)[0]]
    )
    tmpdir = prefix.parent / f".{prefix.name}.lowbit-splitting-{os.getpid()}"
    tmpdir.mkdir()
    try:
        step(f"splitting {src.name} ({' '.join(flags)})")
        proc = _run_with_progress(
            [str(gguf_split_tool()), "--split", *flags, str(src), str(tmpdir / prefix.name)],
            [tmpdir],
            src.stat().st_size,
            "split",
        )
        if proc.returncode != 0:
            if "0 tensors" in proc.stdout and max_size:
                largest = max(read_header(src).tensors, key=lambda t: int(t.n_bytes))
                limit = _parse_size(max_size)[1]
                need_mb = max(1, -(-int(largest.n_bytes) // 1000**2))
                raise LowbitError(
                    f"--max-size {max_size} is smaller than the largest tensor, {largest.name} "
                    f"({human_bytes(int(largest.n_bytes))}), and a tensor is never cut across splits. "
                    f"Use --max-size {need_mb}M or more, or --max-tensors N (always works). "
                    f"[llama-gguf-split: one of splits have 0 tensors; limit {human_bytes(limit)}]"
                )
            raise _tool_failed(f"split {src.name}", proc, prefix.parent, src.stat().st_size)
        made = shard_set(next(iter(sorted(tmpdir.glob("*.gguf")))))
        assert made is not None
        cache: dict = {}
        check = check_set(made, cache)
        report = verify_tensors(made.parts, src, cache=cache)
        if not check.ok or not report.ok:
            raise LowbitError(
                f"the split does not match {src.name}: {'; '.join(check.problems + report.problems)}"
            )
        if max_size:
            limit = _parse_size(max_size)[1]
            for p in made.parts:
                if p.stat().st_size > limit:
                    warn(
                        f"{p.name} is {human_bytes(p.stat().st_size)}, over --max-size {max_size}: "
                        "it holds a tensor larger than the limit (tensors are never cut)"
                    )
        result = ShardSet(prefix.parent, made.prefix, made.count)
        for k in range(1, made.count + 1):
            _link_no_overwrite(made.part(k), result.part(k))
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return result


def split_command(
    file: str, max_size: str | None = None, max_tensors: int | str | None = None, out: str | None = None
) -> int:
    """`invoke split FILE --max-size 2G | --max-tensors N`."""

    s = split(file, max_size=max_size, max_tensors=max_tensors, out=out)
    print_table(
        f"{s.count} shards (verified tensor by tensor)",
        ["file", "size"],
        [(p.name, human_bytes(p.stat().st_size)) for p in s.parts],
    )
    step(f"llama.cpp loads the set from its first part: -m {s.first}")
    return 0
