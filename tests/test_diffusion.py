"""dlm_jax.diffusion against NumPy references and exact counts, plus statistical checks (tolerances
of 4-5 standard deviations) where a draw is random by design."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlm_jax import diffusion as d
from dlm_jax import ops

BOS, PAD, EOS, UNK, MASK = 0, 1, 2, 3, 4  # RoBERTa's layout
SPECIALS = (BOS, PAD, EOS, UNK, MASK)
VOCAB = 1000


def corrupt_fn(objective):
    return jax.jit(
        lambda key, ids, eligible: d.corrupt(key, ids, eligible, objective, mask_token_id=MASK, vocab_size=VOCAB)
    )


def token_ce(logits, ids, corruption):
    """ce and correct of given logits through ops.vocab_cross_entropy: the logits are the
    features and the decoder is the identity (exact in float32 at the tests' precision)."""
    vocab = logits.shape[-1]
    _, ce, correct = ops.vocab_cross_entropy(
        jnp.asarray(logits),
        jnp.eye(vocab),
        jnp.zeros(vocab),
        jnp.asarray(ids),
        jnp.asarray(corruption.weights),
        dtype=jnp.float32,
        chunk_size=16,
    )
    return ce, correct


def random_batch(rng, batch, length):
    """Rows of four kinds: packed text with BOS/EOS (and UNK) inside, text then padding,
    BOS + prompt + response + EOS padding, and padding only."""
    ids = rng.integers(5, VOCAB, (batch, length)).astype(np.int32)
    prompt = np.zeros((batch, length), bool)
    for b in range(batch):
        kind = b % 4
        if kind == 0:
            for i in rng.choice(length - 1, 3, replace=False):
                ids[b, i], ids[b, i + 1] = EOS, BOS
            ids[b, rng.integers(length)] = UNK
        elif kind == 1:
            ids[b, 0] = BOS
            ids[b, rng.integers(2, length) :] = PAD
        elif kind == 2:
            p, q = sorted(rng.choice(np.arange(2, length), 2, replace=False))
            ids[b, 0] = BOS
            prompt[b, int(rng.integers(0, 2)) : p] = True  # with or without the BOS
            ids[b, q:] = EOS
        else:
            ids[b] = PAD
    return ids, prompt


def eligible_reference(ids, prompt, prefix_len):
    out = np.zeros(ids.shape, bool)
    for b in range(ids.shape[0]):
        after_prompt = False
        for i in range(ids.shape[1]):
            if prompt[b, i]:
                after_prompt = True
                continue
            if i < prefix_len or ids[b, i] == PAD:
                continue
            out[b, i] = ids[b, i] not in SPECIALS or after_prompt
    return out


def eligible_of(ids, prompt, prefix_len=0):
    return d.eligible_positions(ids, prompt, pad_id=PAD, special_ids=SPECIALS, prefix_len=prefix_len)


def count_reference(ratio, n):
    k = np.floor(np.float32(ratio) * np.float32(n) + np.float32(0.5)).astype(np.int64)
    return np.where(n > 0, np.clip(k, 1, np.maximum(n, 1)), 0)


def runs(row):
    """Lengths of the runs of True in a 1-D bool array."""
    edges = np.diff(np.concatenate([[0], row.astype(np.int8), [0]]))
    return np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)


@pytest.mark.parametrize("prefix_len", [0, 3, 16])
def test_eligible_positions_match_reference(prefix_len):
    rng = np.random.default_rng(prefix_len)
    ids, prompt = random_batch(rng, 16, 48)
    np.testing.assert_array_equal(
        np.asarray(eligible_of(ids, prompt, prefix_len)), eligible_reference(ids, prompt, prefix_len)
    )


