"""What lesson 06 (serve a workshop, scale past one machine) asks a server, and where RPC put the weights."""

from __future__ import annotations

import re

from lowbit.serve.server import LlamaServer

# llama.cpp's log line per backend buffer holding weights, e.g. "RPC0[127.0.0.1:50052] model buffer size = 3.2 MiB"
_MODEL_BUFFER = re.compile(r"(\S+) model buffer size =\s+([\d.]+) MiB")


def greedy(server: LlamaServer, prompt: str = "Count from one to ten.", max_tokens: int = 24) -> str:
    """One greedy chat completion of exactly `max_tokens` tokens (EOS ignored): "reasoning|answer"."""
    r = server.client().chat.completions.create(
        model=server.model_name, messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens, temperature=0.0, extra_body={"ignore_eos": True})
    m = r.choices[0].message
    return (getattr(m, "reasoning_content", None) or "") + "|" + (m.content or "")


def weight_placement(log: str) -> list[tuple[str, float]]:
    """(device, MiB) for every model buffer a llama.cpp log reports (`-lv 4` logs them for every device)."""
    return [(device, float(mib)) for device, mib in _MODEL_BUFFER.findall(log)]
