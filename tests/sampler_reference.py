"""A plain NumPy loop of the sampler's algorithms, written from the published samplers' recipes.

Used only by tests/test_sampling.py to check the scanned sampler token for token. It shares two
things with dlm_jax.sampling on purpose: the forward (`guided_logits` over the sampler's
`encode_canvas`; the model is not what is under test) and the random numbers (`noise_keys` + jax.random draws with the same keys),
so the comparison isolates the algorithm: schedules, proposals, scores, blocks, commits. Scores
are computed here in float64; proposals in float32 as on the device.
"""

import math

import jax
import numpy as np
from flax import nnx

from dlm_jax import sampling
from dlm_jax.sampling.step import encode_canvas, guide

NEG = np.float32(-1e30)


def guided_logits(graphdef, params, canvas, attention_mask, prompt_mask, cfg_scale, use_cfg, mask_id):
    """float32 logits [B, L, V] of every canvas position, guided when use_cfg."""
    encoder = nnx.merge(graphdef, params)
    hidden = encode_canvas(encoder, canvas, attention_mask, prompt_mask, use_cfg, mask_id)
    logits = encoder.logits_from_hidden(hidden)
    return guide(logits, cfg_scale) if use_cfg else logits


def schedule_counts(n, steps, schedule):
    """Tokens committed per step, written out step by step."""
    if schedule == "even":  # LLaDA: floor(n / steps), the remainder to the first steps
        return [n // steps + (1 if s < n % steps else 0) for s in range(steps)]
    counts, masked = [], n
    for s in range(1, steps + 1):
        if schedule == "cosine":
            left = math.floor(n * math.cos(math.pi / 2 * s / steps) + 1e-9)
        else:
            left = n * (steps - s) // steps
        left = min(max(left, steps - s), n - s) if s < steps else 0
        counts.append(masked - left)
        masked = left
    return counts


def filtered(logits, top_k, top_p):
    out = logits.copy()
    for row in out.reshape(-1, out.shape[-1]):
        if top_k is not None:
            kth = np.sort(row)[::-1][top_k - 1]
            row[row < kth] = NEG
        if top_p is not None:
            ordered = np.sort(row.astype(np.float64))[::-1]
            probs = np.exp(ordered - ordered.max())
            probs /= probs.sum()
            before = np.cumsum(probs) - probs
            cutoff = ordered[(before < top_p).sum() - 1]
            row[row < cutoff] = NEG
    return out


def score_of(remasking, logits, proposal, uniform):
    if remasking in ("random", "origin", "random_remask"):
        return uniform.astype(np.float64)
    x = logits.astype(np.float64)
    lse = np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)) + x.max(-1)
    if remasking in ("low_confidence", "threshold"):
        return np.exp(np.take_along_axis(x, proposal[..., None], -1)[..., 0] - lse)
    if remasking == "topk_margin":
        top = np.sort(x, -1)
        return np.exp(top[..., -1] - lse) - np.exp(top[..., -2] - lse)
    logp = x - lse[..., None]
    return (np.exp(logp) * logp).sum(-1)


def reference_generate(model, prompts, *, gen_length, steps, block_length=None, temperature=0.0,
                       top_k=None, top_p=None, remasking="low_confidence", schedule="even",
                       cfg_scale=0.0, confidence_threshold=0.9, forbid_eos=False, seed=0):
    config = model.config
    mask_id = config.mask_token_id
    block_length = block_length or gen_length
    width = max(len(p) for p in prompts)
    batch, length = len(prompts), width + gen_length
    canvas = np.full((batch, length), config.pad_token_id, np.int64)
    attn = np.zeros((batch, length), np.int32)
    for r, p in enumerate(prompts):
        canvas[r, width - len(p):width] = p
        attn[r, width - len(p):] = 1
    canvas[:, width:] = mask_id
    prompt_mask = (attn == 1) & (canvas != mask_id)
    prompt_mask[:, width:] = False
    target = (canvas == mask_id) & (attn == 1)
    graphdef, params = nnx.split(model.encoder)
    forward = jax.jit(guided_logits, static_argnums=(0, 6, 7))

    num_blocks = gen_length // block_length
    per_block = steps // num_blocks
    times = np.linspace(1.0, sampling.ORIGIN_EPS, per_block + 1)
    step = 0
    for b in range(num_blocks):
        lo = 0 if b == 0 else width + b * block_length
        hi = width + (b + 1) * block_length
        counts = [schedule_counts(int(((canvas[r, lo:hi] == mask_id) & (attn[r, lo:hi] == 1)).sum()),
                                  per_block, schedule) for r in range(batch)]
        for i in range(per_block):
            if remasking == "threshold" and not ((canvas == mask_id) & (attn == 1)).any():
                return canvas
            logits = np.array(forward(graphdef, params, canvas.astype(np.int32), attn, prompt_mask,
                                        np.float32(cfg_scale), cfg_scale > 0, mask_id))
            logits[..., mask_id] = NEG  # a mask is never a proposal
            if forbid_eos:
                logits[..., config.eos_token_id] = NEG
            gumbel_key, uniform_key = sampling.noise_keys(np.uint32(seed), np.int32(step))
            if temperature > 0:
                gumbel = np.asarray(sampling.gumbel_noise(gumbel_key, np.arange(length), batch, logits.shape[-1]))
                top_p_used = top_p if top_p is not None and top_p < 1 else None
                noisy = filtered(logits, top_k, top_p_used) + np.float32(temperature) * gumbel
                proposal = noisy.argmax(-1)
            else:
                proposal = logits.argmax(-1)
            uniform = np.asarray(jax.random.uniform(uniform_key, canvas.shape, np.float32))
            score = score_of(remasking, logits, proposal, uniform)
            masked = (canvas == mask_id) & (attn == 1)
            for r in range(batch):
                if remasking == "threshold":
                    gen_masks = [q for q in range(width, length) if masked[r, q]]
                    if not gen_masks:
                        end = width
                    else:
                        end = width + ((gen_masks[0] - width) // block_length + 1) * block_length
                    cand = [q for q in range(end) if masked[r, q]]
                    if step == steps - 1:
                        chosen = [q for q in range(length) if masked[r, q]]
                    else:
                        best = max(cand, key=lambda q: (score[r, q], -q)) if cand else None
                        chosen = [q for q in cand
                                  if score[r, q] >= np.float32(confidence_threshold) or q == best]
                    for q in chosen:
                        canvas[r, q] = proposal[r, q]
                    continue
                if remasking == "random_remask":
                    cand = [q for q in range(lo, hi) if target[r, q]]
                else:
                    cand = [q for q in range(lo, hi) if masked[r, q]]
                if remasking == "origin":
                    p = np.float32(1.0 - times[i + 1] / times[i]) if i < per_block - 1 else np.float32(1)
                    chosen = [q for q in cand if uniform[r, q] < p]
                else:
                    # sort by score, highest first; ties to the lower position
                    ordered = sorted(cand, key=lambda q: (-score[r, q], q))
                    k = sum(counts[r][: i + 1]) if remasking == "random_remask" else counts[r][i]
                    chosen = ordered[:k]
                if remasking == "random_remask":
                    for q in cand:
                        canvas[r, q] = proposal[r, q] if q in chosen else mask_id
                else:
                    for q in chosen:
                        canvas[r, q] = proposal[r, q]
            step += 1
    return canvas
