"""HuggingFace BERT / RoBERTa / ModernBERT checkpoints <-> dlm-jax parameters.

The whole mapping is two tables. `NAME_TABLE`: one row per HF tensor name, giving our parameter
path and the transform between them. `CONFIG_TABLE`: one row per config field, giving HF's key
and its default. Import reads config.json and the weights (model.safetensors, sharded
safetensors with model.safetensors.index.json, or a legacy pytorch_model.bin), checks every
shape against the config, and reports what it matched, ignored, could not place, and had to
initialise. Export writes the inverse: a directory `transformers` loads with
`AutoModelForMaskedLM.from_pretrained` and `AutoTokenizer.from_pretrained`.
"""

import dataclasses
import json
import re
from pathlib import Path

import numpy as np

from dlm_jax.errors import UserError
from dlm_jax.models import SUPPORTED_MODEL_TYPES, EncoderConfig
from dlm_jax.models import params as model_params
from dlm_jax.tokenizer import check_tokenizer_fits, load_tokenizer, special_token_ids

FAMILY = {"bert": "bert", "roberta": "bert", "modernbert": "modernbert"}  # which rows a model type uses
# The HF encoder's prefix inside the MLM classes; the bare classes (BertModel, ModernBertModel)
# store the same names without it. Head rows never carry it.
ENCODER_PREFIX = {"bert": "bert.", "roberta": "roberta.", "modernbert": "model."}
MLM_ARCHITECTURE = {"bert": "BertForMaskedLM", "roberta": "RobertaForMaskedLM", "modernbert": "ModernBertForMaskedLM"}
# Our paths that belong to the MLM head (initialised when a bare encoder is converted).
HEAD_PATHS = {"bert": ("mlm_head/",), "modernbert": ("head/", "decoder/")}

KEEP, TRANSPOSE = "keep", "transpose"  # HF Linear weights are [out, in]; our kernels [in, out]
BERT, ROBERTA, MODERN = ("bert", "roberta"), ("roberta",), ("modernbert",)
BERT_ONLY = ("bert",)

