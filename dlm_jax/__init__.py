"""dlm-jax: masked text diffusion with BERT-family encoders in JAX/Flax.

The public entry points are `load` (a checkpoint, a training workdir or a HuggingFace directory
-> a model) and `generate` (the on-device unmasking sampler). They are imported on first use so
that `import dlm_jax` stays cheap for the CLI's argument parsing.
"""

from importlib import metadata

from dlm_jax.errors import UserError

__all__ = ["UserError", "generate", "load"]
try:
    __version__ = metadata.version("dlm-jax")  # pyproject.toml's, the one place it is written
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "unknown"


def __getattr__(name):
    if name == "load":
        from dlm_jax.api import load

        return load
    if name == "generate":
        from dlm_jax.sampling import generate

        return generate
    raise AttributeError(f"module 'dlm_jax' has no attribute {name!r}")
