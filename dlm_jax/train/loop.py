"""The training loop: lock the workdir; resolve model, tokenizer and data; build the mesh and
the state; compile the step ahead of time; run, log, checkpoint, and stop cleanly on SIGTERM,
Ctrl-C or a NaN loss.

Every check a user can fail happens before compilation, and nothing is written to the workdir
until all have passed: a tokenizer trained for the run waits in WORKDIR/staging/ and becomes
WORKDIR/model/ together with config.json only then, so a refused or failed run leaves nothing a
later run could mistake for its own.
"""

import dataclasses
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
from dlm_jax.models import COMPUTE_DTYPES
from dlm_jax.models.params import abstract_encoder, new_encoder, params_of
from dlm_jax.tokenizer import load_tokenizer, special_token_ids
from dlm_jax.train import checkpointing
from dlm_jax.train.config import TrainConfig, save_config
from dlm_jax.train.mesh import batch_sharding, global_batch, make_mesh, param_shardings, replicated
from dlm_jax.train.metrics import MetricsWriter, Throughput, peak_tflops, progress_bar, progress_line, say, step_flops
from dlm_jax.train.step import TrainState, make_optimizer, make_train_step

# Data keys whose change on resume (with --allow-changes) makes the saved data position meaningless.
DATA_POSITION_KEYS = ("data", "seed", "batch_size", "seq_len")


def _read(key: str, read, path):
    """read(path), with a UserError naming the config key that gave the path."""
    try:
        return read(path)
    except UserError as err:
        raise UserError(f"{key}: {err}") from None


def resolve_model(config: TrainConfig, workdir: epath.Path, reuse_workdir_tokenizer: bool, devices: int):
    """-> (config with the real model, tokenizer, init params or None). The model is checked
    against the run (check_shapes) before a tokenizer is trained for it."""
    params = None
    if config.init is not None:
        model, params, tokenizer = _read("init", read_any, config.init)
        if tokenizer is None and config.tokenizer is None:
            raise UserError(f"init {config.init} has no tokenizer; name one with --set tokenizer=DIR")
    elif reuse_workdir_tokenizer:
        with checkpointing.locally(workdir / WORKDIR_MODEL_DIR, upload=False) as local:
            tokenizer = load_tokenizer(local)
    else:
        tokenizer = None  # none named: a BPE trained on the corpus, below
    if config.tokenizer is not None:
        tokenizer = _read("tokenizer", load_tokenizer, config.tokenizer)
    if config.init is None and tokenizer is not None:
        model = _with_special_ids(config.model, tokenizer)
    elif config.init is None:  # the BPE gets RoBERTa's special tokens: its pad id, which places
        # a RoBERTa model's positions, is known before it is trained
        model = config.model.replace(pad_token_id=data.SPECIAL_TOKENS.index("<pad>"))
    check_shapes(dataclasses.replace(config, model=model), devices)
    if tokenizer is None:
        tokenizer = _train_tokenizer(config, workdir)
        model = _with_special_ids(config.model, tokenizer)
    return dataclasses.replace(config, model=model), tokenizer, params


def _train_tokenizer(config: TrainConfig, workdir: epath.Path):
    """A BPE trained on the corpus by host 0 into the staging dir, where the others read it."""
    tokenizer_dir = workdir / checkpointing.STAGING_DIR / "tokenizer"
    if jax.process_index() == 0:
        with checkpointing.locally(tokenizer_dir, upload=True) as local:
            tokenizer = data.train_tokenizer(
                data.spec_or_default_corpus(config.data), local, config.tokenizer_vocab_size
            )
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("dlm_jax tokenizer")
        with checkpointing.locally(tokenizer_dir, upload=False) as local:
            tokenizer = load_tokenizer(local)
    return tokenizer


def _with_special_ids(model, tokenizer):
    """`model` with the vocabulary size and special-token ids of `tokenizer`."""
    ids = special_token_ids(tokenizer)
    return model.replace(
        vocab_size=len(tokenizer),
        pad_token_id=ids["pad"],
        mask_token_id=ids["mask"],
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
    )


def _reuse_workdir_tokenizer(config: TrainConfig, workdir: epath.Path, resume_step: int | None) -> bool:
    """The workdir's own tokenizer serves a resumed run, and a fresh run on the corpus and vocab
    size it was trained for (an earlier run stopped before its first checkpoint); any other run
    trains its own."""
    if config.init is not None or config.tokenizer is not None:
        return False
    if not (workdir / WORKDIR_MODEL_DIR / "tokenizer.json").exists():
        return False
    if resume_step is not None:
        return True
    saved = checkpointing.saved_config(workdir) or {}
    return (saved.get("init"), saved.get("tokenizer"), saved.get("data"), saved.get("tokenizer_vocab_size")) == (
        None,
        None,
        config.data,
        config.tokenizer_vocab_size,
    )


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


