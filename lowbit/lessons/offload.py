"""Lesson 04 (offload planning) helpers: the lesson's model, the plan explorer, the predicted-vs-measured table."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from lowbit import LowbitError
from lowbit.files.gguf_header import ModelMeta
from lowbit.files.gguf_layout import runnable_deepseek2
from lowbit.lessons.widgets import linked
from lowbit.models.catalog import locate
from lowbit.run import plan
from lowbit.ui import print_table


def lesson_model(model: str, folder: Path | None = None) -> Path:
    """The GGUF of `model` (catalog name or path); when it is not on this machine, a small generated deepseek2
    MoE (MLA, 8 experts) so the lesson still runs, and it says so."""
    try:
        return locate(model)
    except LowbitError as exc:
        print(f"{model!r} is not available here ({exc}); using a small generated deepseek2 model")
        return runnable_deepseek2(folder or Path(tempfile.mkdtemp(prefix="lowbit-lesson04-")))


def show_options(meta: ModelMeta, vram_gb: float = 24.0, ram_gb: float = 64.0, context: int = 2048) -> None:
    """Print every placement the planner weighs for `meta` on one GPU of `vram_gb` (0: none) and `ram_gb`."""
    q = plan.make_plan(meta, [vram_gb] if vram_gb else [], ram_gb, min(context, meta.n_ctx_train or context))
    for o in q.options:
        print(f"{o.name:13s} fits={str(o.fits):5s} -ngl {o.n_gpu_layers:3d}  VRAM {o.vram_bytes / 2**30:7.2f} GiB  "
              f"est {o.est_tokens_per_s:9.1f} tok/s  {' '.join(o.flags)}")
    print("recommended:", q.recommended)


def plan_explorer(meta: ModelMeta, vram_gb: float = 24.0, ram_gb: float = 64.0) -> Any:
    """VRAM, RAM and context sliders that redraw `show_options` (headless: drawn once with these values)."""
    import ipywidgets as w  # optional (the `notebooks` extra): imported on use

    top = max(256, meta.n_ctx_train or 8192)
    return linked(lambda **v: show_options(meta, **v),
                  vram_gb=w.FloatSlider(value=vram_gb, min=0, max=160, step=0.5),
                  ram_gb=w.FloatSlider(value=ram_gb, min=4, max=512, step=4),
                  context=w.IntSlider(value=min(2048, top), min=256, max=top, step=256))


def error_table(rows: list[dict]) -> list[tuple]:
    """Rows of `predict.predict_then_measure` as a table: test, threads, depth, predicted, measured, error,
    the band, inside it, busy."""
    table = [(r["test"], r["threads"], r["depth"], r["predicted"], r["measured"], f"{r['error']:+.0%}",
              f"±{r['band']:.0%}", "yes" if r["within"] else "NO", "busy" if r["busy"] else "")
             for r in rows]
    print_table("predicted vs measured (llama-bench)", ["test", "threads", "depth", "predicted tok/s",
                                                        "measured tok/s", "error", "band", "within", ""], table)
    return table
