"""ModernBERT: the pre-norm encoder with rotary positions and alternating global / local attention.

Reads top to bottom like the architecture (HF `ModernBertForMaskedLM`, transformers 5):
token embeddings -> LayerNorm -> N pre-norm blocks -> final LayerNorm -> MLM head (dense,
activation, LayerNorm) -> decoder tied to the token embeddings (+ a bias).
A block: x + Wo(attention(rope(Wqkv(norm(x))))), then x + Wo(act(input) * gate) with
(input, gate) = Wi(norm(x)) (GeGLU). The first block has no attention norm (the embedding norm
precedes it). Each block is `full_attention` (every key) or `sliding_attention` (keys at index
distance <= local_attention / 2), per `layer_types`, with its own rotary base. Most linear
layers and norms have no bias (the config says which do).

Init follows HF's for training from scratch: normals truncated at 2 std, with the output
projections of each block scaled by 1 / sqrt(2 * layers).
"""

import math

import jax.numpy as jnp
from flax import nnx

from dlm_jax.models.config import EncoderConfig
from dlm_jax.models.layers import Dense, Embed, LayerNorm, MaskedLMEncoder, activation, attend, keys_and_values


def rotary_tables(positions, head_dim: int, theta: float, max_positions: int):
    """cos and sin [B, T, head_dim] of HF's rotary embedding (float32; halves, not interleaved)
    at positions [B, T] < max_positions. Computed for every position once and gathered: XLA's
    CPU backend would otherwise fuse cos and sin into each head's rotation in every block,
    evaluating them 2 x heads x layers times (a tenth of a bf16 forward at 1024 tokens)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = jnp.arange(max_positions, dtype=jnp.float32)[:, None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.take(jnp.cos(angles), positions, axis=0), jnp.take(jnp.sin(angles), positions, axis=0)


def apply_rotary(x, cos, sin):
    """x [B, T, heads, head_dim] rotated by its positions' angles (in float32)."""
    x = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


class Attention(nnx.Module):
    """Fused Wqkv projection, rotary positions on queries and keys, softmax attention, Wo."""

    def __init__(self, config: EncoderConfig, *, rngs: nnx.Rngs):
        h, std = config.hidden_size, config.initializer_range
        out_std = std / math.sqrt(2.0 * config.num_hidden_layers)
        self.num_heads = config.num_attention_heads
        self.wqkv = Dense(h, 3 * h, std=std, rngs=rngs, bias=config.attention_bias, truncated=True)
        self.wo = Dense(h, h, std=out_std, rngs=rngs, bias=config.attention_bias, truncated=True)

    def __call__(self, x, mask, rotary, dtype, implementation, cached=None):
        """-> (output, x's own keys (after the rotation) and values); cached: see
        layers.keys_and_values."""
        batch, length, _ = x.shape
        qkv = self.wqkv(x, dtype).reshape(batch, length, 3, self.num_heads, -1)
        cos, sin = rotary
        q, k = apply_rotary(qkv[:, :, 0], cos, sin), apply_rotary(qkv[:, :, 1], cos, sin)
        (k, v), own = keys_and_values(k, qkv[:, :, 2], cached, dtype)
        return self.wo(attend(q, k, v, mask, dtype, implementation), dtype), own


class GatedMLP(nnx.Module):
    """Wo(act(input) * gate), where Wi projects to [input, gate] (GeGLU with act = GELU)."""

    def __init__(self, config: EncoderConfig, *, rngs: nnx.Rngs):
        h, i, std = config.hidden_size, config.intermediate_size, config.initializer_range
        out_std = std / math.sqrt(2.0 * config.num_hidden_layers)
        self.wi = Dense(h, 2 * i, std=std, rngs=rngs, bias=config.mlp_bias, truncated=True)
        self.wo = Dense(i, h, std=out_std, rngs=rngs, bias=config.mlp_bias, truncated=True)
        self.act = activation(config.hidden_act)

    def __call__(self, x, dtype):
        inputs, gate = jnp.split(self.wi(x, dtype), 2, axis=-1)
        return self.wo(self.act(inputs) * gate, dtype)


class Layer(nnx.Module):
    """One pre-norm block; `sliding` selects the local mask and rotary base."""

    def __init__(self, config: EncoderConfig, index: int, *, rngs: nnx.Rngs):
        norm = lambda: LayerNorm(config.hidden_size, config.layer_norm_eps, bias=config.norm_bias)
        self.sliding = config.attention_layer_types[index] == "sliding_attention"
        self.attn_norm = None if index == 0 else norm()
        self.attn = Attention(config, rngs=rngs)
        self.mlp_norm = norm()
        self.mlp = GatedMLP(config, rngs=rngs)

    def __call__(self, x, masks, rotaries, dtype, implementation):
        return self.with_kv(x, masks, rotaries, dtype, implementation)[0]

    def with_kv(self, x, masks, rotaries, dtype, implementation, cached=None):
        """masks and rotaries: (global, local) pairs; the block uses the one of its type."""
        mask, rotary = masks[self.sliding], rotaries[self.sliding]
        h = x if self.attn_norm is None else self.attn_norm(x)
        attention, own = self.attn(h, mask, rotary, dtype, implementation, cached)
        x = x + attention
        return x + self.mlp(self.mlp_norm(x), dtype), own


