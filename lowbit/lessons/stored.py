"""What a stored lesson (notebooks/*.ipynb, executed) may carry: no run-to-run metadata, no machine paths.

A lesson is stored executed, so nbval has outputs to compare and a reader sees results without running
it. What the run recorded *about itself* — papermill's start/end times and durations, nbclient's per-cell
timestamps, the papermill and Python versions of the machine that ran it, papermill's random ID for the
injected-parameters cell — would make every re-store a diff that says nothing about the lesson, so
`clean_notebook` drops it. The keys come from the tools that write them: papermill's
`NotebookExecutionManager` (notebook and cell `metadata.papermill` timing and status) and `load_notebook_node`
(`version`), nbformat 4.5's cell `metadata.execution` (nbclient's `record_timing`), and the kernel's
`language_info.version`. Everything else (tags, kernelspec, widget state, papermill's parameters, outputs,
execution counts) is the lesson and stays.

Why not a library: nbconvert's `ClearMetadataPreprocessor` keeps only listed keys, at most one nested key
per parent, and skips markdown cells (papermill writes metadata into those too); nbstripout would add a
dependency to drop a handful of keys. The lists below are the whole policy.
"""

from __future__ import annotations

import json
import re
from typing import Any

import nbformat

# metadata.papermill keys that describe one run, not the lesson (papermill's NotebookExecutionManager
# writes the first four on every run; `version` is papermill's own). Kept: parameters, default_parameters,
# environment_variables, input_path/output_path (rewritten to the file name when storing).
PAPERMILL_RUN_KEYS = ("start_time", "end_time", "duration", "exception", "version")
CELL_RUN_KEYS = ("papermill", "execution")  # per-cell status/timing (papermill) and iopub timestamps (nbclient)
INJECTED_TAG = "injected-parameters"  # papermill's tag; its cell gets a new random ID on every run


def clean_notebook(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Drop the run-to-run metadata from `nb` (in place) and return it; idempotent, outputs untouched."""
    meta = nb.metadata
    pm = meta.get("papermill")
    if isinstance(pm, dict):
        for key in PAPERMILL_RUN_KEYS:
            pm.pop(key, None)
    lang = meta.get("language_info")
    if isinstance(lang, dict):
        lang.pop("version", None)  # the interpreter's patch level: a fact about the machine that ran it
    for cell in nb.cells:
        for key in CELL_RUN_KEYS:
            cell.metadata.pop(key, None)
        if INJECTED_TAG in cell.metadata.get("tags", []):
            cell["id"] = INJECTED_TAG
    return nb


def is_clean(nb: nbformat.NotebookNode) -> bool:
    """True when `clean_notebook` would change nothing."""
    return clean_notebook(nbformat.from_dict(json.loads(json.dumps(nb)))) == nb


# An absolute path of two or more parts (POSIX) or a drive path (Windows), not part of a URL
# ("http://host/a/b"), a relative path ("runs/a/b"), a ratio ("tok/s") or an HTML closing tag.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~\\<>-])(?:/[\w.+@~-]+){2,}/?|(?<![\w])[A-Za-z]:\\[\w.+@~ -]+\\")


def _output_texts(nb: nbformat.NotebookNode) -> list[str]:
    texts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if "text" in out:
                texts.append(_text(out["text"]))
            for mime, value in (out.get("data") or {}).items():
                if mime.startswith("text/") or mime.endswith("json"):
                    texts.append(_text(value) if isinstance(value, str | list) else json.dumps(value))
            texts.extend(out.get("traceback") or [])
    if "widgets" in nb.metadata:  # text shown inside widgets (an Output area, a reply box) lives here
        texts.append(json.dumps(nb.metadata["widgets"]))
    return texts


def _text(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def machine_paths(nb: nbformat.NotebookNode) -> list[str]:
    """Absolute file paths the notebook's outputs show (a stored lesson shows none: they name one machine)."""
    found: dict[str, None] = {}
    for text in _output_texts(nb):
        for match in _ABSOLUTE_PATH.finditer(text):
            found[match.group(0)] = None
    return list(found)
