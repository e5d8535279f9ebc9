"""The compiled program (every step on the device), the public `generate`, and text helpers."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dlm_jax import ops
from dlm_jax.sampling.plan import (
    DEFAULT_CONFIDENCE_THRESHOLD,
    DEFAULT_FACTOR,
    Knobs,
    Plan,
    as_batch,
    blocks_of,
    check,
    step_tables,
)
from dlm_jax.sampling.step import (
    active_region,
    commit_step,
    encode_canvas,
    encode_canvas_kv,
    encode_window,
    same_region,
    window_branch,
    window_in_canvas,
    window_offset,
)
from dlm_jax.sampling.strategies import strategy_named
from dlm_jax.tokenizer import encode_texts, special_token_ids


def _run(plan, graphdef, params, canvas, attention_mask, prompt_mask, seed, knobs, tables):
    """The compiled program: all steps on the device. Returns (final canvas, history or None)."""
    target = (canvas == plan.mask_id) & (attention_mask == 1)
    encoder = nnx.merge(graphdef, params)
    weights, bias = encoder.vocab_decoder()
    decoder = ops.vocab_chunks(weights, bias, encoder.dtype, plan.vocab_chunk, plan.forbidden_ids)
    rows = (attention_mask, prompt_mask, plan.use_cfg, plan.mask_id)  # what every encoder call takes
    commit = lambda hidden, c, x, windowed=False: commit_step(
        plan, encoder, decoder, hidden, c, attention_mask, target, seed, knobs, x, windowed
    )
    if plan.cache is None and not plan.loop_until_done:

        def body(c, x):  # a fixed number of steps: one scan
            c = commit(encode_canvas(encoder, c, *rows), c, x)
            return c, (c if plan.return_history else None)

        return jax.lax.scan(body, canvas, tables)

    # A while loop over segments: one step over the whole canvas (with a cache: a refresh, keeping
    # every block's keys and values), then with a cache the steps that can reuse them.
    row = lambda step: jax.tree.map(lambda a: a[step], tables)
    history = jnp.zeros((plan.steps if plan.return_history else 0, *canvas.shape), canvas.dtype)

    def running(step, c):
        if not plan.loop_until_done:
            return step < plan.steps
        return (step < plan.steps) & jnp.any((c == plan.mask_id) & (attention_mask == 1))

    def advance(state, c):  # the state after a step that produced canvas c
        step, _, hist = state
        if plan.return_history:
            hist = jax.lax.dynamic_update_index_in_dim(hist, c, step, 0)
        return step + 1, c, hist

    def window_hidden(region, kv, width):  # one lax.switch branch: the encoder over a window of `width`
        def run(c):
            offset = window_offset(region, width, canvas.shape[1])
            hidden = encode_window(encoder, c, *rows, kv, offset, width)
            return window_in_canvas(hidden, offset, canvas.shape[1], plan.use_cfg)

        return run

    def cached_steps(state, region, kv, start):
        """Steps over each row's window, until the region moves (a block starts), refresh_every
        steps have passed since the refresh, or a bounded loop's last step (which fills every
        mask) comes; none when no window holds the region."""
        branch = window_branch(plan, region)
        windows = [window_hidden(region, kv, width) for width in plan.window_widths]

        def cond(state):
            step, c, _ = state
            go = (branch > 0) & running(step, c) & (step - start < knobs.refresh_every)
            go &= same_region(active_region(plan, c, attention_mask, row(step)), region)
            return go & (step != plan.steps - 1) if plan.strategy.bounded_loop else go

        def body(state):
            step, c, _ = state
            return advance(state, commit(jax.lax.switch(branch - 1, windows, c), c, row(step), windowed=True))

        return jax.lax.while_loop(cond, body, state)

    def segment(state):
        step, c, _ = state
        if plan.cache is None:
            return advance(state, commit(encode_canvas(encoder, c, *rows), c, row(step)))
        region = active_region(plan, c, attention_mask, row(step))
        hidden, kv = encode_canvas_kv(encoder, c, *rows)
        return cached_steps(advance(state, commit(hidden, c, row(step))), region, kv, step)

    done, canvas, history = jax.lax.while_loop(
        lambda state: running(*state[:2]), segment, (jnp.int32(0), canvas, history)
    )
    if not plan.return_history:
        return canvas, None
    # Steps that did not run repeat the final canvas.
    unused = jnp.arange(plan.steps)[:, None, None] >= done
    return canvas, jnp.where(unused, canvas[None], history)


_program = jax.jit(_run, static_argnames=("plan", "graphdef"))


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
    factor: float | None = None,
    alg_temp: float | None = None,
    cache: str | None = None,
    refresh_every: int | None = None,
    stop_at_eos: bool = False,
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
    factor: for remasking="factor" (Fast-dLLM's rule, default 1.0); steps is then the bound.
    alg_temp: Dream's name: draw the positions to commit by softmax(score / alg_temp) instead of
      taking the best scores (0 or None: the best).
    cache: None (every step encodes the whole canvas), "prefix" or "dual": keys and values of
      the positions outside each row's active block (prefix: before it; dual: also after it) are
      reused between refreshes, at each block start and every `refresh_every` steps (default:
      only at block starts). refresh_every=1 gives exactly the uncached tokens.
    stop_at_eos: a row whose generated text has ended (an EOS with no mask before it) is done:
      its remaining masks become EOS, and the loop stops once every row is done.
    mesh: shard the batch of prompts over this mesh's devices (rows padded to fill it).

    Returns int32 NumPy ids [B, P + gen_length] (and the history [steps, B, P + gen_length] of
    canvases after every step when return_history).
    """
    config, encoder = model.config, model.encoder
    ids, mask = as_batch(prompt_ids, attention_mask, config.pad_token_id)
    check(
        config,
        getattr(model, "tokenizer", None),
        ids,
        gen_length=gen_length,
        steps=steps,
        block_length=block_length,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        remasking=remasking,
        schedule=schedule,
        cfg_scale=cfg_scale,
        confidence_threshold=confidence_threshold,
        forbid_eos=forbid_eos,
        factor=factor,
        alg_temp=alg_temp,
        cache=cache,
        refresh_every=refresh_every,
        stop_at_eos=stop_at_eos,
        seed=seed,
    )
    prompt_masks = (ids == config.mask_token_id) & (mask == 1)
    plan = Plan(
        strategy=strategy_named(remasking),
        steps=int(steps),
        prompt_length=ids.shape[1],
        gen_length=int(gen_length),
        block_length=int(blocks_of(gen_length, block_length)),
        mask_id=config.mask_token_id,
        sample=temperature > 0,
        top_k=None if top_k is None else int(top_k),
        use_top_p=top_p is not None and top_p < 1,
        use_cfg=cfg_scale > 0,
        forbidden_ids=(config.mask_token_id,) + ((config.eos_token_id,) if forbid_eos else ()),
        return_history=bool(return_history),
        infill=bool(prompt_masks.any()),
        vocab_chunk=min(ops.VOCAB_CHUNK, config.vocab_size),
        cache=cache,
        stop_eos=config.eos_token_id if stop_at_eos else None,
        alg_temp=bool(alg_temp),
    )
    batch = ids.shape[0]
    canvas = np.concatenate([ids, np.full((batch, plan.gen_length), config.mask_token_id)], axis=1)
    full_mask = np.concatenate([mask, np.ones((batch, plan.gen_length), np.int32)], axis=1)
    prompt_mask = np.concatenate([(mask == 1) & ~prompt_masks, np.zeros((batch, plan.gen_length), bool)], axis=1)
    tables = step_tables(plan, prompt_masks.sum(1), schedule)
    knobs = Knobs(
        temperature=np.float32(temperature),
        top_p=np.float32(1.0 if top_p is None else top_p),
        cfg_scale=np.float32(cfg_scale),
        threshold=np.float32(DEFAULT_CONFIDENCE_THRESHOLD if confidence_threshold is None else confidence_threshold),
        factor=np.float32(DEFAULT_FACTOR if factor is None else factor),
        alg_temp=np.float32(alg_temp or 1.0),
        refresh_every=np.int32(plan.steps if refresh_every is None else refresh_every),
    )

    rows = {
        "canvas": canvas.astype(np.int32),
        "mask": full_mask,
        "prompt": prompt_mask,
        "count": tables.count.T,
    }  # counts travel batch-first so they shard with the rows
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
    out, history = _program(
        plan,
        graphdef,
        params,
        rows["canvas"],
        rows["mask"],
        rows["prompt"],
        put(np.uint32(int(seed))),
        put(knobs),
        put(tables._replace(count=None))._replace(count=rows["count"].T),
    )
    out, history = jax.device_get((out, history))
    out = np.asarray(out)[:batch]
    if return_history:
        return out, np.asarray(history)[:, :batch]
    return out


def encode_prompt(tokenizer, text: str) -> list[int]:
    """BOS + the text's tokens, whole (no tokenizer setting truncates or pads them); no EOS, since
    the model is to continue the text."""
    bos = special_token_ids(tokenizer)["bos"]
    return ([bos] if bos is not None else []) + encode_texts(tokenizer, [text])[0]


def cut_at_eos(row, eos_id: int | None) -> list[int]:
    """The tokens of `row` before its first EOS (all of them when eos_id is None or absent)."""
    row = np.asarray(row).reshape(-1)
    if eos_id is not None and (row == eos_id).any():
        row = row[: int(np.argmax(row == eos_id))]
    return row.tolist()


def generated_text(tokenizer, ids, prompt_length: int, *, eos_id: int | None = None) -> list[str]:
    """Text of the generated part of each row, cut at the first EOS (when eos_id is given)."""
    return [
        tokenizer.decode(cut_at_eos(row, eos_id), skip_special_tokens=True)
        for row in np.asarray(ids)[:, prompt_length:]
    ]
