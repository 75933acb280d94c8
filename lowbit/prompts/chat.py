"""Chat templates: render a conversation with a model's own template, safely, with exactly one BOS.

Templates are Jinja code shipped inside model files. They are rendered only in jinja2's
ImmutableSandboxedEnvironment (an unsandboxed renderer was a remote-code-execution hole in
llama-cpp-python, CVE-2024-34359), and before rendering a template is refused outright if it walks
into Python internals (`__class__`, `__globals__`, `mro`, `attr('__...')`, ...): nothing of it runs.

Double BOS: the DeepSeek template writes `<｜begin▁of▁sentence｜>` itself, and llama.cpp (GGUF
`tokenizer.ggml.add_bos_token`) or a tokenizer with `add_bos_token` adds another one. `build_prompt`
knows both facts and hands over text that ends up with exactly one BOS.
"""

from __future__ import annotations

import ast
import html
import os
import re
import subprocess
from dataclasses import dataclass, field

from lowbit import LowbitError
from lowbit.models.catalog import ANY_KIND, locate
from lowbit.models.entries import R1_SAMPLING
from lowbit.prompts.template import render
from lowbit.prompts.tokens import THINK_CLOSE, Vocab, load_vocab, token_kinds
from lowbit.toolchain.build import active_build
from lowbit.ui import console, print_table


def drop_history_thinking(messages: list[dict]) -> list[dict]:
    """R1's rule: earlier assistant turns keep only what follows `</think>` (their reasoning is dropped).

    The R1 template does this itself; doing it before rendering makes any template behave the same.
    """
    out = []
    for m in messages:
        content = m.get("content")
        if m.get("role") == "assistant" and isinstance(content, str) and THINK_CLOSE in content:
            m = {**m, "content": content.split(THINK_CLOSE)[-1]}
        out.append(m)
    return out


def load_template(source: str | os.PathLike | Vocab) -> tuple[str, Vocab]:
    """A model's chat template (HF dir: chat_template.jinja / tokenizer_config.json; GGUF:
    `tokenizer.chat_template`) and its vocabulary."""
    v = source if isinstance(source, Vocab) else load_vocab(source)
    if not v.chat_template:
        where = (
            "GGUF key tokenizer.chat_template"
            if v.kind == "gguf"
            else "chat_template.jinja / tokenizer_config.json"
        )
        raise LowbitError(
            f"{v.source} has no chat template ({where} missing); use a file that carries one "
            "or pass a template explicitly"
        )
    return v.chat_template, v


# ---------------------------------------------------------------------------------------------
# one BOS


@dataclass
class Prompt:
    """A rendered conversation ready for a consumer (llama.cpp or a transformers tokenizer)."""

    rendered: str  # what the template produced
    text: str  # what to hand to the consumer
    template_bos: bool  # the template itself wrote BOS
    consumer_adds_bos: bool  # the consumer prepends BOS when it tokenizes
    change: str  # what build_prompt did about it
    bos_token: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def bos_count(self) -> int:
        """BOS tokens the consumer will see: in the text plus the one it adds."""
        if not self.bos_token:
            return 0
        return _leading_count(self.text, self.bos_token) + int(self.consumer_adds_bos)


def _leading_count(text: str, token: str) -> int:
    n = 0
    while text.startswith(token):
        n, text = n + 1, text[len(token) :]
    return n


