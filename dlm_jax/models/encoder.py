"""A BERT/RoBERTa encoder with its masked-language-model head, in Flax NNX.

Reads top to bottom like the architecture: embeddings -> N post-LayerNorm blocks
(self-attention, feed-forward) -> MLM head whose decoder is tied to the word embeddings.
The parameter tree keeps HuggingFace's shape (one entry per HF module) so the converter is a
short table; see docs/conversion.md.

Numerics follow HuggingFace exactly: LayerNorm eps from the config (not Flax's 1e-6), exact
erf GELU (not the tanh approximation), RoBERTa positions counted from padding_idx + 1 over
non-padding tokens. Parameters are float32; the compute dtype (float32 or bfloat16) is a
module attribute: in bfloat16 every matmul takes bf16 inputs and accumulates in float32
(`preferred_element_type`), while LayerNorm, softmax statistics and residuals stay float32.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from dlm_jax.models.config import EncoderConfig
from dlm_jax.ops import matmul

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}  # names used by configs/CLI


def _normal(rngs: nnx.Rngs, shape, std: float) -> nnx.Param:
    return nnx.Param(std * jax.random.normal(rngs.params(), shape, jnp.float32))


def activation(name: str):
    if name == "gelu":
        return lambda x: jax.nn.gelu(x, approximate=False)
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: jax.nn.gelu(x, approximate=True)
    return jax.nn.relu


class Dense(nnx.Module):
    """y = x @ kernel + bias; kernel is [in, out] (HF stores the transpose)."""

    def __init__(self, in_features: int, out_features: int, *, std: float, rngs: nnx.Rngs):
        self.kernel = _normal(rngs, (in_features, out_features), std)
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32))

    def __call__(self, x, dtype):
        return matmul(x, self.kernel[...], dtype) + self.bias[...]


class LayerNorm(nnx.Module):
    """LayerNorm in float32 whatever the compute dtype, with the checkpoint's eps."""

    def __init__(self, size: int, eps: float):
        self.scale = nnx.Param(jnp.ones((size,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((size,), jnp.float32))
        self.eps = eps

    def __call__(self, x):
        x = x.astype(jnp.float32)
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]


class Embed(nnx.Module):
    def __init__(self, num: int, size: int, *, std: float, rngs: nnx.Rngs):
        self.embedding = _normal(rngs, (num, size), std)

    def __call__(self, ids):
        return jnp.take(self.embedding[...], ids, axis=0)


class Embeddings(nnx.Module):
    def __init__(self, config: EncoderConfig, *, rngs: nnx.Rngs):
        std = config.initializer_range
        self.word_embeddings = Embed(config.vocab_size, config.hidden_size, std=std, rngs=rngs)
        self.position_embeddings = Embed(
            config.max_position_embeddings, config.hidden_size, std=std, rngs=rngs
        )
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
    """Multi-head self-attention through `jax.nn.dot_product_attention`, then residual + LN."""

    def __init__(self, config: EncoderConfig, *, rngs: nnx.Rngs):
        std = config.initializer_range
        h = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.query = Dense(h, h, std=std, rngs=rngs)
        self.key = Dense(h, h, std=std, rngs=rngs)
        self.value = Dense(h, h, std=std, rngs=rngs)
        self.output = Dense(h, h, std=std, rngs=rngs)
        self.layer_norm = LayerNorm(h, config.layer_norm_eps)

    def __call__(self, x, mask, dtype, implementation):
        batch, length, hidden = x.shape
        heads = lambda y: y.astype(dtype).reshape(batch, length, self.num_heads, -1)
        context = jax.nn.dot_product_attention(
            heads(self.query(x, dtype)),
            heads(self.key(x, dtype)),
            heads(self.value(x, dtype)),
            mask=mask,
            implementation=implementation,
        )
        context = context.reshape(batch, length, hidden)
        return self.layer_norm(x + self.output(context, dtype))


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
        return self.feed_forward(self.attention(x, mask, dtype, implementation), dtype)


class MLMHead(nnx.Module):
    """dense -> GELU -> LayerNorm -> decoder tied to the word embeddings, plus a bias."""

    def __init__(self, config: EncoderConfig, *, rngs: nnx.Rngs):
        std = config.initializer_range
        self.dense = Dense(config.hidden_size, config.hidden_size, std=std, rngs=rngs)
        self.layer_norm = LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.bias = nnx.Param(jnp.zeros((config.vocab_size,), jnp.float32))
        self.act = activation(config.hidden_act)

    def features(self, hidden, dtype):
        """The head before its tied decoder (the sampler decodes these in vocabulary chunks)."""
        return self.layer_norm(self.act(self.dense(hidden, dtype)))

    def __call__(self, hidden, word_embeddings, dtype):
        return matmul(self.features(hidden, dtype), word_embeddings.T, dtype) + self.bias[...]


class Encoder(nnx.Module):
    """BERT/RoBERTa encoder + MLM head: token ids [B, T] -> float32 logits [B, T, vocab].

    dtype: compute dtype (jnp.float32 or jnp.bfloat16); parameters are always float32.
    remat: recompute each block's activations in the backward pass (saves memory in training).
    attention: `implementation` for jax.nn.dot_product_attention (None lets JAX choose; 'cudnn'
    forces the fused GPU kernel, 'xla' the portable one).
    """

    def __init__(
        self,
        config: EncoderConfig,
        *,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        remat: bool = False,
        attention: str | None = None,
    ):
        self.config = config
        self.dtype = dtype
        self.remat = remat
        self.attention = attention
        self.embeddings = Embeddings(config, rngs=rngs)
        self.layers = nnx.List([Layer(config, rngs=rngs) for _ in range(config.num_hidden_layers)])
        self.mlm_head = MLMHead(config, rngs=rngs)

    def default_position_ids(self, input_ids, attention_mask):
        """HF's positions: RoBERTa counts non-padding tokens from padding_idx + 1, BERT counts
        every position from 0."""
        config = self.config
        if config.model_type == "roberta":
            real = (input_ids != config.pad_token_id).astype(jnp.int32)
            return jnp.cumsum(real, axis=1) * real + config.pad_token_id
        return jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)

    def encode(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None):
        """Final hidden states [B, T, hidden] in float32."""
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if position_ids is None:
            position_ids = self.default_position_ids(input_ids, attention_mask)
        x = self.embeddings(input_ids, position_ids, token_type_ids)
        # [B, 1, 1, S]: every query attends to the real (non-padding) keys.
        mask = attention_mask.astype(bool)[:, None, None, :]
        for layer in self.layers:
            if self.remat:
                x = nnx.remat(Layer.__call__, static_argnums=(3, 4))(
                    layer, x, mask, self.dtype, self.attention
                )
            else:
                x = layer(x, mask, self.dtype, self.attention)
        return x

    def decoder(self):
        """The tied vocabulary decoder: word embeddings [V, H] and the head's bias [V]."""
        return self.embeddings.word_embeddings.embedding[...], self.mlm_head.bias[...]

    def logits_from_hidden(self, hidden):
        return self.mlm_head(hidden, self.decoder()[0], self.dtype)

    def head_inputs(self, input_ids, attention_mask=None):
        """(head features [B, T, H], embeddings, bias): what ops.vocab_cross_entropy decodes, so a
        loss over a few tokens never builds the [B, T, V] logits."""
        features = self.mlm_head.features(self.encode(input_ids, attention_mask), self.dtype)
        return (features, *self.decoder())

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None):
        hidden = self.encode(input_ids, attention_mask, token_type_ids, position_ids)
        return self.logits_from_hidden(hidden)
