"""Training workdirs, local or remote: their one owner (a lock), the checkpoints in them, the
decision to resume, and stopping on SIGTERM or Ctrl-C with the current step saved.

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
import dataclasses
import fcntl
import json
import os
import signal
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from dlm_jax.checkpoint import WORKDIR_CHECKPOINTS_DIR, WORKDIR_MODEL_DIR, reading_checkpoint
from dlm_jax.errors import UserError
from dlm_jax.models import CONFIG_FILE, EncoderConfig
from dlm_jax.train.config import RESUME_FREE, RESUME_IGNORED, RESUME_LAYOUT, SCHEDULE_KEYS, TrainConfig
from dlm_jax.train.metrics import say
from dlm_jax.train.step import TrainState, learning_rate_schedule

LOCK_FILE = "train.lock"
CONFIG_JSON = "config.json"
STAGING_DIR = "staging"  # WORKDIR/staging/: what a run writes before its checks have passed
# A lock without flock (a bucket, a FUSE mount) is a lease: its holder rewrites it every
# HEARTBEAT seconds, and one not rewritten for LEASE seconds belongs to a run that is gone.
HEARTBEAT_SECONDS = 60
LEASE_SECONDS = 600


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


def remove_tree(directory: epath.Path) -> None:
    if directory.exists():
        directory.rmtree()


# ------------------------------------------------------------------------------ the lock


def _holder() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        "token": uuid.uuid4().hex,
    }


def _describe(holder: dict) -> str:
    if not holder:  # caught between its flock and its write
        return "another dlm-jax train (starting)"
    return f"dlm-jax train (pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')})"


def _pid_gone(holder: dict) -> bool:
    """True when the holder ran on this host and its process no longer exists."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


