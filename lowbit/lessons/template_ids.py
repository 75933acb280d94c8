"""What lesson 01 (chat template and token IDs) shows: what llama.cpp evaluated for each prompt."""

from __future__ import annotations

from typing import Any

RECEIVED_COLUMNS = ["prompt", "tokens", "BOS", "first IDs", "llama.cpp warned"]


def received_table(runs: dict[str, dict[str, Any]], bos_id: int) -> tuple[list[str], list[tuple]]:
    """Columns and rows for `lowbit.prompts.chat.generate` runs keyed by label: how many tokens llama.cpp
    evaluated, how many of them were BOS, the first IDs, and whether llama.cpp warned."""
    rows = []
    for label, run in runs.items():
        ids = run["prompt_ids"]
        rows.append((label, len(ids), ids.count(bos_id), " ".join(map(str, ids[:8])), bool(run["warnings"])))
    return RECEIVED_COLUMNS, rows
