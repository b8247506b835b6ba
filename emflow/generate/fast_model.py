"""The model side of the fast backend's decode loop (emflow.generate.fast_decode): a
transformers Llama-style causal LM run layer by layer over emflow's static KV cache.

The model's own modules (embedding, RMSNorms, projections, MLP activation, rotary embedding, head)
compute every number; what is emflow's is the attention over the cache and the fusing of q/k/v
and gate/up into one matmul each.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from emflow.generate.decode_attention import decode_attention, supports_triton


class UnsupportedModel(ValueError):
    """The model is not a Llama-style decoder that this loop reproduces exactly."""


def _fuse(*linears) -> tuple[Any, Any]:
    """One weight (and bias) for several projections of the same input: one matmul instead."""
    import torch

    weight = torch.cat([m.weight for m in linears]).contiguous()
    if all(m.bias is None for m in linears):
        return weight, None
    bias = torch.cat(
        [m.bias if m.bias is not None else m.weight.new_zeros(m.out_features) for m in linears]
    )
    return weight, bias


class _Layer:
    """One decoder layer's modules, with q/k/v and gate/up fused."""

    def __init__(self, layer) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        for name in ("q_norm", "k_norm"):
            if getattr(attn, name, None) is not None:
                raise UnsupportedModel(f"attention with {name} is not supported by the fast loop")
        if getattr(attn, "sliding_window", None):
            raise UnsupportedModel("sliding-window attention is not supported by the fast loop")
        self.ln1, self.ln2 = layer.input_layernorm, layer.post_attention_layernorm
        self.qkv_w, self.qkv_b = _fuse(attn.q_proj, attn.k_proj, attn.v_proj)
        self.o_proj = attn.o_proj
        self.gate_up_w, self.gate_up_b = _fuse(mlp.gate_proj, mlp.up_proj)
        self.intermediate = mlp.gate_proj.out_features
        self.down_proj, self.act = mlp.down_proj, mlp.act_fn


def _rotate_half(x):
    import torch

    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rope(x, cos, sin):
    """transformers' apply_rotary_pos_emb on one tensor (queries and keys go in together)."""
    return (x * cos) + (_rotate_half(x) * sin)


def _repeat_kv(x, groups: int):
    """[n, kv_heads, L, d] -> [n, kv_heads * groups, L, d], as transformers' repeat_kv."""
    if groups == 1:
        return x
    n, kv, length, d = x.shape
    return x[:, :, None].expand(n, kv, groups, length, d).reshape(n, kv * groups, length, d)