def build_prompt(
    source: str | os.PathLike | Vocab,
    messages: list[dict],
    *,
    add_generation_prompt: bool = True,
    consumer_adds_bos: bool | None = None,
    fix_bos: bool = True,
    drop_thinking: bool = True,
    template: str | None = None,
) -> Prompt:
    """Render `messages` for a consumer so that exactly one BOS reaches the model.

    `consumer_adds_bos` defaults to what the model's files say (GGUF `add_bos_token` for llama.cpp,
    the tokenizer's own behaviour for HF dirs). With `fix_bos=False` the text is left as rendered, to
    show the double BOS.
    """
    v = source if isinstance(source, Vocab) else load_vocab(source)
    tpl = template if template is not None else load_template(v)[0]
    if drop_thinking:
        messages = drop_history_thinking(messages)
    rendered = render(
        tpl,
        messages,
        add_generation_prompt=add_generation_prompt,
        bos_token=v.bos_token or "",
        eos_token=v.eos_token or "",
    )
    notes = []
    if consumer_adds_bos is None:
        consumer_adds_bos = bool(v.add_bos)
        if v.add_bos is None:
            notes.append("the files do not say whether BOS is added; assumed not")
    bos = v.bos_token
    template_bos = bool(bos) and rendered.startswith(bos)
    text, change = rendered, "none needed"
    if bos and fix_bos:
        lead = _leading_count(rendered, bos)
        want = 0 if consumer_adds_bos else 1
        if lead != want:
            text = bos * want + rendered[len(bos) * lead :]
            change = (
                f"removed {lead - want} leading BOS (the consumer adds one)"
                if lead > want
                else "prepended BOS (neither template nor consumer adds it)"
            )
    elif bos and not fix_bos:
        change = "left as rendered"
    return Prompt(
        rendered=rendered,
        text=text,
        template_bos=template_bos,
        consumer_adds_bos=consumer_adds_bos,
        change=change,
        bos_token=bos,
        notes=notes,
    )


# ---------------------------------------------------------------------------------------------
# tokens, as the consumer sees them


@dataclass
class Token:
    id: int
    piece: str
    kind: str  # bos, eos, pad, unk, role, think, special, text


def tokenize(source: str | os.PathLike | Vocab, text: str, *, add_special: bool = True) -> list[Token]:
    """Token IDs of `text` as the model's runtime sees them: llama.cpp for a GGUF file (special tokens
    parsed, BOS added when the file says so), the `tokenizers` library for an HF tokenizer."""
    v = source if isinstance(source, Vocab) else load_vocab(source)
    ids = (
        llamacpp_tokenize(v.source, text, add_special=add_special)
        if v.kind == "gguf"
        else _hf_tokenize(v, text, add_special)
    )
    kinds = token_kinds(v)
    return [Token(i, v.token(i) or "", kinds.get(i, "text")) for i in ids]


def _hf_tokenize(v: Vocab, text: str, add_special: bool) -> list[int]:
    from tokenizers import Tokenizer  # heavy, optional (the `replicas` extra): imported on use

    path = v.source / "tokenizer.json" if v.source.is_dir() else v.source
    ids = Tokenizer.from_file(str(path)).encode(text, add_special_tokens=False).ids
    if add_special and v.add_bos and v.bos_id is not None:
        ids = [v.bos_id, *ids]
    return ids


# colours of `prompt_html`, one per token kind
TOKEN_COLOURS = {
    "bos": "#d62728",
    "eos": "#9467bd",
    "pad": "#8c564b",
    "role": "#1f77b4",
    "think": "#2ca02c",
    "special": "#ff7f0e",
    "unk": "#7f7f7f",
    "text": "#444",
}


def prompt_html(v: Vocab, text: str, name: str) -> str:
    """HTML of `text` rendered as a user turn with `v`'s template: the BOS facts, the prompt handed
    over, and its tokens (piece and ID) coloured by kind (`TOKEN_COLOURS`)."""

    prompt = build_prompt(v, [{"role": "user", "content": text}])
    spans = "".join(
        f'<span title="{t.kind} {t.id}" style="border:1px solid {TOKEN_COLOURS[t.kind]};'
        f'color:{TOKEN_COLOURS[t.kind]};'
        f'margin:1px;padding:0 2px;font-family:monospace">{html.escape(t.piece)}<sub>{t.id}</sub></span>'
        for t in tokenize(v, prompt.text)
    )
    head = (
        f"<b>{name}</b>: template writes BOS: {prompt.template_bos}; consumer adds BOS: "
        f"{prompt.consumer_adds_bos}; {prompt.change}<br><code>{html.escape(prompt.text)}</code><br>"
    )
    return head + spans


_VERBOSE_TOKEN = re.compile(r"(?:^|\s)(\d+) -> '")


