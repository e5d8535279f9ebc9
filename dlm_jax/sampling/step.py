"""Device side of the sampler: one unmasking step as pure functions of (params, arrays).

A step: the encoder over the canvas (with classifier-free guidance, also over the canvas with the
prompt masked) -> a proposal and a score at the positions that may be committed (the vocabulary
head sees only those) -> the strategy's commit rule. `Plan` is static; `Knobs` and the step's
row of `StepTables` are traced inputs.

With a cache, a refresh step runs the encoder over the whole canvas and keeps every block's keys
and values; the steps after it run the encoder over a window of each row only (its active region:
the block, and for the prefix cache everything after it), whose queries attend to the window's
fresh keys and values and to the cached ones of every other position.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from dlm_jax import ops
from dlm_jax.models.layers import splice
from dlm_jax.ops import NEG, matmul


def encoder_rows(encoder, canvas, attention_mask, prompt_mask, use_cfg, mask_id):
    """(ids, attention mask, positions) of the rows the encoder sees: the canvas [B, L]; with
    guidance [2B, L]: the canvas, then the same rows with the prompt replaced by masks (LLaDA's
    unconditional pass), in one forward."""
    positions = encoder.position_ids(canvas, attention_mask)
    if use_cfg:
        uncond = jnp.where(prompt_mask, mask_id, canvas)
        canvas, attention_mask, positions = (
            jnp.concatenate([a, a if a is not canvas else uncond]) for a in (canvas, attention_mask, positions)
        )
    return canvas, attention_mask, positions


def encode_canvas(encoder, canvas, attention_mask, prompt_mask, use_cfg, mask_id):
    """Final hidden states [B, L, H] ([2B, L, H] with guidance) of the whole canvas."""
    ids, mask, positions = encoder_rows(encoder, canvas, attention_mask, prompt_mask, use_cfg, mask_id)
    return encoder.encode(ids, mask, position_ids=positions)


def encode_canvas_kv(encoder, canvas, attention_mask, prompt_mask, use_cfg, mask_id):
    """encode_canvas, also returning every block's keys and values of the whole canvas."""
    ids, mask, positions = encoder_rows(encoder, canvas, attention_mask, prompt_mask, use_cfg, mask_id)
    return encoder.encode_with_kv(ids, mask, positions)


def encode_window(encoder, canvas, attention_mask, prompt_mask, use_cfg, mask_id, kv, offset, width):
    """Final hidden states [B', width, H] of positions offset .. offset + width of each row,
    attending to those positions afresh and to every other through the cached kv."""
    ids, mask, positions = encoder_rows(encoder, canvas, attention_mask, prompt_mask, use_cfg, mask_id)
    offset = jnp.tile(offset, 2) if use_cfg else offset
    index = offset[:, None] + jnp.arange(width)
    take = lambda a: jnp.take_along_axis(a, index, axis=1)
    return encoder.encode_window(take(ids), take(positions), offset, mask, kv)


def window_in_canvas(hidden, offset, length, use_cfg):
    """A window's hidden states [B', W, H] at their canvas positions of [B', L, H] (zeros
    elsewhere, never read: a cached step commits inside its window only)."""
    offset = jnp.tile(offset, 2) if use_cfg else offset
    canvas = jnp.zeros((hidden.shape[0], length, hidden.shape[2]), hidden.dtype)
    return splice(canvas, hidden, offset)


def guide(logits, cfg_scale, axis=0):
    """LLaDA's guidance un + (w + 1) (cond - un); the two halves of `axis` are cond and un."""
    cond, un = jnp.split(logits, 2, axis=axis)
    return un + (cfg_scale + 1) * (cond - un)


def noise_keys(seed, step):
    """(Gumbel key, uniform key) of one step: fold_in(key(seed), step), then fold_in 0 / 1."""
    key = jax.random.fold_in(jax.random.key(seed), step)
    return jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)


def gumbel_noise(key, positions, batch, vocab):
    """float32 Gumbel noise [B, K, V] at canvas positions [K] (the same for every row) or [B, K];
    (row r, position q) draws from fold_in(fold_in(key, q), r), so a position's noise does not
    depend on which positions go through the head."""
    positions = jnp.broadcast_to(positions, (batch, positions.shape[-1]))
    rows = jnp.broadcast_to(jnp.arange(batch)[:, None], positions.shape)
    one = lambda r, q: jax.random.gumbel(jax.random.fold_in(jax.random.fold_in(key, q), r), (vocab,), jnp.float32)
    return jax.vmap(jax.vmap(one))(rows, positions)


