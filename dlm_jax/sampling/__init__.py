"""On-device unmasking sampler: the whole schedule of a masked diffusion LM in one program.

The canvas is each prompt followed by `gen_length` mask tokens. Every step runs the encoder on
the canvas, proposes a token for every position that may be committed (greedy, or Gumbel-max at
a temperature, after top-k / top-p filtering and classifier-free guidance), scores those
positions with a remasking strategy, and commits the best ones. The host computes how many
tokens each step commits (a schedule, per row and block) once; the device runs all steps in one
`jax.lax.scan` (a bounded `jax.lax.while_loop` when the strategy decides its own counts, rows
stop at EOS, or a key/value cache lets the steps between refreshes run the encoder over each
row's active block only), so one call is one compiled program and no data returns to the host
before the end.

Randomness: step s uses `fold_in(key(seed), s)`, split by `fold_in` into the Gumbel noise of the
proposal (float32: JAX runs without x64 by default; LLaDA's reference uses float64) and the
uniform draws of the `random`, `origin` and `random_remask` strategies and of `alg_temp`'s draw
of positions.

Speed: the vocabulary head (hidden x vocab) costs more than the whole encoder of a small model, so
each step sends through it only the positions that may be committed (at most a size the host
knows per step; `lax.switch` picks one of a few static sizes), and greedy decoding never
materialises the logits (`ops.greedy_head`).

Semantics follow LLaDA's `generate` (blocks, even split, low_confidence/random, CFG), Dream's
`diffusion_generate` (origin, maskgit_plus, topk_margin, entropy, alg_temp, top-p/top-k),
RoBERTa-diffusion (threshold decoding; random re-masking over 10 linear levels) and Fast-dLLM
(prefix and dual caches, threshold and factor rules). docs/sampling.md has the details.

Modules, in reading order: `strategies` (the table of remasking strategies), `plan` (host side:
schedules, the static plan, checks, step tables), `step` (one step on the device), `generate`
(the compiled loop and the public entry point).
"""

# _program: the jitted program (tests count its compilations)
from dlm_jax.sampling.generate import _program as _program
from dlm_jax.sampling.generate import cut_at_eos, encode_prompt, generate, generated_text
from dlm_jax.sampling.plan import CACHES, ORIGIN_EPS, SCHEDULES, check, commit_counts
from dlm_jax.sampling.step import gumbel_noise, noise_keys
from dlm_jax.sampling.strategies import STRATEGIES

__all__ = [
    "CACHES",
    "ORIGIN_EPS",
    "SCHEDULES",
    "STRATEGIES",
    "check",
    "commit_counts",
    "cut_at_eos",
    "encode_prompt",
    "generate",
    "generated_text",
    "gumbel_noise",
    "noise_keys",
]