class Embeddings(nnx.Module):
    def __init__(self, config: EncoderConfig, *, rngs: nnx.Rngs):
        self.tok_embeddings = Embed(
            config.vocab_size, config.hidden_size, std=config.initializer_range, rngs=rngs, truncated=True
        )
        self.norm = LayerNorm(config.hidden_size, config.layer_norm_eps, bias=config.norm_bias)

    def __call__(self, input_ids):
        return self.norm(self.tok_embeddings(input_ids))


class Head(nnx.Module):
    def __init__(self, config: EncoderConfig, *, rngs: nnx.Rngs):
        out_std = config.initializer_range / math.sqrt(2.0 * config.num_hidden_layers)
        self.dense = Dense(
            config.hidden_size, config.hidden_size, std=out_std, rngs=rngs, bias=config.classifier_bias, truncated=True
        )
        self.act = activation(config.classifier_activation)
        self.norm = LayerNorm(config.hidden_size, config.layer_norm_eps, bias=config.norm_bias)

    def __call__(self, hidden, dtype):
        return self.norm(self.act(self.dense(hidden, dtype)))


class Decoder(nnx.Module):
    """The vocabulary bias, and the decoder weights when they are not tied to the embeddings."""

    def __init__(self, config: EncoderConfig, *, rngs: nnx.Rngs):
        out_std = config.initializer_range / math.sqrt(2.0 * config.num_hidden_layers)
        self.embedding = (
            None
            if config.tie_word_embeddings
            else Embed(config.vocab_size, config.hidden_size, std=out_std, rngs=rngs, truncated=True).embedding
        )
        self.bias = nnx.Param(jnp.zeros((config.vocab_size,), jnp.float32)) if config.decoder_bias else None


def window_mask(length: int, half_window: int, query_index=None):
    """[B or 1, 1, T, L]: query i may see key j when |i - j| <= half_window (HF compares
    indices, not positions); keys 0 .. L - 1, queries at canvas indices query_index [B, T]
    (default: all L)."""
    index = jnp.arange(length)
    query_index = index[None] if query_index is None else query_index
    return (jnp.abs(query_index[:, :, None] - index[None, None, :]) <= half_window)[:, None]


class ModernBertEncoder(MaskedLMEncoder):
    """ModernBERT encoder + MLM head: token ids [B, T] -> float32 logits [B, T, vocab]."""

    def __init__(
        self,
        config: EncoderConfig,
        *,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        remat: bool = False,
        attention: str | None = None,
    ):
        self.config, self.dtype, self.remat, self.attention = config, dtype, remat, attention
        self.embeddings = Embeddings(config, rngs=rngs)
        self.layers = nnx.List([Layer(config, i, rngs=rngs) for i in range(config.num_hidden_layers)])
        self.final_norm = LayerNorm(config.hidden_size, config.layer_norm_eps, bias=config.norm_bias)
        self.head = Head(config, rngs=rngs)
        self.decoder = Decoder(config, rngs=rngs)

    def encode(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None):
        """Final hidden states [B, T, hidden] in float32 (ModernBERT has no token types)."""
        del token_type_ids
        if position_ids is None:
            position_ids = self.position_ids(input_ids, attention_mask)
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        length = input_ids.shape[1]
        x = self.run_layers(
            self.embeddings(input_ids), *self._attention_inputs(None, length, attention_mask, position_ids)
        )
        return self.final_norm(x)

    def _attention_inputs(self, query_index, length, attention_mask, position_ids):
        """(global, local) masks and rotary tables of the blocks, for queries at canvas indices
        query_index [B, T] (None: all L) with positions [B, T], over L keys with attention_mask
        [B, L]."""
        config = self.config
        keys = attention_mask.astype(bool)[:, None, None, :]
        masks = (keys, keys & window_mask(length, config.local_attention // 2, query_index))
        rotaries = tuple(
            rotary_tables(position_ids, config.head_dim, theta, config.max_position_embeddings)
            for theta in (config.global_rope_theta, config.local_rope_theta)
        )
        return masks, rotaries

    def encode_with_kv(self, input_ids, attention_mask, position_ids):
        length = input_ids.shape[1]
        x, kv = self.run_layers_kv(
            self.embeddings(input_ids), None, None, *self._attention_inputs(None, length, attention_mask, position_ids)
        )
        return self.final_norm(x), kv

    def encode_window(self, input_ids, position_ids, offset, attention_mask, kv):
        query_index = offset[:, None] + jnp.arange(input_ids.shape[1])
        x, _ = self.run_layers_kv(
            self.embeddings(input_ids),
            kv,
            offset,
            *self._attention_inputs(query_index, attention_mask.shape[1], attention_mask, position_ids),
        )
        return self.final_norm(x)

    def head_features(self, hidden):
        return self.head(hidden, self.dtype)

    def vocab_decoder(self):
        weights = self.decoder.embedding
        weights = (self.embeddings.tok_embeddings.embedding if weights is None else weights)[...]
        bias = self.decoder.bias
        return weights, (jnp.zeros((self.config.vocab_size,), jnp.float32) if bias is None else bias[...])
