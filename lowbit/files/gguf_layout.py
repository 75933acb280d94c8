"""Small GGUF files with DeepSeek-R1's layout (deepseek2 tensor names and keys), written with gguf-py.

Two kinds: header-only files whose data region is a sparse hole of the right length (valid GGUFs with
exact tensor sizes, so the planner can be exercised at any scale without the bytes), and small runnable
ones with random weights and a real vocabulary copied from a llama.cpp vocab GGUF (a MoE + MLA model
that llama-completion and llama-bench run in seconds). Neither is a replica of trained weights: those
come from the replicas module.
"""

from __future__ import annotations

import os
from pathlib import Path

import gguf
import numpy as np

from lowbit.files.synthetic import copy_tokenizer, vocab_size
from lowbit.toolchain.build import sdist_tree


def write_deepseek2(
    path: Path,
    n_layers: int = 6,
    n_dense: int = 1,
    n_embd: int = 1024,
    n_expert: int = 16,
    n_used: int = 4,
    n_ff: int = 2048,
    n_ff_exp: int = 512,
    n_vocab: int = 4096,
    ctx_train: int = 4096,
    mla: bool = True,
    split_max_tensors: int = 0,
    vocab_gguf: Path | None = None,
    n_head: int = 16,
    q_lora: int = 768,
    exps_type: str = "IQ1_S",
    down_exps_type: str = "IQ2_XXS",
) -> list[Path]:
    """A deepseek2-layout GGUF (R1's tensor names and keys; small dims). Without `vocab_gguf` only headers are
    written and the data region is a sparse hole of the right length (valid file, all-zero tensors). With it,
    the tokenizer is copied from that vocab GGUF and tensors get small random F16/F32 values: llama.cpp runs
    it."""

    rng = np.random.default_rng(0)
    runnable = vocab_gguf is not None
    if runnable:
        n_vocab = vocab_size(vocab_gguf)

    T = gguf.GGMLQuantizationType
    w = gguf.GGUFWriter(path, "deepseek2", split_max_tensors=split_max_tensors)
    kv_lora, rope, nope, v_head = 512, 64, 128, 128
    w.add_block_count(n_layers)
    w.add_context_length(ctx_train)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(1 if mla else n_head)
    w.add_vocab_size(n_vocab)
    w.add_leading_dense_block_count(n_dense)
    w.add_q_lora_rank(q_lora)
    w.add_kv_lora_rank(kv_lora)
    if mla:
        w.add_key_length(kv_lora + rope)
        w.add_value_length(kv_lora)
        w.add_key_length_mla(nope + rope)
        w.add_value_length_mla(v_head)
    else:
        w.add_key_length(nope + rope)
        w.add_value_length(v_head)
    w.add_expert_feed_forward_length(n_ff_exp)
    w.add_expert_count(n_expert)
    w.add_expert_used_count(n_used)
    w.add_expert_shared_count(1)
    w.add_rope_dimension_count(rope)
    w.add_layer_norm_rms_eps(1e-6)
    if runnable:
        copy_tokenizer(w, vocab_gguf)

    def t(name: str, shape: tuple[int, ...], qtype=T.Q4_K) -> None:
        if runnable:  # real values, F32 vectors and F16 matrices
            if len(shape) == 1:
                arr = np.ones(shape, np.float32) if "norm" in name else np.zeros(shape, np.float32)
            else:
                arr = (rng.standard_normal(shape, np.float32) * 0.02).astype(np.float16)
            w.add_tensor(name, arr)
            return
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        n = int(np.prod(shape))
        w.add_tensor_info(name, shape, np.dtype(np.float32), n * size // block, raw_dtype=qtype)

    t("token_embd.weight", (n_vocab, n_embd))
    for i in range(n_layers):
        b = f"blk.{i}."
        t(b + "attn_norm.weight", (n_embd,), T.F32)
        t(b + "attn_q_a.weight", (q_lora, n_embd))
        t(b + "attn_q_a_norm.weight", (q_lora,), T.F32)
        t(b + "attn_q_b.weight", (n_head * (nope + rope), q_lora))
        t(b + "attn_kv_a_mqa.weight", (kv_lora + rope, n_embd))
        t(b + "attn_kv_a_norm.weight", (kv_lora,), T.F32)
        if mla:
            t(b + "attn_k_b.weight", (n_head, kv_lora, nope), T.Q8_0)
            t(b + "attn_v_b.weight", (n_head, v_head, kv_lora), T.Q8_0)
        else:
            t(b + "attn_kv_b.weight", (n_head * (nope + v_head), kv_lora))
        t(b + "attn_output.weight", (n_embd, n_head * v_head))
        t(b + "ffn_norm.weight", (n_embd,), T.F32)
        if i < n_dense:
            for p in ("gate", "up"):
                t(b + f"ffn_{p}.weight", (n_ff, n_embd))
            t(b + "ffn_down.weight", (n_embd, n_ff), T.Q6_K)
        else:
            t(b + "ffn_gate_inp.weight", (n_expert, n_embd), T.F32)
            t(b + "exp_probs_b.bias", (n_expert,), T.F32)
            for p in ("gate", "up"):
                t(b + f"ffn_{p}_exps.weight", (n_expert, n_ff_exp, n_embd), T[exps_type])
            t(b + "ffn_down_exps.weight", (n_expert, n_embd, n_ff_exp), T[down_exps_type])
            for p in ("gate", "up"):
                t(b + f"ffn_{p}_shexp.weight", (n_ff_exp, n_embd))
            t(b + "ffn_down_shexp.weight", (n_embd, n_ff_exp), T.Q6_K)
    t("output_norm.weight", (n_embd,), T.F32)
    t("output.weight", (n_vocab, n_embd), T.Q6_K)
    w.write_header_to_file(path)
    w.write_kv_data_to_file()
    names = w.format_shard_names(Path(path))
    if runnable:
        w.write_tensors_to_file()  # writes the tensor infos too
        w.close()
        return names
    w.write_ti_data_to_file()
    for fout, tensors, name in zip(w.fout, w.tensors, names, strict=True):
        start = gguf.GGUFWriter.ggml_pad(fout.tell(), w.data_alignment)
        data = sum(gguf.GGUFWriter.ggml_pad(ti.nbytes, w.data_alignment) for ti in tensors.values())
        fout.close()
        os.truncate(name, start + data)  # a sparse hole: no tensor data on disk
    return names


def runnable_deepseek2(directory: Path, name: str = "tiny-ds2", shards: bool = True) -> Path:
    """A 4-layer deepseek2 MoE (8 experts, 2 used, MLA) with random weights and GPT-2's vocabulary from the
    llama.cpp tree, split in three shards when `shards`; returns the first shard (about 100 MB, seconds)."""

    vocab = sdist_tree() / "vendor/llama.cpp/models/ggml-vocab-gpt-2.gguf"
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return write_deepseek2(
        directory / f"{name}.gguf",
        n_layers=4,
        n_embd=256,
        n_ff=512,
        n_ff_exp=128,
        n_expert=8,
        n_used=2,
        ctx_train=2048,
        vocab_gguf=vocab,
        split_max_tensors=30 if shards else 0,
    )[0]


def r1_header(
    directory: Path, exps_type: str = "IQ1_S", down_exps_type: str = "IQ1_S", shards: int = 3
) -> Path:
    """A header-only GGUF with DeepSeek-R1's true dimensions (61 layers, 3 dense, 256 experts of which 8 are
    used, MLA, 7168 hidden, 129280 vocab) in `shards` parts; data regions are sparse holes, so it takes
    kilobytes on disk while its tensor infos say ~130 GB. Types: routed experts `exps_type` (down projection
    `down_exps_type`), attention and shared experts Q4_K/Q8_0/Q6_K, output Q6_K — an approximation of
    Unsloth's dynamic recipe for planning, not its exact per-tensor list."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    n_tensors = 2 + 3 * 13 + 58 * 18 + 2
    return write_deepseek2(
        directory / "R1-shape.gguf",
        n_layers=61,
        n_dense=3,
        n_embd=7168,
        n_expert=256,
        n_used=8,
        n_ff=18432,
        n_ff_exp=2048,
        n_vocab=129280,
        ctx_train=163840,
        n_head=128,
        q_lora=1536,
        exps_type=exps_type,
        down_exps_type=down_exps_type,
        split_max_tensors=-(-n_tensors // shards),
    )[0]
