"""The parameter tree of an encoder: building it, its abstract shape, and its paths.

Parameters travel between modules as a pure dict of float32 arrays (nnx's pure-dict state):
{"embeddings": {"word_embeddings": {"embedding": ...}}, "layers": {0: {...}, 1: ...}, ...}.
A path names one leaf as "layers/3/attention/query/kernel"; the converter's name table, the
sharding rules and checkpoints all speak in those paths. Layer indices are ints in the tree
(Orbax hands them back as strings; `with_int_keys` restores them).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from dlm_jax.errors import UserError
from dlm_jax.models.bert import BertEncoder
from dlm_jax.models.config import EncoderConfig
from dlm_jax.models.layers import COMPUTE_DTYPES
from dlm_jax.models.modernbert import ModernBertEncoder

ENCODER_CLASSES = {"bert": BertEncoder, "roberta": BertEncoder, "modernbert": ModernBertEncoder}


def compute_dtype(name: str):
    if name not in COMPUTE_DTYPES:
        raise UserError(f"dtype {name!r} is not supported; use one of {', '.join(COMPUTE_DTYPES)}")
    return COMPUTE_DTYPES[name]


def new_encoder(
    config: EncoderConfig, *, seed: int = 0, dtype: str = "float32", remat: bool = False, attention: str | None = None
):
    """A freshly initialised encoder of `config`'s family, computing in `dtype`."""
    cls = ENCODER_CLASSES[config.model_type]
    return cls(config, rngs=nnx.Rngs(seed), dtype=compute_dtype(dtype), remat=remat, attention=attention)


def abstract_encoder(config: EncoderConfig, **options):
    """(graphdef, abstract params): the encoder's structure and its parameters as
    jax.ShapeDtypeStructs, without allocating anything. options: those of `new_encoder`."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: new_encoder(config, **options)))
    return graphdef, nnx.to_pure_dict(state)


def abstract_params(config: EncoderConfig, sharding=None) -> dict:
    """The float32 parameter tree of `config` as ShapeDtypeStructs (a restore target); `sharding`
    (one for every leaf) places it, e.g. on one device whatever topology saved a checkpoint."""
    _, shapes = abstract_encoder(config)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32, sharding=sharding), shapes)


def init_params(config: EncoderConfig, seed: int = 0) -> dict:
    """A freshly initialised parameter tree (pure dict of float32 arrays)."""
    return params_of(new_encoder(config, seed=seed))


def params_of(encoder) -> dict:
    """The encoder's parameters as a pure dict."""
    return nnx.to_pure_dict(nnx.state(encoder, nnx.Param))


def encoder_with_params(
    config: EncoderConfig, params: dict, *, dtype: str = "float32", remat: bool = False, attention: str | None = None
):
    """An encoder holding `params` (pure dict) and computing in `dtype`, for inference.

    In a low-precision dtype every matrix (the matmul kernels and the embedding tables, the tied
    vocabulary decoder among them) is stored in that dtype and vectors (norm scales, biases) stay
    float32. The products are the same (ops.matmul rounds its inputs to the compute dtype
    anyway; only embedding rows are rounded where they were not), but a jitted forward no longer
    converts every weight at every call: XLA keeps no converted copy between calls, and on 2
    CPU cores the conversions were a sixth of a bf16 roberta-base forward (docs/benchmarks.md).
    Training builds its encoders from float32 params (train.loop), never through here."""
    encoder = nnx.eval_shape(lambda: new_encoder(config, dtype=dtype, remat=remat, attention=attention))
    state = nnx.state(encoder, nnx.Param)
    stored = compute_dtype(dtype)
    nnx.replace_by_pure_dict(
        state, jax.tree.map(lambda x: jnp.asarray(x, stored if jnp.ndim(x) >= 2 else None), params)
    )
    nnx.update(encoder, state)
    return encoder


def path_name(key_path) -> str:
    """A jax tree key path (from tree_map_with_path) as "a/b/c"."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in key_path)


def flatten(tree: dict) -> dict:
    """{"a/b/c": leaf} of a nested dict."""
    return {path_name(key_path): leaf for key_path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def unflatten(flat: dict) -> dict:
    """The nested dict of {"a/b/c": leaf}; digit keys (layer indices) become ints."""
    tree = {}
    for path, value in flat.items():
        *parents, leaf = [int(k) if k.isdigit() else k for k in path.split("/")]
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree


def with_int_keys(tree):
    """Digit-string dict keys (as Orbax restores them) back to ints."""
    if not isinstance(tree, dict):
        return tree
    return {int(k) if isinstance(k, str) and k.isdigit() else k: with_int_keys(v) for k, v in tree.items()}


def shapes(config: EncoderConfig) -> dict[str, tuple]:
    """Parameter path -> shape, from the encoder itself (nothing is allocated)."""
    return {path: tuple(leaf.shape) for path, leaf in flatten(abstract_encoder(config)[1]).items()}