# (model types, HF name with {i} = layer index and without the encoder prefix, our path, transform).
# Rows whose path the config does not have (ModernBERT's biases when the config has none, the
# first block's attention norm) are skipped.
NAME_TABLE = (
    (BERT, "embeddings.word_embeddings.weight", "embeddings/word_embeddings/embedding", KEEP),
    (BERT, "embeddings.position_embeddings.weight", "embeddings/position_embeddings/embedding", KEEP),
    (BERT, "embeddings.token_type_embeddings.weight", "embeddings/token_type_embeddings/embedding", KEEP),
    (BERT, "embeddings.LayerNorm.weight", "embeddings/layer_norm/scale", KEEP),
    (BERT, "embeddings.LayerNorm.bias", "embeddings/layer_norm/bias", KEEP),
    (BERT, "encoder.layer.{i}.attention.self.query.weight", "layers/{i}/attention/query/kernel", TRANSPOSE),
    (BERT, "encoder.layer.{i}.attention.self.query.bias", "layers/{i}/attention/query/bias", KEEP),
    (BERT, "encoder.layer.{i}.attention.self.key.weight", "layers/{i}/attention/key/kernel", TRANSPOSE),
    (BERT, "encoder.layer.{i}.attention.self.key.bias", "layers/{i}/attention/key/bias", KEEP),
    (BERT, "encoder.layer.{i}.attention.self.value.weight", "layers/{i}/attention/value/kernel", TRANSPOSE),
    (BERT, "encoder.layer.{i}.attention.self.value.bias", "layers/{i}/attention/value/bias", KEEP),
    (BERT, "encoder.layer.{i}.attention.output.dense.weight", "layers/{i}/attention/output/kernel", TRANSPOSE),
    (BERT, "encoder.layer.{i}.attention.output.dense.bias", "layers/{i}/attention/output/bias", KEEP),
    (BERT, "encoder.layer.{i}.attention.output.LayerNorm.weight", "layers/{i}/attention/layer_norm/scale", KEEP),
    (BERT, "encoder.layer.{i}.attention.output.LayerNorm.bias", "layers/{i}/attention/layer_norm/bias", KEEP),
    (BERT, "encoder.layer.{i}.intermediate.dense.weight", "layers/{i}/feed_forward/intermediate/kernel", TRANSPOSE),
    (BERT, "encoder.layer.{i}.intermediate.dense.bias", "layers/{i}/feed_forward/intermediate/bias", KEEP),
    (BERT, "encoder.layer.{i}.output.dense.weight", "layers/{i}/feed_forward/output/kernel", TRANSPOSE),
    (BERT, "encoder.layer.{i}.output.dense.bias", "layers/{i}/feed_forward/output/bias", KEEP),
    (BERT, "encoder.layer.{i}.output.LayerNorm.weight", "layers/{i}/feed_forward/layer_norm/scale", KEEP),
    (BERT, "encoder.layer.{i}.output.LayerNorm.bias", "layers/{i}/feed_forward/layer_norm/bias", KEEP),
    (ROBERTA, "lm_head.dense.weight", "mlm_head/dense/kernel", TRANSPOSE),
    (ROBERTA, "lm_head.dense.bias", "mlm_head/dense/bias", KEEP),
    (ROBERTA, "lm_head.layer_norm.weight", "mlm_head/layer_norm/scale", KEEP),
    (ROBERTA, "lm_head.layer_norm.bias", "mlm_head/layer_norm/bias", KEEP),
    (ROBERTA, "lm_head.bias", "mlm_head/bias", KEEP),
    (BERT_ONLY, "cls.predictions.transform.dense.weight", "mlm_head/dense/kernel", TRANSPOSE),
    (BERT_ONLY, "cls.predictions.transform.dense.bias", "mlm_head/dense/bias", KEEP),
    (BERT_ONLY, "cls.predictions.transform.LayerNorm.weight", "mlm_head/layer_norm/scale", KEEP),
    (BERT_ONLY, "cls.predictions.transform.LayerNorm.bias", "mlm_head/layer_norm/bias", KEEP),
    (BERT_ONLY, "cls.predictions.bias", "mlm_head/bias", KEEP),
    (MODERN, "embeddings.tok_embeddings.weight", "embeddings/tok_embeddings/embedding", KEEP),
    (MODERN, "embeddings.norm.weight", "embeddings/norm/scale", KEEP),
    (MODERN, "embeddings.norm.bias", "embeddings/norm/bias", KEEP),
    (MODERN, "layers.{i}.attn_norm.weight", "layers/{i}/attn_norm/scale", KEEP),
    (MODERN, "layers.{i}.attn_norm.bias", "layers/{i}/attn_norm/bias", KEEP),
    (MODERN, "layers.{i}.attn.Wqkv.weight", "layers/{i}/attn/wqkv/kernel", TRANSPOSE),
    (MODERN, "layers.{i}.attn.Wqkv.bias", "layers/{i}/attn/wqkv/bias", KEEP),
    (MODERN, "layers.{i}.attn.Wo.weight", "layers/{i}/attn/wo/kernel", TRANSPOSE),
    (MODERN, "layers.{i}.attn.Wo.bias", "layers/{i}/attn/wo/bias", KEEP),
    (MODERN, "layers.{i}.mlp_norm.weight", "layers/{i}/mlp_norm/scale", KEEP),
    (MODERN, "layers.{i}.mlp_norm.bias", "layers/{i}/mlp_norm/bias", KEEP),
    (MODERN, "layers.{i}.mlp.Wi.weight", "layers/{i}/mlp/wi/kernel", TRANSPOSE),
    (MODERN, "layers.{i}.mlp.Wi.bias", "layers/{i}/mlp/wi/bias", KEEP),
    (MODERN, "layers.{i}.mlp.Wo.weight", "layers/{i}/mlp/wo/kernel", TRANSPOSE),
    (MODERN, "layers.{i}.mlp.Wo.bias", "layers/{i}/mlp/wo/bias", KEEP),
    (MODERN, "final_norm.weight", "final_norm/scale", KEEP),
    (MODERN, "final_norm.bias", "final_norm/bias", KEEP),
    (MODERN, "head.dense.weight", "head/dense/kernel", TRANSPOSE),
    (MODERN, "head.dense.bias", "head/dense/bias", KEEP),
    (MODERN, "head.norm.weight", "head/norm/scale", KEEP),
    (MODERN, "head.norm.bias", "head/norm/bias", KEEP),
    (MODERN, "decoder.weight", "decoder/embedding", KEEP),  # only when not tied to the embeddings
    (MODERN, "decoder.bias", "decoder/bias", KEEP),
)
HEAD_NAMES = ("lm_head.", "cls.", "head.", "decoder.")  # HF names outside the encoder prefix
# Other spellings of a table name (older/newer HF versions store the decoder bias either way).
ALIASES = {"lm_head.decoder.bias": "lm_head.bias", "cls.predictions.decoder.bias": "cls.predictions.bias"}
# Names with nothing to convert: the pooler (not used by masked LM), the tied decoder weight
# (ours is the word embedding itself), and the position-id buffer older versions saved.
IGNORED = re.compile(r"pooler\..*|lm_head\.decoder\.weight|cls\.predictions\.decoder\.weight|embeddings\.position_ids")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")

