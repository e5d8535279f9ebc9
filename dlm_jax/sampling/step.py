"""Device side of the sampler: one unmasking step as pure functions of (params, arrays).

A step: the encoder over the canvas (with classifier-free guidance, also over the canvas with the
prompt masked) -> a proposal and a score at the positions that may be committed (the vocabulary
head sees only those) -> the strategy's commit rule. `Plan` is static; `Knobs` and the step's
row of `StepTables` are traced inputs.
"""

import jax
import jax.numpy as jnp

from dlm_jax import ops
from dlm_jax.ops import NEG, matmul


def encode_canvas(encoder, canvas, attention_mask, prompt_mask, use_cfg, mask_id):
    """Final hidden states [B, L, H]; with guidance [2B, L, H]: the canvas, then the same rows
    with the prompt replaced by masks (LLaDA's unconditional pass), in one forward."""
    positions = encoder.position_ids(canvas, attention_mask)
    if use_cfg:
        uncond = jnp.where(prompt_mask, mask_id, canvas)
        canvas, attention_mask, positions = (jnp.concatenate([a, a if a is not canvas else uncond])
                                             for a in (canvas, attention_mask, positions))
    return encoder.encode(canvas, attention_mask, position_ids=positions)


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
        # The active block is the one holding the row's first masked generated position.
        first = jnp.min(jnp.where(masked & (position >= plan.prompt_length), position, canvas.shape[1]), axis=1)
        block_end = plan.prompt_length + ((first - plan.prompt_length) // plan.block_length + 1) * plan.block_length
        eligible = masked & (position < block_end[:, None])
    else:
        eligible = masked & in_block
    return masked, eligible, masked if strategy.bounded_loop else eligible


def sampler_step(plan, encoder, decoder, canvas, attention_mask, prompt_mask, target, seed, knobs, x):
    """One unmasking step: (canvas, this step's row of the tables) -> new canvas."""
    strategy = plan.strategy
    masked, eligible, candidates = eligible_positions(plan, canvas, attention_mask, target, x)
    hidden = encode_canvas(encoder, canvas, attention_mask, prompt_mask, plan.use_cfg, plan.mask_id)
    gumbel_key, uniform_key = noise_keys(seed, x.step)
    uniform = jax.random.uniform(uniform_key, canvas.shape, jnp.float32)

    def head_of_size(size):  # one lax.switch branch: the head at `size` positions per row
        def run(hidden):
            slots, proposal, score = head_step(plan, encoder, decoder, hidden, candidates, size,
                                               gumbel_key, uniform, knobs)
            rows = jnp.arange(canvas.shape[0])[:, None]  # back to canvas coordinates
            return canvas.at[rows, slots].set(proposal), jnp.zeros(canvas.shape).at[rows, slots].set(score)
        return run

    proposal, score = jax.lax.switch(x.head_branch, [head_of_size(size) for size in plan.head_sizes], hidden)
    score = jnp.where(eligible, score, -jnp.inf)
    commit = strategy.commit(eligible, score, rank_desc(score), uniform, x, knobs)
    if strategy.bounded_loop:
        commit = commit | (masked & (x.step == plan.steps - 1))  # the bound: the last step fills all
    if strategy.remask:
        return jnp.where(eligible, jnp.where(commit, proposal, plan.mask_id), canvas)
    return jnp.where(commit, proposal, canvas)
