"""Names of GGUF split sets: `PREFIX-0000k-of-0000N.gguf`, as gguf-py and llama-gguf-split write them.

The one place the kit spells the shard-name pattern: it is gguf-py's `SHARD_NAME_FORMAT` read backwards,
and the split keys are gguf-py's `Keys.Split`. `lowbit.files.shards` checks, merges and splits sets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from gguf import Keys
from gguf.gguf_writer import SHARD_NAME_FORMAT  # "{:s}-{:05d}-of-{:05d}.gguf"

SPLIT_NO = Keys.Split.LLM_KV_SPLIT_NO  # "split.no" (0-based)
SPLIT_COUNT = Keys.Split.LLM_KV_SPLIT_COUNT  # "split.count"
SPLIT_TENSORS = Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT  # "split.tensors.count"


def _pattern(fmt: str) -> str:
    """SHARD_NAME_FORMAT as a regex with groups prefix, no, count."""
    out = re.escape(fmt).replace(re.escape("{:s}"), "(?P<prefix>.+)")
    for group in ("no", "count"):
        out = out.replace(re.escape("{:05d}"), rf"(?P<{group}>\d{{5}})", 1)
    return out


SHARD_RE = re.compile(f"^{_pattern(SHARD_NAME_FORMAT)}$")
SHARD_SUFFIX_RE = re.compile(_pattern(SHARD_NAME_FORMAT).replace("(?P<prefix>.+)", "") + "$")


@dataclass
class ShardSet:
    """A split set as named on disk: `directory/prefix-0000k-of-0000N.gguf` for k = 1..N."""

    directory: Path
    prefix: str
    count: int

    @classmethod
    def of(cls, path: Path | str) -> ShardSet | None:
        """The set a shard file name belongs to (any of its parts may be given), or None for a single file."""
        p = Path(path)
        m = SHARD_RE.match(p.name)
        return cls(p.parent, m["prefix"], int(m["count"])) if m else None

    def part(self, k: int) -> Path:
        return self.directory / SHARD_NAME_FORMAT.format(self.prefix, k, self.count)

    @property
    def parts(self) -> list[Path]:
        return [self.part(k) for k in range(1, self.count + 1)]

    @property
    def first(self) -> Path:
        return self.part(1)

    @property
    def missing(self) -> list[Path]:
        return [p for p in self.parts if not p.is_file()]

    @property
    def size(self) -> int:
        return sum(p.stat().st_size for p in self.parts if p.is_file())

    @property
    def merged_name(self) -> str:
        return f"{self.prefix}.gguf"

    @property
    def glob(self) -> str:
        """A glob for the parts of this prefix with any count (e.g. for an allow-pattern)."""
        return glob_for(self.prefix)

    def on_disk(self) -> list[Path]:
        """Shard files of this prefix in the directory, whatever count their names say, sorted."""
        return shards_named(self.directory, self.prefix)


def glob_for(prefix: str) -> str:
    """A glob matching every shard name of `prefix`."""
    return SHARD_NAME_FORMAT.replace("{:s}", prefix).replace("{:05d}", "*")


def shards_named(directory: Path | str, prefix: str) -> list[Path]:
    """Files in `directory` named like shards of `prefix` (any part, any count), sorted."""
    return sorted(p for p in Path(directory).glob(glob_for(prefix))
                  if (m := SHARD_RE.match(p.name)) and m["prefix"] == prefix)


def shard_number(name: str) -> tuple[int, int] | None:
    """(k, N) of a shard name `...-0000k-of-0000N.gguf`, or None for a single file."""
    m = SHARD_RE.match(Path(name).name)
    return (int(m["no"]), int(m["count"])) if m else None


def is_first_shard(name: str) -> bool:
    """True for `...-00001-of-N.gguf`."""
    return (shard_number(name) or (0, 0))[0] == 1


def model_stem(name: str) -> str:
    """A model's name without `.gguf` and without a shard suffix (`m-00001-of-00003.gguf` -> `m`)."""
    name = Path(name).name
    m = SHARD_RE.match(name)
    return m["prefix"] if m else name.removesuffix(".gguf")
