"""The training configuration: one typed dataclass, every default visible here.

A run's config is a preset (configs/<name>.py) or a JSON/YAML file, then `--set key=value`
overrides (nested keys with dots: `model.hidden_size=256`, `objective.name=elbo`,
`mesh.fsdp=8`). The resolved config is written to WORKDIR/config.json and can be fed back with
`--config WORKDIR/config.json`.
"""

import dataclasses
import difflib
import importlib
import json
import types
import typing
from pathlib import Path

import dlm_jax.configs
from dlm_jax.diffusion import ObjectiveConfig
from dlm_jax.errors import UserError
from dlm_jax.models import COMPUTE_DTYPES
from dlm_jax.models.config import EncoderConfig

# Presets live in the repository's configs/ folder (installed as dlm_jax.configs), one module
# per name, each defining CONFIG.
CONFIGS_DIR = Path(dlm_jax.configs.__file__).parent

# MaxText-style sharding rules: (regex on the parameter path "a/b/c", spec per dimension). The
# first match wins; a mesh axis that does not divide its dimension is dropped (replicated).
# With mesh.fsdp == 1 every rule is plain replication.
DEFAULT_SHARDING_RULES = (
    (r"embedding$", (None, "fsdp")),  # [vocab or positions, hidden]: shard hidden
    (r"kernel$", ("fsdp", None)),  # [in, out]: shard the input dimension
    (r".*", ()),  # biases and LayerNorms: replicated
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    data: int = -1  # -1: every device not used by fsdp
    fsdp: int = 1


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    # Model: EncoderConfig fields (vocab and special ids are taken from the tokenizer), or the
    # weights, config and tokenizer of `init` (a HF dir, a dlm-jax model dir or a workdir).
    model: EncoderConfig = EncoderConfig(
        hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512, max_position_embeddings=130
    )
    init: str | None = None
    tokenizer: str | None = None  # a tokenizer dir; None: init's, else BPE trained on the corpus
    tokenizer_vocab_size: int = 8192
    objective: ObjectiveConfig = ObjectiveConfig()
    # Data: tfds:NAME[/CONFIG][:SPLIT] or a local path; None: data.default_corpus().
    data: str | None = None
    seq_len: int = 128
    batch_size: int = 32  # global, over all hosts and microbatches
    grad_accum_steps: int = 1
    steps: int = 1000
    # Optimizer: AdamW, linear warmup then cosine or linear decay to lr * end_lr_ratio.
    lr: float = 1e-3
    warmup_steps: int = 100
    schedule: str = "cosine"  # cosine | linear
    end_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.98
    adam_eps: float = 1e-6
    clip_norm: float = 1.0
    # Compute.
    dtype: str = "float32"  # compute dtype, a name of models.COMPUTE_DTYPES (parameters stay float32)
    remat: bool = False
    # jax.nn.dot_product_attention's implementation; None: JAX chooses (on CPU: layers.folded_heads_attention)
    attention: str | None = None
    # Scored tokens decoded per iteration of the fused vocabulary cross-entropy (ops.py): the
    # [chunk, vocab] logits block should stay in cache on CPU; accelerators like larger blocks.
    loss_chunk_size: int = 128
    ema_decay: float | None = None  # None: no EMA of the parameters
    # Parallelism.
    mesh: MeshConfig = MeshConfig()
    parallelism: str = "mesh"  # mesh: jit over the Mesh | pmap: jit(shard_map) with psums
    sharding_rules: tuple = DEFAULT_SHARDING_RULES
    # Bookkeeping.
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 10
    seed: int = 0
    peak_tflops: float | None = None  # per device; None: known device table, on CPU measured

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# What a changed key means when a run resumes a workdir (checkpointing.check_workdir). Keys not
# named here (model, tokenizer, objective, data, seq_len, batch_size, the optimizer's, dtype,
# ema_decay, seed) change what the next steps compute: refused unless --allow-changes.
RESUME_FREE = ("checkpoint_every", "keep_checkpoints", "log_every", "peak_tflops")  # bookkeeping
RESUME_LAYOUT = (
    "mesh",
    "parallelism",
    "sharding_rules",
    "grad_accum_steps",
    "remat",
    "attention",
    "loss_chunk_size",
)  # how, not what, is computed
RESUME_IGNORED = ("init", "tokenizer_vocab_size")  # read by a fresh run only
# The learning-rate schedule: a change is exact when every step already trained keeps its rate
# (e.g. more steps during warmup, or a constant rate after it).
SCHEDULE_KEYS = ("lr", "warmup_steps", "schedule", "end_lr_ratio", "steps")

# HuggingFace Trainer's names for our keys: an unknown key that is one of these names ours.
HF_NAMES = {
    "learning_rate": "lr",
    "max_steps": "steps",
    "num_train_steps": "steps",
    "train_batch_size": "batch_size",
    "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum_steps",
    "lr_scheduler_type": "schedule",
    "adam_beta1": "b1",
    "adam_beta2": "b2",
    "adam_epsilon": "adam_eps",
    "max_grad_norm": "clip_norm",
    "save_steps": "checkpoint_every",
    "save_total_limit": "keep_checkpoints",
    "logging_steps": "log_every",
    "max_seq_length": "seq_len",
    "max_length": "seq_len",
    "block_size": "seq_len",
    "gradient_checkpointing": "remat",
    "mlm_probability": "objective.bert_mask_prob",
}


def _close(name: str, names, prefix: str) -> str:
    if not prefix and name in HF_NAMES:
        return f"HuggingFace's {name} is {HF_NAMES[name]} here"
    close = [prefix + n for n in difflib.get_close_matches(name, list(names), n=3, cutoff=0.6)]
    if close:
        return f"did you mean {', '.join(close)}?"
    return f"known keys: {', '.join(prefix + n for n in sorted(names))}"


def _coerce(value, hint, key: str):
    """A JSON/YAML value or a --set string -> the field's declared type."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(value, options[0], key)
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if hint in (int, float):
            if isinstance(value, bool):
                raise ValueError(value)
            number = hint(value)
            if hint is int and isinstance(value, float) and number != value:
                raise ValueError(value)
            return number
        if hint is str:
            return str(value)
        if hint is tuple or origin is tuple:
            if isinstance(value, str):
                value = json.loads(value) if value.strip().startswith("[") else value.split(",")
            inner = typing.get_args(hint)
            item = inner[0] if inner else None
            return tuple(_coerce(v, item, key) if item else _freeze(v) for v in value)
    except (TypeError, ValueError, json.JSONDecodeError):
        raise UserError(f"config key {key}: cannot read {value!r} as {getattr(hint, '__name__', hint)}") from None
    return value


def _freeze(value):
    return tuple(_freeze(v) for v in value) if isinstance(value, list | tuple) else value


def _apply(obj, changes: dict, prefix: str = ""):
    """A copy of the dataclass `obj` with nested `changes` applied and type-checked."""
    fields = {f.name: f for f in dataclasses.fields(obj)}
    hints = typing.get_type_hints(type(obj))
    updates = {}
    for name, value in changes.items():
        key = prefix + name
        if name not in fields:
            raise UserError(f"unknown config key {key!r}; {_close(name, fields, prefix)}")
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise UserError(f"config key {key} is a group; set its fields ({key}.FIELD=VALUE)")
            updates[name] = _apply(current, value, key + ".")
        else:
            updates[name] = _coerce(value, hints[name], key)
    try:
        return dataclasses.replace(obj, **updates)
    except ValueError as err:  # a field's own validation (ObjectiveConfig)
        raise UserError(f"config: {err}") from None


def _parse_sets(sets) -> dict:
    nested = {}
    for item in sets or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r}: write --set key=value (e.g. --set lr=3e-4)")
        *groups, leaf = key.strip().split(".")
        node = nested
        for group in groups:
            node = node.setdefault(group, {})
        node[leaf] = value.strip()
    return nested


def preset_names() -> list[str]:
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.py") if not p.stem.startswith("_"))


def _load_preset(name: str) -> TrainConfig:
    path = CONFIGS_DIR / f"{name}.py"
    if not path.is_file():
        raise UserError(f"no config preset or file {name!r}; presets: {', '.join(preset_names())}")
    return importlib.import_module(f"dlm_jax.configs.{name}").CONFIG


def _load_file(path: Path) -> dict:
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text)
        else:
            values = json.loads(text)
    except Exception as err:  # the parser's own message names the line
        raise UserError(f"cannot parse config file {path}: {err}".replace("\n", " ")) from None
    if not isinstance(values, dict):
        raise UserError(f"config file {path} must hold a mapping of config keys")
    return values


def resolve_config(name_or_path: str = "tiny", sets=(), **overrides) -> TrainConfig:
    """Preset name or JSON/YAML file, then `--set key=value` strings, then keyword overrides
    (e.g. steps=..., data=... from CLI flags; None values are ignored)."""
    path = Path(name_or_path)
    if path.suffix in (".json", ".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise UserError(f"config file {path} does not exist")
        config = _apply(TrainConfig(), _load_file(path))
    else:
        config = _load_preset(name_or_path)
    nested_sets = _parse_sets(sets)
    config = _apply(config, nested_sets)
    config = _apply(config, {k: v for k, v in overrides.items() if v is not None})
    validate(config)
    if config.init is not None and nested_sets.get("model"):
        check_init_model_sets(config, nested_sets["model"])
    return config


def check_init_model_sets(config: TrainConfig, model_sets: dict) -> None:
    """The model of an `init` run is the checkpoint's (its shapes are its weights'): a --set
    model.KEY that differs from it would be silently ignored, so it is refused."""
    from dlm_jax.checkpoint import read_any

    initial = read_any(config.init, weights=False)[0]
    conflicts = [
        f"model.{key}={getattr(config.model, key)!r} (init's {getattr(initial, key)!r})"
        for key in model_sets
        if getattr(config.model, key) != getattr(initial, key)
    ]
    if conflicts:
        raise UserError(
            f"--set {', '.join(conflicts)} conflicts with the model of init {config.init}, which is "
            "the one trained; drop the --set, or train from scratch without --init"
        )


def validate(config: TrainConfig) -> None:
    """Cheap checks that would otherwise fail after compilation."""
    choices = {"schedule": ("cosine", "linear"), "dtype": tuple(COMPUTE_DTYPES), "parallelism": ("mesh", "pmap")}
    for key, allowed in choices.items():
        if getattr(config, key) not in allowed:
            raise UserError(f"{key}={getattr(config, key)!r}; choose one of {', '.join(allowed)}")
    positive = (
        "seq_len",
        "batch_size",
        "grad_accum_steps",
        "steps",
        "checkpoint_every",
        "loss_chunk_size",
        "keep_checkpoints",
        "log_every",
    )
    for key in positive:
        if getattr(config, key) < 1:
            raise UserError(f"{key} must be at least 1 (got {getattr(config, key)})")
    if config.batch_size % config.grad_accum_steps:
        raise UserError(
            f"batch_size {config.batch_size} is not divisible by grad_accum_steps {config.grad_accum_steps}"
        )
    if config.objective.prefix_len >= config.seq_len:  # every objective masks only after the prefix
        raise UserError(
            f"objective.prefix_len {config.objective.prefix_len} leaves no token of seq_len {config.seq_len} "
            f"to mask, so nothing would be trained; set objective.prefix_len below {config.seq_len}"
        )
    if config.ema_decay is not None and not 0.0 <= config.ema_decay < 1.0:
        raise UserError(f"ema_decay must be in [0, 1) or none (got {config.ema_decay})")
    # (value, holds, what it must be); `not holds` also catches NaN
    ranges = {
        "lr": (config.lr, config.lr > 0, "> 0"),
        "clip_norm": (config.clip_norm, config.clip_norm > 0, "> 0"),
        "adam_eps": (config.adam_eps, config.adam_eps > 0, "> 0"),
        "warmup_steps": (config.warmup_steps, config.warmup_steps >= 0, ">= 0"),
        "weight_decay": (config.weight_decay, config.weight_decay >= 0, ">= 0"),
        "end_lr_ratio": (config.end_lr_ratio, config.end_lr_ratio >= 0, ">= 0"),
        "b1": (config.b1, 0 <= config.b1 < 1, "in [0, 1)"),
        "b2": (config.b2, 0 <= config.b2 < 1, "in [0, 1)"),
        "seed": (config.seed, 0 <= config.seed < 2**32, "in [0, 2**32)"),
        "peak_tflops": (config.peak_tflops, config.peak_tflops is None or config.peak_tflops > 0, "> 0 or none"),
    }
    for key, (value, holds, must) in ranges.items():
        if not holds:
            raise UserError(f"{key} must be {must} (got {value})")


def save_config(config: TrainConfig, path: Path) -> None:
    path.write_text(json.dumps(config.to_dict(), indent=2) + "\n")