def filter_logits(logits, top_k, top_p):
    """Keep the top_k largest logits and the smallest set whose probability reaches top_p."""
    if top_k is not None:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, NEG, logits)
    if top_p is not None:
        ordered = -jnp.sort(-logits, axis=-1)
        probs = jax.nn.softmax(ordered, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass of the strictly more likely tokens
        keep = jnp.sum(before < top_p, axis=-1, keepdims=True)
        cutoff = jnp.take_along_axis(ordered, keep - 1, axis=-1)
        logits = jnp.where(logits < cutoff, NEG, logits)
    return logits


def propose(plan, logits, gumbel_key, positions, knobs):
    """Proposed token per position: argmax, or Gumbel-max argmax(l + T g) of the filtered logits."""
    if not plan.sample:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    filtered = filter_logits(logits, plan.top_k, knobs.top_p if plan.use_top_p else None)
    gumbel = gumbel_noise(gumbel_key, positions, logits.shape[0], logits.shape[-1])
    return jnp.argmax(filtered + knobs.temperature * gumbel, axis=-1).astype(jnp.int32)


def head_step(plan, encoder, decoder, hidden, candidates, size, gumbel_key, uniform, knobs):
    """Proposal and score [B, K] at the first `size` candidate positions of each row (then other
    positions, whose results are never used). Returns them with those positions [B, K]."""
    score_fn = plan.strategy.score
    slots = jnp.argsort(~candidates, axis=1, stable=True)[:, :size]
    rows = jnp.tile(slots, (2, 1)) if plan.use_cfg else slots
    features = encoder.head_features(jnp.take_along_axis(hidden, rows[..., None], axis=1))
    window_uniform = jnp.take_along_axis(uniform, slots, axis=1)
    if plan.greedy_scores:
        combine = (lambda logits: guide(logits, knobs.cfg_scale, axis=1)) if plan.use_cfg else None
        proposal, probability = ops.greedy_head(features, decoder, combine)
        return slots, proposal, window_uniform if score_fn is None else probability
    # Sampling and full-softmax scores need the logits [B, K, V].
    embedding, bias = encoder.vocab_decoder()
    logits = matmul(features, embedding.T, encoder.dtype) + bias
    if plan.use_cfg:
        logits = guide(logits, knobs.cfg_scale)
    logits = logits.at[..., plan.forbidden_ids].set(NEG)
    proposal = propose(plan, logits, gumbel_key, slots, knobs)
    return slots, proposal, window_uniform if score_fn is None else score_fn(logits, proposal)


def rank_desc(score):
    """Rank of each position by descending score per row; ties go to the lower position."""
    order = jnp.argsort(-score, axis=-1, stable=True)
    return jnp.argsort(order, axis=-1, stable=True)


def first_masked_block(plan, masked):
    """Index [B] of the block holding each row's first masked generated position (num_blocks
    when none is left): the active block of a bounded loop."""
    position = jnp.arange(masked.shape[1])
    first = jnp.min(jnp.where(masked & (position >= plan.prompt_length), position, masked.shape[1]), axis=1)
    return (first - plan.prompt_length) // plan.block_length


def eligible_positions(plan, canvas, attention_mask, target, x):
    """(masked, eligible, candidates) [B, L]: the masks, the positions this step may commit, and
    those that need a proposal (a bounded loop's last step fills every mask, so all of them)."""
    strategy = plan.strategy
    position = jnp.arange(canvas.shape[1])
    in_block = (position >= x.start) & (position < x.end)
    masked = (canvas == plan.mask_id) & (attention_mask == 1)
    if strategy.remask:
        eligible = target & in_block
    elif strategy.bounded_loop:
        block_end = plan.prompt_length + (first_masked_block(plan, masked) + 1) * plan.block_length
        eligible = masked & (position < block_end[:, None])
    else:
        eligible = masked & in_block
    return masked, eligible, masked if strategy.bounded_loop else eligible


class Region(NamedTuple):
    """Each row's active region [lo, hi): what a cached step recomputes (dual: the block; prefix:
    the block and everything after it). `busy`: the row still has a mask; rows without one do
    not constrain the window."""

    lo: jax.Array  # int32 [B]
    hi: jax.Array  # int32 [B]
    busy: jax.Array  # bool [B]


def active_region(plan, canvas, attention_mask, x):
    """The rows' active regions before this step: the step's block from the tables, or for a
    bounded loop each row's own (from 0 while its prompt still holds masks)."""
    length = canvas.shape[1]
    masked = (canvas == plan.mask_id) & (attention_mask == 1)
    if plan.strategy.bounded_loop:
        block = first_masked_block(plan, masked)
        lo = plan.prompt_length + block * plan.block_length
        lo = jnp.where(jnp.any(masked[:, : plan.prompt_length], axis=1), 0, lo)
        hi = jnp.minimum(plan.prompt_length + (block + 1) * plan.block_length, length)
    else:
        lo, hi = jnp.broadcast_to(x.start, masked.shape[:1]), jnp.broadcast_to(x.end, masked.shape[:1])
    if plan.cache == "prefix":
        hi = jnp.full_like(hi, length)
    return Region(lo.astype(jnp.int32), hi.astype(jnp.int32), jnp.any(masked, axis=1))


def window_branch(plan, region):
    """1 + the index of the smallest of plan.window_widths holding every busy row's region, or 0
    when none does (the step then runs as a refresh)."""
    need = jnp.max(jnp.where(region.busy, region.hi - region.lo, 0))
    index = jnp.searchsorted(jnp.asarray(plan.window_widths), need)
    return jnp.where(index < len(plan.window_widths), index + 1, 0)


def same_region(a, b):
    """Whether every busy row of `a` has the region it had in `b` (else the cache is refreshed)."""
    return jnp.all(~a.busy | ((a.lo == b.lo) & (a.hi == b.hi)))


def window_offset(region, width, length):
    """First position [B] of each row's window of `width`: its region's start, moved back where
    the window would pass the canvas end."""
    return jnp.minimum(region.lo, length - width)


def position_gumbel(uniform):
    """Gumbel noise from the step's uniform draws, for alg_temp's draw of positions."""
    return -jnp.log(-jnp.log(jnp.maximum(uniform, jnp.finfo(jnp.float32).tiny)))


def finish_at_eos(plan, canvas, attention_mask):
    """stop_at_eos: a row whose first generated EOS has no mask before it is done; its masks
    after the EOS become EOS, so it has nothing left to commit."""
    position = jnp.arange(canvas.shape[1])
    masked = (canvas == plan.mask_id) & (attention_mask == 1)
    first_eos = jnp.min(
        jnp.where((canvas == plan.stop_eos) & (position >= plan.prompt_length), position, canvas.shape[1]), axis=1
    )
    first_mask = jnp.min(jnp.where(masked, position, canvas.shape[1]), axis=1)
    return jnp.where(masked & (first_eos < first_mask)[:, None], plan.stop_eos, canvas)


def commit_step(plan, encoder, decoder, hidden, canvas, attention_mask, target, seed, knobs, x, windowed=False):
    """The step after the encoder: proposals and scores from the final hidden states [B', L, H],
    then the commits -> new canvas. windowed: a cached step, whose hidden states hold only each
    row's window, where everything it may commit lies (a bounded loop's last step, which fills
    every mask, is a refresh); the head's size then follows the number of those positions."""
    strategy = plan.strategy
    masked, eligible, candidates = eligible_positions(plan, canvas, attention_mask, target, x)
    head_branch = x.head_branch
    if windowed:
        candidates = eligible
        head_branch = jnp.searchsorted(jnp.asarray(plan.head_sizes), jnp.max(jnp.sum(eligible, axis=1)))
    gumbel_key, uniform_key = noise_keys(seed, x.step)
    uniform = jax.random.uniform(uniform_key, canvas.shape, jnp.float32)

    def head_of_size(size):  # one lax.switch branch: the head at `size` positions per row
        def run(hidden):
            slots, proposal, score = head_step(
                plan, encoder, decoder, hidden, candidates, size, gumbel_key, uniform, knobs
            )
            rows = jnp.arange(canvas.shape[0])[:, None]  # back to canvas coordinates
            return canvas.at[rows, slots].set(proposal), jnp.zeros(canvas.shape).at[rows, slots].set(score)

        return run

    proposal, score = jax.lax.switch(head_branch, [head_of_size(size) for size in plan.head_sizes], hidden)
    if plan.alg_temp:  # Dream's alg_temp: the top `count` of score / T + Gumbel noise is a draw
        score = score / knobs.alg_temp + position_gumbel(uniform)  # without replacement by softmax(score / T)
    score = jnp.where(eligible, score, -jnp.inf)
    commit = strategy.commit(eligible, score, rank_desc(score), uniform, x, knobs)
    if strategy.bounded_loop:
        commit = commit | (masked & (x.step == plan.steps - 1))  # the bound: the last step fills all
    if strategy.remask:
        return jnp.where(eligible, jnp.where(commit, proposal, plan.mask_id), canvas)
    canvas = jnp.where(commit, proposal, canvas)
    return canvas if plan.stop_eos is None else finish_at_eos(plan, canvas, attention_mask)
