"""tiny: seconds on a laptop CPU; the preset for tests, CI and the quickstart."""

from dlm_jax.models.config import EncoderConfig
from dlm_jax.train.config import TrainConfig

CONFIG = TrainConfig(
    model=EncoderConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=256, max_position_embeddings=66,
                        initializer_range=0.125),  # about 1/sqrt(hidden_size)
    tokenizer_vocab_size=2048,
    seq_len=64,
    batch_size=16,
    steps=200,
    lr=2e-3,
    warmup_steps=20,
    checkpoint_every=100,
    log_every=10,
)
