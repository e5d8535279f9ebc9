"""Cached sampling: the encoders' key/value API against their full forward, and the cached
sampler (prefix and dual caches, every strategy, guidance, padding, early stop) against the
plain NumPy loop in sampler_reference.py and against the uncached sampler."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sampler_reference import reference_generate
from test_sampling import EOS, MASK, PROMPTS, tiny_model

from dlm_jax import sampling
from dlm_jax.errors import UserError
from dlm_jax.models import EncoderConfig
from dlm_jax.models.params import new_encoder

PLAIN = [[0, 5, 6, 7, 8], [0, 9, 10, 11], [0, 12]]  # left-padded, no masks in the prompts


def context_model(model_type="roberta", seed=0):
    """A tiny random encoder whose attention is scaled up, so that what a position sees of the
    others changes its prediction: a cache's stale keys and values then change tokens."""
    if model_type == "modernbert":
        config = EncoderConfig(
            model_type="modernbert",
            vocab_size=96,
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=2,
            intermediate_size=48,
            max_position_embeddings=64,
            local_attention=8,
            pad_token_id=1,
            mask_token_id=MASK,
            bos_token_id=0,
            eos_token_id=EOS,
            layer_norm_eps=1e-5,
        )  # layers: global, sliding (a query sees 4 keys each side), sliding
        encoder = new_encoder(config, seed=seed)
        embedding = encoder.embeddings.tok_embeddings.embedding
        embedding[...] = embedding[...] * 25
        model = types.SimpleNamespace(config=config, encoder=encoder, tokenizer=None)
        for layer in encoder.layers:
            layer.attn.wo.kernel[...] = layer.attn.wo.kernel[...] * 10
        return model
    model = tiny_model(model_type, seed=seed)
    for layer in model.encoder.layers:
        for dense in (layer.attention.value, layer.attention.output):
            dense.kernel[...] = dense.kernel[...] * 10
    return model


@pytest.mark.parametrize("model_type", ["roberta", "bert", "modernbert"])
def test_window_over_a_fresh_cache_equals_the_full_forward(model_type):
    """A window of each row (at different offsets, padded rows included) attending to the cached
    keys and values of the same canvas gives the full forward's hidden states there: ModernBERT's
    cached keys carry their rotation and its sliding window compares canvas indices."""
    encoder = context_model(model_type).encoder
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 90, (3, 20))
    mask = np.ones_like(ids)
    mask[1, :5] = mask[2, :9] = 0  # left padding
    ids = jnp.asarray(np.where(mask == 1, ids, encoder.config.pad_token_id), jnp.int32)
    mask = jnp.asarray(mask, jnp.int32)
    positions = encoder.position_ids(ids, mask)
    full = encoder.encode(ids, mask, position_ids=positions)
    hidden, kv = encoder.encode_with_kv(ids, mask, positions)
    np.testing.assert_array_equal(hidden, full)
    assert len(kv) == encoder.config.num_hidden_layers and kv[0][0].shape == (3, 20, 2, 16)

    offset = jnp.asarray([0, 7, 14], jnp.int32)
    index = offset[:, None] + jnp.arange(6)
    take = lambda a: jnp.take_along_axis(a, index, axis=1)
    window = encoder.encode_window(take(ids), take(positions), offset, mask, kv)
    np.testing.assert_allclose(window, jnp.take_along_axis(full, index[..., None], axis=1), atol=2e-5, rtol=2e-5)
    # The positions outside the window are read from the cache: another canvas's cache changes it.
    _, other_kv = encoder.encode_with_kv(jnp.where(mask == 1, (ids + 7) % 90 + 3, ids), mask, positions)
    stale = encoder.encode_window(take(ids), take(positions), offset, mask, other_kv)
    assert float(jnp.abs(stale - window).max()) > 1e-2


CACHED = {  # each a different path through the cached loop
    "dual": dict(cache="dual", block_length=4),
    "dual_refresh_2_cfg_sampled": dict(cache="dual", block_length=8, cfg_scale=1.5, temperature=1.0, refresh_every=2),
    # prefix: a window per block (the block and all after it); random_remask re-predicts the block
    "prefix_random_remask": dict(cache="prefix", block_length=4, remasking="random_remask", schedule="linear"),
    # rows in different blocks, each with its own window
    "prefix_factor": dict(cache="prefix", block_length=4, remasking="factor", factor=2.0),
    # masks in a prompt: a region holding them is wider than a window (those steps refresh)
    "dual_threshold_infill": dict(
        cache="dual", block_length=4, remasking="threshold", confidence_threshold=0.5, temperature=1.0, prompts=PROMPTS
    ),
}


@pytest.fixture(scope="module")
def model():
    return context_model()


@pytest.mark.parametrize("name", CACHED)
def test_cached_sampler_equals_numpy_reference(model, name):
    kwargs = dict(gen_length=16, steps=8, seed=3, **CACHED[name])
    prompts = kwargs.pop("prompts", PLAIN)
    out = sampling.generate(model, prompts, **kwargs)
    np.testing.assert_array_equal(out, reference_generate(model, prompts, **kwargs))
    width = max(map(len, prompts))
    assert not (out[:, width:] == MASK).any()


