"""bert_base: BERT-base shape (110M) trained from scratch with the elbo objective on a pod
slice: global batch 256 x 512, FSDP over 8 devices per data replica, bf16, remat."""

from dlm_jax.diffusion import ObjectiveConfig
from dlm_jax.models.config import EncoderConfig
from dlm_jax.train.config import MeshConfig, TrainConfig

CONFIG = TrainConfig(
    model=EncoderConfig(
        model_type="bert",
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=512,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
    ),
    tokenizer_vocab_size=32768,
    objective=ObjectiveConfig(name="elbo"),
    seq_len=512,
    batch_size=256,
    steps=100000,
    lr=4e-4,
    warmup_steps=2000,
    dtype="bfloat16",
    remat=True,
    ema_decay=0.9999,
    mesh=MeshConfig(data=-1, fsdp=8),
    checkpoint_every=2000,
    log_every=100,
)
