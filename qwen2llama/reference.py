"""An independent Qwen v1 forward pass, written from the Qwen math in Qwen's own terms.

It reads the *source* checkpoint by Qwen names (fused `c_attn`, `w1`/`w2`, `ln_1`) and never
imports the conversion table, so a mapping bug shows up as a logit difference instead of
being reproduced on both sides. It also implements what LLaMA cannot express (dynamic NTK,
logn attention), so divergence past `seq_length` can be measured.

Computation is in float32 (weights are upcast), one layer's weights at a time. A GPTQ release
is dequantized here by its own element-wise reading of AutoGPTQ's format, not the converter's.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable

import torch

from .lora.read import QwenAdapter
from .qwen.checkpoint import Checkpoint
from .storage import read_ref

ATTN_SCORE_BYTES = 256 << 20  # attention score block budget: heads are processed in groups
GPTQ_COLUMNS = 1024  # output features dequantized per step


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Qwen's RMSNorm: normalise in float32, cast back, then scale."""
    normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
    return normed.type_as(x) * weight


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def ntk_alpha(length: int, seq_length: int, enabled: bool) -> float:
    """Qwen's dynamic NTK factor: 1 up to seq_length, then 2^ceil(log2(len/seq)+1) - 1."""
    if not enabled or length <= seq_length:
        return 1.0
    return max(2 ** math.ceil(math.log(length / seq_length, 2) + 1) - 1, 1)