REQUIRED = object()  # a CONFIG_TABLE default: HF's config.json must have the key
# (model types, our EncoderConfig field, HF config.json key, default when the key is absent).
CONFIG_TABLE = (
    (BERT + MODERN, "vocab_size", "vocab_size", REQUIRED),
    (BERT + MODERN, "hidden_size", "hidden_size", REQUIRED),
    (BERT + MODERN, "num_hidden_layers", "num_hidden_layers", REQUIRED),
    (BERT + MODERN, "num_attention_heads", "num_attention_heads", REQUIRED),
    (BERT + MODERN, "intermediate_size", "intermediate_size", REQUIRED),
    (BERT, "max_position_embeddings", "max_position_embeddings", REQUIRED),
    (MODERN, "max_position_embeddings", "max_position_embeddings", 8192),
    (BERT + MODERN, "initializer_range", "initializer_range", 0.02),
    (BERT, "type_vocab_size", "type_vocab_size", 2),
    (BERT, "layer_norm_eps", "layer_norm_eps", 1e-12),
    (MODERN, "layer_norm_eps", "norm_eps", 1e-5),
    (BERT, "hidden_act", "hidden_act", "gelu"),
    (MODERN, "hidden_act", "hidden_activation", "gelu"),
    (MODERN, "layer_types", "layer_types", None),  # None: HF's pattern (see EncoderConfig)
    (MODERN, "local_attention", "local_attention", 128),
    (MODERN, "norm_bias", "norm_bias", False),
    (MODERN, "attention_bias", "attention_bias", False),
    (MODERN, "mlp_bias", "mlp_bias", False),
    (MODERN, "classifier_bias", "classifier_bias", False),
    (MODERN, "classifier_activation", "classifier_activation", "gelu"),
    (MODERN, "decoder_bias", "decoder_bias", True),
    (MODERN, "tie_word_embeddings", "tie_word_embeddings", True),
)
# ModernBERT's rotary bases: transformers 5 writes rope_parameters per layer type, older
# checkpoints (answerdotai/ModernBERT-base) global_rope_theta / local_rope_theta.
ROPE_FIELDS = (("global_rope_theta", "full_attention", 160000.0), ("local_rope_theta", "sliding_attention", 10000.0))


@dataclasses.dataclass
class ConversionReport:
    matched: list[str]  # HF names converted into a parameter
    ignored: list[str]  # HF names deliberately not converted (pooler, tied decoder)
    unmatched: list[str]  # HF names the table does not know (left out of the checkpoint)
    initialised: list[str]  # our parameter paths absent from the checkpoint, freshly initialised

    @property
    def head_initialised(self) -> bool:
        return bool(self.initialised)

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