class WorkdirLock:
    """One `dlm-jax train` per workdir: WORKDIR/train.lock names its holder (pid, host, start).

    A second run into a held workdir is refused at once with the holder's name. Locally the file
    is held with flock for the run's lifetime; the kernel drops a flock when its process dies in
    any way (kill -9 included), so the lock of a dead run is taken over, never waited for. A
    bucket (or a filesystem without flock) gets a lease instead: the holder rewrites the file
    every minute, and one not rewritten for ten minutes (or whose process on this host is gone)
    is taken over. Several processes: process 0 holds it and tells the others whether it could.
    """

    def __init__(self, workdir: epath.Path):
        self.workdir = workdir
        self.path = workdir / LOCK_FILE
        self.me = _holder()
        self.fd = None
        self.heartbeat = None
        self.created_workdir = False

    def __enter__(self):
        error = None
        if jax.process_index() == 0:
            try:
                self._acquire()
            except UserError as err:
                error = err
        if jax.process_count() > 1:
            ok = multihost_utils.broadcast_one_to_all(np.int32(error is None))
            if not ok and error is None:
                error = UserError(f"process 0 could not lock {self.workdir}; see its error line")
        if error is not None:
            raise error
        return self

    def _acquire(self) -> None:
        workdir = self.workdir
        try:
            exists = workdir.exists()
        except ImportError as err:  # gs:// without gcsfs (or TensorFlow's gfile), s3:// without s3fs
            raise UserError(
                f"workdir {workdir} needs a filesystem package on every host: {err} "
                "(pip install gcsfs for gs://, s3fs for s3://)"
            ) from None
        if exists and not workdir.is_dir():
            raise UserError(f"workdir {workdir} is a file; pass a directory (new or from an earlier run) as --workdir")
        if exists:
            check_is_training_workdir(workdir)
        try:
            self.created_workdir = not exists
            workdir.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise UserError(f"cannot create workdir {workdir}: a part of its path is a file") from None
        except PermissionError:
            raise UserError(f"cannot create workdir {workdir}: permission denied") from None
        if not is_remote(workdir):
            try:
                self._acquire_flock(Path(self.path))
                return
            except OSError as err:  # EACCES, or a filesystem without flock (ENOLCK, ENOTSUP)
                if isinstance(err, PermissionError):
                    raise UserError(f"cannot write to workdir {workdir}: permission denied") from None
                if self.fd is not None:
                    os.close(self.fd)
                    self.fd = None
        self._acquire_lease()

    def _acquire_flock(self, path: Path) -> None:
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            self.fd = fd
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _parse(os.pread(fd, 4096, 0))
                os.close(fd)
                self.fd = None
                raise UserError(
                    f"{self.workdir} is in use by {_describe(holder)}; wait for it to finish or "
                    "stop it, or train into another --workdir"
                ) from None
            try:
                current = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                break
            os.close(fd)  # its holder removed the file between our open and flock: take the new one
        previous = _parse(os.pread(fd, 4096, 0))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self.me).encode(), 0)
        if previous:
            say(f"took over the lock of {_describe(previous)}, which is no longer running")

    def _acquire_lease(self) -> None:
        if self.path.exists():
            holder = _parse(self.path.read_bytes())
            age = time.time() - float(holder.get("alive", 0))
            if age < LEASE_SECONDS and not _pid_gone(holder):
                raise UserError(
                    f"{self.workdir} is in use by {_describe(holder)}, alive {age:.0f} s ago; wait "
                    f"for it, or train into another --workdir (a lock not renewed for "
                    f"{LEASE_SECONDS // 60} minutes is taken over)"
                )
            say(f"took over the lock of {_describe(holder)}, which is no longer running")
        self._renew()
        self.heartbeat = threading.Event()
        threading.Thread(target=self._beat, args=(self.heartbeat,), daemon=True).start()

    def _renew(self) -> None:
        self.path.write_text(json.dumps(dict(self.me, alive=time.time())))

    def _beat(self, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            with contextlib.suppress(OSError):
                self._renew()

    def __exit__(self, *exc):
        if self.fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)  # while still holding the flock, then let it go
            os.close(self.fd)
        elif self.heartbeat is not None:
            self.heartbeat.set()
            with contextlib.suppress(OSError):
                if _parse(self.path.read_bytes()).get("token") == self.me["token"]:
                    self.path.unlink()
        if self.created_workdir and not is_remote(self.workdir) and not any(Path(self.workdir).iterdir()):
            Path(self.workdir).rmdir()  # a run refused before it wrote anything leaves no trace


def check_is_training_workdir(workdir: epath.Path) -> None:
    """UserError for an existing directory that holds something other than a dlm-jax run, which
    the run would write into (a HuggingFace export's config.json would be replaced by ours).

    A run's own: its checkpoints, its model (model/dlm_config.json) or its config.json (a
    TrainConfig: the `objective` group, which no HuggingFace config.json has); or only what a run
    killed before it committed leaves (its lock, staging/); or nothing."""
    saved = saved_config(workdir)
    if (
        (workdir / WORKDIR_CHECKPOINTS_DIR).is_dir()
        or (workdir / WORKDIR_MODEL_DIR / CONFIG_FILE).is_file()
        or (isinstance(saved, dict) and "objective" in saved)
    ):
        return
    foreign = sorted(entry.name for entry in workdir.iterdir() if entry.name not in (LOCK_FILE, STAGING_DIR))
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise UserError(
            f"workdir {workdir} is not empty and holds no dlm-jax training run ({shown}); pick an empty or "
            "new --workdir (to start from a HuggingFace model, pass its folder as --init)"
        )


