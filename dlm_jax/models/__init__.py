"""Encoder families. BERT and RoBERTa share one module; see encoder.py."""

from dlm_jax.models.config import CONFIG_FILE, SUPPORTED_MODEL_TYPES, EncoderConfig
from dlm_jax.models.encoder import COMPUTE_DTYPES, Encoder

__all__ = ["COMPUTE_DTYPES", "CONFIG_FILE", "SUPPORTED_MODEL_TYPES", "Encoder", "EncoderConfig"]
