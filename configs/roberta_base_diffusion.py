"""roberta_base_diffusion: the original RoBERTa-diffusion recipe.

Start from roberta-base (`--init DIR` with the HF checkpoint; model, tokenizer and weights come
from it), sequences of 256 tokens whose first 16 are never masked (the prompt prefix), one mask
ratio per sequence from 0.1, 0.2, ..., 1.0. bf16 compute; one accelerator or a data-parallel
mesh.
"""

from dlm_jax.diffusion import ObjectiveConfig
from dlm_jax.train.config import TrainConfig

CONFIG = TrainConfig(
    init="roberta-base",  # a local HF directory; override with --init PATH
    objective=ObjectiveConfig(name="ratio_set", prefix_len=16),
    seq_len=256,
    batch_size=32,
    steps=30000,
    lr=5e-5,
    warmup_steps=500,
    schedule="linear",
    end_lr_ratio=0.0,
    weight_decay=0.01,
    dtype="bfloat16",
    checkpoint_every=1000,
    keep_checkpoints=3,
    log_every=50,
)
