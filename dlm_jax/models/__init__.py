"""Encoder families: BERT/RoBERTa (bert.py) and ModernBERT (modernbert.py), their shared
layers (layers.py), the config (config.py) and the parameter tree (params.py).

Every family is a `layers.MaskedLMEncoder`: `encode`, `head_features`, `vocab_decoder`,
`position_ids`, logits. Build one with `params.new_encoder(config)` or, around existing
weights, `params.encoder_with_params(config, params)`.
"""

from dlm_jax.models.config import CONFIG_FILE, SUPPORTED_MODEL_TYPES, EncoderConfig
from dlm_jax.models.layers import COMPUTE_DTYPES, MaskedLMEncoder

__all__ = ["COMPUTE_DTYPES", "CONFIG_FILE", "SUPPORTED_MODEL_TYPES", "EncoderConfig", "MaskedLMEncoder"]
