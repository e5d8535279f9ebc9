"""Masked diffusion for text: which tokens may be masked, how each objective corrupts a batch,
how the loss is weighted, and the NELBO. Shared by training (corrupt + loss_terms inside the
jitted step) and evaluation (the NELBO estimate, accuracy at a fixed mask ratio).

Every draw is made on uniform noise with static shapes: "mask k tokens" ranks the noise of the
eligible positions, "mask with probability t" thresholds it, so one jitted function serves any
batch. See docs/diffusion.md for the formulas.

Objectives (`ObjectiveConfig.name`):
  ratio_set  one ratio r per row from `ratios`; exactly round(r * n_eligible) tokens masked;
             plain cross-entropy over the masked tokens (the RoBERTa-diffusion recipe).
  elbo       MDLM/LLaDA: t stratified over the batch in (eps, 1]; each eligible token masked
             with probability t; cross-entropy weighted by 1/t and normalised by the number of
             eligible tokens: an upper bound on the NLL in nats per token.
  bert       15% of the eligible tokens selected; 80% of those become the mask token, 10% a
             random token, 10% stay; all selected tokens are scored.
  span       SpanBERT-style: one ratio r per row from `ratios`, exactly round(r * n_eligible)
             tokens masked in contiguous spans of geometric length (mean `span_mean_length`).
"""

import math
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

OBJECTIVES = ("ratio_set", "elbo", "bert", "span")
DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
NUM_BUCKETS = 10  # metrics per mask-ratio bucket: (0, 0.1], (0.1, 0.2], ..., (0.9, 1.0]
BERT_MASK, BERT_RANDOM = 0.8, 0.1  # of the selected tokens; the remaining 10% stay unchanged


@dataclass(frozen=True)
class ObjectiveConfig:
    name: str = "ratio_set"
    ratios: tuple[float, ...] = DEFAULT_RATIOS  # ratio_set and span: one drawn per row
    eps: float = 1e-3  # elbo: t ~ U(eps, 1]
    bert_mask_prob: float = 0.15
    span_mean_length: float = 3.0
    prefix_len: int = 0  # the first prefix_len tokens are never masked

    def __post_init__(self):
        # Lists from JSON/CLI become a tuple so the config stays hashable (a static jit argument).
        object.__setattr__(self, "ratios", tuple(float(r) for r in self.ratios))
        problem = None
        if self.name not in OBJECTIVES:
            problem = f"unknown objective {self.name!r}; choose one of {', '.join(OBJECTIVES)}"
        elif not self.ratios or not all(0.0 < r <= 1.0 for r in self.ratios):
            problem = f"ratios {self.ratios} must be a non-empty list of numbers in (0, 1]"
        elif not 0.0 < self.eps < 1.0:
            problem = f"eps {self.eps} must lie in (0, 1)"
        elif not 0.0 < self.bert_mask_prob <= 1.0:
            problem = f"bert_mask_prob {self.bert_mask_prob} must lie in (0, 1]"
        elif not self.span_mean_length >= 1.0:
            problem = f"span_mean_length {self.span_mean_length} must be >= 1"
        elif self.prefix_len < 0:
            problem = f"prefix_len {self.prefix_len} must be >= 0"
        if problem:
            raise ValueError(f"objective: {problem}")


class Corruption(NamedTuple):
    input_ids: jax.Array  # [B, L] int32, the corrupted input the model sees
    target_mask: jax.Array  # [B, L] bool, positions scored by the loss
    weights: jax.Array  # [B, L] float32, weight of each scored token (1, or 1/t for elbo)
    ratio: jax.Array  # [B] float32, the row's mask ratio (t for elbo)


def eligible_positions(input_ids, prompt_mask, *, pad_id, special_ids, prefix_len) -> jax.Array:
    """bool [B, L]: the positions that may be masked.

    Never padding, special tokens, the first prefix_len positions or prompt tokens. In a
    prompt/response row (one with prompt tokens), the special tokens of the response other than
    padding ARE eligible: its closing EOS and the EOS padding after it, so the model learns
    where the response ends. The response is what follows the first prompt token and is not
    prompt.
    """
    input_ids = jnp.asarray(input_ids)
    prompt_mask = jnp.asarray(prompt_mask, bool)
    is_pad = input_ids == pad_id
    is_special = jnp.isin(input_ids, jnp.asarray(np.asarray(tuple(special_ids), np.int32)))
    after_prefix = jnp.arange(input_ids.shape[-1]) >= prefix_len
    in_response = ~prompt_mask & (jnp.cumsum(prompt_mask, axis=-1) > 0)
    return after_prefix & ~prompt_mask & ~is_pad & (~is_special | in_response)


def mask_count(ratio, n_eligible) -> jax.Array:
    """round(ratio * n) (halves up, in float32), at least 1 and at most n; 0 when n is 0."""
    n = jnp.asarray(n_eligible, jnp.int32)
    k = jnp.floor(jnp.asarray(ratio, jnp.float32) * n + 0.5).astype(jnp.int32)
    return jnp.where(n > 0, jnp.clip(k, 1, n), 0)


