"""HuggingFace BERT/RoBERTa checkpoints <-> dlm-jax parameters.

The whole mapping is `NAME_TABLE`: one row per HF tensor name, giving our parameter path and
the transform between them. Import reads config.json and the weights (model.safetensors,
sharded safetensors with model.safetensors.index.json, or a legacy pytorch_model.bin), checks
every shape against the config, and reports what it matched, ignored, could not place, and
had to initialise. Export writes the inverse: a directory `transformers` loads with
`AutoModelForMaskedLM.from_pretrained` and `AutoTokenizer.from_pretrained`.
"""

import dataclasses
import json
import re
from pathlib import Path

import numpy as np

from dlm_jax.errors import UserError
from dlm_jax.models import SUPPORTED_MODEL_TYPES, EncoderConfig
from dlm_jax.tokenizer import load_tokenizer, special_token_ids

# The HF encoder's prefix inside the MLM classes; the bare classes (BertModel, RobertaModel)
# store the same names without it.
ENCODER_PREFIX = {"bert": "bert.", "roberta": "roberta."}
MLM_ARCHITECTURE = {"bert": "BertForMaskedLM", "roberta": "RobertaForMaskedLM"}

KEEP, TRANSPOSE = "keep", "transpose"  # HF Linear weights are [out, in]; our kernels [in, out]
ANY = "*"

# (model types, HF name with {i} = layer index and without the encoder prefix, our path, transform)
NAME_TABLE = (
    (ANY, "embeddings.word_embeddings.weight", "embeddings/word_embeddings/embedding", KEEP),
    (ANY, "embeddings.position_embeddings.weight", "embeddings/position_embeddings/embedding", KEEP),
    (ANY, "embeddings.token_type_embeddings.weight", "embeddings/token_type_embeddings/embedding", KEEP),
    (ANY, "embeddings.LayerNorm.weight", "embeddings/layer_norm/scale", KEEP),
    (ANY, "embeddings.LayerNorm.bias", "embeddings/layer_norm/bias", KEEP),
    (ANY, "encoder.layer.{i}.attention.self.query.weight", "layers/{i}/attention/query/kernel", TRANSPOSE),
    (ANY, "encoder.layer.{i}.attention.self.query.bias", "layers/{i}/attention/query/bias", KEEP),
    (ANY, "encoder.layer.{i}.attention.self.key.weight", "layers/{i}/attention/key/kernel", TRANSPOSE),
    (ANY, "encoder.layer.{i}.attention.self.key.bias", "layers/{i}/attention/key/bias", KEEP),
    (ANY, "encoder.layer.{i}.attention.self.value.weight", "layers/{i}/attention/value/kernel", TRANSPOSE),
    (ANY, "encoder.layer.{i}.attention.self.value.bias", "layers/{i}/attention/value/bias", KEEP),
    (ANY, "encoder.layer.{i}.attention.output.dense.weight", "layers/{i}/attention/output/kernel", TRANSPOSE),
    (ANY, "encoder.layer.{i}.attention.output.dense.bias", "layers/{i}/attention/output/bias", KEEP),
    (ANY, "encoder.layer.{i}.attention.output.LayerNorm.weight", "layers/{i}/attention/layer_norm/scale", KEEP),
    (ANY, "encoder.layer.{i}.attention.output.LayerNorm.bias", "layers/{i}/attention/layer_norm/bias", KEEP),
    (ANY, "encoder.layer.{i}.intermediate.dense.weight", "layers/{i}/feed_forward/intermediate/kernel", TRANSPOSE),
    (ANY, "encoder.layer.{i}.intermediate.dense.bias", "layers/{i}/feed_forward/intermediate/bias", KEEP),
    (ANY, "encoder.layer.{i}.output.dense.weight", "layers/{i}/feed_forward/output/kernel", TRANSPOSE),
    (ANY, "encoder.layer.{i}.output.dense.bias", "layers/{i}/feed_forward/output/bias", KEEP),
    (ANY, "encoder.layer.{i}.output.LayerNorm.weight", "layers/{i}/feed_forward/layer_norm/scale", KEEP),
    (ANY, "encoder.layer.{i}.output.LayerNorm.bias", "layers/{i}/feed_forward/layer_norm/bias", KEEP),
    ("roberta", "lm_head.dense.weight", "mlm_head/dense/kernel", TRANSPOSE),
    ("roberta", "lm_head.dense.bias", "mlm_head/dense/bias", KEEP),
    ("roberta", "lm_head.layer_norm.weight", "mlm_head/layer_norm/scale", KEEP),
    ("roberta", "lm_head.layer_norm.bias", "mlm_head/layer_norm/bias", KEEP),
    ("roberta", "lm_head.bias", "mlm_head/bias", KEEP),
    ("bert", "cls.predictions.transform.dense.weight", "mlm_head/dense/kernel", TRANSPOSE),
    ("bert", "cls.predictions.transform.dense.bias", "mlm_head/dense/bias", KEEP),
    ("bert", "cls.predictions.transform.LayerNorm.weight", "mlm_head/layer_norm/scale", KEEP),
    ("bert", "cls.predictions.transform.LayerNorm.bias", "mlm_head/layer_norm/bias", KEEP),
    ("bert", "cls.predictions.bias", "mlm_head/bias", KEEP),
)
# Other spellings of a table name (older/newer HF versions store the decoder bias either way).
ALIASES = {
    "lm_head.decoder.bias": "lm_head.bias",
    "cls.predictions.decoder.bias": "cls.predictions.bias",
}
# Names with nothing to convert: the pooler (not used by masked LM), the tied decoder weight
# (ours is the word embedding itself), and the position-id buffer older versions saved.
IGNORED = re.compile(
    r"pooler\..*|lm_head\.decoder\.weight|cls\.predictions\.decoder\.weight|embeddings\.position_ids"
)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