def _parse(content: bytes) -> dict:
    try:
        holder = json.loads(content.decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return holder if isinstance(holder, dict) else {}


# --------------------------------------------------------------------------- preemption


class Preemption:
    """Decides after each step whether SIGTERM (a preemption notice) or Ctrl-C asks to save the
    step and stop.

    One process: Python handlers set a flag. Several processes: all must stop after the same
    step, or those that go on hang in the next step's collectives, and a signal may reach only
    one of them. JAX's preemption sync point decides: `jax.distributed.initialize` installs a C++
    SIGTERM notifier (with jax_enable_preemption_service, on by default) that posts the notice to
    the coordination service; every process then reports the step it is at and all agree on the
    step after the furthest one. This works with CPU processes on loopback
    (tests/test_preemption.py signals one of two). A Python SIGTERM handler would replace the C++
    one and keep the notice from ever leaving its process, so none is installed then; Ctrl-C is
    passed to the notifier as a SIGTERM to this process.

    Ctrl-C is a notice like SIGTERM; a second Ctrl-C aborts (KeyboardInterrupt) without saving
    the current step. Handlers exist only while the loop runs: before the first step there is
    nothing to save, and Ctrl-C stops at once.
    """

    def __init__(self, manager, *, enabled: bool = True):
        self.manager = manager
        self.reason = None
        self.previous = {}
        self.single = jax.process_count() == 1
        if not enabled or threading.current_thread() is not threading.main_thread():
            return
        if self.single:
            self._install(signal.SIGTERM, self._on_sigterm)
        elif not jax.config.jax_enable_preemption_service:
            say("warning: jax_enable_preemption_service is off: SIGTERM or Ctrl-C ends this run without a checkpoint")
            return
        self._install(signal.SIGINT, self._on_sigint)

    def _install(self, signum, handler) -> None:
        self.previous[signum] = signal.signal(signum, handler)

    def _on_sigterm(self, signum, frame) -> None:
        self.reason = "received SIGTERM (a preemption notice)"

    def _on_sigint(self, signum, frame) -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C aborts
        # os.write: a handler may run while the main thread is inside a print to stderr.
        os.write(2, b"Ctrl-C: saving the current step, then exiting (Ctrl-C again aborts without saving it)\n")
        if self.single:
            self.reason = "Ctrl-C"
        else:
            os.kill(os.getpid(), signal.SIGTERM)  # to JAX's notifier, which tells every process

    def reason_to_stop(self, step: int) -> str | None:
        if self.single:
            return self.reason
        # Orbax's wrapper of multihost_utils.reached_preemption_sync_point: False, not an error,
        # when the preemption service is off.
        if self.manager.reached_preemption(step):
            return (
                f"process {jax.process_index()} of {jax.process_count()}: "
                "a preemption notice (SIGTERM or Ctrl-C) reached a host"
            )
        return None

    def close(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}


# --------------------------------------------------------------------- checkpoints, resume


def checkpoint_manager(workdir: epath.Path, keep: int) -> ocp.CheckpointManager:
    # create=False: WORKDIR/checkpoints/ appears with the first save, not when a run is refused.
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=False, enable_async_checkpointing=True)
    directory = workdir / WORKDIR_CHECKPOINTS_DIR
    # A URI counts as absolute; absolute() would turn gs://bucket/run into CWD/gs:/bucket/run.
    return ocp.CheckpointManager(directory if directory.is_absolute() else directory.absolute(), options=options)


