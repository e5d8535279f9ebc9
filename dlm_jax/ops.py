"""The hot kernels: the matmul and the two vocabulary heads (training's cross-entropy and
the sampler's greedy head), which share one tie rule: the lowest id wins.

matmul: x @ w with inputs in the compute dtype and float32 accumulation, its backward written
by hand as two products: dx = g @ w.T, and dw as one 2-D product over the rows of every
leading axis. Why by hand: in bfloat16, autodiff of a bf16 x bf16 -> f32 product gives backward
products of the float32 cotangent with bf16 operands, which XLA's CPU backend runs on a slow
path (the bf16 train step was slower than the float32 one); here the cotangent is rounded to
bf16 (what torch.autocast does), both backward products are bf16 x bf16 with float32
accumulation, and the residuals are the bf16 operands, half the memory of float32 ones. In
float32, autodiff's dw contracts the cotangent's [B, T] axes, and XLA's CPU backend transposed
that cotangent by fusing the whole chain that produces it (the residual stream's gradient,
summed over the blocks above) into a transposing copy for every such product, recomputing the
chain each time: a third of the quickstart-sized model's float32 step.

vocab_cross_entropy: the tied vocabulary decoder and the cross-entropy of the scored tokens in
one chunked loop that never builds the [tokens, V] logits and skips unscored tokens, with its
gradients computed on the way (see its docstring).

greedy_head: the sampler's greedy proposal (argmax id and its probability) for a few positions,
reducing the logits chunk by chunk of the vocabulary while they are still in cache, never
writing the [positions, V] array.
"""

import functools

import jax
import jax.numpy as jnp

NEG = -1e30  # logit of a banned id: finite, so 0 * (logit - lse) stays 0 in an entropy
VOCAB_CHUNK = 1024  # vocabulary ids per chunk of greedy_head: [chunk, batch x positions] fits in cache


def matmul(x: jax.Array, w: jax.Array, dtype) -> jax.Array:
    """x [..., k] @ w [k, n] with inputs in `dtype` and float32 accumulation and output."""
    return _matmul(x, w, jnp.dtype(dtype))