def _rows(config: EncoderConfig, shapes: dict):
    """(HF name without prefix, our path, transform) for every tensor this config has."""
    for types, hf_name, path, transform in NAME_TABLE:
        if config.model_type not in types:
            continue
        for i in range(config.num_hidden_layers) if "{i}" in hf_name else [None]:
            name, our_path = (hf_name, path) if i is None else (hf_name.format(i=i), path.format(i=i))
            if our_path in shapes:
                yield name, our_path, transform


def _table_names(model_type: str, num_layers: int) -> set:
    """Every HF name the table knows for this model type, whatever the config's options."""
    names = set()
    for types, hf_name, _, _ in NAME_TABLE:
        if model_type in types:
            names.update({hf_name.format(i=i) for i in range(num_layers)} if "{i}" in hf_name else {hf_name})
    return names


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


def _rope_thetas(hf: dict) -> dict:
    """Our rotary-base fields from a ModernBERT config.json; UserError for a RoPE we cannot honour."""
    rope = hf.get("rope_parameters") or {}
    if not isinstance(rope, dict):
        raise UserError(f"rope_parameters {rope!r} cannot be honoured; expected one entry per layer type")
    unknown = sorted(set(rope) - {layer_type for _, layer_type, _ in ROPE_FIELDS})
    if unknown:
        raise UserError(
            f"rope_parameters for {unknown} cannot be honoured; only full_attention and sliding_attention layers exist"
        )
    if hf.get("rope_scaling"):
        raise UserError(
            f"rope_scaling {hf['rope_scaling']} cannot be honoured; dlm-jax implements the "
            "default rotary embedding only"
        )
    values = {}
    for field, layer_type, default in ROPE_FIELDS:
        params = rope.get(layer_type) or {}
        kind = params.get("rope_type", "default")
        if kind != "default":
            raise UserError(
                f"rope_parameters.{layer_type}.rope_type {kind!r} cannot be honoured; dlm-jax "
                "implements the default rotary embedding only"
            )
        values[field] = float(params.get("rope_theta") or hf.get(field) or default)
    return values