@dataclasses.dataclass
class ConversionReport:
    matched: list[str]  # HF names converted into a parameter
    ignored: list[str]  # HF names deliberately not converted (pooler, tied decoder)
    unmatched: list[str]  # HF names the table does not know (left out of the checkpoint)
    initialised: list[str]  # our parameter paths absent from the checkpoint, freshly initialised

    @property
    def head_initialised(self) -> bool:
        return any(path.startswith("mlm_head/") for path in self.initialised)

    def lines(self) -> list[str]:
        out = [f"matched {len(self.matched)} tensors"]
        if self.ignored:
            out.append(f"ignored {len(self.ignored)} (pooler / tied decoder): {', '.join(self.ignored)}")
        if self.unmatched:
            out.append(f"unmatched {len(self.unmatched)} HF tensors (dropped): {', '.join(self.unmatched)}")
        if self.head_initialised:
            out.append(
                f"MLM head initialised (not in the checkpoint; decoder tied to the word embeddings): "
                f"{', '.join(self.initialised)}"
            )
        else:
            out.append("MLM head converted from the checkpoint")
        return out


def _rows(model_type: str, num_layers: int):
    """(HF name without prefix, our path, transform) for every tensor of this model type."""
    for types, hf_name, path, transform in NAME_TABLE:
        if types not in (ANY, model_type):
            continue
        if "{i}" in hf_name:
            for i in range(num_layers):
                yield hf_name.format(i=i), path.format(i=i), transform
        else:
            yield hf_name, path, transform


# ----------------------------------------------------------------------------- HF config
def read_hf_config(hf_dir: Path) -> dict:
    path = hf_dir / "config.json"
    if not path.is_file():
        raise UserError(f"{hf_dir} has no config.json; pass a HuggingFace model directory")
    try:
        hf = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON ({err}); re-download the checkpoint") from None
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UserError(
            f"{hf_dir}: model type {model_type!r} is not supported; supported types: "
            + ", ".join(SUPPORTED_MODEL_TYPES)
        )
    return hf


