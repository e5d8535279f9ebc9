"""roberta_large: continue roberta-large (355M, `--init DIR`) as a diffusion model on a pod:
ratio_set with a 16-token prefix, global batch 256 x 512, FSDP 8, bf16, remat."""

from dlm_jax.diffusion import ObjectiveConfig
from dlm_jax.train.config import MeshConfig, TrainConfig

CONFIG = TrainConfig(
    init="roberta-large",  # a local HF directory; override with --init PATH
    objective=ObjectiveConfig(name="ratio_set", prefix_len=16),
    seq_len=512,
    batch_size=256,
    steps=50000,
    lr=3e-5,
    warmup_steps=1000,
    schedule="linear",
    end_lr_ratio=0.0,
    dtype="bfloat16",
    remat=True,
    mesh=MeshConfig(data=-1, fsdp=8),
    checkpoint_every=1000,
    log_every=50,
)
