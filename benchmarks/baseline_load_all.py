"""What the common LLaMA-fication scripts do: load every tensor into one dict, rename and
split in memory, save with safetensors. Measured by benchmarks/run.py for comparison only."""
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def main(src: str, dst: str) -> None:
    src_p, dst_p = Path(src), Path(dst)
    dst_p.mkdir(parents=True)
    state = {}
    for shard in sorted(src_p.glob("*.safetensors")):
        state.update(load_file(shard))
    cfg = json.loads((src_p / "config.json").read_text())
    proj = cfg["num_attention_heads"] * cfg["kv_channels"]
    out = {"model.embed_tokens.weight": state.pop("transformer.wte.weight"),
           "model.norm.weight": state.pop("transformer.ln_f.weight"),
           "lm_head.weight": state.pop("lm_head.weight")}
    for i in range(cfg["num_hidden_layers"]):
        q, ll = f"transformer.h.{i}.", f"model.layers.{i}."
        w, b = state.pop(q + "attn.c_attn.weight"), state.pop(q + "attn.c_attn.bias")
        for k, part in enumerate("qkv"):
            out[f"{ll}self_attn.{part}_proj.weight"] = w[k * proj:(k + 1) * proj].clone()
            out[f"{ll}self_attn.{part}_proj.bias"] = b[k * proj:(k + 1) * proj].clone()
        out[ll + "self_attn.o_proj.weight"] = state.pop(q + "attn.c_proj.weight")
        out[ll + "self_attn.o_proj.bias"] = torch.zeros(cfg["hidden_size"], dtype=w.dtype)
        out[ll + "mlp.gate_proj.weight"] = state.pop(q + "mlp.w2.weight")
        out[ll + "mlp.up_proj.weight"] = state.pop(q + "mlp.w1.weight")
        out[ll + "mlp.down_proj.weight"] = state.pop(q + "mlp.c_proj.weight")
        out[ll + "input_layernorm.weight"] = state.pop(q + "ln_1.weight")
        out[ll + "post_attention_layernorm.weight"] = state.pop(q + "ln_2.weight")
    save_file(out, dst_p / "model.safetensors", metadata={"format": "pt"})


if __name__ == "__main__":
    main(*sys.argv[1:3])
