"""bert_large: BERT-large shape (335M), elbo objective, global batch 512 x 512 on a pod."""

from dlm_jax.diffusion import ObjectiveConfig
from dlm_jax.models.config import EncoderConfig
from dlm_jax.train.config import MeshConfig, TrainConfig

CONFIG = TrainConfig(
    model=EncoderConfig(
        model_type="bert",
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        max_position_embeddings=512,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
    ),
    tokenizer_vocab_size=32768,
    objective=ObjectiveConfig(name="elbo"),
    seq_len=512,
    batch_size=512,
    steps=200000,
    lr=2e-4,
    warmup_steps=4000,
    dtype="bfloat16",
    remat=True,
    ema_decay=0.9999,
    mesh=MeshConfig(data=-1, fsdp=16),
    checkpoint_every=2000,
    log_every=100,
)
