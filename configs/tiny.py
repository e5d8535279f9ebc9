"""tiny: seconds on a laptop CPU; the preset for tests and CI. A 2-layer, 64-wide ModernBERT
(its first layer global, the second attending within 16 tokens) on 64-token sequences."""

from dlm_jax.models.config import EncoderConfig
from dlm_jax.train.config import TrainConfig

CONFIG = TrainConfig(
    model=EncoderConfig(
        model_type="modernbert",
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=256,
        max_position_embeddings=64,
        local_attention=16,
        initializer_range=0.02,
    ),
    tokenizer_vocab_size=2048,
    seq_len=64,
    batch_size=16,
    steps=200,
    lr=2e-3,
    warmup_steps=20,
    checkpoint_every=100,
    log_every=10,
)
