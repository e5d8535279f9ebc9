"""The train step: corrupt -> encoder -> loss terms -> gradients -> AdamW update.

One pure function `(state, batch) -> (state, metrics)` compiled once with `jax.jit` over the
mesh. Randomness comes only from `fold_in(base_key, step)`, so any step can be recomputed after
a restart. The loss is a ratio of GLOBAL sums (diffusion.loss_terms): gradients of the summed
numerator are accumulated over microbatches and divided once by the total denominator, which
equals the gradient of the whole batch's loss whatever the device count or accumulation.

parallelism="mesh" lets XLA partition everything from the shardings; parallelism="pmap" runs
the same microbatch gradient function under `jax.shard_map` with explicit psums (the
data-parallel pmap recipe, now built on jit(shard_map)).
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dlm_jax import diffusion, ops
from dlm_jax.models import COMPUTE_DTYPES
from dlm_jax.train.mesh import BATCH_AXES


class TrainState(NamedTuple):
    step: jax.Array  # int32 scalar: number of updates applied
    params: Any  # pure dict of float32 arrays (the Encoder's nnx.Param tree)
    opt_state: Any
    ema: Any  # EMA of params, or None


def learning_rate_schedule(config) -> optax.Schedule:
    end = config.lr * config.end_lr_ratio
    decay_steps = max(config.steps - config.warmup_steps, 1)
    if config.schedule == "cosine":
        decay = optax.cosine_decay_schedule(config.lr, decay_steps, alpha=config.end_lr_ratio)
    else:
        decay = optax.linear_schedule(config.lr, end, decay_steps)
    warmup = optax.linear_schedule(0.0, config.lr, config.warmup_steps)
    return optax.join_schedules([warmup, decay], [config.warmup_steps])


def make_optimizer(config) -> optax.GradientTransformation:
    # No weight decay on biases and LayerNorm parameters (every 1-D parameter).
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
    return optax.chain(
        optax.clip_by_global_norm(config.clip_norm),
        optax.adamw(
            learning_rate_schedule(config),
            b1=config.b1,
            b2=config.b2,
            eps=config.adam_eps,
            weight_decay=config.weight_decay,
            mask=decay_mask,
        ),
    )


def make_microbatch_grads(graphdef, model_config, objective, cross_entropy):
    """(params, input_ids, corruption, eligible) -> (grads of summed numerator, sums).

    The one copy of the loss: both parallelism modes call it. `cross_entropy` is
    ops.vocab_cross_entropy with its static arguments bound (sharded over the batch in mesh mode).
    """
    pad_id = model_config.pad_token_id

    def numerator(params, input_ids, corruption, eligible):
        model = nnx.merge(graphdef, params)
        features, embedding, bias = model.head_inputs(corruption.input_ids, attention_mask=input_ids != pad_id)
        weighted, ce, correct = cross_entropy(features, embedding, bias, input_ids, corruption.weights)
        _, den, metrics = diffusion.loss_terms(ce, correct, eligible, corruption, objective)
        sums = {"numerator": weighted, "denominator": jnp.sum(den)}
        sums.update(metrics)
        return weighted, sums

    return jax.grad(numerator, has_aux=True)


def _varying(tree):
    """Mark replicated values as differing per device inside shard_map (jax.lax.pcast), as
    per-device gradients do; hand-written backward passes (ops.py) must return cotangents of
    their inputs' type, so they only see varying inputs there."""
    return jax.tree.map(lambda x: jax.lax.pcast(x, BATCH_AXES, to="varying"), tree)


def make_train_step(config, graphdef, mesh, optimizer):
    """The step function (not yet jitted): (TrainState, batch) -> (TrainState, metrics)."""
    model_config, objective = config.model, config.objective
    accum = config.grad_accum_steps
    base_key = jax.random.key(config.seed)
    schedule = learning_rate_schedule(config)
    local_cross_entropy = functools.partial(
        ops.vocab_cross_entropy, dtype=COMPUTE_DTYPES[config.dtype], chunk_size=config.loss_chunk_size
    )
    batch_spec = P(BATCH_AXES)
    if config.parallelism == "pmap":
        per_device = make_microbatch_grads(graphdef, model_config, objective, local_cross_entropy)
        microbatch_grads = jax.shard_map(
            lambda params, *batch: jax.lax.psum(per_device(_varying(params), *batch), BATCH_AXES),
            mesh=mesh,
            in_specs=(P(), batch_spec, batch_spec, batch_spec),
            out_specs=P(),
        )
    else:
        # Each device decodes its own rows' scored tokens (their number differs per device,
        # which GSPMD's global view cannot express); the decoder is gathered whole for it.
        def local(features, embedding, bias, targets, weights):
            weighted, ce, correct = local_cross_entropy(features, *_varying((embedding, bias)), targets, weights)
            return jax.lax.psum(weighted, BATCH_AXES), ce, correct

        sharded_cross_entropy = jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(batch_spec, P(), P(), batch_spec, batch_spec),
            out_specs=(P(), batch_spec, batch_spec),
        )
        microbatch_grads = make_microbatch_grads(graphdef, model_config, objective, sharded_cross_entropy)

    def split(x):  # [B, ...] -> [accum, B / accum, ...]; microbatch i holds rows i, i + accum, ...
        x = x.reshape((x.shape[0] // accum, accum) + x.shape[1:]).swapaxes(0, 1)
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(None, BATCH_AXES)))

    def train_step(state: TrainState, batch):
        input_ids = batch["input_ids"]
        # Corrupt the whole global batch at once (elbo stratifies t over it), then split.
        key = jax.random.fold_in(base_key, state.step)
        eligible = diffusion.eligible_positions(
            input_ids,
            batch["prompt_mask"],
            pad_id=model_config.pad_token_id,
            special_ids=model_config.special_token_ids,
            prefix_len=objective.prefix_len,
        )
        corruption = diffusion.corrupt(
            key,
            input_ids,
            eligible,
            objective,
            mask_token_id=model_config.mask_token_id,
            vocab_size=model_config.vocab_size,
        )
        if accum == 1:
            grads, sums = microbatch_grads(state.params, input_ids, corruption, eligible)
        else:
            micro = jax.tree.map(split, (input_ids, corruption, eligible))

            def add(carry, xs):
                out = microbatch_grads(state.params, *xs)
                return jax.tree.map(jnp.add, carry, out), None

            zeros = jax.tree.map(
                lambda s: jnp.zeros(s.shape, s.dtype),
                jax.eval_shape(microbatch_grads, state.params, *jax.tree.map(lambda x: x[0], micro)),
            )
            (grads, sums), _ = jax.lax.scan(add, zeros, micro)
        denominator = jnp.maximum(sums["denominator"], 1.0)
        grads = jax.tree.map(lambda g: g / denominator, grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema
        if config.ema_decay is not None:
            d = config.ema_decay
            ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params)
        metrics = dict(
            sums, loss=sums["numerator"] / denominator, grad_norm=optax.tree.norm(grads), lr=schedule(state.step)
        )
        return TrainState(state.step + 1, params, opt_state, ema), metrics

    return train_step