def test_modernbert_cached_sampler_equals_numpy_reference():
    model = context_model("modernbert")
    kwargs = dict(gen_length=16, steps=8, block_length=4, cache="dual", temperature=1.0, seed=1)
    out = sampling.generate(model, PLAIN, **kwargs)
    np.testing.assert_array_equal(out, reference_generate(model, PLAIN, **kwargs))


@pytest.mark.parametrize(
    "cache,kwargs",
    [
        ("prefix", dict(block_length=4, prompts=PROMPTS)),
        ("dual", dict(block_length=4, remasking="threshold", confidence_threshold=0.5, temperature=1.0, cfg_scale=1.5)),
    ],
)
def test_refresh_every_step_equals_uncached(model, cache, kwargs):
    """refresh_every=1 recomputes the whole canvas every step: exactly the uncached tokens,
    while refreshing only at block starts does change some on this context-heavy model."""
    kwargs = dict(gen_length=16, steps=8, seed=2, **kwargs)
    prompts = kwargs.pop("prompts", PLAIN)
    uncached = sampling.generate(model, prompts, **kwargs)
    np.testing.assert_array_equal(sampling.generate(model, prompts, cache=cache, refresh_every=1, **kwargs), uncached)
    assert (sampling.generate(model, prompts, cache=cache, **kwargs) != uncached).any()


def test_cached_program_compiles_once_and_shards(model):
    """New prompts, a new seed and a new refresh_every reuse the compiled program, with no
    implicit transfer; over 8 devices it gives the single-device tokens."""
    kwargs = dict(gen_length=16, steps=8, block_length=4, cache="dual", temperature=1.0)
    single = sampling.generate(model, PLAIN, seed=0, **kwargs)
    compiled = sampling._program._cache_size()
    with jax.transfer_guard("disallow"):
        sampling.generate(model, [[0, 20, 21, 22, 23], [0, 24, 25, 26], [0, 27]], seed=1, **kwargs)
        sampling.generate(model, PLAIN, seed=2, refresh_every=2, **kwargs)
    assert sampling._program._cache_size() == compiled
    mesh = jax.make_mesh((8,), ("batch",), axis_types=(jax.sharding.AxisType.Auto,))
    np.testing.assert_array_equal(sampling.generate(model, PLAIN, seed=0, mesh=mesh, **kwargs), single)


def eos_model():
    """The context model with EOS made likely, so rows end within the canvas."""
    model = context_model()
    bias = model.encoder.mlm_head.bias
    bias[...] = bias[...].at[EOS].add(4.0)
    return model


@pytest.mark.parametrize("kwargs", [dict(), dict(cache="dual", remasking="factor")])
def test_stop_at_eos(kwargs):
    """Rows stop at their first EOS once everything before it is decided: their other masks
    become EOS and the loop ends early, with the NumPy reference's tokens."""
    model = eos_model()
    kwargs = dict(gen_length=16, steps=16, block_length=4, stop_at_eos=True, **kwargs)
    out, history = sampling.generate(model, PLAIN, return_history=True, **kwargs)
    np.testing.assert_array_equal(out, reference_generate(model, PLAIN, **kwargs))
    width = max(map(len, PLAIN))
    for r, row in enumerate(out[:, width:]):
        # The first canvas whose text has ended (an EOS with no mask before it): the row is done
        # there, and its masks then became EOS while every committed token stayed.
        ended = lambda gen: EOS in gen and MASK not in gen[: list(gen).index(EOS)]
        done = next(h[r, width:] for h in history if ended(h[r, width:]))
        np.testing.assert_array_equal(row, np.where(done == MASK, EOS, done))
    masks = [(h == MASK).sum() for h in history]
    assert masks[-1] == 0 and masks.index(0) < len(masks) - 1  # finished before the last step
    np.testing.assert_array_equal(history[-1], out)


def test_dream_names(model):
    kwargs = dict(gen_length=16, steps=8, block_length=8)
    np.testing.assert_array_equal(
        sampling.generate(model, PLAIN, remasking="maskgit_plus", **kwargs),
        sampling.generate(model, PLAIN, remasking="low_confidence", **kwargs),
    )
    drawn = [sampling.generate(model, PLAIN, alg_temp=1.0, seed=s, **kwargs) for s in (0, 1)]
    assert (drawn[0] != drawn[1]).any()  # alg_temp draws the positions
    np.testing.assert_array_equal(drawn[0], reference_generate(model, PLAIN, alg_temp=1.0, seed=0, **kwargs))


BAD = [
    (dict(cache="triple"), "unknown cache"),
    (dict(refresh_every=2), "refresh_every applies"),
    (dict(cache="dual", refresh_every=0), "refresh_every must be a positive"),
    (dict(factor=1.0), "factor only applies"),
    (dict(remasking="factor", factor=0.0), "factor must be > 0"),
    (dict(remasking="threshold", alg_temp=0.5), "alg_temp draws"),
    (dict(stop_at_eos=True, forbid_eos=True), "drop one of them"),
    (dict(stop_at_eos=True, remasking="random_remask"), "random_remask"),
]


@pytest.mark.parametrize("change,message", BAD)
def test_bad_input_before_compiling(model, change, message):
    compiled = sampling._program._cache_size()
    with pytest.raises(UserError, match=message):
        sampling.generate(model, PLAIN, **{**dict(gen_length=16, steps=8), **change})
    assert sampling._program._cache_size() == compiled
