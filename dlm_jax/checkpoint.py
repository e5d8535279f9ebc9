"""Model directories and training workdirs on disk (Orbax).

A model directory ("our checkpoint") holds `dlm_config.json`, `params/` (an Orbax
StandardCheckpointer save of the float32 pure-dict parameter tree) and the tokenizer files when
there is a tokenizer. A training workdir holds `model/` (config and tokenizer, no params) and
`checkpoints/<step>/`, written by a CheckpointManager with the items params, opt_state, data and
meta; only `params` is read here.

Every restore accepts an optional abstract target (a tree of jax.ShapeDtypeStruct with
shardings) so a caller can restore straight into a mesh layout; without one the parameters come
back on this process's first device, whatever topology (a pod, 2 hosts x 4 devices) wrote them.
"""

from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from dlm_jax.errors import UserError
from dlm_jax.models import CONFIG_FILE, EncoderConfig
from dlm_jax.models.params import abstract_params, with_int_keys
from dlm_jax.tokenizer import load_tokenizer

PARAMS_DIR = "params"
WORKDIR_MODEL_DIR = "model"
WORKDIR_CHECKPOINTS_DIR = "checkpoints"


def is_model_dir(path) -> bool:
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and (path / PARAMS_DIR).is_dir()


def is_workdir(path) -> bool:
    path = Path(path)
    return (path / WORKDIR_MODEL_DIR / CONFIG_FILE).is_file() and (path / WORKDIR_CHECKPOINTS_DIR).is_dir()


def _float32(params):
    return jax.tree.map(lambda x: x if x.dtype == np.float32 else x.astype(np.float32), params)


def local_target(config: EncoderConfig) -> dict:
    """The float32 parameter tree of `config` as ShapeDtypeStructs on this process's first device:
    a restore target that does not depend on the devices that saved the checkpoint."""
    return abstract_params(config, sharding=jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))


def save_model(directory, config: EncoderConfig, params: dict, tokenizer=None) -> Path:
    """Write a model directory: config, float32 params (Orbax), tokenizer files."""
    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    config.save(directory)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory / PARAMS_DIR, _float32(params), force=True)
    checkpointer.wait_until_finished()
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
    return directory


def load_model_dir(directory, target=None):
    """A model directory -> (EncoderConfig, params pure dict, tokenizer or None)."""
    directory = Path(directory).absolute()
    if not is_model_dir(directory):
        raise UserError(f"{directory} is not a dlm-jax model directory (needs {CONFIG_FILE} and {PARAMS_DIR}/)")
    config = EncoderConfig.load(directory)
    try:
        params = ocp.StandardCheckpointer().restore(directory / PARAMS_DIR, target or local_target(config))
    except (ValueError, FileNotFoundError, KeyError) as err:
        raise UserError(f"cannot restore {directory / PARAMS_DIR} ({err}); re-convert or re-save it") from None
    return config, with_int_keys(params), load_tokenizer(directory, required=False)


def load_params_from_workdir(workdir, step: int | None = None, target=None) -> dict:
    """The `params` item of a training workdir's latest checkpoint (or of `step`)."""
    workdir = Path(workdir).absolute()
    checkpoints = workdir / WORKDIR_CHECKPOINTS_DIR
    if not checkpoints.is_dir():
        raise UserError(f"{workdir} has no {WORKDIR_CHECKPOINTS_DIR}/; is it a dlm-jax training workdir?")
    manager = ocp.CheckpointManager(checkpoints, options=ocp.CheckpointManagerOptions(create=False))
    try:
        steps = manager.all_steps()
        if not steps:
            raise UserError(f"{checkpoints} holds no checkpoint yet; train for at least one save interval")
        if step is None:
            step = max(steps)
        elif step not in steps:
            raise UserError(f"{checkpoints} has no step {step}; saved steps: {sorted(steps)}")
        if target is None:
            target = local_target(EncoderConfig.load(workdir / WORKDIR_MODEL_DIR))
        restored = manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target)))
    finally:
        manager.close()
    return with_int_keys(restored["params"])


def load_workdir(workdir, step: int | None = None, target=None):
    """A training workdir -> (EncoderConfig, params of the latest or given step, tokenizer or None)."""
    model_dir = Path(workdir) / WORKDIR_MODEL_DIR
    config = EncoderConfig.load(model_dir)
    return config, load_params_from_workdir(workdir, step, target), load_tokenizer(model_dir, required=False)


def workdir_and_step(path, step: int | None = None):
    """A checkpoint step directory (WORKDIR/checkpoints/600) -> (WORKDIR, 600); any other path
    -> (path, step). UserError when a step directory and a different `step` are both given."""
    path = Path(path)
    if path.name.isdigit() and path.parent.name == WORKDIR_CHECKPOINTS_DIR and is_workdir(path.parent.parent):
        if step is not None and step != int(path.name):
            raise UserError(f"{path} is the checkpoint of step {path.name} but step {step} was asked for; give one")
        return path.parent.parent, int(path.name)
    return path, step


def read_any(path, step: int | None = None):
    """Our model dir, a training workdir (its latest checkpoint, or `step`), one checkpoint step
    directory of a workdir, or a HuggingFace directory (converted in memory) -> (config, params
    pure dict, tokenizer or None)."""
    path, step = workdir_and_step(path, step)
    if not path.exists():
        raise UserError(f"{path} does not exist; pass a model directory, a training workdir or a HF directory")
    if is_workdir(path):
        return load_workdir(path, step)
    if step is not None:
        raise UserError(f"--step {step} needs a training workdir, but {path} holds a single model")
    if is_model_dir(path):
        return load_model_dir(path)
    if (path / "config.json").is_file() or (path / "modules.json").is_file():
        from dlm_jax.convert import convert_hf_dir

        config, params, tokenizer, _ = convert_hf_dir(path)
        return config, params, tokenizer
    raise UserError(
        f"{path} is not a dlm-jax model directory, a training workdir or a HuggingFace directory "
        f"(none of {CONFIG_FILE} + {PARAMS_DIR}/, {WORKDIR_MODEL_DIR}/ + {WORKDIR_CHECKPOINTS_DIR}/, config.json found)"
    )


def training_config(path) -> dict | None:
    """The training config a workdir (or one of its step directories) was trained with, as the
    dict of its config.json; None for other model paths or an unreadable file."""
    import json

    workdir, _ = workdir_and_step(path)
    config = Path(workdir) / "config.json"
    if not is_workdir(workdir) or not config.is_file():
        return None
    try:
        parsed = json.loads(config.read_text())
    except json.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


def trained_seq_len(path) -> int | None:
    """The sequence length a training workdir (or one of its step directories) was trained at;
    None for other model paths."""
    try:
        return int(training_config(path)["seq_len"])
    except (KeyError, TypeError, ValueError):
        return None
