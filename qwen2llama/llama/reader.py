"""A converted folder as transformers sees it: config, weight shards, decoder layers.

The output side of `verify` runs transformers' own decoder layer, RMSNorm and rotary embedding
of the folder's layout (the target's classes: LLaMA's or Qwen2's) on the folder's weights, one
layer at a time. Folders from other converters are read too: safetensors or `.bin` shards
(through the restricted reader, never unpickled).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import FolderCheckFailed, InputError
from ..storage import TensorRef, find_weights, read_ref
from ..storage.weights import weight_sets


def read_output_tensors(folder: Path) -> dict[str, TensorRef]:
    """Every tensor of a converted folder, from the index (if any) and the shard headers. A folder
    that holds two weight sets fails: the runtime picks one by its own rules (transformers:
    model.safetensors before an index), so checking either would check what may not be loaded;
    anything unreadable in it is a failed check too, never bad input."""
    sets = weight_sets(folder)
    if len(sets) > 1:
        raise FolderCheckFailed(f"the folder holds {len(sets)} weight sets ({', '.join(sets)}); runtimes "
                                "choose among them by their own rules", path=folder,
                                fix="keep the one set convert wrote (conversion.json lists its files)")
    try:
        weights = find_weights(folder)
    except InputError as exc:
        raise FolderCheckFailed(exc.message, path=exc.path, fix="convert again") from None
    if weights is None:
        raise FolderCheckFailed("no weights (model.safetensors[.index.json] or "
                                "pytorch_model.bin[.index.json])", path=folder,
                                fix="point at the converted folder, or convert again")
    return weights.tensors


class OutputSide:
    """transformers' modules of the target's layout over a converted folder, loaded layer by
    layer in float32."""

    def __init__(self, folder: Path, target, device: torch.device | str = "cpu"):
        config_class, self._layer_class, self._norm_class, rotary_class = target.transformers
        self.folder, self.target, self.device = folder, target, torch.device(device)
        self.tensors = read_output_tensors(folder)
        try:
            self.config = config_class.from_pretrained(folder)
        except Exception as exc:
            raise InputError(f"transformers cannot read config.json ({exc})"[:400],
                             path=folder / "config.json",
                             fix="convert again") from None
        self.config._attn_implementation = "sdpa"
        self.rotary = rotary_class(self.config).to(self.device)

    def tensor(self, name: str, start: int | None = None, stop: int | None = None) -> torch.Tensor:
        """Rows [start, stop) of a tensor (all of it by default), in float32 where the compute runs."""
        return read_ref(self.tensors[name], start, stop).to(self.device).float()

    def embed(self, ids: list[int]) -> torch.Tensor:
        ref = self.tensors["model.embed_tokens.weight"]
        rows = {i: read_ref(ref, i, i + 1)[0] for i in set(ids)}
        return torch.stack([rows[i] for i in ids]).to(self.device).float()

    def head_rows(self, start: int, stop: int) -> torch.Tensor:
        return self.tensor("lm_head.weight", start, stop)

    @property
    def gptq_bits(self) -> int | None:
        """The bits of a LLaMA GPTQ folder, as its config.json says; None for dense weights."""
        quant = getattr(self.config, "quantization_config", None)
        return quant.get("bits") if isinstance(quant, dict) else None

    def layer(self, i: int):
        prefix = f"model.layers.{i}."
        names = [n for n in self.tensors if n.startswith(prefix)]
        if self.gptq_bits is not None:
            weights = {n[len(prefix):]: self.tensor(n) for n in names if n.endswith(("norm.weight", ".bias"))}
            for stem in (n[len(prefix):-len(".qweight")] for n in names if n.endswith(".qweight")):
                parts = {s: read_ref(self.tensors[f"{prefix}{stem}.{s}"])
                         for s in ("qweight", "qzeros", "scales", "g_idx")}
                weights[f"{stem}.weight"] = dequantize_by_bytes(**parts, bits=self.gptq_bits).to(self.device)
        else:
            weights = {n[len(prefix):]: self.tensor(n) for n in names}
        with torch.device("meta"):
            layer = self._layer_class(self.config, layer_idx=i)
        layer.load_state_dict(weights, strict=True, assign=True)
        return layer.float().eval()

    @torch.no_grad()
    def run_layer(self, layer, x: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(x.shape[0], device=x.device)[None]
        cos, sin = self.rotary(x[None], pos)
        out = layer(x[None], attention_mask=None, position_ids=pos, position_embeddings=(cos, sin))
        return (out[0] if isinstance(out, tuple) else out)[0]

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        norm = self._norm_class(self.config.hidden_size, eps=self.config.rms_norm_eps)
        norm.weight.data = self.tensor("model.norm.weight")
        with torch.no_grad():
            return norm(x)


def dequantize_by_bytes(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                        g_idx: torch.Tensor,
                        bits: int) -> torch.Tensor:
    """A GPTQ linear of the output as a dense [out, in] float32 weight, read through the little-endian
    bytes of the packed words (8 bits: one value per byte; 4 bits: low nibble first), a path
    apart from the converter's shifts and the reference's element formula."""
    def values(words: torch.Tensor) -> torch.Tensor:  # [n, m] words -> [n, m, per] values, lowest first
        b = words.contiguous().view(torch.uint8).reshape(*words.shape, 4)
        if bits == 8:
            return b
        if bits == 4:
            return torch.stack((b & 0xF, b >> 4), dim=-1).reshape(*words.shape, 8)
        raise RuntimeError(f"quantization_config bits {bits}: a LLaMA GPTQ folder has 4 or 8")

    rows, out_f = qweight.shape
    q = values(qweight).permute(0, 2, 1).reshape(-1, out_f)  # input i = word row * per + position
    z = values(qzeros).reshape(qzeros.shape[0], -1)  # output o = word column * per + position
    if q.shape[0] != g_idx.numel() or z.shape[1] != out_f:
        raise RuntimeError(f"GPTQ shapes disagree with bits {bits}: qweight {list(qweight.shape)}, "
                           f"qzeros {list(qzeros.shape)}, g_idx {list(g_idx.shape)}")
    g = g_idx.long()
    return (scales.float()[g] * (q.float() - z.float()[g] - 1)).T.contiguous()
