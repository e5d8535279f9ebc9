"""The training loop: resolve model, tokenizer and data; build the mesh and the state; compile
the step ahead of time; run, log, checkpoint, and stop cleanly on SIGTERM or a NaN loss.

Every check a user can fail happens before compilation, and nothing is written to the workdir
until they have passed.
"""

import dataclasses
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath
from jax.experimental import multihost_utils

from dlm_jax import data
from dlm_jax.checkpoint import WORKDIR_MODEL_DIR, read_any
from dlm_jax.errors import UserError
from dlm_jax.models import COMPUTE_DTYPES, CONFIG_FILE, EncoderConfig
from dlm_jax.models.params import abstract_encoder, new_encoder, params_of
from dlm_jax.tokenizer import load_tokenizer, special_token_ids
from dlm_jax.train import checkpointing
from dlm_jax.train.config import TrainConfig, save_config
from dlm_jax.train.mesh import batch_sharding, global_batch, make_mesh, param_shardings, replicated
from dlm_jax.train.metrics import MetricsWriter, peak_tflops, step_flops, summarize
from dlm_jax.train.step import TrainState, make_optimizer, make_train_step



def _say(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


def resolve_model(config: TrainConfig, workdir: epath.Path):
    """-> (config with the real model, tokenizer, init params or None)."""
    if config.init is not None:
        model, params, tokenizer = read_any(config.init)
        if tokenizer is None and config.tokenizer is None:
            raise UserError(f"{config.init} has no tokenizer; name one with --set tokenizer=DIR")
        if config.tokenizer is not None:
            tokenizer = load_tokenizer(config.tokenizer)
        return dataclasses.replace(config, model=model), tokenizer, params
    if config.tokenizer is not None:
        tokenizer = load_tokenizer(config.tokenizer)
    else:  # the workdir's own tokenizer, trained on the corpus by the first run (host 0)
        model_dir = workdir / WORKDIR_MODEL_DIR
        if jax.process_index() == 0:
            with checkpointing.locally(model_dir, upload=True) as local:
                tokenizer = data.tokenizer_for_run(_data_spec(config), local, config.tokenizer_vocab_size)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("dlm_jax tokenizer")
            with checkpointing.locally(model_dir, upload=False) as local:
                tokenizer = load_tokenizer(local)
    ids = special_token_ids(tokenizer)
    model = config.model.replace(vocab_size=len(tokenizer), pad_token_id=ids["pad"],
                                 mask_token_id=ids["mask"], bos_token_id=ids["bos"], eos_token_id=ids["eos"])
    return dataclasses.replace(config, model=model), tokenizer, None


def _data_spec(config: TrainConfig) -> str:
    return config.data if config.data is not None else str(data.default_corpus())


def check_workdir(workdir: epath.Path, model: EncoderConfig, manager) -> int | None:
    """The step to resume from (None: fresh); UserError if it trained a different model."""
    step = manager.latest_step()
    if step is None:
        return None
    saved = checkpointing.read_meta(manager, step).get("model")
    if saved is None and (workdir / WORKDIR_MODEL_DIR / CONFIG_FILE).is_file():
        with checkpointing.locally(workdir / WORKDIR_MODEL_DIR, upload=False) as model_dir:
            saved = EncoderConfig.load(model_dir).to_dict()
    if saved is not None and saved != model.to_dict():
        diff = sorted(k for k in saved if saved.get(k) != model.to_dict().get(k))
        raise UserError(
            f"{workdir} holds checkpoints of a different model (differs in {', '.join(diff)}); "
            "use a new --workdir or the same model config"
        )
    return step


def check_shapes(config: TrainConfig, devices: int) -> None:
    model = config.model
    if model.mask_token_id is None:
        raise UserError("the tokenizer has no mask token; diffusion training needs one")
    if config.seq_len > model.max_length:
        raise UserError(
            f"seq_len {config.seq_len} exceeds the model's {model.max_length} positions; "
            f"lower seq_len or raise model.max_position_embeddings"
        )
    micro = config.batch_size // config.grad_accum_steps
    if micro % devices:
        raise UserError(
            f"batch_size / grad_accum_steps = {micro} rows per microbatch does not split over "
            f"{devices} devices; use a multiple of {devices}"
        )


def init_state(config, model_config, mesh, optimizer, init_params):
    """Abstract and concrete TrainState, created directly in their shardings."""
    options = dict(seed=config.seed, dtype=config.dtype, remat=config.remat, attention=config.attention)
    graphdef, abstract_params = abstract_encoder(model_config, **options)
    rules = config.sharding_rules if config.parallelism == "mesh" else ((r".*", ()),)
    p_shard = param_shardings(abstract_params, rules, mesh)

    def create(params):
        opt_state = optimizer.init(params)
        ema = params if config.ema_decay is not None else None
        return TrainState(jnp.zeros((), jnp.int32), params, opt_state, ema)

    abstract = jax.eval_shape(create, abstract_params)
    state_shard = TrainState(replicated(mesh), p_shard, _like(optimizer, abstract.opt_state, p_shard, mesh),
                             p_shard if config.ema_decay is not None else None)
    if init_params is None:
        init = jax.jit(lambda: create(params_of(new_encoder(model_config, **options))), out_shardings=state_shard)
        state = init()
    else:
        params = jax.device_put(jax.tree.map(np.asarray, init_params), p_shard)
        state = jax.jit(create, out_shardings=state_shard)(params)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_shard)
    return graphdef, state, abstract, state_shard


