"""Serving with llama.cpp's and the OpenAI SDK's habits: LLAMA_API_KEY is the key; the printed exports work."""

from __future__ import annotations

import os
import re

import pytest

from lowbit.serve.server import check_host, default_api_key, examples, start_server


@pytest.fixture(scope="module")
def small_model(llama_build):
    from lowbit.models.replicas import replica_path

    path = replica_path("distill-llama")  # the smallest runnable GGUF `invoke setup` builds
    if path is None:
        pytest.fail("the distill-llama replica is not built: run `invoke replicas`")
    return path


def test_llama_api_key_is_the_key_and_the_printed_exports_reach_the_server(small_model, tmp_path, monkeypatch):
    import openai

    monkeypatch.delenv("LOWBIT_API_KEY", raising=False)
    monkeypatch.setenv("LLAMA_API_KEY", "llama-s3cret-long-enough")
    assert default_api_key() == "llama-s3cret-long-enough"
    assert "reachable from the network" in check_host("0.0.0.0", default_api_key(), insecure=False)  # no refusal
    with start_server(str(small_model), port=None, parallel=1, ctx=512, timeout=180, log_dir=tmp_path) as server:
        assert server.api_key == "llama-s3cret-long-enough"
        text = examples(server)
        exports = dict(re.findall(r"export (OPENAI_\w+)=(\S+)", text))
        assert exports["OPENAI_BASE_URL"] == server.base_url
        monkeypatch.setenv("LOWBIT_API_KEY", "llama-s3cret-long-enough")  # the example's first line, done by the user
        monkeypatch.setenv("OPENAI_BASE_URL", exports["OPENAI_BASE_URL"])
        monkeypatch.setenv("OPENAI_API_KEY", os.path.expandvars(exports["OPENAI_API_KEY"]))
        r = openai.OpenAI(max_retries=0).chat.completions.create(  # the SDK reads only the exports
            model=server.model_name, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
        assert r.choices[0].finish_reason in ("length", "stop")
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(api_key="wrong", max_retries=0).chat.completions.create(
                model=server.model_name, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)


def test_lowbit_api_key_wins_over_llama_api_key(monkeypatch):
    monkeypatch.setenv("LLAMA_API_KEY", "from-llama")
    monkeypatch.setenv("LOWBIT_API_KEY", "from-lowbit")
    assert default_api_key() == "from-lowbit"
    monkeypatch.delenv("LOWBIT_API_KEY")
    monkeypatch.delenv("LLAMA_API_KEY")
    assert default_api_key() is None
