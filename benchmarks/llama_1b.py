"""Writes a random-weight model with Llama-3.2-1B's shape (bf16 safetensors, tied output head,
the demo tokenizer's 49,152-token vocabulary) for one-stream decode at a size people run:
its products are 4 to 34 MB each, where the demo `llama-small`'s (SmolLM2-135M's shape) are
0.2 to 1.8 MB and a token's fixed costs weigh far more.

    benchmarks/.work/venv/bin/python benchmarks/llama_1b.py benchmarks/.work/models/llama-small OUT_DIR

The first argument is a generated demo model (`rosetta demo`, or `benchmarks/serving.sh`),
whose tokenizer files are copied. Random values give the same speed as trained ones: nothing
in the forward pass depends on them.
"""

import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np

HIDDEN, INTER, LAYERS, HEADS, KV_HEADS, HEAD_DIM, VOCAB = 2048, 8192, 16, 32, 8, 64, 49152


def tensors():
    yield "model.embed_tokens.weight", (VOCAB, HIDDEN), 0.02
    for i in range(LAYERS):
        p = f"model.layers.{i}"
        yield f"{p}.input_layernorm.weight", (HIDDEN,), None
        yield f"{p}.self_attn.q_proj.weight", (HEADS * HEAD_DIM, HIDDEN), 0.02
        yield f"{p}.self_attn.k_proj.weight", (KV_HEADS * HEAD_DIM, HIDDEN), 0.02
        yield f"{p}.self_attn.v_proj.weight", (KV_HEADS * HEAD_DIM, HIDDEN), 0.02
        yield f"{p}.self_attn.o_proj.weight", (HIDDEN, HEADS * HEAD_DIM), 0.02
        yield f"{p}.post_attention_layernorm.weight", (HIDDEN,), None
        yield f"{p}.mlp.gate_proj.weight", (INTER, HIDDEN), 0.02
        yield f"{p}.mlp.up_proj.weight", (INTER, HIDDEN), 0.02
        yield f"{p}.mlp.down_proj.weight", (HIDDEN, INTER), 0.02
    yield "model.norm.weight", (HIDDEN,), None


def bf16(values):
    """f32 to bf16 bits, rounded to nearest even."""
    bits = values.astype(np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def main():
    demo, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    header, offset = {}, 0
    for name, shape, _ in tensors():
        size = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(out / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for _, shape, std in tensors():
            values = np.ones(shape, np.float32) if std is None else rng.standard_normal(shape, np.float32) * std
            f.write(bf16(values).tobytes())
    config = json.loads((demo / "config.json").read_text())
    config.update(
        hidden_size=HIDDEN,
        intermediate_size=INTER,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        head_dim=HEAD_DIM,
        vocab_size=VOCAB,
        tie_word_embeddings=True,
        torch_dtype="bfloat16",
    )
    config.pop("rosetta_demo", None)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in ["tokenizer.json", "tokenizer_config.json", "generation_config.json"]:
        if (demo / name).exists():
            shutil.copy(demo / name, out / name)


if __name__ == "__main__":
    main()