class Decoder:
    """A transformers Llama-style causal LM, run layer by layer over emflow's static cache."""

    def __init__(self, model, attention: str = "sdpa") -> None:
        backbone = getattr(model, "model", None)
        needed = ("embed_tokens", "layers", "norm", "rotary_emb")
        if backbone is None or any(not hasattr(backbone, n) for n in needed):
            raise UnsupportedModel(
                f"{type(model).__name__}: expected a Llama-style model (model.model with "
                "embed_tokens, layers, norm, rotary_emb); use generation.backend: hf"
            )
        attn = backbone.layers[0].self_attn
        self.embed, self.norm = backbone.embed_tokens, backbone.norm
        self.rotary = backbone.rotary_emb
        self.lm_head = model.get_output_embeddings()
        self.layers = [_Layer(layer) for layer in backbone.layers]
        self.head_dim = attn.head_dim
        self.groups = attn.num_key_value_groups
        self.kv_heads = attn.k_proj.out_features // self.head_dim
        self.heads = self.kv_heads * self.groups
        self.scaling = attn.scaling
        self.dtype = self.embed.weight.dtype
        self.device = self.embed.weight.device
        self.vocab = self.lm_head.weight.shape[0]
        self.hidden = self.embed.weight.shape[1]
        self.intermediate = self.layers[0].intermediate
        # How a decode step attends over the cache (emflow.generate.fast_decode.DECODE_ATTENTION):
        # "auto" is the Triton kernel where it runs (a CUDA device, a power-of-two head size).
        if attention == "auto":
            attention = "triton" if supports_triton(self.device, self.head_dim) else "sdpa"
        self.attention = attention

    @property
    def kv_bytes_per_slot(self) -> int:
        """Bytes of keys and values one row keeps per cache slot, all layers."""
        return 2 * len(self.layers) * self.kv_heads * self.head_dim * self.dtype.itemsize

    def rope_table(self, length: int):
        """cos and sin for positions 0..length-1, [length, head_dim] each.

        The model's rotary embedding computes position * inv_freq elementwise, so a table
        row equals what it computes for that position inside any batch.
        """
        import torch

        positions = torch.arange(length, device=self.device)[None]
        probe = torch.empty(0, dtype=self.dtype, device=self.device)
        cos, sin = self.rotary(probe, positions)
        return cos[0], sin[0]

    def _qkv(self, layer: _Layer, h, cos, sin):
        """Projections and rotary embedding; shapes [..., heads, d] (queries), [..., kv, d]."""
        import torch.nn.functional as F

        qkv = F.linear(h, layer.qkv_w, layer.qkv_b)
        qk_size = (self.heads + self.kv_heads) * self.head_dim
        lead = qkv.shape[:-1]
        qk = _rope(
            qkv[..., :qk_size].view(*lead, self.heads + self.kv_heads, self.head_dim), cos, sin
        )
        v = qkv[..., qk_size:].view(*lead, self.kv_heads, self.head_dim)
        return qk[..., : self.heads, :], qk[..., self.heads :, :], v

    def _mlp(self, layer: _Layer, x):
        import torch.nn.functional as F

        h = layer.ln2(x)
        gate_up = F.linear(h, layer.gate_up_w, layer.gate_up_b)
        gate, up = gate_up[..., : layer.intermediate], gate_up[..., layer.intermediate :]
        return x + layer.down_proj(layer.act(gate) * up)

    def prefill(self, ids, pad: Sequence[int] | Any, store: Callable[[int, Any, Any], None]):
        """Left-padded prompts [n, L] -> float32 logits of their last token [n, vocab].

        `pad` holds each row's number of left pad tokens. Keys and values (rotary applied) of
        every layer go to `store(layer_index, k, v)` with shape [n, kv_heads, L, head_dim].
        Positions and mask are transformers': position = attention-mask cumsum - 1, and a token
        attends to the real tokens up to itself. A pad query attends to itself only, which keeps
        its (unused) keys finite without touching any real token.
        """
        import torch
        import torch.nn.functional as F

        n, length = ids.shape
        slots = torch.arange(length, device=self.device)
        real = slots[None, :] >= pad[:, None]  # [n, L]
        positions = (real.long().cumsum(-1) - 1).clamp(min=0)
        cos_t, sin_t = self.rope_table(length)
        cos, sin = cos_t[positions][:, :, None], sin_t[positions][:, :, None]  # [n, L, 1, d]
        causal = slots[None, :] <= slots[:, None]
        mask = (causal[None] & real[:, None, :]) | torch.eye(
            length, dtype=torch.bool, device=self.device
        )[None]
        mask = mask[:, None]  # [n, 1, L, L]
        x = self.embed(ids)
        for index, layer in enumerate(self.layers):
            q, k, v = self._qkv(layer, layer.ln1(x), cos, sin)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            store(index, k, v)
            attn = F.scaled_dot_product_attention(
                q,
                _repeat_kv(k, self.groups),
                _repeat_kv(v, self.groups),
                attn_mask=mask,
                scale=self.scaling,
            )
            x = x + layer.o_proj(attn.transpose(1, 2).reshape(n, length, -1))
            x = self._mlp(layer, x)
        return self.lm_head(self.norm(x[:, -1])).float()

    def decode(self, tokens, cos, sin, cache: KVCache, slot, start, mask, kv_len: int):
        """One new token per row [B] at cache slot `slot` -> logits [B, vocab] in the model dtype.

        Row b attends to the slots [start[b], slot]; `mask` ([B, 1, 1, kv_len], True where a
        row may look) says the same for the torch attentions, and is None for "triton", which
        reads start and slot itself. Queries are grouped by the key/value head they share
        ([B, kv_heads, groups, d]), so attention reads each cached key once per kv head instead
        of once per query head. The logits stay in the model dtype (generate converts them to
        float32; the sampler does, after choosing its candidates).
        """

        rows = tokens.shape[0]
        x = self.embed(tokens)
        for index, layer in enumerate(self.layers):
            q, k, v = self._qkv(layer, layer.ln1(x), cos, sin)
            keys, values = cache.k[index], cache.v[index]
            keys.index_copy_(2, slot, k[:, :, None])
            values.index_copy_(2, slot, v[:, :, None])
            attn = self.attend(
                q.reshape(rows, self.kv_heads, self.groups, self.head_dim),
                keys[:, :, :kv_len],
                values[:, :, :kv_len],
                mask,
                start,
                slot,
            )
            x = x + layer.o_proj(attn.reshape(rows, -1))
            x = self._mlp(layer, x)
        return self.lm_head(self.norm(x))

    def attend(self, q, keys, values, mask, start, slot):
        """Attention of grouped queries [B, kv, g, d] over keys/values [B, kv, L, d].

        mask [B, 1, 1, L] is True where a row may look (None for "triton": rows see [start[b],
        slot]). Every row sees at least its prompt, so no softmax row is empty.
        """
        import torch
        import torch.nn.functional as F

        if self.attention == "triton":
            return decode_attention(q, keys, values, start, slot, self.scaling)
        if self.attention == "sdpa":
            return F.scaled_dot_product_attention(
                q, keys, values, attn_mask=mask, scale=self.scaling
            )
        if self.attention == "bmm_q":
            scores = torch.matmul(q, keys.transpose(-1, -2)) * self.scaling
            scores = scores.masked_fill(~mask, -float("inf"))
            probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
            return torch.matmul(probs, values)
        raise ValueError(f"unknown decode attention {self.attention!r}")


class KVCache:
    """Keys and values of every layer: [rows, kv_heads, slots, head_dim] each, zero-filled."""

    def __init__(self, decoder: Decoder, rows: int, slots: int) -> None:
        import torch

        shape = (rows, decoder.kv_heads, slots, decoder.head_dim)
        kw = {"dtype": decoder.dtype, "device": decoder.device}
        self.k = [torch.zeros(shape, **kw) for _ in decoder.layers]
        self.v = [torch.zeros(shape, **kw) for _ in decoder.layers]
