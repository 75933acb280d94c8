"""What lesson 05 (BitNet b1.58 2B4T on a CPU) shows: the benchmark's memory split, and a chat reply."""

from __future__ import annotations

import json
from typing import Any

from lowbit.bitnet import bench
from lowbit.paths import kit_root

# A reduced shape for a quick live look when `invoke bitnet-bench` has stored no results.
LIVE_SHAPE = bench.Shape(hidden=512, layers=4, ffn=1536, heads=8, kv_heads=2)
MEMORY_COLUMNS = ["type", "non-emb weights GB", "embeddings GB", "KV GB", "buffers GB", "peak RSS GB"]


def bench_result(threads: int) -> dict[str, Any]:
    """The stored `invoke bitnet-bench` result (full 2B4T shape) if there is one, else `LIVE_SHAPE` measured
    now, one round at `threads`."""
    for path in (bench.results_file(), kit_root() / "benchmarks" / "results" / "bitnet.json"):
        if path.exists():
            return json.loads(path.read_text())
    return bench.run_benchmark(LIVE_SHAPE, rounds=1, threads=(threads,))


def memory_table(result: dict[str, Any]) -> tuple[list[str], list[tuple]]:
    """Columns and rows: each type's peak RSS split (GB), then the paper's figure, which counts
    non-embedding weights only."""
    gb = 1e9
    rows = [
        (qtype, *(f"{m[k] / gb:.3f}" for k in ("weights", "embeddings", "kv", "buffers", "peak_rss")))
        for qtype, m in result["memory"].items()
    ]
    rows.append(("paper (2B4T)", f"{bench.PAPER_WEIGHTS_GB}", "not counted", "-", "-", "-"))
    return MEMORY_COLUMNS, rows


def chat_reply(llm, message: str, max_tokens: int = 24) -> str:
    """Ask a `llama_cpp.Llama` one chat question greedily; print the exchange and return the reply."""
    out = llm.create_chat_completion(messages=[{"role": "user", "content": message}], max_tokens=max_tokens,
                                     temperature=0)
    text = out["choices"][0]["message"]["content"]
    print(f"> {message}\n{text!r}")
    return text
