#!/usr/bin/env python3
"""Convert a Rosetta-generated Hugging Face Llama folder to an f32 GGUF file.

Uses only gguf-py's GGUFWriter, numpy and safetensors (no torch, no
transformers, not llama.cpp's convert_hf_to_gguf.py). Written for the folders
made by `rosetta model generate DIR --arch llama` (any size, any seed, f32 or
bf16, one file or sharded), i.e. LlamaForCausalLM with a byte-level BPE
tokenizer.json; MistralForCausalLM folders have the same layout and work too.

    benchmarks/.work/venv/bin/python benchmarks/llama_cpp/hf_to_gguf.py \
        MODEL_DIR OUT.gguf

What it writes:
  * arch `llama` with all llama.* hyperparameters, general.file_type = F32;
  * the tokenizer as a gguf "gpt2" (byte-level BPE) model: tokens, token types
    (added special tokens CONTROL), merges as "a b" strings, bos/eos ids,
    add_bos_token, the chat template;
  * tensors renamed to llama.cpp's names, with q_proj/k_proj rows permuted
    from the HF rotate-half RoPE layout to llama.cpp's interleaved layout.
    No output.weight when the embeddings are tied (llama.cpp then reuses
    token_embd.weight for the output projection).

tokenizer.ggml.pre: llama.cpp picks its pre-tokenizer regex by name. Our
tokenizers use the ByteLevel pre-tokenizer with the GPT-2 regex, which is what
"gpt-2" selects in llama-vocab.cpp (the default here). "trillion" selects the
same regex but turns off clean_up_tokenization_spaces in llama_detokenize(),
which matches Rosetta's tokenizer_config (clean_up_tokenization_spaces false)
exactly; llama-server builds its output text piece by piece and never applies
that cleanup, so for the server both names give identical ids and text
(checked). Override with --pre.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path

import numpy as np

try:
    import gguf
    from safetensors import safe_open
except ImportError as e:  # pragma: no cover
    sys.exit(f"{e}: run benchmarks/llama_cpp/build.sh and use benchmarks/.work/venv/bin/python")


SUPPORTED_ARCHS = {"LlamaForCausalLM", "MistralForCausalLM"}


# ---------------------------------------------------------------- weights

def _read_bf16_as_f32(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    """numpy has no bfloat16, so safetensors' numpy loader can't return BF16
    tensors. Read them from the file's header offsets and widen to f32
    (bf16 is the top half of an f32)."""
    out: dict[str, np.ndarray] = {}
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    base = 8 + n
    for name in names:
        info = header[name]
        start, end = info["data_offsets"]
        u16 = np.frombuffer(raw[base + start: base + end].tobytes(), dtype="<u2")
        out[name] = (u16.astype(np.uint32) << 16).view(np.float32).reshape(info["shape"])
    return out


def load_weights(model_dir: Path) -> dict[str, np.ndarray]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    weights: dict[str, np.ndarray] = {}
    for fname in files:
        path = model_dir / fname
        bf16: list[str] = []
        with safe_open(str(path), framework="numpy") as f:
            for name in f.keys():
                dtype = f.get_slice(name).get_dtype()
                if dtype == "BF16":
                    bf16.append(name)
                    continue
                weights[name] = f.get_tensor(name)
        weights.update(_read_bf16_as_f32(path, bf16))
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}


def rope_rows_hf_to_gguf(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder the output rows of q_proj / k_proj for llama.cpp's RoPE.

    HF Llama rotates dimension i of a head together with dimension
    i + head_dim/2 (rotate_half). llama.cpp's "normal" RoPE rotates adjacent
    pairs (2i, 2i+1). Within each head, the row that HF keeps at
    half*(head_dim/2) + i must therefore move to 2*i + half: view the rows as
    [head, half, i], swap the last two axes to [head, i, half], and flatten.
    n_heads is the head count of this projection (n_kv_heads for k_proj).
    """
    rows = w.shape[0]
    assert rows % (2 * n_heads) == 0, (w.shape, n_heads)
    half = rows // n_heads // 2
    return (w.reshape(n_heads, 2, half, *w.shape[1:])
             .swapaxes(1, 2)
             .reshape(w.shape))