def _prompt_ids(log: str) -> list[int] | None:
    """The token IDs listed by `--verbose-prompt` (log lines may carry a timestamp prefix)."""
    marker = log.find("number of tokens in prompt")
    if marker < 0:
        return None
    ids = []
    for line in log[marker:].splitlines()[1:]:
        m = _VERBOSE_TOKEN.search(line)
        if not m:
            break
        ids.append(int(m.group(1)))
    return ids


def llamacpp_tokenize(gguf: str | os.PathLike, text: str, *, add_special: bool = True) -> list[int]:
    """Token IDs llama.cpp itself produces for `text` (special tokens parsed), from the vocabulary alone:
    `llama-tokenize` is one of the kit's build targets, so no model weights are loaded."""

    gguf = str(gguf)
    cmd = [str(active_build().tool("llama-tokenize")), "-m", gguf, "-p", text, "--ids", "--log-disable"]
    if not add_special:
        cmd.append("--no-bos")
    proc = subprocess.run(
        cmd, capture_output=True, text=True, errors="replace", env={**os.environ, "LLAMA_LOG_COLORS": "0"}
    )
    if proc.returncode != 0:
        raise LowbitError(f"llama-tokenize failed on {gguf}:\n{proc.stderr[-1500:]}")
    return list(ast.literal_eval(proc.stdout.strip().splitlines()[-1]))


def llamacpp_warnings(log: str) -> list[str]:
    """llama.cpp's own double-BOS warning lines from a log."""
    return [
        line.strip() for line in log.splitlines() if "2 BOS tokens" in line or "starts with a BOS" in line
    ]


def generate(gguf: str | os.PathLike, prompt_text: str, *, n_predict: int = 16,
             seed: int = R1_SAMPLING["seed"]) -> dict:
    """Run llama-completion on exactly `prompt_text` (special tokens parsed, BOS as the file says);
    returns the prompt tokens llama.cpp evaluated, the generated text and any double-BOS warning."""

    build = active_build()
    cmd = [
        str(build.tool("llama-completion")),
        "-m",
        str(gguf),
        "-p",
        prompt_text,
        "-n",
        str(n_predict),
        "--verbose-prompt",
        "-no-cnv",
        "--no-warmup",
        "-c",
        "512",
        "-t",
        "2",
        "--temp",
        "0",
        "--seed",
        str(seed),
        "--no-display-prompt",
    ]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        errors="replace",  # token pieces may split a UTF-8 character
        env={**os.environ, "LLAMA_LOG_COLORS": "0"},
        stdin=subprocess.DEVNULL,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise LowbitError(f"llama-completion failed on {gguf}:\n{out[-1500:]}")
    return {
        "prompt_ids": _prompt_ids(out) or [],
        "output": proc.stdout.strip(),
        "warnings": llamacpp_warnings(out),
    }


# ---------------------------------------------------------------------------------------------
# task


def template_command(
    model: str, message: str = "Hello! What is 1+1?", system: str | None = None, no_fix: bool = False
) -> int:
    """`invoke template --model M --message ...`: the rendered prompt and its token IDs."""

    v = load_vocab(locate(model, kind=ANY_KIND))
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": message}
    ]
    prompt = build_prompt(v, messages, fix_bos=not no_fix)
    consumer = "llama.cpp" if v.kind == "gguf" else "the tokenizer"
    console.print(
        f"[bold]{v.source}[/] ({v.kind}); template writes BOS: {prompt.template_bos}; "
        f"{consumer} adds BOS: {prompt.consumer_adds_bos}; change: {prompt.change}"
    )
    for note in prompt.notes:
        console.print(f"note: {note}")
    console.print("[bold]prompt text handed over:[/]")
    console.print(prompt.text, markup=False)
    toks = tokenize(v, prompt.text)
    print_table(
        f"{len(toks)} tokens ({consumer}); * marks special tokens",
        ["#", "id", "token", "kind"],
        [
            (n, t.id, ("* " if t.kind != "text" else "  ") + repr(t.piece)[1:-1], t.kind)
            for n, t in enumerate(toks)
        ],
    )
    n_bos = sum(t.id == v.bos_id for t in toks[:4]) if v.bos_id is not None else 0
    console.print(f"BOS tokens at the start: {n_bos}")
    return 0 if n_bos <= 1 or no_fix else 1
