"""Training checkpoints: WORKDIR/checkpoints/<step>/ through one Orbax CheckpointManager.

Items: params, opt_state (and ema) as StandardSave trees, data (the iterator's JSON state) and
meta (step and model config). Saves are asynchronous: Orbax copies the arrays to host memory
before `save` returns (so the next step may donate them) and writes in the background. A step
directory is only listed once finalized, so a save cut short by kill -9 is never restored.
"""

from pathlib import Path

import jax
import orbax.checkpoint as ocp

from dlm_jax.checkpoint import WORKDIR_CHECKPOINTS_DIR
from dlm_jax.train.step import TrainState


def checkpoint_manager(workdir: Path, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True)
    return ocp.CheckpointManager(Path(workdir).absolute() / WORKDIR_CHECKPOINTS_DIR, options=options)


def save(manager: ocp.CheckpointManager, state: TrainState, data_state: dict, meta: dict) -> None:
    step = int(jax.device_get(state.step))
    items = dict(
        params=ocp.args.StandardSave(state.params),
        opt_state=ocp.args.StandardSave(state.opt_state),
        data=ocp.args.JsonSave(data_state),
        meta=ocp.args.JsonSave(dict(meta, step=step)),
    )
    if state.ema is not None:
        items["ema"] = ocp.args.StandardSave(state.ema)
    manager.save(step, args=ocp.args.Composite(**items), force=True)


def read_meta(manager: ocp.CheckpointManager, step: int) -> dict:
    return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def restore(manager: ocp.CheckpointManager, step: int, abstract: TrainState) -> tuple[TrainState, dict]:
    """The state saved at `step`, laid out like `abstract` (ShapeDtypeStructs with shardings)."""
    items = dict(
        params=ocp.args.StandardRestore(abstract.params),
        opt_state=ocp.args.StandardRestore(abstract.opt_state),
        data=ocp.args.JsonRestore(),
    )
    if abstract.ema is not None:
        items["ema"] = ocp.args.StandardRestore(abstract.ema)
    out = manager.restore(step, args=ocp.args.Composite(**items))
    step_array = jax.device_put(jax.numpy.asarray(step, jax.numpy.int32), abstract.step.sharding)
    ema = out["ema"] if abstract.ema is not None else None
    return TrainState(step_array, out["params"], out["opt_state"], ema), out["data"]
