"""Building blocks every encoder family shares, and what a family must provide on top of them.

Parameters are float32 (for inference in bfloat16 the matrices may be stored in bf16:
params.encoder_with_params); the compute dtype (float32 or bfloat16) is passed to each call: in
bfloat16 every matmul takes bf16 inputs and accumulates in float32 (`ops.matmul`), while
LayerNorm, softmax statistics, embedding rows and residuals stay float32. Numerics follow
HuggingFace exactly: LayerNorm eps from the config (not Flax's 1e-6) and exact erf GELU (not the
tanh approximation).
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from dlm_jax.ops import matmul

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}  # names used by configs/CLI
TRUNCATION = 2.0  # ModernBERT's init draws normals truncated at 2 std (HF's cutoff factor)


def normal(rngs: nnx.Rngs, shape, std: float, *, truncated: bool = False) -> nnx.Param:
    key = rngs.params()
    if truncated:
        return nnx.Param(std * jax.random.truncated_normal(key, -TRUNCATION, TRUNCATION, shape, jnp.float32))
    return nnx.Param(std * jax.random.normal(key, shape, jnp.float32))


def exact_gelu(x):
    return jax.nn.gelu(x, approximate=False)


def tanh_gelu(x):
    return jax.nn.gelu(x, approximate=True)


# Module-level functions, not lambdas: an activation is part of the encoder's graphdef (a static
# jit argument), so a fresh lambda per model would make every loaded copy of a model compile anew.
ACTIVATION_FUNCTIONS = {
    "gelu": exact_gelu,
    "gelu_new": tanh_gelu,
    "gelu_pytorch_tanh": tanh_gelu,
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
}


def activation(name: str):
    return ACTIVATION_FUNCTIONS[name]


class Dense(nnx.Module):
    """y = x @ kernel (+ bias); kernel is [in, out] (HF stores the transpose)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        std: float,
        rngs: nnx.Rngs,
        bias: bool = True,
        truncated: bool = False,
    ):
        self.kernel = normal(rngs, (in_features, out_features), std, truncated=truncated)
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32)) if bias else None

    def __call__(self, x, dtype):
        y = matmul(x, self.kernel[...], dtype)
        return y if self.bias is None else y + self.bias[...]


class LayerNorm(nnx.Module):
    """LayerNorm in float32 whatever the compute dtype, with the checkpoint's eps."""

    def __init__(self, size: int, eps: float, *, bias: bool = True):
        self.scale = nnx.Param(jnp.ones((size,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((size,), jnp.float32)) if bias else None
        self.eps = eps

    def __call__(self, x):
        x = x.astype(jnp.float32)
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...]
        return y if self.bias is None else y + self.bias[...]


class Embed(nnx.Module):
    def __init__(self, num: int, size: int, *, std: float, rngs: nnx.Rngs, truncated: bool = False):
        self.embedding = normal(rngs, (num, size), std, truncated=truncated)

    def __call__(self, ids):
        """Rows in float32, whatever the table is stored in (params.encoder_with_params)."""
        return jnp.take(self.embedding[...], ids, axis=0).astype(jnp.float32)


def attend(q, k, v, mask, dtype, implementation):
    """Softmax attention of queries [B, T, heads, head_dim] over keys and values [B, S, heads,
    head_dim]; mask [B or 1, 1, T or 1, S], True = may attend. -> [B, T, heads * head_dim].

    Through jax.nn.dot_product_attention (fused kernels on GPU/TPU where they exist), except on
    CPU with no implementation named: there `folded_heads_attention` computes the same thing
    faster."""
    q, k, v = q.astype(dtype), k.astype(dtype), v.astype(dtype)
    if implementation is None and jax.default_backend() == "cpu":
        return folded_heads_attention(q, k, v, mask)
    context = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)
    return context.reshape(q.shape[0], q.shape[1], -1)


# What jax.nn.dot_product_attention puts in a masked logit: finite, so that a row with every key
# masked gets a uniform softmax rather than NaNs.
MASKED_LOGIT = -0.7 * float(jnp.finfo(jnp.float32).max)


def folded_heads_attention(q, k, v, mask):
    """jax.nn.dot_product_attention's XLA computation (logits in float32 scaled by 1/sqrt(head
    dim), masked, softmax in float32, probabilities in the inputs' dtype) with the heads folded
    into one batch dimension [B * heads, T, head_dim]. XLA's CPU backend then moves whole
    head_dim rows to lay out the products' operands, where for the library's [B, T, heads, ...]
    einsums it transposes innermost dimensions and runs the probabilities-by-values product in
    float32: a third of a bf16 ModernBERT forward at 128 tokens went there (docs/benchmarks.md).
    In float32 the outputs are bit-identical to jax.nn.dot_product_attention's and the gradients
    equal up to float32 rounding (tests/test_models.py)."""
    batch, length, heads, head_dim = q.shape
    fold = lambda x: x.transpose(0, 2, 1, 3).reshape(batch * heads, x.shape[1], head_dim)
    q, k, v = fold(q), fold(k), fold(v)
    logits = jax.lax.dot_general(q, k, (((2,), (2,)), ((0,), (0,))), preferred_element_type=jnp.float32)
    logits = logits.reshape(batch, heads, length, -1) * jnp.float32(1.0 / math.sqrt(head_dim))
    logits = jnp.where(mask, logits, jnp.float32(MASKED_LOGIT))
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype).reshape(batch * heads, length, -1)
    context = jax.lax.dot_general(probs, v, (((2,), (1,)), ((0,), (0,))), preferred_element_type=jnp.float32)
    context = context.astype(v.dtype).reshape(batch, heads, length, head_dim)
    return context.transpose(0, 2, 1, 3).reshape(batch, length, heads * head_dim)


