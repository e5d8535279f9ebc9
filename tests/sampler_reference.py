"""A plain NumPy loop of the sampler's algorithms, written from the published samplers' recipes.

Used only by the sampler's tests to check the compiled sampler token for token. It shares two
things with dlm_jax.sampling on purpose: the forward passes (`guided_logits` over the sampler's
`encode_canvas`, and for the cache its `encode_canvas_kv` / `encode_window`; the model is not what
is under test) and the random numbers (`noise_keys` + jax.random draws with the same keys), so the
comparison isolates the algorithm: schedules, proposals, scores, blocks, commits, and with a
cache when the keys and values are refreshed and which positions each cached step recomputes.
Scores are computed here in float64; proposals in float32 as on the device.
"""

import math

import jax
import numpy as np
from flax import nnx

from dlm_jax import sampling
from dlm_jax.sampling.step import encode_canvas, encode_canvas_kv, encode_window, guide

NEG = np.float32(-1e30)


def guided_logits(graphdef, params, canvas, attention_mask, prompt_mask, cfg_scale, use_cfg, mask_id):
    """float32 logits [B, L, V] of every canvas position, guided when use_cfg."""
    encoder = nnx.merge(graphdef, params)
    hidden = encode_canvas(encoder, canvas, attention_mask, prompt_mask, use_cfg, mask_id)
    logits = encoder.logits_from_hidden(hidden)
    return guide(logits, cfg_scale) if use_cfg else logits


def guided_logits_kv(graphdef, params, canvas, attention_mask, prompt_mask, cfg_scale, use_cfg, mask_id):
    """guided_logits, and every block's keys and values of the whole canvas."""
    encoder = nnx.merge(graphdef, params)
    hidden, kv = encode_canvas_kv(encoder, canvas, attention_mask, prompt_mask, use_cfg, mask_id)
    logits = encoder.logits_from_hidden(hidden)
    return (guide(logits, cfg_scale) if use_cfg else logits), kv


def guided_window_logits(
    graphdef, params, canvas, attention_mask, prompt_mask, cfg_scale, use_cfg, mask_id, kv, offset, width
):
    """float32 logits [B, width, V] of the positions offset .. offset + width of each row, those
    positions recomputed and every other one read from kv."""
    encoder = nnx.merge(graphdef, params)
    hidden = encode_window(encoder, canvas, attention_mask, prompt_mask, use_cfg, mask_id, kv, offset, width)
    logits = encoder.logits_from_hidden(hidden)
    return guide(logits, cfg_scale) if use_cfg else logits


