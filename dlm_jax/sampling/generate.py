"""The compiled program (every step on the device), the public `generate`, and text helpers."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dlm_jax import ops
from dlm_jax.sampling.plan import (
    DEFAULT_CONFIDENCE_THRESHOLD,
    Knobs,
    Plan,
    as_batch,
    check,
    step_tables,
)
from dlm_jax.sampling.step import sampler_step
from dlm_jax.sampling.strategies import STRATEGY_TABLE
from dlm_jax.tokenizer import encode_texts, special_token_ids


def _run(plan, graphdef, params, canvas, attention_mask, prompt_mask, seed, knobs, tables):
    """The compiled program: all steps on the device. Returns (final canvas, history or None)."""
    target = (canvas == plan.mask_id) & (attention_mask == 1)
    encoder = nnx.merge(graphdef, params)
    weights, bias = encoder.vocab_decoder()
    decoder = ops.vocab_chunks(weights, bias, encoder.dtype, plan.vocab_chunk, plan.forbidden_ids)
    step_fn = lambda c, x: sampler_step(plan, encoder, decoder, c, attention_mask, prompt_mask, target, seed,
                                        knobs, x)
    if not plan.strategy.bounded_loop:
        def body(c, x):
            c = step_fn(c, x)
            return c, (c if plan.return_history else None)

        return jax.lax.scan(body, canvas, tables)

    # A bounded loop: stop as soon as no row has a mask left; `steps` bounds the loop.
    history = jnp.zeros((plan.steps if plan.return_history else 0, *canvas.shape), canvas.dtype)

    def cond(state):
        step, c, _ = state
        return (step < plan.steps) & jnp.any((c == plan.mask_id) & (attention_mask == 1))

    def body(state):
        step, c, hist = state
        c = step_fn(c, jax.tree.map(lambda a: a[step], tables))
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
    ids, mask = as_batch(prompt_ids, attention_mask, config.pad_token_id)
    check(config, getattr(model, "tokenizer", None), ids, gen_length=gen_length, steps=steps,
          block_length=block_length, temperature=temperature, top_k=top_k, top_p=top_p,
          remasking=remasking, schedule=schedule, cfg_scale=cfg_scale,
          confidence_threshold=confidence_threshold, forbid_eos=forbid_eos)
    prompt_masks = (ids == config.mask_token_id) & (mask == 1)
    plan = Plan(
        strategy=STRATEGY_TABLE[remasking], steps=int(steps), prompt_length=ids.shape[1],
        gen_length=int(gen_length), block_length=int(block_length), mask_id=config.mask_token_id,
        sample=temperature > 0, top_k=None if top_k is None else int(top_k),
        use_top_p=top_p is not None and top_p < 1, use_cfg=cfg_scale > 0,
        forbidden_ids=(config.mask_token_id,) + ((config.eos_token_id,) if forbid_eos else ()),
        return_history=bool(return_history), infill=bool(prompt_masks.any()),
        vocab_chunk=min(ops.VOCAB_CHUNK, config.vocab_size),
    )
    batch = ids.shape[0]
    canvas = np.concatenate([ids, np.full((batch, gen_length), config.mask_token_id)], axis=1)
    full_mask = np.concatenate([mask, np.ones((batch, gen_length), np.int32)], axis=1)
    prompt_mask = np.concatenate([(mask == 1) & ~prompt_masks, np.zeros((batch, gen_length), bool)], axis=1)
    tables = step_tables(plan, prompt_masks.sum(1), schedule)
    threshold = DEFAULT_CONFIDENCE_THRESHOLD if confidence_threshold is None else confidence_threshold
    knobs = Knobs(*(np.float32(v) for v in (temperature, 1.0 if top_p is None else top_p, cfg_scale, threshold)))

    rows = {"canvas": canvas.astype(np.int32), "mask": full_mask, "prompt": prompt_mask,
            "count": tables.count.T}  # counts travel batch-first so they shard with the rows
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
        plan, graphdef, params, rows["canvas"], rows["mask"], rows["prompt"], put(np.uint32(seed)), put(knobs),
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
    return [tokenizer.decode(cut_at_eos(row, eos_id), skip_special_tokens=True)
            for row in np.asarray(ids)[:, prompt_length:]]
