"""On-device unmasking sampler: the whole schedule of a masked diffusion LM in one program.

The canvas is each prompt followed by `gen_length` mask tokens. Every step runs the encoder on
the canvas, proposes a token for every position (greedy, or Gumbel-max at a temperature, after
top-k / top-p filtering and classifier-free guidance), scores the masked positions of the active
block with a remasking strategy, and commits the best ones. The host computes how many tokens each
step commits (a schedule, per row and block) once; the device runs all steps in one
`jax.lax.scan` (a bounded `jax.lax.while_loop` for the `threshold` strategy), so one call is one
compiled program and no data returns to the host before the end.

Randomness: step s uses `fold_in(key(seed), s)`, split by `fold_in` into the Gumbel noise of the
proposal (float32: JAX runs without x64 by default; LLaDA's reference uses float64) and the
uniform draws of the `random`, `origin` and `random_remask` strategies.

Speed: the vocabulary head (hidden x vocab) costs more than the whole encoder of a small model, so
each step sends through it only the positions that may be committed (the still-masked positions
of the active block, at most a size the host knows per step; `lax.switch` picks one of a few
static sizes), and greedy decoding never materialises the logits: `greedy_head` reduces them
chunk by chunk of the vocabulary while they are still in cache.

Semantics follow LLaDA's `generate` (blocks, even split, low_confidence/random, CFG), Dream's
`diffusion_generate` (origin, topk_margin, entropy, top-p/top-k) and RoBERTa-diffusion
(threshold decoding; random re-masking over 10 linear levels). docs/sampling.md has the details.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dlm_jax.errors import UserError
from dlm_jax.ops import matmul
from dlm_jax.tokenizer import special_token_ids

STRATEGIES = (
    "low_confidence",  # LLaDA: probability of the proposed token
    "random",  # LLaDA: uniform random order
    "topk_margin",  # Dream: top-1 minus top-2 probability
    "entropy",  # Dream: negative entropy of the position's distribution
    "origin",  # Dream: each mask independently with probability 1 - s/t
    "threshold",  # RoBERTa-diffusion: every mask with probability >= confidence_threshold
    "random_remask",  # RoBERTa-diffusion v1: re-predict the block, re-mask a random subset
)
SCHEDULES = ("even", "cosine", "linear")
ORIGIN_EPS = 1e-3  # Dream's final time: t runs from 1 down to eps
DEFAULT_CONFIDENCE_THRESHOLD = 0.9  # RoBERTa-diffusion's value
NEG = -1e30  # logit of a forbidden token: finite, so 0 * (logit - lse) stays 0 in the entropy
VOCAB_CHUNK = 1024  # vocabulary ids per chunk of greedy_head: [chunk, batch x positions] fits in cache
HEAD_SIZES = 4  # static numbers of positions the head may see per step: window * (1..4) / 4


# ----------------------------------------------------------------------------------------------
# Host side: schedules and input checks.


def commit_counts(n: int, steps: int, schedule: str = "even") -> np.ndarray:
    """How many of n masked tokens each of `steps` steps commits (sums to n, each >= 1 when
    steps <= n). even: LLaDA's floor(n/steps) with the remainder to the first steps; cosine:
    MaskGIT's cos(pi/2 * s/steps) fraction still masked after step s; linear: (1 - s/steps)."""
    if schedule == "even":
        counts = np.full(steps, n // steps, np.int64)
        counts[: n % steps] += 1
        return counts
    done = np.arange(1, steps + 1)
    if schedule == "cosine":
        still_masked = np.floor(n * np.cos(np.pi / 2 * done / steps) + 1e-9).astype(np.int64)
    elif schedule == "linear":
        still_masked = n * (steps - done) // steps
    else:
        raise UserError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    # At least one commit per step: leave room for the steps after s and take one now.
    still_masked = np.clip(still_masked, steps - done, n - done)
    still_masked[-1] = 0
    return -np.diff(np.concatenate([[n], still_masked]))


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything static about one sampling call: it keys the compiled program."""

    remasking: str
    steps: int
    prompt_length: int
    gen_length: int
    block_length: int
    mask_id: int
    sample: bool  # temperature > 0: Gumbel-max; else greedy
    top_k: int | None
    use_top_p: bool
    use_cfg: bool
    forbidden_ids: tuple[int, ...]  # never proposed: the mask token, and EOS when forbidden
    return_history: bool
    infill: bool  # some prompt holds mask tokens
    vocab_chunk: int  # VOCAB_CHUNK when the plan was made

    @property
    def window(self) -> int:
        """Most positions that may need a proposal in one step: a block's masks (all generated
        masks for threshold, whose rows may be in different blocks and whose last step fills
        everything), plus the prompt's masks when infilling."""
        size = self.gen_length if self.remasking == "threshold" else self.block_length
        return size + (self.prompt_length if self.infill else 0)

    @property
    def head_sizes(self) -> tuple[int, ...]:
        """The static numbers of positions per row the vocabulary head can take (one compiled
        branch each); each step uses the smallest that holds all its candidates."""
        quantum = -(-self.window // HEAD_SIZES)
        return tuple(sorted({min(self.window, quantum * i) for i in range(1, HEAD_SIZES + 1)}))

    @property
    def counted(self) -> bool:
        """Strategies whose commits per step are fixed by the schedule, so the number of masks
        left in the block, hence the head size, is known on the host."""
        return self.remasking in ("low_confidence", "random", "topk_margin", "entropy")

    @property
    def greedy_scores(self) -> bool:
        """Greedy proposals whose score needs at most the proposal's probability: greedy_head."""
        return not self.sample and self.remasking not in ("topk_margin", "entropy")

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length

    @property
    def steps_per_block(self) -> int:
        return self.steps // self.num_blocks


def _as_batch(prompt_ids, attention_mask, pad_id):
    """Prompts (one list, a list of lists of different lengths, or a [B, P] array with its mask)
    -> left-padded int32 ids [B, P] and int32 attention mask [B, P]."""
    if isinstance(prompt_ids, (list, tuple)) and prompt_ids and isinstance(prompt_ids[0], (list, tuple, np.ndarray)):
        if attention_mask is not None:
            raise UserError("attention_mask goes with a [batch, length] array of prompt ids, not with a list of lists")
        rows = [np.asarray(r, np.int64).reshape(-1) for r in prompt_ids]
        width = max(len(r) for r in rows)
        if width == 0:
            raise UserError("every prompt is empty; give at least one token (e.g. the BOS token)")
        ids = np.full((len(rows), width), pad_id, np.int64)
        mask = np.zeros((len(rows), width), np.int32)
        for i, r in enumerate(rows):
            if len(r):
                ids[i, width - len(r):] = r
                mask[i, width - len(r):] = 1
        return ids, mask
    ids = np.asarray(prompt_ids)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
        raise UserError(f"prompt_ids must be a non-empty list of ids or a [batch, length] array, got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise UserError(f"prompt_ids must be integer token ids, got dtype {ids.dtype}")
    mask = np.ones(ids.shape, np.int32) if attention_mask is None else np.asarray(attention_mask)
    if mask.shape != ids.shape:
        raise UserError(f"attention_mask shape {mask.shape} differs from prompt_ids shape {ids.shape}")
    return ids.astype(np.int64), (mask != 0).astype(np.int32)


def _check(config, tokenizer, ids, *, gen_length, steps, block_length, temperature, top_k, top_p,
           remasking, schedule, cfg_scale, confidence_threshold, forbid_eos):
    """Raise UserError for every mistake a user can make, before anything is compiled."""
    if remasking not in STRATEGIES:
        raise UserError(f"unknown remasking strategy {remasking!r}; choose one of {', '.join(STRATEGIES)}")
    if schedule not in SCHEDULES:
        raise UserError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if config.mask_token_id is None or (tokenizer is not None and getattr(tokenizer, "mask_token_id", 0) is None):
        raise UserError("this checkpoint's tokenizer has no mask token; diffusion sampling needs one "
                        "(set mask_token_id in dlm_config.json / add a mask token)")
    if int(gen_length) != gen_length or gen_length <= 0:
        raise UserError(f"gen_length must be a positive integer, got {gen_length}")
    if int(steps) != steps or steps <= 0:
        raise UserError(f"steps must be a positive integer, got {steps}")
    if gen_length % block_length:
        raise UserError(f"gen_length {gen_length} is not divisible by block_length {block_length}; "
                        "pick a block length that divides it")
    num_blocks = gen_length // block_length
    if steps % num_blocks:
        raise UserError(f"steps {steps} is not divisible by the number of blocks {num_blocks} "
                        f"(gen_length / block_length); use a multiple of {num_blocks}")
    if remasking != "threshold" and steps // num_blocks > block_length:
        raise UserError(f"{steps // num_blocks} steps per block cannot each commit a token of a "
                        f"{block_length}-token block; use at most {block_length * num_blocks} steps")
    if ids.shape[1] + gen_length > config.max_length:
        raise UserError(f"prompt of {ids.shape[1]} tokens + gen_length {gen_length} exceeds the "
                        f"{config.max_length} positions this model has; shorten one of them")
    if ids.min() < 0 or ids.max() >= config.vocab_size:
        raise UserError(f"prompt token ids must lie in [0, {config.vocab_size}); got "
                        f"{ids.min()}..{ids.max()} (wrong tokenizer?)")
    if not temperature >= 0:
        raise UserError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    if top_p is not None and not 0 < top_p <= 1:
        raise UserError(f"top_p must lie in (0, 1], got {top_p}")
    if top_k is not None and (int(top_k) != top_k or top_k < 1):
        raise UserError(f"top_k must be a positive integer, got {top_k}")
    if not cfg_scale >= 0:
        raise UserError(f"cfg_scale must be >= 0 (0 turns guidance off), got {cfg_scale}")
    if confidence_threshold is not None:
        if remasking != "threshold":
            raise UserError("confidence_threshold only applies to remasking='threshold'")
        if not 0 < confidence_threshold <= 1:
            raise UserError(f"confidence_threshold must lie in (0, 1], got {confidence_threshold}")
    if forbid_eos and config.eos_token_id is None:
        raise UserError("forbid_eos needs an EOS token, but the config has eos_token_id None")


def step_tables(plan: Plan, prompt_masks: np.ndarray, schedule: str):
    """Per-step inputs of the scan, computed on the host once.

    Returns int32 region_start [S], region_end [S] (the active block; block 0 also covers the
    prompt so masks inside it get filled), int32 counts [S, B] (tokens to commit; for
    random_remask the block's cumulative total, since it re-masks all but those), float32
    transfer [S] (origin's probability 1 - s/t) and int32 head_branch [S] (which of
    plan.head_sizes holds every row's masks left in the block before the step).
    """
    steps_per_block = plan.steps_per_block
    starts, ends, counts, transfer, masks_left = [], [], [], [], []
    t = np.linspace(1.0, ORIGIN_EPS, steps_per_block + 1)
    for b in range(plan.num_blocks):
        start = 0 if b == 0 else plan.prompt_length + b * plan.block_length
        end = plan.prompt_length + (b + 1) * plan.block_length
        n = plan.block_length + (prompt_masks if b == 0 else 0 * prompt_masks)
        per_row = np.stack([commit_counts(int(k), steps_per_block, schedule) for k in n], axis=1)
        masks_left.append((n - np.cumsum(per_row, axis=0) + per_row).max(axis=1))
        if plan.remasking == "random_remask":
            per_row = np.cumsum(per_row, axis=0)
        counts.append(per_row)
        starts += [start] * steps_per_block
        ends += [end] * steps_per_block
        p = 1.0 - t[1:] / t[:-1]
        p[-1] = 1.0
        transfer.append(p)
    need = np.concatenate(masks_left) if plan.counted else np.full(plan.steps, plan.window)
    head_branch = np.searchsorted(np.asarray(plan.head_sizes), need)
    return (np.asarray(starts, np.int32), np.asarray(ends, np.int32),
            np.concatenate(counts).astype(np.int32), np.concatenate(transfer).astype(np.float32),
            head_branch.astype(np.int32))


# ----------------------------------------------------------------------------------------------
# Device side: pure functions of (params, arrays); `Plan` is static.


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


def guided_logits(graphdef, params, canvas, attention_mask, prompt_mask, cfg_scale, use_cfg, mask_id):
    """float32 logits [B, L, V] of every canvas position, guided when use_cfg."""
    encoder = nnx.merge(graphdef, params)
    hidden = encode_canvas(encoder, canvas, attention_mask, prompt_mask, use_cfg, mask_id)
    logits = encoder.logits_from_hidden(hidden)
    return guide(logits, cfg_scale) if use_cfg else logits


def vocab_chunks(encoder, forbidden_ids, chunk):
    """The decoder as [n, chunk, H] weights in the compute dtype and [n, chunk] float32 bias, with
    forbidden ids and the padding past the vocabulary at NEG (so they are never the argmax and
    add exactly 0 to the sum of exponentials). Made once per call, outside the scan."""
    weights, bias = encoder.vocab_decoder()
    weights, bias = weights.astype(encoder.dtype), bias.at[jnp.asarray(forbidden_ids)].set(NEG)
    pad = -len(bias) % chunk
    weights = jnp.pad(weights, ((0, pad), (0, 0))).reshape(-1, chunk, weights.shape[1])
    return weights, jnp.pad(bias, (0, pad), constant_values=NEG).reshape(-1, chunk)


def greedy_head(features, decoder, cfg_scale, use_cfg):
    """Greedy proposal (argmax, first id on ties) and its probability 1 / sum(exp(l - max)) for
    features [B', K, H] (B' = 2B with guidance), without the [B, K, V] logits: a scan over
    vocabulary chunks keeps a running max, argmax and rescaled sum of exponentials. Each chunk's
    logits are vocabulary-major [chunk, B, K], so the reductions run over the leading axis, which
    XLA's CPU backend vectorises (about 3x faster there than logits followed by reductions)."""
    weights, bias = decoder
    chunk = weights.shape[1]
    x = features.astype(weights.dtype)

    def one_chunk(carry, chunk_in):
        top, arg, total = carry
        w, b, first_id = chunk_in
        logits = jnp.einsum("ch,bkh->cbk", w, x, preferred_element_type=jnp.float32) + b[:, None, None]
        if use_cfg:
            logits = guide(logits, cfg_scale, axis=1)
        chunk_top = jnp.max(logits, axis=0)
        ids = jnp.arange(chunk)[:, None, None]
        chunk_arg = first_id + jnp.min(jnp.where(logits == chunk_top, ids, chunk), axis=0)
        new_top = jnp.maximum(top, chunk_top)
        total = total * jnp.exp(top - new_top) + jnp.sum(jnp.exp(logits - new_top), axis=0)
        arg = jnp.where(chunk_top > top, chunk_arg, arg)  # a tie keeps the earlier, lower id
        return (new_top, arg, total), None

    shape = (x.shape[0] // 2 if use_cfg else x.shape[0], x.shape[1])
    init = (jnp.full(shape, -jnp.inf), jnp.zeros(shape, jnp.int32), jnp.zeros(shape))
    first_ids = chunk * jnp.arange(weights.shape[0], dtype=jnp.int32)
    (_, arg, total), _ = jax.lax.scan(one_chunk, init, (weights, bias, first_ids))
    return arg, 1.0 / total


def gumbel_noise(key, positions, batch, vocab):
    """float32 Gumbel noise [B, K, V] at canvas positions [K] (the same for every row) or [B, K];
    (row r, position q) draws from fold_in(fold_in(key, q), r), so a position's noise does not
    depend on which positions go through the head."""
    positions = jnp.broadcast_to(positions, (batch, positions.shape[-1]))
    rows = jnp.broadcast_to(jnp.arange(batch)[:, None], positions.shape)
    one = lambda r, q: jax.random.gumbel(jax.random.fold_in(jax.random.fold_in(key, q), r), (vocab,), jnp.float32)
    return jax.vmap(jax.vmap(one))(rows, positions)


def noise_keys(seed, step):
    """(Gumbel key, uniform key) of one step: fold_in(key(seed), step), then fold_in 0 / 1."""
    key = jax.random.fold_in(jax.random.key(seed), step)
    return jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)


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


def propose(plan, logits, gumbel_key, positions, temperature, top_p):
    """Proposed token per position: argmax, or Gumbel-max argmax(l + T g) of the filtered logits."""
    if not plan.sample:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    filtered = filter_logits(logits, plan.top_k, top_p if plan.use_top_p else None)
    gumbel = gumbel_noise(gumbel_key, positions, logits.shape[0], logits.shape[-1])
    return jnp.argmax(filtered + temperature * gumbel, axis=-1).astype(jnp.int32)


def confidence(plan, logits, proposal, uniform):
    """Score per position, higher = commit first, from the untempered softmax of the logits."""
    remasking = plan.remasking
    if remasking in ("random", "origin", "random_remask"):
        return uniform
    lse = jax.nn.logsumexp(logits, axis=-1)
    if remasking in ("low_confidence", "threshold"):
        chosen = jnp.take_along_axis(logits, proposal[..., None], axis=-1)[..., 0]
        return jnp.exp(chosen - lse)
    if remasking == "topk_margin":
        top2 = jax.lax.top_k(logits, 2)[0]
        return jnp.exp(top2[..., 0] - lse) - jnp.exp(top2[..., 1] - lse)
    # entropy: sum p log p (minus the entropy), so confident positions score high.
    log_probs = logits - lse[..., None]
    return jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)


def head_step(plan, encoder, decoder, hidden, candidates, size, gumbel_key, uniform, knobs):
    """Proposal and score [B, K] at the first `size` candidate positions of each row (then other
    positions, whose results are never used). Returns them with those positions [B, K]."""
    temperature, top_p, cfg_scale, _ = knobs
    slots = jnp.argsort(~candidates, axis=1, stable=True)[:, :size]
    rows = jnp.tile(slots, (2, 1)) if plan.use_cfg else slots
    features = encoder.head_features(jnp.take_along_axis(hidden, rows[..., None], axis=1))
    window_uniform = jnp.take_along_axis(uniform, slots, axis=1)
    if plan.greedy_scores:
        proposal, probability = greedy_head(features, decoder, cfg_scale, plan.use_cfg)
        score = window_uniform if plan.remasking in ("random", "origin", "random_remask") else probability
        return slots, proposal, score
    # Sampling and full-softmax scores need the logits [B, K, V].
    embedding, bias = encoder.vocab_decoder()
    logits = matmul(features, embedding.T, encoder.dtype) + bias
    if plan.use_cfg:
        logits = guide(logits, cfg_scale)
    logits = logits.at[..., plan.forbidden_ids].set(NEG)
    proposal = propose(plan, logits, gumbel_key, slots, temperature, top_p)
    return slots, proposal, confidence(plan, logits, proposal, window_uniform)


def rank_desc(score):
    """Rank of each position by descending score per row; ties go to the lower position."""
    order = jnp.argsort(-score, axis=-1, stable=True)
    return jnp.argsort(order, axis=-1, stable=True)


def sampler_step(plan, graphdef, params, decoder, canvas, attention_mask, prompt_mask, target, seed,
                 knobs, x):
    """One unmasking step: (canvas, this step's tables) -> new canvas."""
    step, start, end, count, transfer, head_branch = x
    threshold = knobs[3]
    position = jnp.arange(canvas.shape[1])
    in_block = (position >= start) & (position < end)
    masked = (canvas == plan.mask_id) & (attention_mask == 1)
    if plan.remasking == "random_remask":
        eligible = target & in_block
    elif plan.remasking == "threshold":
        # The active block is the one holding the row's first masked generated position.
        first = jnp.min(jnp.where(masked & (position >= plan.prompt_length), position, canvas.shape[1]), axis=1)
        block_end = plan.prompt_length + ((first - plan.prompt_length) // plan.block_length + 1) * plan.block_length
        eligible = masked & (position < block_end[:, None])
    else:
        eligible = masked & in_block

    encoder = nnx.merge(graphdef, params)
    hidden = encode_canvas(encoder, canvas, attention_mask, prompt_mask, plan.use_cfg, plan.mask_id)
    gumbel_key, uniform_key = noise_keys(seed, step)
    uniform = jax.random.uniform(uniform_key, canvas.shape, jnp.float32)
    # threshold's last step fills every mask, so all of them need a proposal.
    candidates = masked if plan.remasking == "threshold" else eligible

    def head_of_size(size):  # one lax.switch branch: the head at `size` positions per row
        def run(hidden):
            slots, proposal, score = head_step(plan, encoder, decoder, hidden, candidates, size,
                                               gumbel_key, uniform, knobs)
            rows = jnp.arange(canvas.shape[0])[:, None]  # back to canvas coordinates
            return canvas.at[rows, slots].set(proposal), jnp.zeros(canvas.shape).at[rows, slots].set(score)
        return run

    proposal, score = jax.lax.switch(head_branch, [head_of_size(size) for size in plan.head_sizes], hidden)
    score = jnp.where(eligible, score, -jnp.inf)
    rank = rank_desc(score)

    if plan.remasking == "origin":
        commit = eligible & (uniform < transfer)
    elif plan.remasking == "threshold":
        commit = eligible & ((score >= threshold) | (rank == 0))
        commit = commit | (masked & (step == plan.steps - 1))  # the bound: the last step fills all
    else:
        commit = eligible & (rank < count[:, None])
    if plan.remasking == "random_remask":
        return jnp.where(eligible, jnp.where(commit, proposal, plan.mask_id), canvas)
    return jnp.where(commit, proposal, canvas)


def _run(plan, graphdef, params, canvas, attention_mask, prompt_mask, seed, knobs, tables):
    """The compiled program: all steps on the device. Returns (final canvas, history or None)."""
    target = (canvas == plan.mask_id) & (attention_mask == 1)
    decoder = vocab_chunks(nnx.merge(graphdef, params), plan.forbidden_ids, plan.vocab_chunk)
    step_fn = lambda c, x: sampler_step(plan, graphdef, params, decoder, c, attention_mask, prompt_mask,
                                        target, seed, knobs, x)
    steps = jnp.arange(plan.steps, dtype=jnp.int32)
    if plan.remasking != "threshold":
        def body(c, x):
            c = step_fn(c, x)
            return c, (c if plan.return_history else None)

        return jax.lax.scan(body, canvas, (steps, *tables))

    # threshold: stop as soon as no row has a mask left; `steps` bounds the loop.
    history = jnp.zeros((plan.steps if plan.return_history else 0, *canvas.shape), canvas.dtype)

    def cond(state):
        step, c, _ = state
        return (step < plan.steps) & jnp.any((c == plan.mask_id) & (attention_mask == 1))

    def body(state):
        step, c, hist = state
        x = jax.tree.map(lambda a: a[step], (steps, *tables))
        c = step_fn(c, x)
        if plan.return_history:
            hist = jax.lax.dynamic_update_index_in_dim(hist, c, step, 0)
        return step + 1, c, hist

    done, canvas, history = jax.lax.while_loop(cond, body, (jnp.int32(0), canvas, history))
    if not plan.return_history:
        return canvas, None
    # Steps that did not run repeat the final canvas.
    unused = jnp.arange(plan.steps)[:, None, None] >= done
    return canvas, jnp.where(unused, canvas[None], history)


_program = jax.jit(_run, static_argnames=("plan", "graphdef"))


# ----------------------------------------------------------------------------------------------
# The public entry point.


def generate(
    model,
    prompt_ids,
    *,
    gen_length: int,
    steps: int,
    block_length: int | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    remasking: str = "low_confidence",
    schedule: str = "even",
    cfg_scale: float = 0.0,
    confidence_threshold: float | None = None,
    forbid_eos: bool = False,
    seed: int = 0,
    attention_mask=None,
    return_history: bool = False,
    mesh: jax.sharding.Mesh | None = None,
):
    """Fill `gen_length` masks after each prompt in `steps` unmasking steps on the device.

    model: anything with `.config` (EncoderConfig) and `.encoder` (nnx Encoder), e.g.
      `dlm_jax.load(path)`; `.tokenizer`, when present, must have a mask token.
    prompt_ids: a list of ids, a list of such lists (left-padded here), or a [B, P] array with
      `attention_mask` (0 = padding). Mask tokens inside a prompt are filled too (infilling).
    block_length: semi-autoregressive blocks of the generated part (default: one block);
      `steps` is split evenly between blocks.
    temperature: 0 is greedy; T > 0 samples by float32 Gumbel-max after top_k / top_p.
    remasking: one of STRATEGIES; schedule: one of SCHEDULES (tokens committed per step).
    cfg_scale: classifier-free guidance weight w (0: off).
    confidence_threshold: for remasking="threshold" (default 0.9); steps is then the bound.
    forbid_eos: never propose the EOS token.
    mesh: shard the batch of prompts over this mesh's devices (rows padded to fill it).

    Returns int32 NumPy ids [B, P + gen_length] (and the history [steps, B, P + gen_length] of
    canvases after every step when return_history).
    """
    config, encoder = model.config, model.encoder
    block_length = gen_length if block_length is None else block_length
    ids, mask = _as_batch(prompt_ids, attention_mask, config.pad_token_id)
    _check(config, getattr(model, "tokenizer", None), ids, gen_length=gen_length, steps=steps,
           block_length=block_length, temperature=temperature, top_k=top_k, top_p=top_p,
           remasking=remasking, schedule=schedule, cfg_scale=cfg_scale,
           confidence_threshold=confidence_threshold, forbid_eos=forbid_eos)
    plan = Plan(
        remasking=remasking, steps=int(steps), prompt_length=ids.shape[1], gen_length=int(gen_length),
        block_length=int(block_length), mask_id=config.mask_token_id, sample=temperature > 0,
        top_k=None if top_k is None else int(top_k), use_top_p=top_p is not None and top_p < 1,
        use_cfg=cfg_scale > 0,
        forbidden_ids=(config.mask_token_id,) + ((config.eos_token_id,) if forbid_eos else ()),
        return_history=bool(return_history), infill=bool(((ids == config.mask_token_id) & (mask == 1)).any()),
        vocab_chunk=min(VOCAB_CHUNK, config.vocab_size),
    )
    batch = ids.shape[0]
    prompt_mask = (mask == 1) & (ids != config.mask_token_id)
    canvas = np.concatenate([ids, np.full((batch, gen_length), config.mask_token_id)], axis=1)
    full_mask = np.concatenate([mask, np.ones((batch, gen_length), np.int32)], axis=1)
    prompt_mask = np.concatenate([prompt_mask, np.zeros((batch, gen_length), bool)], axis=1)
    tables = step_tables(plan, ((ids == config.mask_token_id) & (mask == 1)).sum(1), schedule)
    threshold = DEFAULT_CONFIDENCE_THRESHOLD if confidence_threshold is None else confidence_threshold
    knobs = np.asarray([temperature, 1.0 if top_p is None else top_p, cfg_scale, threshold], np.float32)

    rows = {"canvas": canvas.astype(np.int32), "mask": full_mask, "prompt": prompt_mask,
            "counts": tables[2].T}  # counts travel batch-first so they shard with the rows
    graphdef, params = nnx.split(encoder)
    if mesh is not None:
        padded = -batch % mesh.size
        rows = {k: np.concatenate([v, np.repeat(v[:1], padded, axis=0)]) for k, v in rows.items()}
        batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(mesh.axis_names))
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        rows = jax.device_put(rows, batch_sharding)
        params = jax.device_put(params, replicated)
        put = lambda a: jax.device_put(a, replicated)
    else:
        rows = jax.device_put(rows)
        put = jax.device_put
    starts, ends, _, transfer, head_branch = tables
    out, history = _program(
        plan, graphdef, params, rows["canvas"], rows["mask"], rows["prompt"],
        put(np.uint32(seed)), put(knobs),
        (put(starts), put(ends), rows["counts"].T, put(transfer), put(head_branch)),
    )
    out, history = jax.device_get((out, history))
    out = np.asarray(out)[:batch]
    if return_history:
        return out, np.asarray(history)[:, :batch]
    return out


def encode_prompt(tokenizer, text: str) -> list[int]:
    """BOS + the text's tokens; no EOS, since the model is to continue the text."""
    bos = special_token_ids(tokenizer)["bos"]
    return ([bos] if bos is not None else []) + list(tokenizer(text, add_special_tokens=False)["input_ids"])


def generated_text(tokenizer, ids, prompt_length: int, *, eos_id: int | None = None) -> list[str]:
    """Text of the generated part of each row, cut at the first EOS (when eos_id is given)."""
    texts = []
    for row in np.asarray(ids)[:, prompt_length:]:
        if eos_id is not None and (row == eos_id).any():
            row = row[: int(np.argmax(row == eos_id))]
        texts.append(tokenizer.decode(row.tolist(), skip_special_tokens=True))
    return texts
