"""Two processes x 4 CPU devices train to the same parameters as one process x 8 devices."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from dlm_jax.checkpoint import load_params_from_workdir

WORKER = Path(__file__).with_name("multihost_worker.py")
# Same global batch, same corruption keys, same mesh shape: only the all-reduce differs
# (gloo across processes vs in-process), i.e. float32 summation order (measured: 7.5e-9).
ATOL = 2e-6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(num_processes, devices, workdir, corpus, tokenizer, port):
    env = dict(os.environ, DLM_JAX_CACHE=str(workdir.parent / "cache"))
    return [
        subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                str(port),
                str(num_processes),
                str(i),
                str(devices),
                str(workdir),
                corpus,
                tokenizer,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(num_processes)
    ]


def _wait(procs):
    for p in procs:
        out = p.communicate(timeout=300)[0]
        assert p.returncode == 0, out[-3000:]


def test_two_processes_equal_one(tmp_path, shared_data):
    from dlm_jax.data import train_tokenizer

    corpus = str(shared_data / "tinyshakespeare" / "input.txt")
    tokenizer = tmp_path / "tokenizer"
    train_tokenizer(corpus, tokenizer, vocab_size=512)
    _wait(_launch(1, 8, tmp_path / "one", corpus, str(tokenizer), _free_port()))
    _wait(_launch(2, 4, tmp_path / "two", corpus, str(tokenizer), _free_port()))
    one = load_params_from_workdir(tmp_path / "one")
    # The 2-process checkpoint names 2 x 4 devices; it is restored onto this process's device.
    two = load_params_from_workdir(tmp_path / "two")
    leaves = list(zip(jax.tree.leaves(one), jax.tree.leaves(two)))
    assert leaves
    worst = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in leaves)
    assert worst <= ATOL, worst