def encoder_config_from_hf(hf: dict, tokenizer=None) -> EncoderConfig:
    """Our config from HF's config.json; special ids from the tokenizer when there is one."""
    model_type = hf["model_type"]
    values = {"model_type": model_type}
    absent = []
    for types, field, key, default in CONFIG_TABLE:
        if model_type not in types:
            continue
        if key in hf:
            values[field] = hf[key]
        elif default is REQUIRED:
            absent.append(key)
        else:
            values[field] = default
    if absent:
        raise UserError(f"config.json lacks {', '.join(absent)}; use the checkpoint's complete config.json")
    if model_type == "modernbert":
        values.update(_rope_thetas(hf))
        if values["layer_types"] is None and "global_attn_every_n_layers" in hf:
            every = int(hf["global_attn_every_n_layers"])
            values["layer_types"] = [
                "sliding_attention" if i % every else "full_attention" for i in range(values["num_hidden_layers"])
            ]
    pad = hf.get("pad_token_id", 1 if model_type == "roberta" else 0)
    if tokenizer is None:
        mask, bos, eos = hf.get("mask_token_id"), hf.get("bos_token_id"), hf.get("eos_token_id")
    else:
        ids = special_token_ids(tokenizer)
        mask, bos, eos = ids["mask"], ids["bos"], ids["eos"]
    return EncoderConfig(
        **values, pad_token_id=pad if pad is not None else 0, mask_token_id=mask, bos_token_id=bos, eos_token_id=eos
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
def init_head(config: EncoderConfig, seed: int = 0) -> dict:
    """The MLM head of a freshly initialised encoder ({path: array}), for bare-encoder checkpoints."""
    heads = HEAD_PATHS[FAMILY[config.model_type]]
    fresh = model_params.flatten(model_params.init_params(config, seed))
    return {path: np.asarray(v) for path, v in fresh.items() if path.startswith(heads)}


def params_from_hf(tensors: dict[str, np.ndarray], config: EncoderConfig, *, seed: int = 0):
    """HF tensors -> (our pure-dict params, ConversionReport). Shapes are checked against the config."""
    prefix = ENCODER_PREFIX[config.model_type]
    shapes = model_params.shapes(config)
    rows = {hf: (path, transform) for hf, path, transform in _rows(config, shapes)}
    known = _table_names(config.model_type, config.num_hidden_layers)
    tied_decoder = {"decoder.weight"} if config.model_type == "modernbert" and config.tie_word_embeddings else set()
    flat, matched, ignored, unmatched = {}, [], [], []
    for name in sorted(tensors):
        short = name[len(prefix) :] if name.startswith(prefix) else name
        short = ALIASES.get(short, short)
        if short not in rows:
            if IGNORED.fullmatch(short) or short in tied_decoder:
                ignored.append(name)
            elif short in known:
                raise UserError(
                    f"the weights do not match config.json: they hold {name}, which this config has no "
                    "place for (a bias or norm its flags switch off?); use the checkpoint's own config.json"
                )
            else:
                unmatched.append(name)
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
    extra_layers = sorted({int(m[1]) for n in unmatched if (m := re.search(r"layers?\.(\d+)\.", n))})
    if extra_layers:
        raise UserError(
            f"the weights do not match config.json: they hold layer {extra_layers[-1]} but the config "
            f"has num_hidden_layers={config.num_hidden_layers}; use the checkpoint's own config.json"
        )
    missing = [path for path in shapes if path not in flat]
    heads = HEAD_PATHS[FAMILY[config.model_type]]
    missing_encoder = [path for path in missing if not path.startswith(heads)]
    if missing_encoder:
        raise UserError(
            f"the checkpoint lacks {len(missing_encoder)} encoder tensors ({', '.join(missing_encoder[:4])}"
            f"{', ...' if len(missing_encoder) > 4 else ''}); is it a complete {config.model_type} checkpoint?"
        )
    if missing:
        head = init_head(config, seed)
        flat.update({path: head[path] for path in missing})
    return model_params.unflatten(flat), ConversionReport(matched, ignored, unmatched, missing)


def find_hf_dir(path: Path) -> Path:
    """The directory holding config.json and the weights. A sentence-transformers folder keeps
    them either at its root or in the subfolder its modules.json names for the Transformer."""
    if (path / "config.json").is_file() or not (path / "modules.json").is_file():
        return path
    try:
        modules = json.loads((path / "modules.json").read_text())
        folders = [m.get("path", "") for m in modules if str(m.get("type", "")).endswith("Transformer")]
    except (json.JSONDecodeError, AttributeError, TypeError):
        folders = []
    for folder in folders:
        if (path / folder / "config.json").is_file():
            return path / folder
    raise UserError(
        f"{path} is a sentence-transformers folder without a readable Transformer module; pass the "
        "subfolder that holds config.json and the weights"
    )


def check_not_ours(path: Path) -> None:
    """UserError for a dlm-jax workdir, checkpoint step or model directory: its config.json, if
    any, is the training config, which names no model type."""
    from dlm_jax.checkpoint import is_model_dir, is_workdir, workdir_and_step

    if is_workdir(workdir_and_step(path)[0]):
        kind = "training workdir" if is_workdir(path) else "training checkpoint"
    elif is_model_dir(path):
        kind = "model directory"
    else:
        return
    raise UserError(
        f"{path} is already a dlm-jax {kind}, nothing to convert; use it as it is (dlm_jax.load, "
        f"generate/eval --checkpoint, train --init) or run `dlm-jax export {path} HF_DIR` for a "
        "HuggingFace folder"
    )


def read_hf_dir(hf_dir) -> tuple[Path, EncoderConfig, object]:
    """A HF checkpoint directory -> (the folder holding its weights, EncoderConfig, tokenizer or
    None), every check done and no weight read."""
    hf_dir = Path(hf_dir)
    if not hf_dir.exists():
        raise UserError(f"{hf_dir} does not exist; pass a HuggingFace model directory")
    if not hf_dir.is_dir():
        raise UserError(f"{hf_dir} is not a directory; pass a HuggingFace model directory")
    check_not_ours(hf_dir)
    hf_dir = find_hf_dir(hf_dir)
    hf = read_hf_config(hf_dir)
    if not any((hf_dir / name).is_file() for name in WEIGHT_FILES):
        raise UserError(f"{hf_dir} holds no weights; expected one of {', '.join(WEIGHT_FILES)}")
    encoder_config_from_hf(hf)  # our own checks first: transformers' tokenizer loading validates config.json too
    tokenizer = load_tokenizer(hf_dir, required=False)
    config = encoder_config_from_hf(hf, tokenizer)
    check_tokenizer_fits(config, tokenizer, hf_dir)
    return hf_dir, config, tokenizer


def convert_hf_dir(hf_dir, *, seed: int = 0):
    """A HF checkpoint directory -> (EncoderConfig, params, tokenizer or None, ConversionReport)."""
    hf_dir, config, tokenizer = read_hf_dir(hf_dir)
    params, report = params_from_hf(read_hf_weights(hf_dir), config, seed=seed)
    return config, params, tokenizer, report


# ----------------------------------------------------------------------------- ours -> HF
def hf_tensors_from_params(params: dict, config: EncoderConfig) -> dict[str, np.ndarray]:
    """Our params -> HF MLM-class tensors (the tied decoder weight is not stored, as HF does)."""
    prefix = ENCODER_PREFIX[config.model_type]
    flat = model_params.flatten(params)
    out = {}
    for hf_name, path, transform in _rows(config, flat):
        value = np.asarray(flat[path], dtype=np.float32)
        full = hf_name if hf_name.startswith(HEAD_NAMES) else prefix + hf_name
        out[full] = np.ascontiguousarray(value.T if transform == TRANSPOSE else value)
    return out


def hf_config_from_ours(config: EncoderConfig) -> dict:
    hf = {"architectures": [MLM_ARCHITECTURE[config.model_type]], "model_type": config.model_type}
    for types, field, key, _ in CONFIG_TABLE:
        if config.model_type in types:
            value = getattr(config, field)
            hf[key] = list(value) if isinstance(value, tuple) else value
    hf.update(
        pad_token_id=config.pad_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        torch_dtype="float32",
    )
    if config.model_type == "modernbert":
        hf["layer_types"] = list(config.attention_layer_types)
        hf["rope_parameters"] = {
            layer_type: {"rope_type": "default", "rope_theta": getattr(config, field)}
            for field, layer_type, _ in ROPE_FIELDS
        }
        hf.update(
            cls_token_id=config.bos_token_id, sep_token_id=config.eos_token_id, mask_token_id=config.mask_token_id
        )
    else:
        hf.update(
            hidden_dropout_prob=0.1,
            attention_probs_dropout_prob=0.1,
            position_embedding_type="absolute",
            tie_word_embeddings=True,
        )
    return hf


def export_hf(directory, config: EncoderConfig, params: dict, tokenizer=None) -> None:
    """Write a HF MLM checkpoint directory (config.json, model.safetensors, tokenizer files)."""
    from safetensors.numpy import save

    directory = Path(directory)
    tensors = hf_tensors_from_params(params, config)
    directory.mkdir(parents=True, exist_ok=True)
    # write_bytes creates the file with the user's umask (safetensors' save_file makes it 0600)
    (directory / "model.safetensors").write_bytes(save(tensors, metadata={"format": "pt"}))
    (directory / "config.json").write_text(json.dumps(hf_config_from_ours(config), indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
