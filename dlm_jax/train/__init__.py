"""Diffusion training: typed config, (data, fsdp) mesh, the jitted step, the loop.

    from dlm_jax.train import resolve_config, train
    train(resolve_config("tiny", ["steps=100"], data="corpus.txt"), "runs/tiny")

Modules: config (TrainConfig, presets, --set), mesh (multi-host, mesh, sharding rules),
step (loss, gradient accumulation, AdamW), checkpointing (Orbax), metrics (MFU, sinks),
loop (putting it together). Importing this package does not import data or Orbax.
"""

from dlm_jax.train.config import MeshConfig, TrainConfig, resolve_config


def train(config, workdir, **kwargs):
    from dlm_jax.train.loop import train as run

    return run(config, workdir, **kwargs)


__all__ = ["MeshConfig", "TrainConfig", "resolve_config", "train"]
