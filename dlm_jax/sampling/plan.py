"""Host side of the sampler: schedules, the static plan of a call, input checks, step tables.

Everything here runs once per `generate` call in NumPy, before anything is compiled: it turns the
user's arguments into a `Plan` (what keys the compiled program), `Knobs` (the float settings the
program takes as inputs, so changing them does not recompile) and `StepTables` (per-step inputs
of the loop: the active block, the tokens to commit, origin's probabilities, the head size).
"""

import dataclasses
from typing import NamedTuple

import numpy as np

from dlm_jax.errors import SEED_LIMIT, UserError, flag
from dlm_jax.sampling.strategies import STRATEGIES, Strategy, strategy_named

SCHEDULES = ("even", "cosine", "linear")
CACHES = ("prefix", "dual")  # cache=None: every step runs the encoder over the whole canvas
ORIGIN_EPS = 1e-3  # Dream's final time: t runs from 1 down to eps
DEFAULT_CONFIDENCE_THRESHOLD = 0.9  # RoBERTa-diffusion's value
DEFAULT_FACTOR = 1.0  # Fast-dLLM's default
HEAD_SIZES = 4  # static numbers of positions the head may see per step: window * (1..4) / 4


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

    strategy: Strategy
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
    vocab_chunk: int  # ops.VOCAB_CHUNK when the plan was made
    cache: str | None = None  # None | "prefix" | "dual": keys and values reused between refreshes
    stop_eos: int | None = None  # stop_at_eos: the EOS id that ends a row
    alg_temp: bool = False  # positions drawn by softmax(score / alg_temp) instead of the best scores

    @property
    def loop_until_done(self) -> bool:
        """Steps run in a while loop that ends once no row has a mask left."""
        return self.strategy.bounded_loop or self.stop_eos is not None

    @property
    def window_widths(self) -> tuple[int, ...]:
        """The static numbers of positions per row a cached step recomputes (one compiled
        encoder each): dual, a block; prefix, the block and everything after it, for each block.
        A step whose rows need more (the prompt's masks when infilling) runs as a refresh."""
        if self.cache == "dual":
            return (self.block_length,)
        return tuple(self.gen_length - b * self.block_length for b in reversed(range(self.num_blocks)))

    @property
    def window(self) -> int:
        """Most positions that may need a proposal in one step: a block's masks (all generated
        masks for a bounded loop, whose rows may be in different blocks and whose last step fills
        everything), plus the prompt's masks when infilling."""
        size = self.gen_length if self.strategy.bounded_loop else self.block_length
        return size + (self.prompt_length if self.infill else 0)

    @property
    def head_sizes(self) -> tuple[int, ...]:
        """The static numbers of positions per row the vocabulary head can take (one compiled
        branch each); each step uses the smallest that holds all its candidates."""
        quantum = -(-self.window // HEAD_SIZES)
        return tuple(sorted({min(self.window, quantum * i) for i in range(1, HEAD_SIZES + 1)}))

    @property
    def greedy_scores(self) -> bool:
        """Greedy proposals whose score needs at most the proposal's probability: ops.greedy_head."""
        return not self.sample and not self.strategy.needs_logits

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length

    @property
    def steps_per_block(self) -> int:
        return self.steps // self.num_blocks


class Knobs(NamedTuple):
    """The settings of a call that are inputs of the compiled program, not part of its key."""

    temperature: np.float32
    top_p: np.float32  # 1.0 when off
    cfg_scale: np.float32
    threshold: np.float32  # threshold's confidence
    factor: np.float32  # the factor rule's bound
    alg_temp: np.float32  # temperature of the positions' draw (with plan.alg_temp)
    refresh_every: np.int32  # with a cache: steps between refreshes inside a block


class StepTables(NamedTuple):
    """Per-step inputs of the loop, computed on the host once; inside the loop, one step's row."""

    step: np.ndarray  # int32 [S]: 0 .. S - 1
    start: np.ndarray  # int32 [S]: the active block [start, end); block 0 also covers the
    # prompt when it holds masks
    end: np.ndarray  # int32 [S]
    count: np.ndarray  # int32 [S, B]: tokens to commit (random_remask: the block's running total)
    transfer: np.ndarray  # float32 [S]: origin's probability 1 - s/t
    head_branch: np.ndarray  # int32 [S]: which of plan.head_sizes holds every row's candidates


def blocks_of(gen_length, block_length):
    """The block length of a call: one block of the whole generated part when None."""
    return gen_length if block_length is None else block_length


def as_batch(prompt_ids, attention_mask, pad_id):
    """Prompts (one list, a list of lists of different lengths, or a [B, P] array with its mask)
    -> int64 ids [B, P] and int32 attention mask [B, P]; lists of different lengths are
    left-padded here, an array keeps its own padding (left or right, as its mask says)."""
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
                ids[i, width - len(r) :] = r
                mask[i, width - len(r) :] = 1
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


def check(
    config,
    tokenizer,
    ids,
    *,
    gen_length,
    steps,
    block_length=None,
    temperature=0.0,
    top_k=None,
    top_p=None,
    remasking="low_confidence",
    schedule="even",
    cfg_scale=0.0,
    confidence_threshold=None,
    forbid_eos=False,
    factor=None,
    alg_temp=None,
    cache=None,
    refresh_every=None,
    stop_at_eos=False,
    seed=0,
    flags=False,
):
    """Raise UserError for every mistake a user can make, before anything is compiled. ids: the
    prompts as a [B, P] array; the keywords and their defaults are generate()'s. flags: the
    messages name the command line's flags (--gen-length, --remasking threshold) instead of
    generate()'s keywords (gen_length, remasking='threshold')."""
    block_length = blocks_of(gen_length, block_length)
    name = flag if flags else str
    setting = (lambda key, value: f"{flag(key)} {value}") if flags else (lambda key, value: f"{key}={value!r}")
    if remasking not in STRATEGIES:
        raise UserError(f"unknown {name('remasking')} strategy {remasking!r}; choose one of {', '.join(STRATEGIES)}")
    strategy = strategy_named(remasking)
    if schedule not in SCHEDULES:
        raise UserError(f"unknown {name('schedule')} {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if config.mask_token_id is None or (tokenizer is not None and getattr(tokenizer, "mask_token_id", 0) is None):
        raise UserError(
            "this checkpoint's tokenizer has no mask token; diffusion sampling needs one "
            "(set mask_token_id in dlm_config.json / add a mask token)"
        )
    if int(gen_length) != gen_length or gen_length <= 0:
        raise UserError(f"{name('gen_length')} must be a positive integer, got {gen_length}")
    if int(steps) != steps or steps <= 0:
        raise UserError(f"{name('steps')} must be a positive integer, got {steps}")
    if int(block_length) != block_length or block_length <= 0:
        raise UserError(f"{name('block_length')} must be a positive integer, got {block_length}")
    if schedule != "even" and not strategy.scheduled:
        raise UserError(
            f"{name('schedule')} {schedule} sets how many tokens each step commits, but "
            f"{setting('remasking', remasking)} decides that itself; drop {name('schedule')}"
        )
    if gen_length % block_length:
        raise UserError(
            f"{name('gen_length')} {gen_length} is not divisible by {name('block_length')} {block_length}; "
            "pick a block length that divides it"
        )
    num_blocks = gen_length // block_length
    if steps % num_blocks:
        raise UserError(
            f"{name('steps')} {steps} is not divisible by the number of blocks {num_blocks} "
            f"({name('gen_length')} / {name('block_length')}); use a multiple of {num_blocks}"
        )
    if strategy.scheduled and steps // num_blocks > block_length:
        raise UserError(
            f"{steps // num_blocks} steps per block cannot each commit a token of a "
            f"{block_length}-token block; use {name('steps')} {block_length * num_blocks} or fewer"
        )
    if ids.shape[1] + gen_length > config.max_length:
        raise UserError(
            f"prompt of {ids.shape[1]} tokens + {name('gen_length')} {gen_length} exceeds the "
            f"{config.max_length} positions this model has; shorten one of them"
        )
    if ids.min() < 0 or ids.max() >= config.vocab_size:
        raise UserError(
            f"prompt token ids must lie in [0, {config.vocab_size}); got {ids.min()}..{ids.max()} (wrong tokenizer?)"
        )
    if not temperature >= 0:
        raise UserError(f"{name('temperature')} must be >= 0 (0 is greedy), got {temperature}")
    if top_p is not None and not 0 < top_p <= 1:
        raise UserError(f"{name('top_p')} must lie in (0, 1], got {top_p}")
    if top_k is not None and (int(top_k) != top_k or top_k < 1):
        raise UserError(f"{name('top_k')} must be a positive integer, got {top_k}")
    if top_k is not None and top_k > config.vocab_size:
        raise UserError(
            f"{name('top_k')} {top_k} exceeds the vocabulary of {config.vocab_size} tokens; "
            f"use at most {config.vocab_size}"
        )
    if temperature == 0:
        for keyword, value in (("top_p", top_p), ("top_k", top_k)):
            if value is not None:
                raise UserError(
                    f"{name(keyword)} shapes sampling, but {setting('temperature', 0)} decodes greedily; "
                    f"set {name('temperature')} above 0 or drop {name(keyword)}"
                )
    if not cfg_scale >= 0:
        raise UserError(f"{name('cfg_scale')} must be >= 0 (0 turns guidance off), got {cfg_scale}")
    if confidence_threshold is not None:
        if remasking != "threshold":
            raise UserError(f"{name('confidence_threshold')} only applies to {setting('remasking', 'threshold')}")
        if not 0 < confidence_threshold <= 1:
            raise UserError(f"{name('confidence_threshold')} must lie in (0, 1], got {confidence_threshold}")
    if forbid_eos and config.eos_token_id is None:
        raise UserError(f"{name('forbid_eos')} needs an EOS token, but the config has eos_token_id None")
    if factor is not None:
        if strategy.name != "factor":
            raise UserError(f"{name('factor')} only applies to {setting('remasking', 'factor')}")
        if not factor > 0:
            raise UserError(f"{name('factor')} must be > 0, got {factor}")
    if alg_temp:
        if not strategy.counted or strategy.score is None:
            raise UserError(
                f"{name('alg_temp')} draws the positions to commit by their confidence; it applies to "
                f"{name('remasking')} low_confidence (maskgit_plus), topk_margin and entropy"
            )
        if not alg_temp > 0:
            raise UserError(f"{name('alg_temp')} must be >= 0 (0 or None commits the most confident), got {alg_temp}")
    if cache is not None and cache not in CACHES:
        raise UserError(f"unknown {name('cache')} {cache!r}; choose None or one of {', '.join(CACHES)}")
    if refresh_every is not None:
        if cache is None:
            raise UserError(
                f"{name('refresh_every')} applies with {setting('cache', 'prefix')} or {setting('cache', 'dual')}"
            )
        if int(refresh_every) != refresh_every or refresh_every < 1:
            raise UserError(
                f"{name('refresh_every')} must be a positive integer (steps between refreshes), got {refresh_every}"
            )
    if int(seed) != seed or not 0 <= seed < SEED_LIMIT:
        raise UserError(f"{name('seed')} must be an integer in [0, 2**32), got {seed}")
    if stop_at_eos:
        if config.eos_token_id is None:
            raise UserError(f"{name('stop_at_eos')} needs an EOS token, but the config has eos_token_id None")
        if forbid_eos:
            raise UserError(
                f"{name('stop_at_eos')} waits for an EOS that {name('forbid_eos')} never proposes; drop one of them"
            )
        if strategy.remask:
            raise UserError(
                f"{name('stop_at_eos')} cannot be used with {setting('remasking', 'random_remask')}, which "
                "re-predicts decoded tokens until its block ends"
            )


def step_tables(plan: Plan, prompt_masks: np.ndarray, schedule: str) -> StepTables:
    """The per-step inputs of the loop for rows with `prompt_masks` [B] masks in their prompt."""
    steps_per_block = plan.steps_per_block
    starts, ends, counts, transfer, masks_left = [], [], [], [], []
    t = np.linspace(1.0, ORIGIN_EPS, steps_per_block + 1)
    for b in range(plan.num_blocks):
        start = 0 if b == 0 and plan.infill else plan.prompt_length + b * plan.block_length
        end = plan.prompt_length + (b + 1) * plan.block_length
        n = plan.block_length + (prompt_masks if b == 0 else 0 * prompt_masks)
        if plan.strategy.scheduled:
            per_row = np.stack([commit_counts(int(k), steps_per_block, schedule) for k in n], axis=1)
            masks_left.append((n - np.cumsum(per_row, axis=0) + per_row).max(axis=1))
        else:  # the strategy decides its own commits: no counts, and the head sees the whole window
            per_row = np.zeros((steps_per_block, len(n)), np.int64)
        if plan.strategy.remask:
            per_row = np.cumsum(per_row, axis=0)
        counts.append(per_row)
        starts += [start] * steps_per_block
        ends += [end] * steps_per_block
        p = 1.0 - t[1:] / t[:-1]
        p[-1] = 1.0
        transfer.append(p)
    need = np.concatenate(masks_left) if plan.strategy.counted else np.full(plan.steps, plan.window)
    head_branch = np.searchsorted(np.asarray(plan.head_sizes), need)
    return StepTables(
        np.arange(plan.steps, dtype=np.int32),
        np.asarray(starts, np.int32),
        np.asarray(ends, np.int32),
        np.concatenate(counts).astype(np.int32),
        np.concatenate(transfer).astype(np.float32),
        head_branch.astype(np.int32),
    )
