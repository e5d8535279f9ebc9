"""small: a 4-layer, 256-wide encoder that learns visibly in minutes on 2 CPU cores."""

from dlm_jax.models.config import EncoderConfig
from dlm_jax.train.config import TrainConfig

CONFIG = TrainConfig(
    model=EncoderConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=1024, max_position_embeddings=130,
                        initializer_range=0.0625),  # about 1/sqrt(hidden_size)
    tokenizer_vocab_size=8192,
    seq_len=128,
    batch_size=32,
    steps=2000,
    lr=1e-3,
    warmup_steps=100,
    checkpoint_every=250,
    log_every=20,
)
