"""`dlm_jax.load(path)`: any checkpoint a user has -> a model ready to score text.

`path` may be our model directory, a training workdir (its latest checkpoint) or a HuggingFace
BERT/RoBERTa/ModernBERT directory, converted in memory on the fly.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dlm_jax.errors import UserError
from dlm_jax.models import EncoderConfig
from dlm_jax.models.params import encoder_with_params


@partial(jax.jit, static_argnums=0)
def _logits(graphdef, state, input_ids, attention_mask):
    return nnx.merge(graphdef, state)(input_ids, attention_mask)


class Model:
    """An encoder with its weights, config and tokenizer.

    `.encoder` is the nnx encoder; `.logits(ids, mask)` runs its jitted forward (compiled once per
    input shape) after checking the ids on the host, since JAX clamps out-of-range gathers.
    """

    def __init__(self, config: EncoderConfig, encoder, tokenizer=None):
        self.config = config
        self.encoder = encoder
        self.tokenizer = tokenizer

    def logits(self, input_ids, attention_mask=None) -> np.ndarray:
        """Token ids [B, T] (and 0/1 mask [B, T]) -> float32 NumPy logits [B, T, vocab]."""
        ids = np.asarray(input_ids)
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise UserError(f"input_ids must be a 2-D integer array [batch, length], got {ids.dtype} {ids.shape}")
        vocab = self.config.vocab_size
        bad = ids[(ids < 0) | (ids >= vocab)]
        if bad.size:
            raise UserError(f"token id {int(bad[0])} is outside the vocabulary [0, {vocab}); check the tokenizer")
        if ids.shape[1] > self.config.max_length:
            raise UserError(
                f"sequence length {ids.shape[1]} exceeds the model's maximum {self.config.max_length}; "
                "shorten the input"
            )
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
        if mask.shape != ids.shape:
            raise UserError(f"attention_mask shape {mask.shape} differs from input_ids shape {ids.shape}")
        graphdef, state = nnx.split(self.encoder)
        out = _logits(graphdef, state, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32))
        return np.asarray(out, dtype=np.float32)


def load(path, *, dtype: str = "float32", step: int | None = None) -> Model:
    """Our model dir, a training workdir (latest checkpoint, or `step`) or a HF dir -> Model."""
    from dlm_jax.checkpoint import read_any

    config, params, tokenizer = read_any(path, step)
    return Model(config, encoder_with_params(config, params, dtype=dtype), tokenizer)