def rotary_tables(length: int, head_dim: int, base: float, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    base = base * alpha ** (head_dim / (head_dim - 2))
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


@dataclass
class QwenCache:
    """One sequence's keys and values per layer, as Qwen's generation keeps them: keys rotated once,
    with the NTK factor of the prefill, which then stays for the whole generation (spec: frozen
    alpha); each decode step adds its positions after the cached ones."""

    alpha: float | None = None
    keys: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [heads, T, head_dim]
    values: dict[int, torch.Tensor] = field(default_factory=dict)

    def length(self, layer: int) -> int:
        return self.keys[layer].shape[1] if layer in self.keys else 0

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's keys and values with k, v appended (and kept)."""
        if layer in self.keys:
            k, v = torch.cat([self.keys[layer], k], dim=1), torch.cat([self.values[layer], v], dim=1)
        self.keys[layer], self.values[layer] = k, v
        return k, v


def logn_scale(length: int, seq_length: int, enabled: bool) -> torch.Tensor:
    """Per-position query factor: log(i)/log(seq_length) for 1-based position i > seq_length."""
    i = torch.arange(1, length + 1, dtype=torch.float64)
    scale = torch.where(i > seq_length, torch.log(i) / math.log(seq_length), torch.ones_like(i))
    return (scale if enabled else torch.ones_like(i)).float()


class QwenReference:
    """Qwen v1 in float32 over a source checkpoint, layer by layer."""

    def __init__(self, ckpt: Checkpoint, adapter: QwenAdapter | None = None, *, alpha: float | None = None,
                 logn: bool | None = None, device: torch.device | str = "cpu"):
        """`alpha`: the NTK factor frozen (as Qwen's decoding keeps the prefill's: a sequence run
        whole with the prefill's alpha is what Qwen computes with its cache); None: Qwen's choice
        for each sequence's prefill length. `logn`: logn attention on or off (None: as the config
        says). `device`: where the float32 compute runs (weights are read on the CPU, moved, cast)."""
        self.ckpt = ckpt
        self.cfg = ckpt.config
        self.adapter = adapter
        self.alpha, self.logn = alpha, logn
        self.device = torch.device(device)

    def _ref(self, name: str):
        """A tensor's location: the adapter's modules_to_save copy when it has one."""
        saved = self.adapter.saved if self.adapter is not None else {}
        return saved.get(name) or self.ckpt.tensors[name]

    def _w(self, name: str) -> torch.Tensor:
        return self.on_device(read_ref(self._ref(name)))

    def on_device(self, t: torch.Tensor) -> torch.Tensor:
        """A tensor read on the CPU, as float32 where the compute runs (moved before the cast)."""
        return t.to(self.device).float()

    def embed(self, ids: list[int]) -> torch.Tensor:
        ref = self._ref("transformer.wte.weight")
        rows = {i: read_ref(ref, i, i + 1)[0] for i in set(ids)}
        return self.on_device(torch.stack([rows[i] for i in ids]))

    def head_rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of lm_head, where the compute runs."""
        return self.on_device(read_ref(self.head_ref(), start, stop))

    def layer_weights(self, i: int) -> dict[str, torch.Tensor]:
        pre = f"transformer.h.{i}."
        names = ("ln_1.weight", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight", "ln_2.weight",
                 "mlp.w1.weight", "mlp.w2.weight", "mlp.c_proj.weight")
        read = linear_reader(self.ckpt)
        w = {n: read(self, pre + n.removesuffix(".weight")) if n.endswith("weight") and "ln_" not in n
             else self._w(pre + n) for n in names}
        # a bias on a linear that Qwen's float model lacks: quantizers store one (AutoGPTQ: zeros)
        for n in LINEAR_BIASES:
            if pre + n in self.ckpt.tensors:
                w[n] = self._w(pre + n)
        for n in names:
            lora = self.adapter.factors.get(pre + n.removesuffix(".weight")) if self.adapter else None
            if lora is not None:
                w[n] = self._with_lora(w[n], lora)
        return w

    @staticmethod
    def _with_lora(w: torch.Tensor, lora) -> torch.Tensor:
        """W + s * B @ A; DoRA rescales each output row of that to its learned magnitude m."""
        b, a = (read_ref(f).to(w.device).float() for f in (lora.b, lora.a))
        merged = w + lora.scaling * (b @ a)
        if lora.magnitude is None:
            return merged
        return merged * (read_ref(lora.magnitude).to(w.device).float() / merged.norm(p=2, dim=1))[:, None]

    def dense_weight(self, linear: str) -> torch.Tensor:
        """A linear's weight [out, in] as stored (every Qwen v1 release but the Int4/Int8 ones)."""
        return self._w(f"{linear}.weight")

    def gptq_weight(self, linear: str) -> torch.Tensor:
        """A GPTQ linear's weight [out, in], element by element as AutoGPTQ defines it:
        W[o, i] = scales[g, o] * (q[i, o] - (z[g, o] + 1)), g = g_idx[i], where q[i, o] is bits
        (i % pack) of qweight[i // pack, o] and z[g, o] bits (o % pack) of qzeros[g, o // pack]."""
        bits = self.ckpt.quantization.bits
        pack, mask = 32 // bits, (1 << bits) - 1
        qweight = self.ckpt.read_tensor(f"{linear}.qweight")
        qzeros = self.ckpt.read_tensor(f"{linear}.qzeros")
        scales = self.ckpt.read_tensor(f"{linear}.scales").float()
        g = self.ckpt.read_tensor(f"{linear}.g_idx").long()
        i = torch.arange(g.numel())
        out = torch.empty(scales.shape[1], g.numel())
        for o0 in range(0, scales.shape[1], GPTQ_COLUMNS):
            o = torch.arange(o0, min(o0 + GPTQ_COLUMNS, scales.shape[1]))
            q = (qweight[:, o][i // pack] >> (bits * (i % pack))[:, None].int()) & mask
            z = (qzeros[:, o // pack] >> (bits * (o % pack))[None, :].int()) & mask
            out[o] = (scales[:, o][g] * (q - z[g] - 1).float()).T
        return self.on_device(out)

    def block(self, w: dict[str, torch.Tensor], x: torch.Tensor, cache: QwenCache | None = None,
              layer: int = 0) -> torch.Tensor:
        """One Qwen block on x [T, H]: h = x + attn(ln_1(x)); out = h + mlp(ln_2(h)). With a cache,
        x holds the positions after the cached ones of `layer`, and their keys and values join it."""
        cfg = self.cfg
        a = rms_norm(x, w["ln_1.weight"], cfg.layer_norm_epsilon)
        qkv = a @ w["attn.c_attn.weight"].T + w["attn.c_attn.bias"]
        q, k, v = (t.view(x.shape[0], cfg.num_heads, cfg.head_dim).transpose(0, 1)  # [heads, T, hd]
                   for t in qkv.split(cfg.projection_size, dim=-1))
        past = cache.length(layer) if cache is not None else 0
        q, k = self._positions(q, k, past, cache)
        if cache is not None:
            k, v = cache.extend(layer, k, v)
        ctx = attend(q, k, v)
        attn = _linear(ctx.transpose(0, 1).reshape(x.shape[0], cfg.projection_size), w, "attn.c_proj")
        h = x + attn
        m = rms_norm(h, w["ln_2.weight"], cfg.layer_norm_epsilon)
        inner = _linear(m, w, "mlp.w1") * torch.nn.functional.silu(_linear(m, w, "mlp.w2"))
        return h + _linear(inner, w, "mlp.c_proj")

    def _alpha(self, prefill: int, cache: QwenCache | None) -> float:
        """The NTK factor: as set; else the cache's (frozen at its prefill); else from the prefill."""
        if self.alpha is not None:
            return self.alpha
        if cache is not None and cache.alpha is not None:
            return cache.alpha
        alpha = ntk_alpha(prefill, self.cfg.seq_length, self.cfg.use_dynamic_ntk)
        if cache is not None:
            cache.alpha = alpha
        return alpha

    def _positions(self, q, k, past: int, cache: QwenCache | None):
        """RoPE and logn for positions past .. past + T - 1 (Qwen: positions from the cache length)."""
        cfg, end = self.cfg, past + q.shape[1]
        cos, sin = (t[past:].to(q.device) for t in rotary_tables(end, cfg.head_dim, cfg.rotary_emb_base,
                                                                   self._alpha(end, cache)))
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        logn = cfg.use_logn_attn if self.logn is None else self.logn
        return q * logn_scale(end, cfg.seq_length, logn)[past:].to(q.device)[None, :, None], k

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self._w("transformer.ln_f.weight"), self.cfg.layer_norm_epsilon)

    def head_ref(self):
        return self._ref("lm_head.weight")

    @torch.no_grad()
    def logits(self, ids: list[int]) -> torch.Tensor:
        """Full forward for one sequence: logits [T, V] (small models; tests)."""
        x = self.embed(ids)
        for i in range(self.cfg.num_layers):
            x = self.block(self.layer_weights(i), x)
        return self.final_norm(x) @ self._w("lm_head.weight").T


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal softmax attention of the last q.shape[1] positions over all k.shape[1] (the earlier
    ones cached), heads in groups so that no score block passes ATTN_SCORE_BYTES."""
    nh, T, hd = q.shape
    S = k.shape[1]
    ctx = torch.empty_like(q)
    causal = torch.ones(T, S, dtype=torch.bool, device=q.device).triu(S - T + 1)
    group = max(1, ATTN_SCORE_BYTES // (T * S * 4))
    for h0 in range(0, nh, group):
        s = (q[h0:h0 + group] @ k[h0:h0 + group].transpose(-1, -2)) / math.sqrt(hd)
        s = s.masked_fill(causal, float("-inf")).softmax(dim=-1)
        ctx[h0:h0 + group] = s @ v[h0:h0 + group]
    return ctx


LINEAR_BIASES = ("attn.c_proj.bias", "mlp.w1.bias", "mlp.w2.bias", "mlp.c_proj.bias")

# How the reference reads a block linear's weight, by the way the checkpoint stores it: the one place
# that dispatches on storage, apart from formats/ (a new storage format registers its own reader
# here, written from that format's definition, not from the converter). First claim wins.
LinearReader = Callable[["QwenReference", str], torch.Tensor]
READERS: list[tuple[Callable[[Checkpoint], bool], LinearReader]] = [
    (lambda ckpt: ckpt.quantization is not None, QwenReference.gptq_weight),
    (lambda ckpt: True, QwenReference.dense_weight),
]


def register_reader(claims: Callable[[Checkpoint], bool], read: LinearReader) -> None:
    """Read the linears of the checkpoints `claims` accepts with `read(reference, linear_path)`."""
    READERS.insert(0, (claims, read))


def linear_reader(ckpt: Checkpoint) -> LinearReader:
    return next(read for claims, read in READERS if claims(ckpt))


def _linear(x: torch.Tensor, w: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """x W^T, plus the bias where the checkpoint stores one."""
    y = x @ w[f"{name}.weight"].T
    return y + w[f"{name}.bias"] if f"{name}.bias" in w else y


def has_mlp_bias(ckpt) -> bool:
    """Whether any MLP linear of the checkpoint stores a non-zero bias (quantizers add biases;
    Qwen's float model has none), read in Qwen's terms, apart from the format's own decision."""
    names = [n for n in ckpt.tensors if re.fullmatch(r"transformer\.h\.\d+\.mlp\.(w1|w2|c_proj)\.bias", n)]
    return any(bool(torch.count_nonzero(ckpt.read_tensor(n).float())) for n in names)