def _dot(a, b):
    return jnp.matmul(a, b, preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _matmul(x, w, dtype):
    return _dot(x.astype(dtype), w.astype(dtype))


def _matmul_fwd(x, w, dtype):
    xc, wc = x.astype(dtype), w.astype(dtype)
    # The zero-size arrays carry the input dtypes to the backward (residuals must be arrays).
    return _dot(xc, wc), (xc, wc, jnp.zeros((0,), x.dtype), jnp.zeros((0,), w.dtype))


def _matmul_bwd(dtype, residuals, g):
    xc, wc, x_dtype, w_dtype = residuals
    g = g.astype(dtype)
    dx = _dot(g, wc.T).astype(x_dtype.dtype)
    # Rows of every leading axis at once: one 2-D product (XLA's CPU dot rejects the batched
    # bf16 x bf16 -> f32 contraction over several axes).
    dw = _dot(xc.reshape(-1, xc.shape[-1]).T, g.reshape(-1, g.shape[-1])).astype(w_dtype.dtype)
    return dx, dw


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def vocab_cross_entropy(features, embedding, bias, targets, weights, *, dtype, chunk_size: int = 128):
    """The tied vocabulary decoder and cross-entropy in one pass, without the logits array.

    features [..., H] (the MLM head before its decoder), embedding [V, H], bias [V], targets
    [...] int, weights [...] float (0 for tokens the loss does not score). Returns
    (sum(weights * ce), ce [...], correct [...]): ce is each token's cross-entropy in nats and
    correct whether the target is the argmax (lowest id on ties), both 0 where weights == 0.
    Only the first output is differentiable; ce and correct are for metrics.

    Why: the [tokens, V] logits of a training batch are the step's largest tensor (they do not
    fit in cache, so the logsumexp, softmax and argmax passes over them cost more than the
    matmul on CPU, and on accelerators they bound the batch). Here the scored tokens are moved
    to the front and decoded `chunk_size` at a time in a loop that stops after the last scored
    one, so unscored tokens cost nothing (85% of them under the 15% BERT objective, about half
    under ratio_set). The loss is a weighted sum, so its gradient is known in the forward pass
    up to the incoming scalar: each chunk also computes its share of the gradients with respect
    to features, embedding and bias, and the backward pass only scales them.
    """
    shape, hidden = targets.shape, features.shape[-1]
    features, targets, weights = features.reshape(-1, hidden), targets.reshape(-1), weights.reshape(-1)
    total, ce, correct, grads = _decode_scored(features, embedding, bias, targets, weights, dtype, chunk_size)
    return (
        _weighted_sum(total, grads, features, embedding, bias),
        jax.lax.stop_gradient(ce.reshape(shape)),
        jax.lax.stop_gradient(correct.reshape(shape)),
    )


@jax.custom_vjp
def _weighted_sum(total, grads, features, embedding, bias):
    """`total` with the precomputed `grads` = (d features, d embedding, d bias) as its gradient."""
    del grads, features, embedding, bias
    return total


def _weighted_sum_fwd(total, grads, features, embedding, bias):
    del features, embedding, bias
    return total, grads


def _weighted_sum_bwd(grads, g):
    d_features, d_embedding, d_bias = (g * d for d in grads)
    return None, None, d_features, d_embedding, d_bias


_weighted_sum.defvjp(_weighted_sum_fwd, _weighted_sum_bwd)


def _decode_scored(features, embedding, bias, targets, weights, dtype, chunk_size):
    """Loss, per-token ce and correct, and the loss's gradients, over the tokens with weight != 0."""
    features, embedding, bias, weights = jax.lax.stop_gradient((features, embedding, bias, weights))
    n = features.shape[0]
    scored = weights != 0
    count = jnp.sum(scored)
    order = jnp.argsort(~scored, stable=True)  # scored tokens first, in their original order
    padded = -(-n // chunk_size) * chunk_size
    pad = lambda x: jnp.pad(x, [(0, padded - n)] + [(0, 0)] * (x.ndim - 1))
    x_all = pad(features[order]).astype(dtype)
    # [x, 1] transposed: one product per chunk gives d embedding (transposed) and d bias as its
    # last row; a [H + 1, chunk] operand keeps XLA's CPU backend on its fast bf16 matmul path.
    x_ones_t = jnp.concatenate([x_all, jnp.ones_like(x_all[:, :1])], axis=1).T
    t_all, w_all = pad(targets[order].astype(jnp.int32)), pad(weights[order].astype(jnp.float32))
    # Both layouts of the decoder, made once: [V, H] for d features, [H, V] for the logits, so
    # no product in the loop transposes a [*, V] operand.
    decoder, decoder_t = embedding.astype(dtype), embedding.T.astype(dtype)
    rows = jnp.arange(chunk_size)

    def body(carry):
        i, total, ce, correct, d_x, d_decoder_bias = carry
        start = i * chunk_size
        x = jax.lax.dynamic_slice_in_dim(x_all, start, chunk_size)
        t = jax.lax.dynamic_slice_in_dim(t_all, start, chunk_size)
        w = jax.lax.dynamic_slice_in_dim(w_all, start, chunk_size)
        # The barrier keeps the max reduction out of the matmul's fusion (slower on CPU).
        logits = jax.lax.optimization_barrier(_dot(x, decoder_t)) + bias
        top = logits.max(-1)
        exp = jnp.exp(logits - top[:, None])
        norm = exp.sum(-1)
        target_logit = logits[rows, t]
        token_ce = jnp.where(w != 0, top + jnp.log(norm) - target_logit, 0.0)
        token_correct = (w != 0) & _is_first_argmax(logits, exp, top, target_logit, t)
        # d(sum w * ce) / d logits = w * (softmax - onehot(target))
        d_logits = (exp * (w / norm)[:, None]).at[rows, t].add(-w).astype(dtype)
        put = lambda buffer, values: jax.lax.dynamic_update_slice_in_dim(buffer, values, start, 0)
        return (
            i + 1,
            total + jnp.sum(w * token_ce),
            put(ce, token_ce),
            put(correct, token_correct),
            put(d_x, _dot(d_logits, decoder)),
            d_decoder_bias + _dot(_transposed_operand(x_ones_t, start, chunk_size), d_logits),
        )

    # zeros_like keeps the inputs' type, including shard_map's per-device variance.
    init = (
        jnp.zeros((), jnp.int32),
        jnp.zeros_like(w_all[0]),
        jnp.zeros_like(w_all),
        jnp.zeros_like(w_all, bool),
        jnp.zeros_like(x_all, jnp.float32),
        jnp.zeros_like(x_ones_t[:, :1] * bias, jnp.float32),
    )
    _, total, ce, correct, d_x, d_decoder_bias = jax.lax.while_loop(
        lambda carry: carry[0] * chunk_size < count, body, init
    )
    # Back to the original token order.
    restore = lambda sorted_values: jnp.zeros_like(sorted_values[:n]).at[order].set(sorted_values[:n])
    d_embedding, d_bias = d_decoder_bias[:-1].T, d_decoder_bias[-1]
    grads = (restore(d_x).astype(features.dtype), d_embedding.astype(embedding.dtype), d_bias.astype(bias.dtype))
    return total, restore(ce), restore(correct), grads


def lowest_id_at_max(logits, top, axis):
    """The tie rule of both vocabulary heads: the lowest index along `axis` whose logit equals
    `top` (the maximum along that axis), as np.argmax picks."""
    ids = jax.lax.broadcasted_iota(jnp.int32, logits.shape, axis % logits.ndim)
    return jnp.min(jnp.where(logits == jnp.expand_dims(top, axis), ids, logits.shape[axis]), axis=axis)


def _is_first_argmax(logits, exp, top, target_logit, targets):
    """argmax(logits) == targets, the lowest id winning ties, without argmax's slow reduction
    in the common case: a target at the maximum is the argmax unless the maximum is tied.
    exp = exp(logits - top) is 1 at the maximum (and rounds to 1 for near-ties, which only sends
    more rows down the exact path)."""
    at_max = target_logit >= top
    tied = jnp.sum(jnp.where(exp >= 1.0, 1.0, 0.0), -1) > 1.5
    return jax.lax.cond(
        jnp.any(at_max & tied),
        lambda: at_max & (~tied | (lowest_id_at_max(logits, top, -1) == targets)),
        lambda: at_max,
    )


def _transposed_operand(x_t, start, size):
    """Columns start:start + size of x_t as a materialised row-major array. XLA folds a
    transpose into the dot's dimension numbers when it can (here: when the slice is the whole
    array), and its CPU backend has no bf16 x bf16 -> f32 kernel for a contraction over the
    left operand's first axis ("Unsupported element type for DotThunk")."""
    return jax.lax.optimization_barrier(jax.lax.dynamic_slice_in_dim(x_t, start, size, 1))


def vocab_chunks(embedding, bias, dtype, chunk: int = VOCAB_CHUNK, banned_ids=()):
    """The decoder as [n, chunk, H] weights in `dtype` and [n, chunk] float32 bias for greedy_head,
    with banned ids and the padding past the vocabulary at NEG (so they are never the argmax and
    add exactly 0 to the sum of exponentials). Made once, outside any loop over steps."""
    weights, bias = embedding.astype(dtype), bias.astype(jnp.float32)
    if banned_ids:
        bias = bias.at[jnp.asarray(banned_ids)].set(NEG)
    pad = -len(bias) % chunk
    weights = jnp.pad(weights, ((0, pad), (0, 0))).reshape(-1, chunk, weights.shape[1])
    return weights, jnp.pad(bias, (0, pad), constant_values=NEG).reshape(-1, chunk)


def greedy_head(features, chunks, combine=None):
    """Greedy proposal (argmax id, lowest on ties) and its probability 1 / sum(exp(l - max)) for
    features [B, K, H], without the [B, K, V] logits: a scan over the vocabulary chunks of
    `vocab_chunks` keeps a running max, argmax and rescaled sum of exponentials. Each chunk's
    logits are vocabulary-major [chunk, B, K], so the reductions run over the leading axis, which
    XLA's CPU backend vectorises (about 3x faster there than logits followed by reductions).
    combine: applied to each chunk's logits first, [chunk, B, K] -> [chunk, B', K] (the sampler's
    classifier-free guidance merges the two halves of the rows)."""
    weights, bias = chunks
    chunk = weights.shape[1]
    x = features.astype(weights.dtype)
    combine = combine or (lambda logits: logits)

    def one_chunk(carry, chunk_in):
        top, arg, total = carry
        w, b, first_id = chunk_in
        logits = combine(jnp.einsum("ch,bkh->cbk", w, x, preferred_element_type=jnp.float32) + b[:, None, None])
        chunk_top = jnp.max(logits, axis=0)
        chunk_arg = first_id + lowest_id_at_max(logits, chunk_top, 0)
        new_top = jnp.maximum(top, chunk_top)
        total = total * jnp.exp(top - new_top) + jnp.sum(jnp.exp(logits - new_top), axis=0)
        arg = jnp.where(chunk_top > top, chunk_arg, arg)  # a tie keeps the earlier, lower id
        return (new_top, arg, total), None

    shape = jax.eval_shape(combine, jax.ShapeDtypeStruct((chunk, *x.shape[:2]), jnp.float32)).shape[1:]
    init = (jnp.full(shape, -jnp.inf), jnp.zeros(shape, jnp.int32), jnp.zeros(shape))
    first_ids = chunk * jnp.arange(weights.shape[0], dtype=jnp.int32)
    (_, arg, total), _ = jax.lax.scan(one_chunk, init, (weights, bias, first_ids))
    return arg, 1.0 / total
