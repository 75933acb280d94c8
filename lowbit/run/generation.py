"""Generation inside this process through llama.cpp's Python bindings (`llama_cpp.Llama`).

The lessons and the chat widget use this: load a GGUF (the first shard of a split set is enough),
render a conversation with the model's own chat template (GGUF `tokenizer.chat_template`, rendered by
lowbit's time- and size-limited Jinja sandbox), generate with streaming, and read prompt and generation
speed from llama.cpp's own performance counters.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import Keys

from lowbit import LowbitError
from lowbit.machine import physical_cores
from lowbit.models.catalog import locate
from lowbit.models.entries import R1_SAMPLING
from lowbit.prompts.chat import render


@dataclass
class Generation:
    """One generation and llama.cpp's timings for it."""

    prompt: str  # the conversation rendered with the model's template
    prompt_tokens: list[int]  # what llama.cpp evaluated
    text: str
    tokens: list[int]  # generated token IDs
    prompt_ms: float  # llama.cpp's prompt-evaluation time
    generation_ms: float  # llama.cpp's decode time (sampling excluded, as in llama-bench)
    n_decoded: int  # single-token decodes llama.cpp counted
    stop_reason: str  # "eos" | "length"

    @property
    def n_prompt(self) -> int:
        return len(self.prompt_tokens)

    @property
    def n_generated(self) -> int:
        return len(self.tokens)

    @property
    def prompt_tokens_per_s(self) -> float:
        return self.n_prompt / (self.prompt_ms / 1000) if self.prompt_ms > 0 else 0.0

    @property
    def generation_tokens_per_s(self) -> float:
        # the first generated token comes out of the prompt evaluation; the rest cost one decode each
        return self.n_decoded / (self.generation_ms / 1000) if self.generation_ms > 0 else 0.0


def load_model(path: str | Path, threads: int = 0, n_ctx: int = 2048, seed: int = R1_SAMPLING["seed"],
               **kwargs: Any):
    """A `llama_cpp.Llama` for a GGUF file (or the first shard of a split set); threads 0 = physical cores."""
    import llama_cpp  # the bindings: installed by setup against the kit's build, loaded on use

    path = Path(path)
    if path.is_dir():
        path = locate(str(path))  # its first GGUF (a split set's first shard)
    if not path.is_file():
        raise LowbitError(
            f"model file {path} does not exist; `invoke replicas` builds the offline ones, "
            "`invoke fetch --model M` downloads real ones"
        )
    if threads <= 0:
        threads = physical_cores()
    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_threads=threads,
        n_threads_batch=threads,
        seed=seed,
        verbose=False,
        **kwargs,
    )


def chat_template(llm) -> str:
    """The model's own chat template from its GGUF metadata."""
    template = llm.metadata.get(Keys.Tokenizer.CHAT_TEMPLATE)
    if not template:
        raise LowbitError("this GGUF carries no tokenizer.chat_template; pass a raw prompt instead of a chat")
    return template


def render_chat(llm, messages: list[dict[str, str]]) -> str:
    """`messages` rendered with the model's template, generation prompt added, in lowbit's limited
    sandbox (`lowbit.prompts.chat.render`: unsafe constructs refused, time and size bounded)."""

    def piece(token_id: int) -> str:
        return llm.detokenize([token_id], special=True).decode("utf-8", errors="replace") if token_id >= 0 else ""

    return render(chat_template(llm), messages, add_generation_prompt=True,
                  bos_token=piece(llm.token_bos()), eos_token=piece(llm.token_eos()))


def prompt_tokens(llm, prompt: str) -> list[int]:
    """The prompt's token IDs with exactly one BOS: llama.cpp adds it only when the template did not."""
    tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
    bos = llm.token_bos()
    if (
        bos >= 0
        and llm.metadata.get(Keys.Tokenizer.ADD_BOS, "true") != "false"
        and tokens[:1] != [bos]
    ):
        tokens = [bos, *tokens]
    return tokens


def generate(
    llm,
    prompt: str,
    n_predict: int = 64,
    temperature: float = R1_SAMPLING["temp"],
    min_p: float = R1_SAMPLING["min_p"],
    top_p: float = R1_SAMPLING["top_p"],
    seed: int = R1_SAMPLING["seed"],
    on_text: Callable[[str], None] | None = None,
    chat: bool = True,
) -> Generation:
    """Generate a reply to `prompt` (a user message when `chat`, else raw text); `on_text` gets each piece.

    Sampling defaults are DeepSeek's recommendation for R1 (temperature 0.6, top-p 0.95, min-p 0.01).
    """
    import llama_cpp  # the bindings: installed by setup against the kit's build, loaded on use

    rendered = render_chat(llm, [{"role": "user", "content": prompt}]) if chat else prompt
    tokens = prompt_tokens(llm, rendered)
    if len(tokens) + n_predict > llm.n_ctx():
        raise LowbitError(
            f"prompt ({len(tokens)} tokens) + n_predict ({n_predict}) exceed the context "
            f"({llm.n_ctx()}); shorten the prompt or load with a larger n_ctx"
        )
    llm.reset()
    llm.set_seed(seed)
    llama_cpp.llama_perf_context_reset(llm.ctx)
    out: list[int] = []
    pieces: list[bytes] = []
    text = ""
    eos = {llm.token_eos(), *(t for t in [_eot(llm)] if t is not None)}
    stop_reason = "length"
    started = time.perf_counter()
    for token in llm.generate(tokens, temp=temperature, min_p=min_p, top_p=top_p, top_k=0, reset=True):
        if token in eos:
            stop_reason = "eos"
            break
        out.append(token)
        pieces.append(llm.detokenize([token], prev_tokens=tokens + out[:-1]))
        new = b"".join(pieces).decode("utf-8", errors="ignore")  # whole characters only
        if on_text and len(new) > len(text):
            on_text(new[len(text) :])
        text = new
        if len(out) >= n_predict:
            break
    wall_ms = (time.perf_counter() - started) * 1000
    perf = llama_cpp.llama_perf_context(llm.ctx)
    if perf.n_p_eval or perf.n_eval:
        prompt_ms, generation_ms, decoded = perf.t_p_eval_ms, perf.t_eval_ms, perf.n_eval
    else:  # a build without performance counters: wall clock for the whole run
        prompt_ms, generation_ms, decoded = 0.0, wall_ms, max(len(out) - 1, 0)
    return Generation(rendered, tokens, text, out, prompt_ms, generation_ms, decoded, stop_reason)


def _eot(llm) -> int | None:
    value = llm.metadata.get(Keys.Tokenizer.EOT_ID)
    return int(value) if value is not None else None
