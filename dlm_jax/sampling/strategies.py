"""The remasking strategies: one table of how each scores positions and which it commits.

Every step proposes a token at each position that may be committed; a strategy says how those
positions are scored (`score`: from the untempered softmax of the guided logits, or None for the
step's uniform draw) and which become final (`commit`). Two more fields shape the compiled
program: `counted` (the schedule fixes how many tokens each step commits, so the host knows how
many masks are left before each step and sizes the vocabulary head by it) and `bounded_loop`
(the strategy itself decides how many to commit: the steps run in a while loop that ends when no
mask is left, `steps` is only the bound and its last step commits everything left; each row works
on the block holding its first masked generated position). `remask` marks RoBERTa-diffusion v1's
rule, which re-predicts every generated position of the block and re-masks all but the best.
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

# Scores per position, higher = committed first, from float32 logits [..., V] with the banned ids
# at ops.NEG, and the proposed token [...].


def probability(logits, proposal):
    """p(proposed token) (LLaDA's low_confidence)."""
    chosen = jnp.take_along_axis(logits, proposal[..., None], axis=-1)[..., 0]
    return jnp.exp(chosen - jax.nn.logsumexp(logits, axis=-1))


def margin(logits, proposal):
    """p(top-1) - p(top-2) (Dream's topk_margin)."""
    del proposal
    lse = jax.nn.logsumexp(logits, axis=-1)
    top2 = jax.lax.top_k(logits, 2)[0]
    return jnp.exp(top2[..., 0] - lse) - jnp.exp(top2[..., 1] - lse)


def neg_entropy(logits, proposal):
    """sum p log p, minus the entropy, so confident positions score high (Dream's entropy)."""
    del proposal
    log_probs = logits - jax.nn.logsumexp(logits, axis=-1)[..., None]
    return jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)


# Commit rules: bool [B, L] from the positions a step may commit (`eligible`), their scores
# (-inf elsewhere), their rank by descending score (0 = best; ties to the lower position), the
# step's uniform draws, its row of the step tables (`x`: count [B], transfer) and the knobs.


def top_count(eligible, score, rank, uniform, x, knobs):
    """The schedule's number of best-scored positions of each row."""
    return eligible & (rank < x.count[:, None])


def each_with_probability(eligible, score, rank, uniform, x, knobs):
    """Each position independently with the step's probability 1 - s/t (Dream's origin)."""
    return eligible & (uniform < x.transfer)


def above_threshold(eligible, score, rank, uniform, x, knobs):
    """Every position with p >= threshold, and the row's best one (RoBERTa-diffusion, Fast-dLLM)."""
    return eligible & ((score >= knobs.threshold) | (rank == 0))


def within_factor(eligible, score, rank, uniform, x, knobs):
    """Fast-dLLM's factor rule: the n most confident while (n + 1) (1 - c_n) < factor, at least
    one. With c sorted descending, (n + 1) (1 - c_n) only grows with n, so the "while" is a test
    of each position's own rank (n = rank + 1)."""
    return eligible & (((rank + 2).astype(jnp.float32) * (1.0 - score) < knobs.factor) | (rank == 0))


@dataclasses.dataclass(frozen=True)
class Strategy:
    """One row of the table; a static part of the compiled program."""

    name: str
    score: Callable | None  # (logits, proposal) -> score; None: the step's uniform draw
    commit: Callable  # (eligible, score, rank, uniform, x, knobs) -> bool [B, L]
    counted: bool  # commits per step fixed by the schedule: masks left known on the host
    bounded_loop: bool  # decides its own counts: while loop until no mask is left
    remask: bool = False  # re-predicts the block's decoded positions and re-masks all but `count`

    @property
    def scheduled(self) -> bool:
        """The schedule sets its commits per step (random_remask: per step of its block)."""
        return self.counted or self.remask

    @property
    def needs_logits(self) -> bool:
        """Its score needs the whole distribution, not only the greedy head's probability."""
        return self.score not in (None, probability)


STRATEGY_TABLE = {
    s.name: s
    for s in (
        Strategy("low_confidence", probability, top_count, counted=True, bounded_loop=False),  # LLaDA
        Strategy("random", None, top_count, counted=True, bounded_loop=False),  # LLaDA
        Strategy("topk_margin", margin, top_count, counted=True, bounded_loop=False),  # Dream
        Strategy("entropy", neg_entropy, top_count, counted=True, bounded_loop=False),  # Dream
        Strategy("origin", None, each_with_probability, counted=False, bounded_loop=False),  # Dream
        Strategy("threshold", probability, above_threshold, counted=False, bounded_loop=True),  # RoBERTa-diffusion
        Strategy("factor", probability, within_factor, counted=False, bounded_loop=True),  # Fast-dLLM
        # RoBERTa-diffusion v1: `count` is the block's cumulative total (step_tables).
        Strategy("random_remask", None, top_count, counted=False, bounded_loop=False, remask=True),
    )
}
ALIASES = {"maskgit_plus": "low_confidence"}  # Dream's name for the same rule
STRATEGIES = tuple(STRATEGY_TABLE) + tuple(ALIASES)  # every name `remasking` accepts


def strategy_named(name: str) -> Strategy:
    return STRATEGY_TABLE[ALIASES.get(name, name)]
