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

import contextlib
import logging
import os
import re
import sys
import traceback
import warnings
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from dlm_jax.errors import UserError
from dlm_jax.models import CONFIG_FILE, EncoderConfig
from dlm_jax.models.params import abstract_params, with_int_keys
from dlm_jax.tokenizer import check_tokenizer_fits, load_tokenizer

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


def _causes(err: BaseException):
    """`err` and the exceptions it was raised from, outermost first."""
    while err is not None:
        yield err
        err = err.__cause__


def _unreadable_reason(err: Exception) -> str | None:
    """Why Orbax could not read a checkpoint, as one line; None when `err` is not a read failure
    (a bug, to show in full). Damaged or missing files surface as a ValueError (TensorStore's
    DATA_LOSS, OUT_OF_RANGE, ...; a broken JSON file), an OSError or a KeyError (a missing item),
    often wrapped by Orbax in a bare Exception whose message is a TensorStore spec."""
    failures = [cause for cause in _causes(err) if isinstance(cause, (ValueError, OSError, KeyError))]
    if not failures:
        return None
    innermost = failures[-1]
    text = str(innermost.args[0] if isinstance(innermost, KeyError) and innermost.args else innermost).strip()
    if not text:
        return type(innermost).__name__
    # TensorStore appends the JSON spec of the failed read: kilobytes that name nothing new
    return re.sub(r"\s*\[tensorstore_spec.*", "", text.splitlines()[0])


def _from_abandoned_read(exc: BaseException) -> bool:
    """Whether `exc` belongs to an Orbax read left running after the restore had failed: a
    TensorStore read error (a ValueError led by its status code, e.g. "OUT_OF_RANGE: "), its
    callback finding Orbax's event loop closed, or the error Orbax raises when the read's
    coroutine is closed unfinished (it wraps the GeneratorExit)."""
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
        return True
    if any(isinstance(cause, ValueError) and re.match(r"[A-Z_]+: ", str(cause)) for cause in _causes(exc)):
        return True
    in_orbax = any(f"{os.sep}orbax{os.sep}" in frame.filename for frame in traceback.extract_tb(exc.__traceback__))
    return in_orbax and isinstance(exc.__cause__, GeneratorExit)


class _AbandonedReadFilter(logging.Filter):
    def filter(self, record):
        return not (record.exc_info and _from_abandoned_read(record.exc_info[1]))


def _silence_abandoned_reads() -> None:
    """Orbax stops a failed restore at its first error and closes its event loop with the other
    reads still running; as those finish or are collected, Python reports each (tracebacks as
    unraisable exceptions, "Future/Task exception was never retrieved" on the asyncio logger, a
    never-awaited coroutine warning): hundreds of lines around the one-line error, at random.
    Drop those reports, and only those. Installed before the first read, as the first abandoned
    read may finish before the failure reaches dlm-jax."""
    previous = sys.unraisablehook
    if getattr(previous, "silences_abandoned_reads", False):
        return

    def hook(unraisable):
        if not _from_abandoned_read(unraisable.exc_value):
            previous(unraisable)

    hook.silences_abandoned_reads = True
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(_AbandonedReadFilter())
    warnings.filterwarnings(
        "ignore", message="coroutine '_read_array_index_and_device_put' was never awaited", category=RuntimeWarning
    )


@contextlib.contextmanager
def reading_checkpoint(folder: Path, message):
    """Turn a failure to read the checkpoint in `folder` inside the block into
    UserError(message(reason)), the reason's paths relative to `folder` (the message names it);
    any other exception passes through."""
    _silence_abandoned_reads()
    try:
        yield
    except Exception as err:
        reason = _unreadable_reason(err)
        if reason is None:
            raise
        raise UserError(message(reason.replace(f"{folder}{os.sep}", ""))) from None


def load_model_dir(directory, target=None):
    """A model directory -> (EncoderConfig, params pure dict, tokenizer or None)."""
    directory = Path(directory).absolute()
    if not is_model_dir(directory):
        raise UserError(f"{directory} is not a dlm-jax model directory (needs {CONFIG_FILE} and {PARAMS_DIR}/)")
    config = EncoderConfig.load(directory)
    tokenizer = load_tokenizer(directory, required=False)
    check_tokenizer_fits(config, tokenizer, directory)
    params_dir = directory / PARAMS_DIR
    with reading_checkpoint(
        directory, lambda reason: f"{params_dir} is damaged or incomplete ({reason}); re-convert or re-save it"
    ):
        params = ocp.StandardCheckpointer().restore(params_dir, target or local_target(config))
    return config, with_int_keys(params), tokenizer


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
        step_dir, others = checkpoints / str(step), sorted(set(steps) - {step})
        with reading_checkpoint(step_dir, lambda reason: _damaged_step_message(step_dir, reason, others)):
            restored = manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target)))
    finally:
        manager.close()
    return with_int_keys(restored["params"])


def _damaged_step_message(step_dir: Path, reason: str, other_steps: list[int]) -> str:
    """The fix for a checkpoint step that cannot be read: another step, or without one, a new run
    (train resumes from the latest step left, or starts afresh when none is)."""
    if other_steps:
        fix = (
            f"load another saved step with --step N ({', '.join(map(str, other_steps))}), or delete "
            f"{step_dir} and train on from step {other_steps[-1]}"
        )
    else:
        fix = f"it is the only saved step: delete {step_dir} and train again"
    return f"checkpoint {step_dir} is damaged or incomplete ({reason}); {fix}"


def load_workdir(workdir, step: int | None = None, target=None):
    """A training workdir -> (EncoderConfig, params of the latest or given step, tokenizer or None)."""
    model_dir = Path(workdir) / WORKDIR_MODEL_DIR
    config = EncoderConfig.load(model_dir)
    tokenizer = load_tokenizer(model_dir, required=False)
    check_tokenizer_fits(config, tokenizer, model_dir)
    return config, load_params_from_workdir(workdir, step, target), tokenizer


def workdir_and_step(path, step: int | None = None):
    """A checkpoint step directory (WORKDIR/checkpoints/600) -> (WORKDIR, 600); any other path
    -> (path, step). UserError when a step directory and a different `step` are both given."""
    path = Path(path)
    if path.name.isdigit() and path.parent.name == WORKDIR_CHECKPOINTS_DIR and is_workdir(path.parent.parent):
        if step is not None and step != int(path.name):
            raise UserError(f"{path} is the checkpoint of step {path.name} but step {step} was asked for; give one")
        return path.parent.parent, int(path.name)
    return path, step


def read_any(path, step: int | None = None, *, weights: bool = True):
    """Our model dir, a training workdir (its latest checkpoint, or `step`), one checkpoint step
    directory of a workdir, or a HuggingFace directory (converted in memory) -> (config, params
    pure dict, tokenizer or None). weights=False: only the config, after the same checks (None, None)."""
    path, step = workdir_and_step(path, step)
    if not path.exists():
        raise UserError(f"{path} does not exist; pass a model directory, a training workdir or a HF directory")
    if is_workdir(path):
        if not weights:
            return EncoderConfig.load(path / WORKDIR_MODEL_DIR), None, None
        return load_workdir(path, step)
    if step is not None:
        raise UserError(f"--step {step} needs a training workdir, but {path} holds a single model")
    if is_model_dir(path):
        return load_model_dir(path) if weights else (EncoderConfig.load(path), None, None)
    if (path / "config.json").is_file() or (path / "modules.json").is_file():
        from dlm_jax.convert import convert_hf_dir, read_hf_dir

        if not weights:
            return read_hf_dir(path)[1], None, None
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
