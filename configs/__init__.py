"""Typed training presets, one module per name, each defining CONFIG (a TrainConfig).

Installed as the package `dlm_jax.configs` (see pyproject.toml), so `--config NAME` finds them
from a wheel as well as from a checkout.
"""
