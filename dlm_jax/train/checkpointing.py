"""Training workdirs, local or remote, and the checkpoints in them.

A workdir is an `etils.epath.Path`: a local directory or a URI such as gs://bucket/run (through
gcsfs or TensorFlow's gfile, whichever is installed). `locally` gives code that only knows local
files (HF tokenizers, the BPE trainer) a local directory to work in.

Checkpoints: WORKDIR/checkpoints/<step>/ through one Orbax CheckpointManager (Orbax writes
gs:// itself, through TensorStore). Items: params, opt_state (and ema) as StandardSave trees,
data (the iterator's JSON state) and meta (step and model config). Saves are asynchronous:
Orbax copies the arrays to host memory before `save` returns (so the next step may donate them)
and writes in the background. A step directory is only listed once finalized, so a save cut
short by kill -9 is never restored.
"""

import contextlib
import tempfile
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from etils import epath

from dlm_jax.checkpoint import WORKDIR_CHECKPOINTS_DIR
from dlm_jax.train.step import TrainState


def is_remote(path: epath.Path) -> bool:
    return "://" in str(path)


@contextlib.contextmanager
def locally(directory: epath.Path, *, upload: bool):
    """`directory` as a local pathlib.Path: itself when it is local; for a remote one, a
    temporary directory holding a copy of its files, which are copied back when `upload` is set
    and the block ends without an error."""
    if not is_remote(directory):
        yield Path(directory)
        return
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp)
        if directory.is_dir():
            for file in directory.iterdir():
                if file.is_file():
                    (local / file.name).write_bytes(file.read_bytes())
        yield local
        if upload:
            directory.mkdir(parents=True, exist_ok=True)
            # tokenizer.json goes last: its presence means "a complete tokenizer is here".
            for file in sorted(local.iterdir(), key=lambda f: f.name == "tokenizer.json"):
                (directory / file.name).write_bytes(file.read_bytes())


def checkpoint_manager(workdir: epath.Path, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True)
    directory = workdir / WORKDIR_CHECKPOINTS_DIR
    # A URI counts as absolute; absolute() would turn gs://bucket/run into CWD/gs:/bucket/run.
    return ocp.CheckpointManager(directory if directory.is_absolute() else directory.absolute(), options=options)


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
