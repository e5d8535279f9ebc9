"""One process of the preemption test: `python preemption_worker.py PORT PROCESS_ID WORKDIR
CORPUS TOKENIZER STEPS` trains the tiny preset on a mesh over the 2 x 4 CPU devices of two
processes (gloo on 127.0.0.1), logging every step and saving only at the end (or on SIGTERM).

The learning rate stays constant after warmup (end_lr_ratio=1), so the schedule, and with it
every step, does not depend on STEPS: runs with different STEPS agree step for step."""

import os
import sys

port, process_id, workdir, corpus, tokenizer, steps = sys.argv[1:7]
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

from dlm_jax.train import resolve_config, train  # noqa: E402
from dlm_jax.train.mesh import init_distributed  # noqa: E402

init_distributed(f"127.0.0.1:{port}", 2, int(process_id))
config = resolve_config(
    "tiny",
    [f"steps={steps}", "log_every=1", f"checkpoint_every={steps}", "end_lr_ratio=1", f"tokenizer={tokenizer}"],
    data=corpus,
)
train(config, workdir)