def encoder_config_from_hf(hf: dict, tokenizer=None) -> EncoderConfig:
    """Our config from HF's config.json; special ids from the tokenizer when there is one."""
    model_type = hf["model_type"]
    required = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size", "max_position_embeddings")
    absent = [key for key in required if key not in hf]
    if absent:
        raise UserError(f"config.json lacks {', '.join(absent)}; use the checkpoint's complete config.json")
    pad = hf.get("pad_token_id", 1 if model_type == "roberta" else 0)
    if tokenizer is None:
        mask, bos, eos = hf.get("mask_token_id"), hf.get("bos_token_id"), hf.get("eos_token_id")
    else:
        ids = special_token_ids(tokenizer)
        mask, bos, eos = ids["mask"], ids["bos"], ids["eos"]
    return EncoderConfig(
        model_type=model_type,
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        num_hidden_layers=hf["num_hidden_layers"],
        num_attention_heads=hf["num_attention_heads"],
        intermediate_size=hf["intermediate_size"],
        max_position_embeddings=hf["max_position_embeddings"],
        type_vocab_size=hf.get("type_vocab_size", 2),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
        initializer_range=hf.get("initializer_range", 0.02),
        hidden_act=hf.get("hidden_act", "gelu"),
        pad_token_id=pad if pad is not None else 0,
        mask_token_id=mask,
        bos_token_id=bos,
        eos_token_id=eos,
    )


# ----------------------------------------------------------------------------- weights
def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"cannot read {path} ({err}); the file is damaged or truncated, re-download it") from None


def _read_torch_bin(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise UserError(
            f"{path} is a PyTorch file and reading it needs torch; pip install torch==2.13.0 "
            "or convert the checkpoint to safetensors"
        ) from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a damaged file
        raise UserError(f"cannot read {path} ({type(err).__name__}); the file is damaged, re-download it") from None
    return {name: tensor.float().numpy() for name, tensor in state.items()}


def read_hf_weights(hf_dir: Path) -> dict[str, np.ndarray]:
    """All tensors of a HF checkpoint directory as float32 NumPy arrays, by HF name."""
    single, index, legacy = (hf_dir / name for name in WEIGHT_FILES)
    if single.is_file():
        tensors = _read_safetensors(single)
    elif index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as err:
            raise UserError(f"{index} is not a valid safetensors index ({err}); re-download it") from None
        tensors = {}
        for shard in shards:
            if not (hf_dir / shard).is_file():
                raise UserError(f"{index} lists {shard}, which is missing from {hf_dir}; re-download it")
            tensors.update(_read_safetensors(hf_dir / shard))
    elif legacy.is_file():
        tensors = _read_torch_bin(legacy)
    else:
        raise UserError(f"{hf_dir} holds no weights; expected one of {', '.join(WEIGHT_FILES)}")
    return {name: np.asarray(value, dtype=np.float32) for name, value in tensors.items()}


# ----------------------------------------------------------------------------- HF -> ours
def _set(tree: dict, path: str, value) -> None:
    *parents, leaf = [int(k) if k.isdigit() else k for k in path.split("/")]
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


def _get(tree: dict, path: str):
    for key in path.split("/"):
        tree = tree[key] if key in tree else tree[int(key)]  # layer keys may be int or str
    return tree


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, path + "/"))
        else:
            out[path] = value
    return out


def expected_shapes(config: EncoderConfig) -> dict[str, tuple]:
    """Parameter path -> shape, from the encoder itself (nothing is allocated)."""
    from flax import nnx

    from dlm_jax.models import Encoder

    abstract = nnx.eval_shape(lambda: Encoder(config, rngs=nnx.Rngs(0)))
    return {p: tuple(v.shape) for p, v in _flatten(nnx.to_pure_dict(nnx.state(abstract, nnx.Param))).items()}


def init_head(config: EncoderConfig, seed: int = 0) -> dict:
    """A freshly initialised MLM head (pure dict), for checkpoints of the bare encoder."""
    from flax import nnx

    from dlm_jax.models.encoder import MLMHead

    head = MLMHead(config, rngs=nnx.Rngs(seed))
    return {p: np.asarray(v) for p, v in _flatten(nnx.to_pure_dict(nnx.state(head, nnx.Param))).items()}