def _mask_lowest(noise, eligible, count):
    """Mask, in each row, the `count` eligible positions with the lowest noise."""
    score = jnp.where(eligible, noise, jnp.inf)
    rank = jnp.argsort(jnp.argsort(score, axis=-1), axis=-1)
    return rank < count[:, None]


def stratified_times(key, batch_size: int, eps: float) -> jax.Array:
    """t_i = 1 - (1 - eps) * frac(u + i / B): one t in each of B equal strata of (eps, 1].

    Stratifying lowers the variance of the batch's ELBO estimate without biasing it (MDLM, MD4).
    """
    u = jax.random.uniform(key, ())
    offsets = jnp.arange(batch_size, dtype=jnp.float32) / batch_size
    return 1.0 - (1.0 - eps) * jnp.mod(u + offsets, 1.0)


def mask_at_times(key, input_ids, eligible, t, *, mask_token_id, force_one=True) -> Corruption:
    """The elbo corruption at given per-row times t [B]: each eligible token masked with
    probability t and weighted 1/t.

    force_one masks the eligible token with the lowest noise in a row whose draw masked none
    (training wants a gradient from every row). That biases the NELBO upward slightly at small
    t, so the NELBO estimate for evaluation passes force_one=False.
    """
    noise = jax.random.uniform(key, input_ids.shape)
    masked = eligible & (noise < t[:, None])
    if force_one:
        lowest = jnp.argmin(jnp.where(eligible, noise, jnp.inf), axis=-1)
        none_yet = ~masked.any(-1) & eligible.any(-1)
        masked |= jax.nn.one_hot(lowest, input_ids.shape[-1], dtype=bool) & none_yet[:, None]
    weights = jnp.where(masked, 1.0 / t[:, None], 0.0).astype(jnp.float32)
    return Corruption(jnp.where(masked, mask_token_id, input_ids), masked, weights, t)


def _geometric_lengths(key, shape, mean_length):
    """Span lengths on {1, 2, ...} with P(l) = p (1 - p)^(l - 1), p = 1 / mean_length."""
    u = jax.random.uniform(key, shape, minval=jnp.finfo(jnp.float32).tiny, maxval=1.0)
    log_continue = math.log1p(-1.0 / mean_length) if mean_length > 1.0 else -math.inf
    return 1 + jnp.floor(jnp.log(u) / log_continue).astype(jnp.int32)


def _span_mask_row(key, eligible, ratio, mean_length):
    """One row of the span objective, built on the row's n eligible positions in order.

    Draw geometric lengths until they reach k = mask_count(ratio, n), cutting the last one so
    they sum to exactly k. Place the spans in distinct gaps among the n - k unmasked tokens
    (so spans never touch), chosen uniformly; when there are more spans than gaps (k close to
    n), the last spans merge into one. Then map the compressed order back to positions.
    """
    length = eligible.shape[0]
    key_lengths, key_gaps = jax.random.split(key)
    n = eligible.sum()
    k = mask_count(ratio, n)
    unmasked = n - k
    lengths = jnp.minimum(_geometric_lengths(key_lengths, (length,), mean_length), length)
    starts = jnp.cumsum(lengths) - lengths  # masked tokens before each span
    num_spans = jnp.minimum((starts < k).sum(), unmasked + 1)
    index = jnp.arange(length)
    lengths = jnp.where(index < num_spans - 1, lengths, jnp.where(index == num_spans - 1, k - starts, 0))

    # Gap g (0..unmasked) is the place after the g-th unmasked token; choose num_spans of them.
    gap = jnp.arange(length + 1)
    gap_noise = jax.random.uniform(key_gaps, (length + 1,))
    chosen = _mask_lowest(gap_noise[None], (gap <= unmasked)[None], num_spans[None])[0]
    span_length = jnp.where(chosen, lengths[jnp.clip(jnp.cumsum(chosen) - 1, 0, length - 1)], 0)
    span_start = gap + jnp.cumsum(span_length) - span_length
    opens = chosen.astype(jnp.int32)
    edges = jnp.zeros(length + 2, jnp.int32).at[span_start].add(opens).at[span_start + span_length].add(-opens)
    masked_in_order = jnp.cumsum(edges)[:length] > 0
    order = jnp.clip(jnp.cumsum(eligible) - 1, 0, length - 1)
    return eligible & masked_in_order[order]