def llama3_rope_factors(rope: dict, theta: float, head_dim: int) -> np.ndarray:
    """Llama 3.1 RoPE scaling as llama.cpp wants it: one divisor per rotary
    frequency, stored as rope_freqs.weight (llama.cpp divides each frequency
    by it). High frequencies (wavelength < ctx/high_freq_factor) stay as they
    are, low ones (wavelength > ctx/low_freq_factor) are divided by `factor`,
    and the band between is interpolated smoothly, as in HF's
    _compute_llama3_parameters."""
    factor = float(rope.get("factor", 8.0))
    lo = float(rope.get("low_freq_factor", 1.0))
    hi = float(rope.get("high_freq_factor", 4.0))
    old_ctx = float(rope.get("original_max_position_embeddings", 8192))
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    wavelen = 2 * np.pi / inv_freq
    smooth = (old_ctx / wavelen - lo) / (hi - lo)
    mid = 1.0 / ((1 - smooth) / factor + smooth)
    out = np.where(wavelen < old_ctx / hi, 1.0, np.where(wavelen > old_ctx / lo, factor, mid))
    return out.astype(np.float32)


def map_tensors(weights: dict[str, np.ndarray], cfg: dict) -> list[tuple[str, np.ndarray]]:
    n_layers = cfg["num_hidden_layers"]
    n_head = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads", n_head)
    tied = cfg.get("tie_word_embeddings", False)

    out: list[tuple[str, np.ndarray]] = []
    used: set[str] = set()

    def take(hf: str) -> np.ndarray:
        if hf not in weights:
            sys.exit(f"missing tensor {hf}")
        used.add(hf)
        return weights[hf]

    out.append(("token_embd.weight", take("model.embed_tokens.weight")))
    per_layer = [
        ("attn_norm", "input_layernorm"),
        ("attn_q", "self_attn.q_proj"),
        ("attn_k", "self_attn.k_proj"),
        ("attn_v", "self_attn.v_proj"),
        ("attn_output", "self_attn.o_proj"),
        ("ffn_norm", "post_attention_layernorm"),
        ("ffn_gate", "mlp.gate_proj"),
        ("ffn_up", "mlp.up_proj"),
        ("ffn_down", "mlp.down_proj"),
    ]
    for i in range(n_layers):
        for gg, hf in per_layer:
            w = take(f"model.layers.{i}.{hf}.weight")
            if gg == "attn_q":
                w = rope_rows_hf_to_gguf(w, n_head)
            elif gg == "attn_k":
                w = rope_rows_hf_to_gguf(w, n_kv)
            out.append((f"blk.{i}.{gg}.weight", w))
    out.append(("output_norm.weight", take("model.norm.weight")))
    if "lm_head.weight" in weights:
        lm = take("lm_head.weight")
        if not (tied and np.array_equal(lm, weights["model.embed_tokens.weight"])):
            out.append(("output.weight", lm))
    elif not tied:
        sys.exit("lm_head.weight missing and tie_word_embeddings is false")
    unused = sorted(set(weights) - used)
    # rotary inv_freq buffers are harmless; anything else means a layout we don't know
    unused = [n for n in unused if not n.endswith("rotary_emb.inv_freq")]
    if unused:
        sys.exit(f"unexpected tensors (biases? unsupported arch?): {unused[:8]}")
    return out


# -------------------------------------------------------------- tokenizer

