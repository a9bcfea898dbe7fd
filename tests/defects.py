"""Planted defects: edits of a converted folder that a verify must catch, shared by the
source-based and the golden-file tests. `rehash` makes conversion.json agree with the edits, as a
converter bug would."""
from __future__ import annotations

import json

import torch
from safetensors.torch import load_file, save_file

from qwen2llama.manifest import hash_file


def rehash(folder):
    """Make the manifest agree with edited files: a converter bug would write consistent hashes."""
    manifest = json.loads((folder / "conversion.json").read_text())
    manifest["files"] = {name: hash_file(folder / name, manifest["hash"]) for name in manifest["files"]}
    (folder / "conversion.json").write_text(json.dumps(manifest))


def edit_weights(folder, fn):
    path = folder / "model.safetensors"
    tensors = load_file(path)
    fn(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def edit_json(folder, name, fn):
    data = json.loads((folder / name).read_text())
    fn(data)
    (folder / name).write_text(json.dumps(data))


def _swap(t, a, b):
    t[a], t[b] = t[b].clone(), t[a].clone()


def _zero(t, name):
    t[name] = torch.zeros_like(t[name])


def _o_proj_bias(t):
    name = L0 + "self_attn.o_proj.bias"
    if name not in t:
        t[name] = torch.zeros_like(t[L0 + "post_attention_layernorm.weight"])
    t[name].fill_(0.05)


def bump_row(t, name, row):
    t[name][row] += 1.0


L0 = "model.layers.0."


def _regroup_digits(tok):
    for pre in tok["pre_tokenizer"]["pretokenizers"]:
        if pre["type"] == "Split":
            pre["pattern"]["Regex"] = pre["pattern"]["Regex"].replace(r"|\p{N}|", r"|\p{N}{1,3}|")


def _drop_special(folder):
    edit_json(folder, "tokenizer.json", lambda t: t.__setitem__(
        "added_tokens", [a for a in t["added_tokens"] if a["content"] != "<|extra_5|>"]))
    edit_json(folder, "tokenizer_config.json", lambda c: c["added_tokens_decoder"].pop("151651"))


DEFECTS = {
    "gate/up swapped": (lambda f: edit_weights(f, lambda t: _swap(t, L0 + "mlp.gate_proj.weight",
                                                                  L0 + "mlp.up_proj.weight")),
                        {"tensors", "logits"}),
    "q bias zeroed": (lambda f: edit_weights(f, lambda t: _zero(t, L0 + "self_attn.q_proj.bias")),
                      {"tensors", "logits"}),
    "q and k swapped": (lambda f: edit_weights(f, lambda t: _swap(t, L0 + "self_attn.q_proj.weight",
                                                                  L0 + "self_attn.k_proj.weight")),
                        {"tensors", "logits"}),
    # LLaMA: its zero o_proj bias made non-zero; Qwen2, which has no o_proj bias: one added
    "non-zero o_proj bias": (lambda f: edit_weights(f, _o_proj_bias), {"tensors", "logits"}),
    "lm_head row changed": (lambda f: edit_weights(f, lambda t: bump_row(t, "lm_head.weight", 1350)),
                            {"tensors", "logits"}),
    "embedding row changed": (lambda f: edit_weights(f,
                                                     lambda t: bump_row(t, "model.embed_tokens.weight", 785)),
                              {"tensors", "logits"}),
    "wrong rope_theta": (lambda f: edit_json(f, "config.json", lambda c: c.__setitem__("rope_theta", 1e6)),
                         {"config", "logits"}),
    "wrong rms_norm_eps": (lambda f: edit_json(f, "config.json",
                                               lambda c: c.__setitem__("rms_norm_eps", 1e-2)),
                           {"config", "logits"}),
    "digits grouped by three": (lambda f: edit_json(f, "tokenizer.json", _regroup_digits), {"tokenizer"}),
    "special token missing": (_drop_special, {"tokenizer"}),
    "eos left at LLaMA's default": (lambda f: (edit_json(f, "config.json",
                                                         lambda c: c.__setitem__("eos_token_id", 2)),
                                               edit_json(f, "generation_config.json",
                                                         lambda c: c.__setitem__("eos_token_id", 2))),
                                    {"config", "tokenizer"}),
}
