"""quickstart: the README's first command. A 3-layer, 128-wide encoder trained on the built-in
corpus (the standard library's docstrings) for about 3 minutes on 2 idle CPU cores, then
`dlm-jax generate --checkpoint runs/quickstart --prompt "Return the" --gen-length 40 --steps 40 --show`.

bf16 compute (float32 parameters). A 2048-token BPE keeps the vocabulary head, the largest
layer here, cheap. At this budget the model learns the corpus's token statistics and little
context yet (docs/reproduction.md); raise `--steps` for more.
"""

from dlm_jax.models.config import EncoderConfig
from dlm_jax.train.config import TrainConfig

CONFIG = TrainConfig(
    model=EncoderConfig(hidden_size=128, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=512, max_position_embeddings=66,
                        initializer_range=0.088),  # about 1/sqrt(hidden_size)
    tokenizer_vocab_size=2048,
    seq_len=64,
    batch_size=64,
    steps=600,
    lr=2e-3,
    warmup_steps=50,
    end_lr_ratio=0.05,
    dtype="bfloat16",
    checkpoint_every=300,
    keep_checkpoints=1,
    log_every=50,
)
