"""BERT and RoBERTa: the post-LayerNorm encoder with learned absolute positions, in Flax NNX.

Reads top to bottom like the architecture: embeddings (word + position + token type, then
LayerNorm) -> N post-LayerNorm blocks (self-attention, feed-forward) -> MLM head whose decoder is
tied to the word embeddings. The parameter tree keeps HuggingFace's shape (one entry per HF
module) so the converter is a short table; see docs/conversion.md. RoBERTa differs from BERT in
data only (positions counted from padding_idx + 1, LayerNorm eps 1e-5).
"""

import jax.numpy as jnp
from flax import nnx

from dlm_jax.models.config import EncoderConfig
from dlm_jax.models.layers import Dense, Embed, LayerNorm, MaskedLMEncoder, activation, attend, keys_and_values


class Embeddings(nnx.Module):
    def __init__(self, config: EncoderConfig, *, rngs: nnx.Rngs):
        std = config.initializer_range
        self.word_embeddings = Embed(config.vocab_size, config.hidden_size, std=std, rngs=rngs)
        self.position_embeddings = Embed(config.max_position_embeddings, config.hidden_size, std=std, rngs=rngs)
        self.token_type_embeddings = Embed(config.type_vocab_size, config.hidden_size, std=std, rngs=rngs)
        self.layer_norm = LayerNorm(config.hidden_size, config.layer_norm_eps)

    def __call__(self, input_ids, position_ids, token_type_ids):
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(position_ids)
            + self.token_type_embeddings(token_type_ids)
        )
        return self.layer_norm(x)


class SelfAttention(nnx.Module):
    """Multi-head self-attention, then residual + LayerNorm."""

    def __init__(self, config: EncoderConfig, *, rngs: nnx.Rngs):
        std = config.initializer_range
        h = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.query = Dense(h, h, std=std, rngs=rngs)
        self.key = Dense(h, h, std=std, rngs=rngs)
        self.value = Dense(h, h, std=std, rngs=rngs)
        self.output = Dense(h, h, std=std, rngs=rngs)
        self.layer_norm = LayerNorm(h, config.layer_norm_eps)

    def __call__(self, x, mask, dtype, implementation, cached=None):
        """-> (output, x's own keys and values); cached: see layers.keys_and_values."""
        heads = lambda y: y.reshape(*y.shape[:2], self.num_heads, -1)
        q, k, v = (heads(dense(x, dtype)) for dense in (self.query, self.key, self.value))
        (k, v), own = keys_and_values(k, v, cached, dtype)
        context = attend(q, k, v, mask, dtype, implementation)
        return self.layer_norm(x + self.output(context, dtype)), own


class FeedForward(nnx.Module):
    def __init__(self, config: EncoderConfig, *, rngs: nnx.Rngs):
        std = config.initializer_range
        self.intermediate = Dense(config.hidden_size, config.intermediate_size, std=std, rngs=rngs)
        self.output = Dense(config.intermediate_size, config.hidden_size, std=std, rngs=rngs)
        self.layer_norm = LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.act = activation(config.hidden_act)

    def __call__(self, x, dtype):
        return self.layer_norm(x + self.output(self.act(self.intermediate(x, dtype)), dtype))


class Layer(nnx.Module):
    """One post-LayerNorm transformer block."""

    def __init__(self, config: EncoderConfig, *, rngs: nnx.Rngs):
        self.attention = SelfAttention(config, rngs=rngs)
        self.feed_forward = FeedForward(config, rngs=rngs)

    def __call__(self, x, mask, dtype, implementation):
        return self.with_kv(x, mask, dtype, implementation)[0]

    def with_kv(self, x, mask, dtype, implementation, cached=None):
        x, own = self.attention(x, mask, dtype, implementation, cached)
        return self.feed_forward(x, dtype), own


class MLMHead(nnx.Module):
    """dense -> activation -> LayerNorm, then the decoder tied to the word embeddings + a bias."""

    def __init__(self, config: EncoderConfig, *, rngs: nnx.Rngs):
        std = config.initializer_range
        self.dense = Dense(config.hidden_size, config.hidden_size, std=std, rngs=rngs)
        self.layer_norm = LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.bias = nnx.Param(jnp.zeros((config.vocab_size,), jnp.float32))
        self.act = activation(config.hidden_act)

    def __call__(self, hidden, dtype):
        return self.layer_norm(self.act(self.dense(hidden, dtype)))


class BertEncoder(MaskedLMEncoder):
    """BERT/RoBERTa encoder + MLM head: token ids [B, T] -> float32 logits [B, T, vocab]."""

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
        self.layers = nnx.List([Layer(config, rngs=rngs) for _ in range(config.num_hidden_layers)])
        self.mlm_head = MLMHead(config, rngs=rngs)

    def encode(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None):
        """Final hidden states [B, T, hidden] in float32."""
        if position_ids is None:
            position_ids = self.position_ids(input_ids, attention_mask)
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = self.embeddings(input_ids, position_ids, token_type_ids)
        # [B, 1, 1, S]: every query attends to the real (non-padding) keys.
        return self.run_layers(x, attention_mask.astype(bool)[:, None, None, :])

    def encode_with_kv(self, input_ids, attention_mask, position_ids):
        x = self.embeddings(input_ids, position_ids, jnp.zeros_like(input_ids))
        return self.run_layers_kv(x, None, None, attention_mask.astype(bool)[:, None, None, :])

    def encode_window(self, input_ids, position_ids, offset, attention_mask, kv):
        x = self.embeddings(input_ids, position_ids, jnp.zeros_like(input_ids))
        return self.run_layers_kv(x, kv, offset, attention_mask.astype(bool)[:, None, None, :])[0]

    def head_features(self, hidden):
        return self.mlm_head(hidden, self.dtype)

    def vocab_decoder(self):
        return self.embeddings.word_embeddings.embedding[...], self.mlm_head.bias[...]