def _like(optimizer, opt_state, p_shard, mesh):
    """Optimizer moments shard like their parameters; counters are replicated."""
    return optax.tree_utils.tree_map_params(
        optimizer, lambda _, sharding: sharding, opt_state, p_shard,
        transform_non_params=lambda _: replicated(mesh),
    )


def compile_step(step_fn, abstract, state_shard, mesh, config):
    rows, length = config.batch_size, config.seq_len
    b_shard = batch_sharding(mesh)
    batch = {
        "input_ids": jax.ShapeDtypeStruct((rows, length), jnp.int32, sharding=b_shard),
        "prompt_mask": jax.ShapeDtypeStruct((rows, length), jnp.bool_, sharding=b_shard),
    }
    jitted = jax.jit(step_fn, in_shardings=(state_shard, b_shard),
                     out_shardings=(state_shard, replicated(mesh)), donate_argnums=0)
    start = time.perf_counter()
    compiled = jitted.lower(abstract, batch).compile()
    seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0
    if memory is not None:
        gib = lambda n: n / 2**30
        _say(f"compiled the step in {seconds:.1f} s; per device: arguments "
             f"{gib(memory.argument_size_in_bytes):.3f} GiB, outputs {gib(memory.output_size_in_bytes):.3f} GiB, "
             f"temporaries {gib(memory.temp_size_in_bytes):.3f} GiB; XLA FLOPs per step {flops:.3e}")
    return compiled, flops


class Preemption:
    """Decides after each step whether SIGTERM (a preemption notice) asks to save and stop.

    One process: a Python SIGTERM handler sets a flag. Several processes: all must stop after
    the same step, or those that go on hang in the next step's collectives, and a SIGTERM may
    reach only one of them. JAX's preemption sync point decides: `jax.distributed.initialize`
    installs a C++ SIGTERM notifier (with jax_enable_preemption_service, on by default) that
    posts the notice to the coordination service; every process then reports the step it is at
    and all agree on the step after the furthest one. This works with CPU processes on
    loopback (tests/test_preemption.py signals one of two). A Python handler would replace the
    C++ one and keep the notice from ever leaving its process, so none is installed then.
    """

    def __init__(self, manager):
        self.manager = manager
        self.signal = None
        self.previous = None
        if jax.process_count() == 1:
            self.previous = signal.signal(signal.SIGTERM, lambda signum, frame: setattr(self, "signal", signum))
        elif not jax.config.jax_enable_preemption_service:
            _say("warning: jax_enable_preemption_service is off: a SIGTERM ends this run without a checkpoint")

    def reason_to_stop(self, step: int) -> str | None:
        if jax.process_count() == 1:
            return None if self.signal is None else f"received signal {self.signal}"
        # Orbax's wrapper of multihost_utils.reached_preemption_sync_point: False, not an error,
        # when the preemption service is off.
        if self.manager.reached_preemption(step):
            return (f"process {jax.process_index()} of {jax.process_count()}: "
                    "a preemption notice (SIGTERM) reached a host")
        return None

    def close(self) -> None:
        if jax.process_count() == 1:
            signal.signal(signal.SIGTERM, self.previous)