def add_tokenizer(w: gguf.GGUFWriter, model_dir: Path, cfg: dict, pre: str) -> None:
    tok = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    tcfg_path = model_dir / "tokenizer_config.json"
    tcfg = json.loads(tcfg_path.read_text(encoding="utf-8")) if tcfg_path.is_file() else {}

    model = tok["model"]
    if model.get("type") != "BPE":
        sys.exit(f"tokenizer model {model.get('type')!r} is not BPE")
    pt = tok.get("pre_tokenizer") or {}
    if pt.get("type") != "ByteLevel" or not pt.get("use_regex", True):
        sys.exit(f"pre-tokenizer {pt!r} is not ByteLevel with the GPT-2 regex")
    if tok.get("normalizer"):
        sys.exit(f"tokenizer has a normalizer {tok['normalizer']!r}; llama.cpp's gpt2 vocab has none")

    vocab: dict[str, int] = dict(model["vocab"])
    added = {t["id"]: t for t in tok.get("added_tokens", [])}
    for t in added.values():
        vocab.setdefault(t["content"], t["id"])
    n_vocab = max(cfg.get("vocab_size", 0), max(vocab.values()) + 1)
    by_id: dict[int, str] = {i: s for s, i in vocab.items()}

    tokens: list[str] = []
    types: list[int] = []
    for i in range(n_vocab):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].get("special")
                         else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)

    merges = [m if isinstance(m, str) else f"{m[0]} {m[1]}" for m in model.get("merges", [])]

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)

    def tok_id(v) -> int | None:
        if isinstance(v, dict):
            v = v.get("content")
        return vocab.get(v) if isinstance(v, str) else None

    bos = tok_id(tcfg.get("bos_token"))
    if bos is None:
        bos = cfg.get("bos_token_id")
    eos = tok_id(tcfg.get("eos_token"))
    if eos is None:
        e = cfg.get("eos_token_id")
        eos = e[0] if isinstance(e, list) else e
    if bos is not None:
        w.add_bos_token_id(bos)
    if eos is not None:
        w.add_eos_token_id(eos)
    pad = tok_id(tcfg.get("pad_token"))
    if pad is not None:
        w.add_pad_token_id(pad)

    # add_bos_token: tokenizer_config wins; else whether the post-processor
    # prepends a special token (TemplateProcessing "single": [bos, $A]).
    add_bos = tcfg.get("add_bos_token")
    if add_bos is None:
        single = ((tok.get("post_processor") or {}).get("single")) or []
        add_bos = bool(single) and "SpecialToken" in single[0]
    w.add_add_bos_token(bool(add_bos))
    w.add_add_eos_token(bool(tcfg.get("add_eos_token", False)))

    tmpl = tcfg.get("chat_template")
    if isinstance(tmpl, list):  # [{"name": ..., "template": ...}]
        named = {t["name"]: t["template"] for t in tmpl}
        tmpl = named.get("default") or next(iter(named.values()), None)
    if tmpl:
        w.add_chat_template(tmpl)
    print(f"tokenizer: {len(tokens)} tokens, {len(merges)} merges, pre={pre!r}, "
          f"bos={bos} eos={eos} add_bos={bool(add_bos)}", file=sys.stderr)


# ------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("out", type=Path, help="output .gguf path")
    ap.add_argument("--pre", default="gpt-2",
                    help="tokenizer.ggml.pre (default gpt-2; trillion = same regex, no space cleanup)")
    args = ap.parse_args()

    d: Path = args.model_dir
    cfg = json.loads((d / "config.json").read_text())
    archs = set(cfg.get("architectures") or [])
    if not archs & SUPPORTED_ARCHS:
        sys.exit(f"unsupported architectures {sorted(archs)}; want one of {sorted(SUPPORTED_ARCHS)}")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        sys.exit("attention/mlp biases are not supported")
    rope = cfg.get("rope_scaling") or {}
    rope_type = (rope.get("rope_type") or rope.get("type") or "default").lower()
    if rope_type not in ("default", "llama3"):
        sys.exit(f"rope_scaling {rope!r} is not supported by this converter (only llama3)")

    n_embd = cfg["hidden_size"]
    n_head = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads", n_head)
    head_dim = cfg.get("head_dim") or n_embd // n_head

    weights = load_weights(d)
    tensors = map_tensors(weights, cfg)
    if rope_type == "llama3":
        tensors.append(("rope_freqs.weight",
                        llama3_rope_factors(rope, float(cfg.get("rope_theta", 10000.0)), head_dim)))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    w = gguf.GGUFWriter(tmp, "llama")
    w.add_name(d.resolve().name)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_context_length(cfg.get("max_position_embeddings", 2048))
    w.add_embedding_length(n_embd)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(float(cfg.get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-5)))
    w.add_vocab_size(cfg["vocab_size"])
    add_tokenizer(w, d, cfg, args.pre)

    for name, t in tensors:
        w.add_tensor(name, t)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=False)
    w.close()
    tmp.replace(args.out)
    n_params = sum(t.size for _, t in tensors)
    print(f"wrote {args.out} ({len(tensors)} tensors, {n_params:,} params, f32)", file=sys.stderr)
    print(args.out)


if __name__ == "__main__":
    main()