def splice(cached, fresh, offset):
    """cached [B, L, ...] with each row's entries offset[r] .. offset[r] + W replaced by fresh
    [B, W, ...]: a window's new keys or values among the cached ones of the whole canvas."""
    return jax.vmap(lambda c, f, o: jax.lax.dynamic_update_slice_in_dim(c, f, o, axis=0))(cached, fresh, offset)


def keys_and_values(k, v, cached, dtype):
    """The keys and values a block's queries attend to, and x's own (k, v) in the compute dtype
    (what a cache keeps). cached: None (x is the whole sequence), or (keys, values, offset) of the
    whole canvas with x the window of positions offset .. offset + W of each row."""
    own = (k.astype(dtype), v.astype(dtype))
    if cached is None:
        return own, own
    keys, values, offset = cached
    return (splice(keys, own[0], offset), splice(values, own[1], offset)), own


def position_ids(config, input_ids, attention_mask=None):
    """HuggingFace's positions, counted over real tokens only so that a left-padded row embeds
    like the same row unpadded. RoBERTa (HF's rule): non-padding tokens count from padding_idx +
    1, padding sits at padding_idx. BERT and ModernBERT: every index without an attention mask
    (HF attends to padding then), else real tokens count from 0 and padding keeps its index
    (it is never attended to)."""
    index = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
    if config.model_type == "roberta":
        real = (input_ids != config.pad_token_id).astype(jnp.int32)
        return jnp.cumsum(real, axis=1) * real + config.pad_token_id
    if attention_mask is None:
        return index
    return jnp.where(attention_mask != 0, jnp.cumsum(attention_mask, axis=1) - 1, index)


class MaskedLMEncoder(nnx.Module):
    """What every family provides on top of its own `encode` (token ids -> final hidden states),
    `head_features` (the MLM head before its decoder) and `vocab_decoder` (the vocabulary
    weights [V, H] and bias [V]): logits, and the head's inputs for the fused loss (ops.py).

    For cached sampling a family also provides `encode_with_kv(ids, mask, positions)` (encode,
    also returning every block's keys and values [B, L, heads, head_dim] in the compute dtype)
    and `encode_window(ids, positions, offset, mask, kv)` (hidden states of a window of W
    positions per row starting at offset [B], whose queries attend to the whole canvas: the
    window's keys and values computed afresh, the others taken from kv); its blocks provide
    `with_kv(x, ..., dtype, implementation, cached)` -> (x, (keys, values)).

    Attributes every family sets: config, dtype (compute dtype), remat (recompute each block
    in the backward pass), attention (`implementation` for jax.nn.dot_product_attention: None
    lets JAX choose, and on CPU takes `folded_heads_attention`; 'cudnn' forces the fused GPU
    kernel, 'xla' the portable one).
    """

    def position_ids(self, input_ids, attention_mask=None):
        return position_ids(self.config, input_ids, attention_mask)

    def run_layers(self, x, *layer_args):
        """x through every block; each block is called as block(x, *layer_args, dtype,
        attention); with remat its activations are recomputed in the backward pass."""
        for layer in self.layers:
            call = type(layer).__call__
            if self.remat:
                static = tuple(range(len(layer_args) + 2, len(layer_args) + 4))
                call = nnx.remat(call, static_argnums=static)
            x = call(layer, x, *layer_args, self.dtype, self.attention)
        return x

    def run_layers_kv(self, x, kv, offset, *layer_args):
        """x through every block, each given its cached (keys, values) from `kv` (None: x is the
        whole canvas) and returning its own; -> (x, per-block (keys, values) of x's positions).
        For sampling only: no remat."""
        own = []
        for i, layer in enumerate(self.layers):
            cached = None if kv is None else (*kv[i], offset)
            x, layer_kv = layer.with_kv(x, *layer_args, self.dtype, self.attention, cached)
            own.append(layer_kv)
        return x, tuple(own)

    def logits_from_hidden(self, hidden):
        weights, bias = self.vocab_decoder()
        return matmul(self.head_features(hidden), weights.T, self.dtype) + bias

    def head_inputs(self, input_ids, attention_mask=None):
        """(head features [B, T, H], decoder weights [V, H], bias [V]): what
        ops.vocab_cross_entropy decodes, so a loss over a few tokens never builds the logits."""
        return (self.head_features(self.encode(input_ids, attention_mask)), *self.vocab_decoder())

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None):
        """Token ids [B, T] -> float32 logits [B, T, vocab]."""
        return self.logits_from_hidden(self.encode(input_ids, attention_mask, token_type_ids, position_ids))