def test_prompt_response_eos_padding_is_eligible_and_prompt_never():
    ids = np.array([[BOS, 11, 12, 13, 21, 22, EOS, EOS, EOS, EOS]], np.int32)
    prompt = np.array([[1, 1, 1, 1, 0, 0, 0, 0, 0, 0]], bool)
    eligible = np.asarray(eligible_of(ids, prompt))
    np.testing.assert_array_equal(eligible[0], [0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    # The same EOS in a plain row is a special token: not eligible.
    np.testing.assert_array_equal(
        np.asarray(eligible_of(ids, np.zeros_like(prompt)))[0], [0, 1, 1, 1, 1, 1, 0, 0, 0, 0]
    )
    everything = corrupt_fn(d.ObjectiveConfig(ratios=(1.0,)))(jax.random.key(0), ids, eligible)
    np.testing.assert_array_equal(np.asarray(everything.target_mask), eligible)
    np.testing.assert_array_equal(np.asarray(everything.input_ids)[0], [BOS, 11, 12, 13] + [MASK] * 6)


@pytest.mark.parametrize("name", d.OBJECTIVES)
def test_masks_stay_on_eligible_positions_and_every_row_gets_one(name):
    rng = np.random.default_rng(1)
    objective = d.ObjectiveConfig(name=name, prefix_len=4)
    corrupt = corrupt_fn(objective)
    for trial in range(12):
        ids, prompt = random_batch(rng, 16, 40)
        eligible = np.asarray(eligible_of(ids, prompt, objective.prefix_len))
        c = jax.tree.map(np.asarray, corrupt(jax.random.key(trial), ids, eligible))
        assert not (c.target_mask & ~eligible).any()
        assert not ((c.input_ids != ids) & ~c.target_mask).any()  # only scored tokens change
        np.testing.assert_array_equal(c.target_mask.any(1), eligible.any(1))  # >= 1 per row with any
        assert not (c.weights[~c.target_mask]).any() and (c.weights[c.target_mask] >= 1).all()
        assert not (c.input_ids[:, : objective.prefix_len] != ids[:, : objective.prefix_len]).any()
        assert not (c.target_mask & prompt).any()


@pytest.mark.parametrize("name", ["ratio_set", "span"])
def test_exactly_round_ratio_times_eligible_tokens_are_masked(name):
    rng = np.random.default_rng(2)
    ids, prompt = random_batch(rng, 32, 64)
    eligible = np.asarray(eligible_of(ids, prompt, 2))
    n = eligible.sum(1)
    for ratios in [(0.05, 0.15, 0.7), d.DEFAULT_RATIOS]:
        c = corrupt_fn(d.ObjectiveConfig(name=name, ratios=ratios))(jax.random.key(3), ids, eligible)
        ratio = np.asarray(c.ratio)
        assert set(ratio.tolist()) <= {float(np.float32(r)) for r in ratios}
        np.testing.assert_array_equal(np.asarray(c.target_mask).sum(1), count_reference(ratio, n))
    np.testing.assert_array_equal(np.asarray(c.target_mask)[ratio == 1.0], eligible[ratio == 1.0])


def test_ratios_are_drawn_uniformly_from_the_set():
    ids = np.full((4000, 8), 7, np.int32)
    c = corrupt_fn(d.ObjectiveConfig(ratios=(0.2, 0.5, 0.9)))(jax.random.key(4), ids, np.ones_like(ids, bool))
    counts = np.array([(np.asarray(c.ratio) == np.float32(r)).sum() for r in (0.2, 0.5, 0.9)])
    assert counts.sum() == 4000
    assert np.all(np.abs(counts / 4000 - 1 / 3) < 5 * math.sqrt(2 / 9 / 4000))


def test_elbo_times_are_stratified_and_mask_at_rate_t():
    batch, length, eps = 16, 4096, 1e-3
    ids = np.full((batch, length), 9, np.int32)
    for seed in range(5):
        c = jax.tree.map(
            np.asarray,
            corrupt_fn(d.ObjectiveConfig(name="elbo", eps=eps))(jax.random.key(seed), ids, np.ones_like(ids, bool)),
        )
        t = c.ratio
        assert ((t > eps) & (t <= 1)).all()
        stratum = np.floor((1 - t) / (1 - eps) * batch).astype(int)  # stratum i: (1-eps)(i/B) <= 1-t < ...
        np.testing.assert_array_equal(np.sort(stratum), np.arange(batch))
        rate = c.target_mask.mean(1)
        tolerance = 5 * np.sqrt(t * (1 - t) / length) + 1 / length  # + the forced token
        assert (np.abs(rate - t) <= tolerance).all(), (rate, t)
        np.testing.assert_allclose(c.weights[c.target_mask], np.repeat(1 / t, c.target_mask.sum(1)), rtol=1e-6)


def test_elbo_loss_weights_one_over_t_hand_computed():
    # Row 0: uniform logits over 3 tokens (CE = ln 3), 2 masked of 3 eligible, t = 1/2.
    # Row 1: target logit ln 2 against two zeros (p = 1/2, CE = ln 2), 1 masked of 4 eligible, t = 1/4.
    logits = np.zeros((2, 4, 3), np.float32)
    logits[1, :, 0] = np.log(2.0)
    ids = np.array([[1, 2, 0, 1], [0, 0, 0, 0]], np.int32)
    eligible = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool)
    target = np.array([[1, 0, 1, 0], [0, 0, 1, 0]], bool)
    t = np.array([0.5, 0.25], np.float32)
    corruption = d.Corruption(
        np.where(target, MASK, ids), target, np.where(target, 1 / t[:, None], 0).astype(np.float32), t
    )
    numerator, denominator, metrics = d.loss_terms(
        *token_ce(logits, ids, corruption), eligible, corruption, d.ObjectiveConfig(name="elbo")
    )
    np.testing.assert_allclose(np.asarray(numerator), [2 * math.log(3) / 0.5, math.log(2) / 0.25], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(denominator), [3, 4])
    loss = float(numerator.sum() / denominator.sum())
    assert loss == pytest.approx((4 * math.log(3) + 4 * math.log(2)) / 7, rel=1e-6)
    assert float(metrics["ce"]) == pytest.approx(2 * math.log(3) + math.log(2), rel=1e-6)
    # Uniform logits tie: argmax is id 0, so row 0's target 1 is wrong and its target 0 right;
    # row 1's target 0 is the strict argmax: correct.
    assert float(metrics["correct"]) == 2 and float(metrics["tokens"]) == 3
    # The same terms through corrupt's own mask and t, against NumPy.
    rng = np.random.default_rng(5)
    ids = rng.integers(5, 50, (8, 12)).astype(np.int32)
    eligible = rng.random((8, 12)) < 0.8
    logits = rng.normal(size=(8, 12, 50)).astype(np.float32)
    c = jax.tree.map(np.asarray, corrupt_fn(d.ObjectiveConfig(name="elbo"))(jax.random.key(6), ids, eligible))
    numerator, denominator, _ = d.loss_terms(*token_ce(logits, ids, c), eligible, c, d.ObjectiveConfig(name="elbo"))
    log_z = np.log(np.exp(logits.astype(np.float64)).sum(-1))
    ce = log_z - np.take_along_axis(logits, ids[..., None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(numerator), (ce * c.target_mask / c.ratio[:, None]).sum(1), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(denominator), eligible.sum(1))


def test_unforced_elbo_is_an_unbiased_estimate_of_the_nll():
    # A context-free model: the NLL of each token is known, and E[sum masked CE / t] = sum CE.
    rng = np.random.default_rng(7)
    batch, length, vocab = 8, 32, 20
    ids = rng.integers(0, vocab, (batch, length)).astype(np.int32)
    eligible = rng.random((batch, length)) < 0.9
    logits = jnp.asarray(np.broadcast_to(rng.normal(size=vocab) * 2, (batch, length, vocab)), jnp.float32)
    objective = d.ObjectiveConfig(name="elbo")

    def estimate(key):
        key_t, key_mask = jax.random.split(key)
        t = d.stratified_times(key_t, batch, objective.eps)
        c = d.mask_at_times(key_mask, ids, eligible, t, mask_token_id=0, force_one=False)
        numerator, denominator, _ = d.loss_terms(*token_ce(logits, ids, c), eligible, c, objective)
        return numerator.sum() / denominator.sum()

    estimates = np.asarray(jax.jit(jax.vmap(estimate))(jax.random.split(jax.random.key(8), 2000)))
    log_p = np.asarray(jax.nn.log_softmax(logits[0, 0]))
    truth = -log_p[ids][eligible].mean()
    assert abs(estimates.mean() - truth) < 4 * estimates.std() / math.sqrt(len(estimates))


def test_bert_selects_fifteen_percent_with_80_10_10():
    batch, length = 64, 512
    rng = np.random.default_rng(9)
    ids = rng.integers(5, VOCAB, (batch, length)).astype(np.int32)
    eligible = np.ones_like(ids, bool)
    eligible[:, :5] = False
    c = jax.tree.map(np.asarray, corrupt_fn(d.ObjectiveConfig(name="bert"))(jax.random.key(10), ids, eligible))
    np.testing.assert_array_equal(c.target_mask.sum(1), count_reference(0.15, eligible.sum(1)))
    np.testing.assert_array_equal(c.weights, c.target_mask.astype(np.float32))
    selected = c.target_mask.sum()
    to_mask = (c.input_ids == MASK).sum() / selected
    unchanged = ((c.input_ids == ids) & c.target_mask).sum() / selected
    to_random = ((c.input_ids != ids) & (c.input_ids != MASK)).sum() / selected
    sd = math.sqrt(0.09 / selected)  # of a 10% proportion; the 80% one has sd 0.4/sqrt(n)
    assert abs(to_mask - 0.8) < 5 * math.sqrt(0.16 / selected)
    assert abs(to_random - 0.1 * (1 - 1 / VOCAB)) < 5 * sd  # a random draw may hit the original
    assert abs(unchanged - 0.1 * (1 + 1 / VOCAB)) < 5 * sd


def test_span_masks_are_geometric_runs_with_the_drawn_total():
    batch, length, mean_length, ratio = 32, 512, 3.0, 0.4
    ids = np.full((batch, length), 9, np.int32)
    eligible = np.ones_like(ids, bool)
    objective = d.ObjectiveConfig(name="span", ratios=(ratio,), span_mean_length=mean_length)
    mask = np.asarray(corrupt_fn(objective)(jax.random.key(11), ids, eligible).target_mask)
    np.testing.assert_array_equal(mask.sum(1), count_reference(ratio, length))
    lengths = np.concatenate([runs(row) for row in mask])
    # Geometric(1/3): mean 3, variance 6, P(1) = 1/3 (only each row's last span is cut short).
    assert abs(lengths.mean() - mean_length) < 5 * math.sqrt(6 / len(lengths)) + 0.05
    assert abs((lengths == 1).mean() - 1 / mean_length) < 5 * math.sqrt(2 / 9 / len(lengths))
    # Spans are placed uniformly: each quarter of the row is masked at about the ratio.
    quarters = mask.reshape(batch, 4, -1).mean((0, 2))
    assert np.all(np.abs(quarters - ratio) < 0.05), quarters
    # Mean length 1 gives single tokens apart from merges; ratio 1.0 gives one run of everything.
    singles = np.asarray(
        corrupt_fn(d.ObjectiveConfig(name="span", ratios=(0.2,), span_mean_length=1.0))(
            jax.random.key(12), ids, eligible
        ).target_mask
    )
    assert all((runs(row) == 1).all() for row in singles)
    full = np.asarray(
        corrupt_fn(d.ObjectiveConfig(name="span", ratios=(1.0,)))(jax.random.key(13), ids, eligible).target_mask
    )
    assert full.all()


def test_span_runs_skip_ineligible_positions():
    # Spans are laid over the eligible positions in order: holes (specials, prompt) are never masked.
    rng = np.random.default_rng(14)
    ids, prompt = random_batch(rng, 32, 64)
    eligible = np.asarray(eligible_of(ids, prompt, 3))
    c = corrupt_fn(d.ObjectiveConfig(name="span", span_mean_length=4.0))(jax.random.key(15), ids, eligible)
    mask = np.asarray(c.target_mask)
    assert not (mask & ~eligible).any()
    for row_mask, row_eligible in zip(mask, eligible):
        compressed = row_mask[row_eligible]
        assert len(runs(compressed)) <= max(1, len(compressed) - compressed.sum() + 1)


@pytest.mark.parametrize("name", d.OBJECTIVES)
def test_deterministic_under_a_key(name):
    rng = np.random.default_rng(16)
    ids, prompt = random_batch(rng, 8, 32)
    eligible = eligible_of(ids, prompt, 1)
    corrupt = corrupt_fn(d.ObjectiveConfig(name=name))
    first, again = (corrupt(jax.random.key(17), ids, eligible), corrupt(jax.random.key(17), ids, eligible))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    other = corrupt(jax.random.key(18), ids, eligible)
    assert not np.array_equal(np.asarray(first.target_mask), np.asarray(other.target_mask))


def test_loss_terms_metrics_match_numpy():
    rng = np.random.default_rng(19)
    ids, prompt = random_batch(rng, 24, 20)
    eligible = np.asarray(eligible_of(ids, prompt))
    logits = rng.normal(size=(24, 20, VOCAB)).astype(np.float32)
    logits[np.arange(24)[:, None], np.arange(20), ids] += rng.random((24, 20)) < 0.3  # some correct
    objective = d.ObjectiveConfig()
    c = jax.tree.map(np.asarray, corrupt_fn(objective)(jax.random.key(20), ids, eligible))
    numerator, denominator, metrics = jax.jit(d.loss_terms, static_argnums=4)(
        *token_ce(logits, ids, c), eligible, c, objective
    )

    log_z = np.log(np.exp(logits.astype(np.float64)).sum(-1))
    ce = (log_z - np.take_along_axis(logits, ids[..., None], -1)[..., 0]) * c.target_mask
    correct = (logits.argmax(-1) == ids) & c.target_mask
    np.testing.assert_allclose(np.asarray(numerator), ce.sum(1), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(denominator), c.target_mask.sum(1))
    assert float(metrics["ce"]) == pytest.approx(ce.sum(), rel=1e-5)
    assert float(metrics["correct"]) == correct.sum() and correct.sum() > 0
    assert float(metrics["tokens"]) == c.target_mask.sum()
    bucket = np.rint(c.ratio * 10).astype(int) - 1  # ratios are 0.1 ... 1.0: bucket of r is 10r - 1
    for name, per_row in [
        ("bucket_ce", ce.sum(1)),
        ("bucket_correct", correct.sum(1)),
        ("bucket_tokens", c.target_mask.sum(1)),
    ]:
        np.testing.assert_allclose(np.asarray(metrics[name]), np.bincount(bucket, per_row, d.NUM_BUCKETS), rtol=1e-5)


def test_ratio_buckets_are_right_closed_tenths():
    ratios = [1e-3, 0.1, 0.1001, 0.2, 0.3, 0.3001, 0.7, 0.95, 1.0]
    np.testing.assert_array_equal(np.asarray(d.ratio_bucket(jnp.asarray(ratios))), [0, 0, 1, 1, 2, 3, 6, 9, 9])


def test_nelbo_summary():
    numerators = np.array([300.0, 320.0, 280.0, 350.0, 0.0])
    denominators = np.array([100.0, 100.0, 100.0, 100.0, 0.0])  # the last sequence had no tokens
    summary = d.nelbo_summary(numerators, denominators)
    per_sequence = numerators[:4] / 100
    assert summary["sequences"] == 4
    assert summary["nats_per_token"] == pytest.approx(per_sequence.mean())
    assert summary["bits_per_token"] == pytest.approx(per_sequence.mean() / math.log(2))
    assert summary["ppl_bound"] == pytest.approx(math.exp(per_sequence.mean()))
    assert summary["stderr_nats"] == pytest.approx(per_sequence.std(ddof=1) / 2)


def test_objective_config_validates_and_is_hashable():
    objective = d.ObjectiveConfig(name="span", ratios=[0.5, 1])
    assert objective.ratios == (0.5, 1.0) and hash(objective) == hash(d.ObjectiveConfig(name="span", ratios=(0.5, 1.0)))
    for bad in [
        {"name": "mlm"},
        {"ratios": ()},
        {"ratios": (0.0,)},
        {"ratios": (1.5,)},
        {"eps": 0.0},
        {"bert_mask_prob": 0.0},
        {"span_mean_length": 0.5},
        {"prefix_len": -1},
    ]:
        with pytest.raises(ValueError, match="objective"):
            d.ObjectiveConfig(**bad)