def train(config: TrainConfig, workdir, *, stop_on_signal: bool = True) -> dict:
    """Train (or resume) in `workdir`, a local directory or a URI such as gs://bucket/run;
    returns the last logged metrics and the final step."""
    workdir = epath.Path(workdir)
    config, tokenizer, init_params = resolve_model(config, workdir)
    mesh = make_mesh(config.mesh.data, config.mesh.fsdp)
    check_shapes(config, mesh.size)
    manager = checkpointing.checkpoint_manager(workdir, config.keep_checkpoints)
    resume_step = check_workdir(workdir, config.model, manager)
    if resume_step is not None and resume_step >= config.steps:
        _say(f"{workdir} already holds step {resume_step} >= steps={config.steps}; nothing to do")
        manager.close()
        return {"step": resume_step}
    dataset = data.prepare_dataset(_data_spec(config), tokenizer, config.seq_len, cache_dir=data.cache_home())
    batches = data.BatchIterator(dataset, config.batch_size, seed=config.seed,
                                 process_index=jax.process_index(), process_count=jax.process_count())
    # Every user-facing check passed: now write the run's description.
    if jax.process_index() == 0:
        with checkpointing.locally(workdir / WORKDIR_MODEL_DIR, upload=True) as model_dir:
            model_dir.mkdir(parents=True, exist_ok=True)
            config.model.save(model_dir)
            tokenizer.save_pretrained(str(model_dir))
        save_config(config, workdir / "config.json")

    optimizer = make_optimizer(config)
    graphdef, state, abstract, state_shard = init_state(config, config.model, mesh, optimizer, init_params)
    if resume_step is not None:
        del state
        state, data_state = checkpointing.restore(manager, resume_step, abstract)
        batches.set_state(data_state)
        _say(f"resumed from {workdir / 'checkpoints' / str(resume_step)}")
    step_fn = make_train_step(config, graphdef, config.model, mesh, optimizer)
    compiled, xla_flops = compile_step(step_fn, abstract, state_shard, mesh, config)
    n_params = sum(x.size for x in jax.tree.leaves(abstract.params))
    tokens_per_step = config.batch_size * config.seq_len
    all_scored_flops = step_flops(config.model, config.seq_len, tokens_per_step, tokens_per_step)
    peak, peak_source = peak_tflops(config.peak_tflops, COMPUTE_DTYPES[config.dtype], mesh.size)
    _say(f"model {n_params / 1e6:.2f}M parameters; {mesh.size} devices {dict(mesh.shape)} "
         f"({config.parallelism}); {tokens_per_step} tokens/step; model FLOPs/step "
         f"{all_scored_flops:.3e} if every token were scored; peak {peak:.3f} TFLOP/s ({peak_source})")

    meta = {"model": config.model.to_dict()}
    preemption = Preemption(manager) if stop_on_signal else None
    writer = MetricsWriter(workdir, resume_step or 0, enabled=jax.process_index() == 0)
    step = resume_step or 0
    last_saved = resume_step
    data_states = {step: batches.get_state()}
    pending = []  # (step, loss array) not yet checked for NaN
    record = {"step": step}
    interval_start, interval_steps = time.perf_counter(), 0

    def check_finite():
        nonlocal pending
        for s, loss in pending:
            if not np.isfinite(float(jax.device_get(loss))):
                good = manager.latest_step()
                kept = f"the last good checkpoint is step {good}" if good is not None else "no checkpoint was saved"
                raise UserError(
                    f"loss became {float(jax.device_get(loss))} at step {s}; stopped ({kept}); "
                    "lower lr or check the data"
                )
        pending = []

    def save():
        nonlocal last_saved
        check_finite()
        checkpointing.save(manager, state, data_states[step], meta)
        last_saved = step

    try:
        while step < config.steps:
            batch = global_batch(next(batches), mesh, config.batch_size)
            state, metrics = compiled(state, batch)
            step += 1
            interval_steps += 1
            data_states = {step: batches.get_state()}
            pending.append((step, metrics["loss"]))
            if step % config.log_every == 0 or step == config.steps:
                check_finite()
                elapsed = time.perf_counter() - interval_start
                record = {"step": step, **summarize(metrics, config.objective.name)}
                step_time = elapsed / interval_steps
                record["step_time"] = step_time
                record["tokens_per_s"] = tokens_per_step / step_time
                # Model FLOPs of the logged step (its scored tokens) over the interval's mean time.
                flops = step_flops(config.model, config.seq_len, tokens_per_step, record["scored_tokens"])
                record["tflops"] = flops / step_time / 1e12
                record["mfu"] = record["tflops"] / peak
                writer.write(record)
                _say(progress_line(record, config.steps))
                interval_start, interval_steps = time.perf_counter(), 0
            if step % config.checkpoint_every == 0 or step == config.steps:
                save()
            reason = preemption.reason_to_stop(step) if preemption is not None else None
            if reason is not None:
                if last_saved != step:
                    save()
                print(f"{reason}: saved step {step}, exiting", flush=True)
                break
    finally:
        manager.wait_until_finished()
        manager.close()
        writer.close()
        if preemption is not None:
            preemption.close()
    record["step"] = step
    record["xla_flops_per_step"] = xla_flops
    return record


def progress_line(record: dict, total: int) -> str:
    parts = [f"step {record['step']}/{total}", f"loss {record['loss']:.4f}"]
    if "accuracy" in record:
        parts.append(f"acc {record['accuracy']:.3f}")
    if "bits_per_token" in record:
        parts.append(f"{record['bits_per_token']:.3f} bits/tok")
    parts += [f"gnorm {record['grad_norm']:.3f}", f"lr {record['lr']:.2e}",
              f"{record['step_time'] * 1e3:.0f} ms/step", f"{record['tokens_per_s']:.0f} tok/s",
              f"{record['tflops']:.3f} TFLOP/s", f"MFU {100 * record['mfu']:.1f}%"]
    return " | ".join(parts)