def corrupt(key, input_ids, eligible, objective: ObjectiveConfig, *, mask_token_id, vocab_size) -> Corruption:
    """Corrupt a batch [B, L] for `objective`. Jit-able (objective static), static shapes; every
    row with an eligible position gets at least one scored token. For elbo the batch must be the
    global batch: t is stratified across its rows."""
    input_ids = jnp.asarray(input_ids, jnp.int32)
    eligible = jnp.asarray(eligible, bool)
    batch, length = input_ids.shape
    key_ratio, key_noise, key_extra = jax.random.split(key, 3)
    n_eligible = eligible.sum(-1)

    if objective.name == "elbo":
        t = stratified_times(key_ratio, batch, objective.eps)
        return mask_at_times(key_noise, input_ids, eligible, t, mask_token_id=mask_token_id)

    if objective.name == "bert":
        ratio = jnp.full((batch,), objective.bert_mask_prob, jnp.float32)
        selected = _mask_lowest(jax.random.uniform(key_noise, (batch, length)), eligible, mask_count(ratio, n_eligible))
        key_kind, key_token = jax.random.split(key_extra)
        kind = jax.random.uniform(key_kind, (batch, length))
        random_ids = jax.random.randint(key_token, (batch, length), 0, vocab_size, jnp.int32)
        corrupted = jnp.where(
            kind < BERT_MASK, mask_token_id, jnp.where(kind < BERT_MASK + BERT_RANDOM, random_ids, input_ids)
        )
        return Corruption(jnp.where(selected, corrupted, input_ids), selected, selected.astype(jnp.float32), ratio)

    ratio = jax.random.choice(key_ratio, jnp.asarray(objective.ratios, jnp.float32), (batch,))
    if objective.name == "ratio_set":
        masked = _mask_lowest(jax.random.uniform(key_noise, (batch, length)), eligible, mask_count(ratio, n_eligible))
    else:  # span
        row_keys = jax.random.split(key_noise, batch)
        masked = jax.vmap(_span_mask_row, in_axes=(0, 0, 0, None))(
            row_keys, eligible, ratio, objective.span_mean_length
        )
    return Corruption(jnp.where(masked, mask_token_id, input_ids), masked, masked.astype(jnp.float32), ratio)


def ratio_bucket(ratio) -> jax.Array:
    """Bucket b in 0..9 holds ratios in (b / 10, (b + 1) / 10] (a small slack absorbs float32)."""
    bucket = jnp.ceil(jnp.asarray(ratio, jnp.float32) * NUM_BUCKETS - 1e-5).astype(jnp.int32) - 1
    return jnp.clip(bucket, 0, NUM_BUCKETS - 1)


def loss_terms(ce, correct, eligible, corruption: Corruption, objective: ObjectiveConfig):
    """Per-row numerator and denominator of the loss, and metric sums.

    ce, correct [B, L]: each scored token's cross-entropy in nats and whether its original
    token is the argmax (a tie counts for the lowest id only, so uniform logits are not
    "correct" everywhere); ops.vocab_cross_entropy computes both, 0 at unscored tokens.
    numerator [B]: sum over scored tokens of weight * CE. denominator [B]: scored tokens, or
    eligible tokens for elbo (then numerator / denominator is the row's NELBO in nats per
    token). The loss is sum(numerator) / sum(denominator) over the global batch and all
    microbatches. metrics: sums to add up globally before dividing: ce, correct, tokens (scored
    tokens), and bucket_ce, bucket_correct, bucket_tokens [NUM_BUCKETS] by the row's mask ratio.
    """
    scored = corruption.target_mask
    ce = jnp.where(scored, ce, 0.0)
    numerator = (ce * corruption.weights).sum(-1)
    counted = eligible if objective.name == "elbo" else scored
    denominator = counted.sum(-1).astype(jnp.float32)

    row_ce = ce.sum(-1)
    row_correct = (scored & correct).sum(-1).astype(jnp.float32)
    row_tokens = scored.sum(-1).astype(jnp.float32)
    bucket = jax.nn.one_hot(ratio_bucket(corruption.ratio), NUM_BUCKETS, dtype=jnp.float32)
    metrics = {
        "ce": row_ce.sum(),
        "correct": row_correct.sum(),
        "tokens": row_tokens.sum(),
        "bucket_ce": row_ce @ bucket,
        "bucket_correct": row_correct @ bucket,
        "bucket_tokens": row_tokens @ bucket,
    }
    return numerator, denominator, metrics


def nelbo_summary(numerators, denominators) -> dict:
    """The NELBO over held-out sequences from per-sequence elbo terms (host-side, NumPy).

    numerators [N]: each sequence's elbo numerator averaged over its Monte-Carlo samples;
    denominators [N]: its eligible tokens. The estimate is sum(num) / sum(den) nats per token;
    its standard error is that of a ratio estimator (linearised), over sequences.
    """
    num = np.asarray(numerators, np.float64)
    den = np.asarray(denominators, np.float64)
    num, den = num[den > 0], den[den > 0]
    nats = num.sum() / den.sum()
    residual = (num - nats * den) / den.mean()
    stderr = residual.std(ddof=1) / math.sqrt(len(num)) if len(num) > 1 else math.nan
    return {
        "nats_per_token": float(nats),
        "bits_per_token": float(nats / math.log(2)),
        "ppl_bound": float(math.exp(nats)),
        "stderr_nats": float(stderr),
        "stderr_bits": float(stderr / math.log(2)),
        "sequences": len(num),
    }