def init_state(config, mesh, optimizer, init_params):
    """Abstract and concrete TrainState, created directly in their shardings."""
    model_config = config.model
    options = dict(seed=config.seed, dtype=config.dtype, remat=config.remat, attention=config.attention)
    graphdef, abstract_params = abstract_encoder(model_config, **options)
    rules = config.sharding_rules if config.parallelism == "mesh" else ((r".*", ()),)
    p_shard = param_shardings(abstract_params, rules, mesh)

    def create(params):
        opt_state = optimizer.init(params)
        ema = params if config.ema_decay is not None else None
        return TrainState(jnp.zeros((), jnp.int32), params, opt_state, ema)

    abstract = jax.eval_shape(create, abstract_params)
    state_shard = TrainState(
        replicated(mesh),
        p_shard,
        _like(optimizer, abstract.opt_state, p_shard, mesh),
        p_shard if config.ema_decay is not None else None,
    )
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
        optimizer, lambda _, sharding: sharding, opt_state, p_shard, transform_non_params=lambda _: replicated(mesh)
    )


def compile_step(step_fn, abstract, state_shard, mesh, config):
    rows, length = config.batch_size, config.seq_len
    b_shard = batch_sharding(mesh)
    batch = {
        "input_ids": jax.ShapeDtypeStruct((rows, length), jnp.int32, sharding=b_shard),
        "prompt_mask": jax.ShapeDtypeStruct((rows, length), jnp.bool_, sharding=b_shard),
    }
    jitted = jax.jit(
        step_fn, in_shardings=(state_shard, b_shard), out_shardings=(state_shard, replicated(mesh)), donate_argnums=0
    )
    start = time.perf_counter()
    compiled = jitted.lower(abstract, batch).compile()
    seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0
    if memory is not None:
        gib = lambda n: n / 2**30
        say(
            f"compiled the step in {seconds:.1f} s; per device: arguments "
            f"{gib(memory.argument_size_in_bytes):.3f} GiB, outputs {gib(memory.output_size_in_bytes):.3f} GiB, "
            f"temporaries {gib(memory.temp_size_in_bytes):.3f} GiB; XLA FLOPs per step {flops:.3e}"
        )
    return compiled, flops


def check_finite(losses, manager) -> None:
    """UserError at the first NaN or inf among the (step, loss) pairs not yet looked at."""
    for step, loss in losses:
        value = float(jax.device_get(loss))
        if not np.isfinite(value):
            good = manager.latest_step()
            kept = f"the last good checkpoint is step {good}" if good is not None else "no checkpoint was saved"
            raise UserError(f"loss became {value} at step {step}; stopped ({kept}); lower lr or check the data")


def train(config: TrainConfig, workdir, *, stop_on_signal: bool = True, allow_changes: bool = False) -> dict:
    """Train (or resume) in `workdir`, a local directory or a URI such as gs://bucket/run;
    returns the last logged metrics and the final step. `allow_changes`: resume even when the
    config differs from the workdir's in a way that breaks exact resume."""
    workdir = epath.Path(workdir)
    with checkpointing.WorkdirLock(workdir):
        try:
            return _train(config, workdir, stop_on_signal, allow_changes)
        finally:
            if jax.process_index() == 0:  # staged files outlive no run, failed or not
                checkpointing.remove_tree(workdir / checkpointing.STAGING_DIR)