def saved_config(workdir: epath.Path) -> dict | None:
    """WORKDIR/config.json as written by the last run that passed its checks, or None."""
    path = workdir / CONFIG_JSON
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def check_workdir(workdir: epath.Path, manager, step: int, config: TrainConfig, *, allow_changes: bool) -> None:
    """Before resuming `step`: UserError if its checkpoint holds another model than
    `config.model`; then a config that differs from the workdir's config.json is said, and
    refused (unless `allow_changes`) when an uninterrupted run with it would differ, i.e. when
    the resumed run would not continue the same run exactly."""
    saved_model = read_json(manager, step, "meta").get("model")
    if saved_model is None and (workdir / WORKDIR_MODEL_DIR / CONFIG_FILE).is_file():
        with locally(workdir / WORKDIR_MODEL_DIR, upload=False) as model_dir:
            saved_model = EncoderConfig.load(model_dir).to_dict()
    if saved_model is not None and saved_model != config.model.to_dict():
        diff = sorted(k for k in saved_model if saved_model.get(k) != config.model.to_dict().get(k))
        raise UserError(
            f"{workdir} holds checkpoints of a different model (differs in {', '.join(diff)}); "
            "use a new --workdir or the same model config"
        )
    saved = saved_config(workdir)
    if saved is None:
        return
    new = json.loads(json.dumps(config.to_dict()))  # tuples as JSON lists, like the saved file
    changes = [c for c in _flat_changes(saved, new) if not c[0].startswith("model.")]
    top = lambda change: change[0].split(".")[0]
    schedule = [c for c in changes if top(c) in SCHEDULE_KEYS]
    breaking = [c for c in changes if top(c) not in RESUME_FREE + RESUME_LAYOUT + RESUME_IGNORED + SCHEDULE_KEYS]
    rates_kept = not schedule or _same_rates(saved, config, step)
    if not rates_kept:
        breaking, schedule = breaking + schedule, []
    shown = lambda items: ", ".join(f"{key} {old!r} -> {value!r}" for key, old, value in items)
    if breaking and not allow_changes:
        raise UserError(
            f"resuming {workdir} at step {step} would change {shown(breaking)}"
            f"{'' if rates_kept else ' (and the learning rate of steps already trained)'}, so it would not "
            "continue that run exactly; keep the values of its config.json, use a new --workdir, "
            "or pass --allow-changes to continue anyway"
        )
    notes = [
        (breaking, "allowed by --allow-changes, although the run no longer continues exactly"),
        (schedule, "the learning rate of the steps done is unchanged"),
        ([c for c in changes if top(c) in RESUME_LAYOUT], "the same numbers up to the order of float sums"),
        ([c for c in changes if top(c) in RESUME_IGNORED], "read only by a fresh run: ignored"),
    ]
    for items, why in notes:
        if items:
            say(f"resuming step {step} with {shown(items)} ({why})")


def _flat_changes(old: dict, new: dict, prefix: str = ""):
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            yield from _flat_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            yield prefix + key, a, b


def _same_rates(saved: dict, config: TrainConfig, done: int) -> bool:
    """Whether steps 0 .. done - 1 had the learning rate that `config`'s schedule gives them."""
    before = dataclasses.replace(config, **{k: saved[k] for k in SCHEDULE_KEYS if k in saved})
    steps = np.arange(done)
    return bool(
        np.array_equal(
            np.asarray(learning_rate_schedule(before)(steps)), np.asarray(learning_rate_schedule(config)(steps))
        )
    )


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


def _reading_step(manager: ocp.CheckpointManager, step: int):
    """reading_checkpoint for the saved step a run resumes from."""
    step_dir = epath.Path(manager.directory) / str(step)
    return reading_checkpoint(
        step_dir,
        lambda reason: (
            f"checkpoint {step_dir} is damaged or incomplete ({reason}); delete it to resume from "
            "the step saved before it (or to start afresh when it is the only one), or train in another --workdir"
        ),
    )


def read_json(manager: ocp.CheckpointManager, step: int, item: str) -> dict:
    """One JSON item (meta, data) of the checkpoint at `step`."""
    with _reading_step(manager, step):
        return manager.restore(step, args=ocp.args.Composite(**{item: ocp.args.JsonRestore()}))[item]


def restore(manager: ocp.CheckpointManager, step: int, abstract: TrainState) -> TrainState:
    """The state saved at `step`, laid out like `abstract` (ShapeDtypeStructs with shardings)."""
    items = dict(
        params=ocp.args.StandardRestore(abstract.params), opt_state=ocp.args.StandardRestore(abstract.opt_state)
    )
    if abstract.ema is not None:
        items["ema"] = ocp.args.StandardRestore(abstract.ema)
    with _reading_step(manager, step):
        out = manager.restore(step, args=ocp.args.Composite(**items))
    step_array = jax.device_put(jax.numpy.asarray(step, jax.numpy.int32), abstract.step.sharding)
    ema = out["ema"] if abstract.ema is not None else None
    return TrainState(step_array, out["params"], out["opt_state"], ema)
