"""Merge throughput vs `cp` of the same bytes, and loopback download MB/s through the workshop mirror.

Usage: python benchmarks/merge.py [--size-mb 1024] [--rounds 3] [--workdir DIR]

Makes a shard set of about SIZE MB (gguf-py GGUFWriter + llama-gguf-split), then, interleaved for ROUNDS
rounds on the same disk: `cp` of the shards, bare `llama-gguf-split --merge`, and `lowbit` merge (which
adds the tensor-by-tensor check, the fsync and the atomic rename). Every contender's time includes its
output reaching the disk (fsync): a merge is done when the file is durable, and a 131 GB merge cannot
hide in the page cache of a machine with less RAM than that. Two cache states are measured:

- cold: the shards are evicted from the page cache (posix_fadvise DONTNEED) before each run, as they are
  when a 131 GB set is merged on a 64 GB machine: this is the number that matters for real models;
- warm: the shards are in the page cache (a small set merged right after download).

Then fetches the set through `lowbit.models.mirror` on 127.0.0.1: raw transfer (huggingface_hub's http_get) and the
whole `lowbit.models.fetch` fetch (plan, transfer, sha256 verification). Prints medians and ratios measured in this
one run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lowbit.files import shards  # noqa: E402
from lowbit.models import fetch as hub
from lowbit.models.mirror import MirrorServer  # noqa: E402
from lowbit.toolchain.build import active_build  # noqa: E402


def make_set(work: Path, size_mb: int) -> list[Path]:
    from gguf import GGUFWriter

    rng = np.random.default_rng(0)
    src = work / "bench.gguf"
    w = GGUFWriter(str(src), "llama")
    per = 8 * 1024 * 1024  # 8 MiB tensors
    for i in range(max(2, size_mb * 1000 * 1000 // per)):
        w.add_tensor(
            f"blk.{i}.ffn_up.weight",
            rng.integers(0, 2**16, per // 2, dtype=np.uint16).view(np.float16).reshape(-1, 4096),
        )
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    repo = work / "models" / "bench" / "set"
    repo.mkdir(parents=True)
    tool = active_build().tool("llama-gguf-split")
    max_mb = max(10, size_mb // 3 + 1)
    subprocess.run(
        [str(tool), "--split", "--split-max-size", f"{max_mb}M", str(src), str(repo / "bench")],
        check=True,
        capture_output=True,
    )
    src.unlink()
    return sorted(repo.glob("bench-*-of-*.gguf"))


def timed(fn) -> float:
    """Seconds `fn` takes, its table/progress output swallowed (it would dominate the log, not the time)."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t


def evict(paths: list[Path]) -> None:
    """Drop `paths` from the page cache (they are clean: written and fsynced before), so the next read hits the disk."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm(paths: list[Path]) -> None:
    for p in paths:
        with open(p, "rb") as fh:
            while fh.read(16 << 20):
                pass


def sync_outputs(out: Path) -> None:
    """fsync everything under `out` and the folder itself: the run is over when its output is durable."""
    for p in [*out.iterdir(), out]:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def contenders(parts: list[Path], out: Path) -> dict[str, object]:
    tool = active_build().tool("llama-gguf-split")
    return {
        "cp": lambda: subprocess.run(["cp", *map(str, parts), str(out)], check=True),
        "llama-gguf-split --merge": lambda: subprocess.run(
            [str(tool), "--merge", str(parts[0]), str(out / "m.gguf")], check=True, capture_output=True
        ),
        "lowbit merge (verified)": lambda: shards.merge(parts[0], out=out / "m.gguf"),
    }


def measure(parts: list[Path], out: Path, rounds: int, cache: str) -> dict[str, list[float]]:
    runs = contenders(parts, out)
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(rounds):
        # each round starts with a different contender: whoever follows another's 2 GB delete and writeback
        # (ext4 discards, journal commits) must not always be the same one
        for name in names[r % len(names) :] + names[: r % len(names)]:
            run = runs[name]
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            os.sync()  # nothing of the previous contender is still being written back
            (evict if cache == "cold" else warm)(parts)

            def durable(run=run) -> None:
                run()
                sync_outputs(out)

            times[name].append(timed(durable))
    shutil.rmtree(out, ignore_errors=True)
    return times


def report(times: dict[str, list[float]], total: int, title: str) -> None:
    """Medians, and ratios to cp / llama-gguf-split taken round by round (contenders of one round ran side by
    side, so the machine's drift cancels) and then the median of those."""

    def paired(ref: str, name: str) -> float:
        return statistics.median(r / t for r, t in zip(times[ref], times[name], strict=True))

    print(f"\n{title}")
    print(f"{'what':32} {'median s':>9} {'MB/s':>8} {'vs cp':>7} {'(min-max)':>11} {'vs llama-gguf-split':>20}")
    for name, ts in times.items():
        m = statistics.median(ts)
        per_round = [r / t for r, t in zip(times["cp"], ts, strict=True)]
        print(
            f"{name:32} {m:9.3f} {total / m / 1e6:8.0f} {paired('cp', name):7.2f} "
            f"{f'{min(per_round):.2f}-{max(per_round):.2f}':>11} {paired('llama-gguf-split --merge', name):20.2f}"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", default=None, help="where to write (default: a temp dir; same disk for all)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lowbit-bench-", dir=args.workdir))
    try:
        parts = make_set(work, args.size_mb)
        total = sum(p.stat().st_size for p in parts)
        out = work / "out"
        print(
            f"shard set: {len(parts)} parts, {total / 1e6:.0f} MB; {args.rounds} interleaved rounds, medians; "
            "every time includes fsync of the output"
        )
        report(
            measure(parts, out, args.rounds, "cold"), total, "cold cache (shards read from disk, as for a real model)"
        )
        report(measure(parts, out, args.rounds, "warm"), total, "warm cache (shards in the page cache)")
        shutil.rmtree(out, ignore_errors=True)

        dl: dict[str, list[float]] = {"raw http_get": [], "lowbit fetch (+sha256)": []}
        with MirrorServer(work / "models") as server:
            from huggingface_hub import hf_hub_url
            from huggingface_hub.file_download import http_get

            plan = hub.plan_fetch("bench/set", ["*.gguf"], work / "dl", endpoint=server.url)
            for _ in range(args.rounds):

                def raw():
                    for f in plan.files:
                        with open(work / "raw.bin", "wb") as fh:
                            http_get(
                                hf_hub_url("bench/set", f.path, revision=plan.revision, endpoint=server.url),
                                fh,
                            )

                dl["raw http_get"].append(timed(raw))
                shutil.rmtree(work / "dl", ignore_errors=True)
                dl["lowbit fetch (+sha256)"].append(
                    timed(
                        lambda: hub.fetch(
                            "bench/set",
                            include=["*.gguf"],
                            dest=str(work / "dl"),
                            endpoint=server.url,
                            show_progress=False,
                        )
                    )
                )
        print(f"\nloopback download through lowbit.models.mirror (127.0.0.1), {total / 1e6:.0f} MB")
        for name, ts in dl.items():
            m = statistics.median(ts)
            print(f"{name:32} {m:9.3f} {total / m / 1e6:8.0f} MB/s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