class CachedForward:
    """The cached forward of Fast-dLLM's prefix / dual cache, step by step. A refresh runs the
    whole canvas and keeps its keys and values; it happens at the first step, when a busy row's
    region moves (a new block), after `refresh_every` steps, at a bounded loop's last step, and
    when the region is wider than every window. Other steps recompute only a window per row: the
    region (dual: the block; prefix: the block and all after it), of the smallest width among
    the block's (dual) or the suffixes' (prefix) that holds every busy row's, started at the
    region's start or moved back to fit in the canvas."""

    def __init__(self, mode, refresh_every, gen_length, block_length, steps, forward_args):
        self.refresh_every = refresh_every or steps
        if mode == "dual":
            self.widths = [block_length]
        else:
            self.widths = [gen_length - b * block_length for b in reversed(range(gen_length // block_length))]
        self.graphdef, self.params, self.static = forward_args
        self.full = jax.jit(guided_logits_kv, static_argnums=(0, 6, 7))
        self.window = jax.jit(guided_window_logits, static_argnums=(0, 6, 7, 10))
        self.kv = None

    def logits(self, step, canvas, attn, prompt_mask, cfg_scale, region, last):
        """(logits [B, L, V], window (offset [B], width) or None for a refresh); outside the
        window the logits are 0 and must not be used."""
        lo, hi, busy = region
        same = self.kv is not None and all(
            not busy[r] or (lo[r], hi[r]) == (self.lo[r], self.hi[r]) for r in range(len(lo))
        )
        use_cfg, mask_id = self.static
        args = (
            self.graphdef,
            self.params,
            canvas.astype(np.int32),
            attn,
            prompt_mask,
            np.float32(cfg_scale),
            use_cfg,
            mask_id,
        )
        if not same or step - self.start >= self.refresh_every or last or self.width is None:
            logits, self.kv = self.full(*args)
            need = max([hi[r] - lo[r] for r in range(len(lo)) if busy[r]], default=0)
            self.width = min([w for w in self.widths if w >= need], default=None)
            self.lo, self.hi, self.start = lo, hi, step
            return np.array(logits), None
        length = canvas.shape[1]
        offset = np.minimum(np.asarray(self.lo), length - self.width).astype(np.int32)
        window = np.array(self.window(*args, self.kv, offset, self.width))
        logits = np.zeros(window.shape[:1] + (length,) + window.shape[2:], np.float32)
        for r in range(len(offset)):
            logits[r, offset[r] : offset[r] + self.width] = window[r]
        return logits, (offset, self.width)


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
    if remasking in ("low_confidence", "threshold", "factor"):
        return np.exp(np.take_along_axis(x, proposal[..., None], -1)[..., 0] - lse)
    if remasking == "topk_margin":
        top = np.sort(x, -1)
        return np.exp(top[..., -1] - lse) - np.exp(top[..., -2] - lse)
    logp = x - lse[..., None]
    return (np.exp(logp) * logp).sum(-1)


def reference_generate(
    model,
    prompts,
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
    confidence_threshold=0.9,
    forbid_eos=False,
    seed=0,
    factor=1.0,
    alg_temp=None,
    cache=None,
    refresh_every=None,
    stop_at_eos=False,
):
    config = model.config
    remasking = {"maskgit_plus": "low_confidence"}.get(remasking, remasking)  # Dream's name
    bounded = remasking in ("threshold", "factor")  # they decide their own counts
    mask_id = config.mask_token_id
    block_length = block_length or gen_length
    width = max(len(p) for p in prompts)
    batch, length = len(prompts), width + gen_length
    canvas = np.full((batch, length), config.pad_token_id, np.int64)
    attn = np.zeros((batch, length), np.int32)
    for r, p in enumerate(prompts):
        canvas[r, width - len(p) : width] = p
        attn[r, width - len(p) :] = 1
    canvas[:, width:] = mask_id
    prompt_mask = (attn == 1) & (canvas != mask_id)
    prompt_mask[:, width:] = False
    target = (canvas == mask_id) & (attn == 1)
    infill = bool(((canvas[:, :width] == mask_id) & (attn[:, :width] == 1)).any())
    graphdef, params = nnx.split(model.encoder)
    forward = jax.jit(guided_logits, static_argnums=(0, 6, 7))
    cached = cache and CachedForward(
        cache, refresh_every, gen_length, block_length, steps, (graphdef, params, (cfg_scale > 0, mask_id))
    )

    num_blocks = gen_length // block_length
    per_block = steps // num_blocks
    times = np.linspace(1.0, sampling.ORIGIN_EPS, per_block + 1)
    step = 0
    for b in range(num_blocks):
        lo = 0 if b == 0 else width + b * block_length
        hi = width + (b + 1) * block_length
        counts = [
            schedule_counts(int(((canvas[r, lo:hi] == mask_id) & (attn[r, lo:hi] == 1)).sum()), per_block, schedule)
            for r in range(batch)
        ]
        for i in range(per_block):
            if (bounded or stop_at_eos) and not ((canvas == mask_id) & (attn == 1)).any():
                return canvas
            if cached:
                region = active_regions(canvas, attn, mask_id, width, block_length, b, infill, bounded, cache)
                logits, window = cached.logits(
                    step, canvas, attn, prompt_mask, cfg_scale, region, bounded and step == steps - 1
                )
            else:
                logits, window = (
                    np.array(
                        forward(
                            graphdef,
                            params,
                            canvas.astype(np.int32),
                            attn,
                            prompt_mask,
                            np.float32(cfg_scale),
                            cfg_scale > 0,
                            mask_id,
                        )
                    ),
                    None,
                )
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
            if alg_temp:  # Dream: draw `count` positions by softmax(score / alg_temp), as Gumbel top-k
                tiny = np.finfo(np.float32).tiny
                score = score / alg_temp - np.log(-np.log(np.maximum(uniform, tiny).astype(np.float64)))
            masked = (canvas == mask_id) & (attn == 1)
            for r in range(batch):
                if bounded:
                    gen_masks = [q for q in range(width, length) if masked[r, q]]
                    if not gen_masks:
                        end = width
                    else:
                        end = width + ((gen_masks[0] - width) // block_length + 1) * block_length
                    cand = [q for q in range(end) if masked[r, q]]
                    in_window(window, r, cand)
                    if step == steps - 1:
                        chosen = [q for q in range(length) if masked[r, q]]
                    elif remasking == "threshold":
                        best = max(cand, key=lambda q: (score[r, q], -q)) if cand else None
                        chosen = [q for q in cand if score[r, q] >= np.float32(confidence_threshold) or q == best]
                    else:  # Fast-dLLM's factor: the n most confident while (n + 1)(1 - c_n) < factor
                        ordered = sorted(cand, key=lambda q: (-score[r, q], q))
                        chosen = ordered[:1]
                        for n, q in enumerate(ordered[1:], start=2):
                            if not (n + 1) * (1 - score[r, q]) < factor:
                                break
                            chosen.append(q)
                    for q in chosen:
                        canvas[r, q] = proposal[r, q]
                    continue
                if remasking == "random_remask":
                    cand = [q for q in range(lo, hi) if target[r, q]]
                else:
                    cand = [q for q in range(lo, hi) if masked[r, q]]
                in_window(window, r, cand)
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
            if stop_at_eos:
                finish_at_eos(canvas, attn, width, mask_id, config.eos_token_id)
            step += 1
    return canvas


def active_regions(canvas, attn, mask_id, width, block_length, b, infill, bounded, cache):
    """(lo, hi, busy) per row: the region a cached step recomputes. The block (block 0 from 0
    when prompts hold masks); for threshold/factor the block of the row's first masked generated
    position, from 0 while its prompt holds masks; prefix: up to the canvas end."""
    masked = (canvas == mask_id) & (attn == 1)
    length = canvas.shape[1]
    lo, hi, busy = [], [], []
    for r in range(canvas.shape[0]):
        row_masked = [bool(m) for m in masked[r]]
        busy.append(any(row_masked))
        if bounded:
            gen = [q for q in range(width, length) if row_masked[q]]
            j = (gen[0] - width) // block_length if gen else (length - width) // block_length
            lo.append(0 if any(row_masked[:width]) else width + j * block_length)
            hi.append(min(width + (j + 1) * block_length, length))
        else:
            lo.append(0 if b == 0 and infill else width + b * block_length)
            hi.append(width + (b + 1) * block_length)
        if cache == "prefix":
            hi[-1] = length
    return lo, hi, busy


def in_window(window, r, cand):
    """A cached step may commit only inside the window it recomputed."""
    if window is not None:
        offset, size = window
        assert all(offset[r] <= q < offset[r] + size for q in cand), (r, cand, offset[r], size)


def finish_at_eos(canvas, attn, width, mask_id, eos_id):
    """stop_at_eos: a row whose first generated EOS has no mask before it gets EOS in its masks."""
    for r in range(canvas.shape[0]):
        masked = [q for q in range(canvas.shape[1]) if canvas[r, q] == mask_id and attn[r, q] == 1]
        eos = [q for q in range(width, canvas.shape[1]) if canvas[r, q] == eos_id]
        if eos and (not masked or masked[0] > eos[0]):
            for q in masked:
                canvas[r, q] = eos_id