def params_from_hf(tensors: dict[str, np.ndarray], config: EncoderConfig, *, seed: int = 0):
    """HF tensors -> (our pure-dict params, ConversionReport). Shapes are checked against the config."""
    prefix = ENCODER_PREFIX[config.model_type]
    rows = {hf: (path, transform) for hf, path, transform in _rows(config.model_type, config.num_hidden_layers)}
    shapes = expected_shapes(config)
    flat, matched, ignored, unmatched = {}, [], [], []
    for name in sorted(tensors):
        short = name[len(prefix):] if name.startswith(prefix) else name
        short = ALIASES.get(short, short)
        if short not in rows:
            (ignored if IGNORED.fullmatch(short) else unmatched).append(name)
            continue
        path, transform = rows[short]
        value = tensors[name].T if transform == TRANSPOSE else tensors[name]
        if value.shape != shapes[path]:
            hf_shape = tuple(tensors[name].shape)
            want = shapes[path][::-1] if transform == TRANSPOSE else shapes[path]
            raise UserError(
                f"the weights do not match config.json: {name} has shape {hf_shape} but the config "
                f"implies {tuple(want)}; fix config.json or use the checkpoint's own config"
            )
        flat[path] = np.ascontiguousarray(value)
        matched.append(name)
    extra_layers = sorted({int(m[1]) for n in unmatched if (m := re.search(r"encoder\.layer\.(\d+)\.", n))})
    if extra_layers:
        raise UserError(
            f"the weights do not match config.json: they hold layer {extra_layers[-1]} but the config "
            f"has num_hidden_layers={config.num_hidden_layers}; use the checkpoint's own config.json"
        )
    missing = [path for path in shapes if path not in flat]
    missing_encoder = [path for path in missing if not path.startswith("mlm_head/")]
    if missing_encoder:
        raise UserError(
            f"the checkpoint lacks {len(missing_encoder)} encoder tensors ({', '.join(missing_encoder[:4])}"
            f"{', ...' if len(missing_encoder) > 4 else ''}); is it a complete {config.model_type} checkpoint?"
        )
    if missing:
        head = init_head(config, seed)
        for path in missing:
            flat[path] = head[path.removeprefix("mlm_head/")]
    params = {}
    for path, value in flat.items():
        _set(params, path, value)
    return params, ConversionReport(matched, ignored, unmatched, missing)


def convert_hf_dir(hf_dir, *, seed: int = 0):
    """A HF checkpoint directory -> (EncoderConfig, params, tokenizer or None, ConversionReport)."""
    hf_dir = Path(hf_dir)
    if not hf_dir.exists():
        raise UserError(f"{hf_dir} does not exist; pass a HuggingFace model directory")
    if not hf_dir.is_dir():
        raise UserError(f"{hf_dir} is not a directory; pass a HuggingFace model directory")
    hf = read_hf_config(hf_dir)
    if not any((hf_dir / name).is_file() for name in WEIGHT_FILES):
        raise UserError(f"{hf_dir} holds no weights; expected one of {', '.join(WEIGHT_FILES)}")
    tokenizer = load_tokenizer(hf_dir, required=False)
    config = encoder_config_from_hf(hf, tokenizer)
    params, report = params_from_hf(read_hf_weights(hf_dir), config, seed=seed)
    return config, params, tokenizer, report


# ----------------------------------------------------------------------------- ours -> HF
def hf_tensors_from_params(params: dict, config: EncoderConfig) -> dict[str, np.ndarray]:
    """Our params -> HF MLM-class tensors (the tied decoder weight is not stored, as HF does)."""
    prefix = ENCODER_PREFIX[config.model_type]
    out = {}
    for hf_name, path, transform in _rows(config.model_type, config.num_hidden_layers):
        value = np.asarray(_get(params, path), dtype=np.float32)
        full = hf_name if hf_name.startswith(("lm_head.", "cls.")) else prefix + hf_name
        out[full] = np.ascontiguousarray(value.T if transform == TRANSPOSE else value)
    return out


def hf_config_from_ours(config: EncoderConfig) -> dict:
    return {
        "architectures": [MLM_ARCHITECTURE[config.model_type]],
        "model_type": config.model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "intermediate_size": config.intermediate_size,
        "max_position_embeddings": config.max_position_embeddings,
        "type_vocab_size": config.type_vocab_size,
        "layer_norm_eps": config.layer_norm_eps,
        "hidden_act": config.hidden_act,
        "pad_token_id": config.pad_token_id,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "initializer_range": config.initializer_range,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
    }


def export_hf(directory, config: EncoderConfig, params: dict, tokenizer=None) -> None:
    """Write a HF MLM checkpoint directory (config.json, model.safetensors, tokenizer files)."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    tensors = hf_tensors_from_params(params, config)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(hf_config_from_ours(config), indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