def _train(config: TrainConfig, workdir: epath.Path, stop_on_signal: bool, allow_changes: bool) -> dict:
    """With the workdir locked: every check, then the commit of the run's description, then the
    loop."""
    if jax.process_index() == 0:
        checkpointing.remove_tree(workdir / checkpointing.STAGING_DIR)  # left by a run killed before it committed
    manager = checkpointing.checkpoint_manager(workdir, config.keep_checkpoints)
    try:
        resume_step = manager.latest_step()
        mesh = make_mesh(config.mesh.data, config.mesh.fsdp)
        config, tokenizer, init_params = resolve_model(
            config, workdir, _reuse_workdir_tokenizer(config, workdir, resume_step), mesh.size
        )
        if resume_step is not None:
            checkpointing.check_workdir(workdir, manager, resume_step, config, allow_changes=allow_changes)
            if resume_step >= config.steps:
                say(f"{workdir} already holds step {resume_step} >= steps={config.steps}; nothing to do")
                return {"step": resume_step}
        dataset = data.prepare_dataset(
            data.spec_or_default_corpus(config.data), tokenizer, config.seq_len, cache_dir=data.cache_home()
        )
        batches = data.BatchIterator(
            dataset,
            config.batch_size,
            seed=config.seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        if resume_step is not None:
            saved = checkpointing.saved_config(workdir) or {}
            moved = [k for k in DATA_POSITION_KEYS if k in saved and saved[k] != getattr(config, k)]
            if moved:  # only with allow_changes: check_workdir refuses these otherwise
                say(
                    f"the saved data position does not apply after changing {', '.join(moved)}; "
                    "reading the data from its start"
                )
            else:
                batches.set_state(checkpointing.read_json(manager, resume_step, "data"))
        _commit(config, tokenizer, workdir, fresh=resume_step is None)
        return _loop(config, workdir, manager, mesh, batches, init_params, resume_step, stop_on_signal)
    finally:
        manager.wait_until_finished()
        manager.close()


def _commit(config: TrainConfig, tokenizer, workdir: epath.Path, fresh: bool) -> None:
    """Every check passed on every host: write the run's description (host 0)."""
    if jax.process_count() > 1:  # the others have read the staged tokenizer and passed their checks
        multihost_utils.sync_global_devices("dlm_jax checks passed")
    if jax.process_index() != 0:
        return
    model_dir = workdir / WORKDIR_MODEL_DIR
    if fresh:
        checkpointing.remove_tree(model_dir)  # an earlier run's, with no checkpoint that needs it
        with checkpointing.locally(model_dir, upload=True) as local:
            local.mkdir(parents=True, exist_ok=True)
            config.model.save(local)
            tokenizer.save_pretrained(str(local))
    save_config(config, workdir / checkpointing.CONFIG_JSON)


def _loop(config, workdir, manager, mesh, batches, init_params, resume_step, stop_on_signal) -> dict:
    """State (fresh or restored), the compiled step, and the steps until the budget, a notice or
    a NaN loss."""
    optimizer = make_optimizer(config)
    graphdef, state, abstract, state_shard = init_state(config, mesh, optimizer, init_params)
    if resume_step is not None:
        del state
        state = checkpointing.restore(manager, resume_step, abstract)
        say(f"resumed from {workdir / 'checkpoints' / str(resume_step)}")
    compiled, xla_flops = compile_step(
        make_train_step(config, graphdef, mesh, optimizer), abstract, state_shard, mesh, config
    )
    n_params = sum(x.size for x in jax.tree.leaves(abstract.params))
    tokens_per_step = config.batch_size * config.seq_len
    all_scored_flops = step_flops(config.model, config.seq_len, tokens_per_step, tokens_per_step)
    peak, peak_source = peak_tflops(config.peak_tflops, COMPUTE_DTYPES[config.dtype], mesh.size)
    say(
        f"model {n_params / 1e6:.2f}M parameters; {mesh.size} devices {dict(mesh.shape)} "
        f"({config.parallelism}); {tokens_per_step} tokens/step; model FLOPs/step "
        f"{all_scored_flops:.3e} if every token were scored; peak {peak:.3f} TFLOP/s ({peak_source})"
    )

    meta = {"model": config.model.to_dict()}
    step = resume_step or 0
    data_state = batches.get_state()  # the position after `step`, saved with it
    unchecked = []  # (step, loss on the device) not yet checked for NaN
    record = {"step": step}
    writer = MetricsWriter(workdir, step, enabled=jax.process_index() == 0)
    throughput = Throughput(config, peak)
    preemption = checkpointing.Preemption(manager, enabled=stop_on_signal)
    bar = progress_bar(step, config.steps)
    try:
        while step < config.steps:
            state, metrics = compiled(state, global_batch(next(batches), mesh, config.batch_size))
            step += 1
            data_state = batches.get_state()
            unchecked.append((step, metrics["loss"]))
            throughput.tick()
            bar.update()
            if step % config.log_every == 0 or step == config.steps:
                check_finite(unchecked, manager)
                unchecked = []
                record = throughput.record(step, metrics, config.objective.name)
                writer.write(record)
                say(progress_line(record, config.steps))
            stop = preemption.reason_to_stop(step)
            if step % config.checkpoint_every == 0 or step == config.steps or stop:
                check_finite(unchecked, manager)  # no checkpoint holds a state that produced a NaN
                unchecked = []
                checkpointing.save(manager, state, data_state, meta)
            if stop:
                manager.wait_until_finished()
                say(f"{stop}: saved step {step}, exiting (the same command resumes from it)", every_process=True)
                break
    except KeyboardInterrupt:  # a second Ctrl-C: a save already being written is still finished
        if manager.is_saving_in_progress():
            say(f"aborting at step {step}; finishing the checkpoint being written (Ctrl-C again abandons it)")
            manager.wait_until_finished()
        kept = manager.latest_step()
        raise KeyboardInterrupt(
            f"aborted at step {step}; "
            + (f"the last complete checkpoint is step {kept}" if kept is not None else "no checkpoint was saved")
        ) from None
    finally:
        bar.close()
        preemption.close()
        writer.close()
    record["step"] = step
    record["xla_flops_per_step"] = xla_flops
    return record
