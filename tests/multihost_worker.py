"""One process of the multi-host test: `python multihost_worker.py PORT NUM_PROCESSES PROCESS_ID
DEVICES WORKDIR CORPUS TOKENIZER` trains 4 steps of the tiny preset on a mesh over every
device of every process (gloo CPU collectives on 127.0.0.1)."""

import os
import sys

port, num_processes, process_id, devices, workdir, corpus, tokenizer = sys.argv[1:8]
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

from dlm_jax.train import resolve_config, train  # noqa: E402
from dlm_jax.train.mesh import init_distributed  # noqa: E402

if int(num_processes) > 1:
    init_distributed(f"127.0.0.1:{port}", int(num_processes), int(process_id))
assert jax.device_count() == 8, jax.devices()
config = resolve_config("tiny", ["steps=4", "log_every=1", f"tokenizer={tokenizer}"], data=corpus)
train(config, workdir)
