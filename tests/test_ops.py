"""dlm_jax.ops: the hand-differentiated kernels against plain JAX autodiff of the same math."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlm_jax import ops


def reference_loss(features, embedding, bias, targets, weights):
    """The obvious version: full logits, log-softmax, autodiff."""
    logits = features @ embedding.T + bias
    ce = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]
    ce = jnp.where(weights != 0, ce, 0.0)
    correct = (weights != 0) & (jnp.argmax(logits, -1) == targets)
    return jnp.sum(weights * ce), (ce, correct)


def problem(rng, shape, hidden=24, vocab=301, scored_fraction=0.4):
    features = jnp.asarray(rng.normal(size=shape + (hidden,)), jnp.float32)
    embedding = jnp.asarray(rng.normal(size=(vocab, hidden)) * 0.5, jnp.float32)
    bias = jnp.asarray(rng.normal(size=(vocab,)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, vocab, shape), jnp.int32)
    scored = rng.random(shape) < scored_fraction
    weights = jnp.asarray(np.where(scored, 0.5 + rng.random(shape) * 4, 0.0), jnp.float32)  # 1/t-like
    return features, embedding, bias, targets, weights


@pytest.mark.parametrize(
    "shape, chunk, fraction",
    [
        ((4, 37), 16, 0.4),  # tokens not a multiple of the chunk
        ((3, 20), 64, 1.0),  # every token scored, one partial chunk
        ((2, 50), 8, 0.05),  # a few scored tokens: most of the loop is skipped
        ((2, 10), 4, 0.0),  # nothing scored: zero loss, zero gradients
    ],
)
def test_vocab_cross_entropy_equals_autodiff_of_the_logits(shape, chunk, fraction):
    args = problem(np.random.default_rng(0), shape, scored_fraction=fraction)
    targets, weights = args[3], args[4]
    (want, (want_ce, want_correct)), want_grads = jax.value_and_grad(
        lambda f, e, b: reference_loss(f, e, b, targets, weights), (0, 1, 2), has_aux=True
    )(*args[:3])

    def ours(f, e, b):
        total, ce, correct = ops.vocab_cross_entropy(f, e, b, targets, weights, dtype=jnp.float32, chunk_size=chunk)
        return total, (ce, correct)

    (got, (ce, correct)), grads = jax.jit(jax.value_and_grad(ours, (0, 1, 2), has_aux=True))(*args[:3])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ce, want_ce, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(correct, want_correct)
    for g, w in zip(grads, want_grads):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    if fraction == 0.0:
        assert float(got) == 0.0 and all(float(jnp.abs(g).max()) == 0.0 for g in grads)


def test_correct_breaks_ties_towards_the_lowest_id():
    # Uniform logits: every id ties; only target 0 is the argmax (as jnp.argmax says).
    vocab = 7
    features = jnp.zeros((1, vocab, 3), jnp.float32)
    targets = jnp.arange(vocab, dtype=jnp.int32)[None]
    weights = jnp.ones((1, vocab), jnp.float32)
    _, ce, correct = ops.vocab_cross_entropy(
        features, jnp.ones((vocab, 3)), jnp.zeros(vocab), targets, weights, dtype=jnp.float32, chunk_size=4
    )
    np.testing.assert_array_equal(np.asarray(correct[0]), np.arange(vocab) == 0)
    np.testing.assert_allclose(ce, np.full((1, vocab), np.log(vocab)), rtol=1e-6)


def test_vocab_cross_entropy_bf16_is_close_to_float32():
    args = problem(np.random.default_rng(1), (4, 33))
    targets, weights = args[3], args[4]
    loss = lambda dtype: jax.value_and_grad(
        lambda f, e, b: ops.vocab_cross_entropy(f, e, b, targets, weights, dtype=dtype, chunk_size=32)[0], (0, 1, 2)
    )(*args[:3])
    (low, low_grads), (high, high_grads) = loss(jnp.bfloat16), loss(jnp.float32)
    np.testing.assert_allclose(low, high, rtol=2e-2)
    for g, w in zip(low_grads, high_grads):
        scale = float(jnp.abs(w).max())
        assert float(jnp.abs(g - w).max()) <= 3e-2 * scale


def matmul_operands(seed):
    """(x [3, 5, 16], w [16, 8], a cotangent of x @ w [3, 5, 8]), float32."""
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.normal(size=shape), jnp.float32) for shape in ((3, 5, 16), (16, 8), (3, 5, 8)))


def test_bf16_matmul_gradients_are_bf16_products_with_float32_accumulation():
    x, w, cotangent = matmul_operands(2)
    out, vjp = jax.vjp(lambda x, w: ops.matmul(x, w, jnp.bfloat16), x, w)
    dx, dw = vjp(cotangent)
    assert out.dtype == dx.dtype == dw.dtype == jnp.float32
    # The same products on bf16-rounded operands, in float64.
    r = lambda a: np.asarray(a.astype(jnp.bfloat16).astype(jnp.float32), np.float64)
    np.testing.assert_allclose(out, r(x) @ r(w), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, r(cotangent) @ r(w).T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, np.einsum("bti,bto->io", r(x), r(cotangent)), rtol=1e-5, atol=1e-5)


def test_float32_matmul_gradients_equal_autodiff():
    x, w, cotangent = matmul_operands(3)
    out, vjp = jax.vjp(lambda x, w: ops.matmul(x, w, jnp.float32), x, w)
    want_out, want_vjp = jax.vjp(jnp.matmul, x, w)
    np.testing.assert_array_equal(out, want_out)
    for got, want in zip(vjp(cotangent), want_vjp(cotangent)):
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    # And under jit, where XLA chooses the layouts.
    grads = jax.jit(jax.grad(lambda x, w: jnp.sum(ops.matmul(x, w, jnp.float32) * cotangent), (0, 1)))(x, w)
    for got, want in zip(grads, want_vjp(cotangent)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("chunk", [16, 23])  # 61 ids: 4 whole chunks, or 3 with padding
def test_greedy_head_equals_argmax_of_the_logits(chunk):
    """The chunked greedy head against argmax / softmax of the whole logits, with exact ties
    within and across chunks (twin ids go to the lower one, as in vocab_cross_entropy) and
    banned ids never chosen."""
    rng = np.random.default_rng(3)
    vocab, hidden = 61, 8
    twins = np.arange(vocab)
    twins[30:] = np.arange(vocab - 30) // 2 * 2  # ids 30.. repeat even ids below 31
    embedding = jnp.asarray(rng.normal(size=(vocab, hidden))[twins], jnp.float32)
    bias = jnp.asarray(rng.normal(size=(vocab,))[twins], jnp.float32)
    features = jnp.asarray(rng.normal(size=(4, 5, hidden)), jnp.float32)
    banned = (0, 7)
    logits = np.asarray(features @ embedding.T + bias, np.float64)
    logits[..., banned] = -np.inf
    chunks = ops.vocab_chunks(embedding, bias, jnp.float32, chunk, banned)
    arg, probability = jax.jit(ops.greedy_head)(features, chunks)
    np.testing.assert_array_equal(arg, logits.argmax(-1))
    assert (np.asarray(arg) < 31).all() and not np.isin(arg, banned).any()
    softmax = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(probability, (softmax / softmax.sum(-1, keepdims=True)).max(-1), rtol=1e-5)
    # combine: applied to each chunk's [chunk, B, K] logits, here the mean of row pairs
    pairs = lambda chunk_logits: (chunk_logits[:, 0::2] + chunk_logits[:, 1::2]) / 2
    arg, _ = ops.greedy_head(features, chunks, pairs)
    np.testing.assert_array_equal(arg, ((logits[0::2] + logits[1::2]) / 2).argmax(-1))


def test_both_heads_share_the_tie_rule():
    logits = jnp.asarray([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0]])
    np.testing.assert_array_equal(ops.lowest_id_at_max(logits, logits.max(-1), -1), [1, 0])
    np.testing.assert_array_equal(ops.lowest_id_at_max(logits.T, logits.max(-1), 0), [1, 0])
