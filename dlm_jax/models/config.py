"""The encoder's configuration: one frozen dataclass for every BERT-family model.

Field names follow HuggingFace's `config.json` so a config converts by a table (convert.py).
What differs between families is data here, not code in the models: RoBERTa's position
offset, LayerNorm eps, and ModernBERT's layer types, rotary bases, window and biases, with
defaults that leave BERT and RoBERTa unchanged.
"""

import dataclasses
import json
from pathlib import Path

from dlm_jax.errors import UserError

SUPPORTED_MODEL_TYPES = ("bert", "roberta", "modernbert")
LAYER_TYPES = ("full_attention", "sliding_attention")  # ModernBERT's global and local attention
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu")
CONFIG_FILE = "dlm_config.json"
# HF's default pattern when a ModernBERT config names no layer_types: every third layer,
# starting with the first, attends globally.
GLOBAL_ATTENTION_EVERY = 3


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    model_type: str = "roberta"
    vocab_size: int = 50265
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    # BERT/RoBERTa: rows of the learned position table; ModernBERT: the longest sequence.
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-5
    hidden_act: str = "gelu"
    # Std of the normal init of every weight matrix and embedding (HF's name). HF's 0.02 suits
    # width 768; small post-LN models trained from scratch need about 1/sqrt(hidden_size), or
    # attention stays uniform for thousands of steps (see docs/training.md).
    initializer_range: float = 0.02
    pad_token_id: int = 1
    # Special tokens the diffusion code needs; None when the tokenizer does not define one.
    mask_token_id: int | None = 50264
    bos_token_id: int | None = 0  # <s> / [CLS]
    eos_token_id: int | None = 2  # </s> / [SEP]
    # ModernBERT only (HF ModernBertConfig's names). BERT and RoBERTa always have biases,
    # learned absolute positions and a tied decoder, so these fields do not apply to them.
    # Per layer: full_attention | sliding_attention; None: HF's pattern (every third layer global,
    # starting with the first), which follows num_hidden_layers when that is changed.
    layer_types: tuple[str, ...] | None = None
    local_attention: int = 128  # sliding layers: a query sees keys within local_attention // 2
    global_rope_theta: float = 160000.0  # rotary base of full_attention layers
    local_rope_theta: float = 10000.0  # rotary base of sliding_attention layers
    norm_bias: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    classifier_bias: bool = False  # the MLM head's dense layer
    classifier_activation: str = "gelu"  # the MLM head's activation
    decoder_bias: bool = True
    tie_word_embeddings: bool = True

    def __post_init__(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise UserError(
                f"model type {self.model_type!r} is not supported; supported types: " + ", ".join(SUPPORTED_MODEL_TYPES)
            )
        if self.hidden_size % self.num_attention_heads:
            raise UserError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}; fix the config"
            )
        for name in ("hidden_act", "classifier_activation"):
            if getattr(self, name) not in ACTIVATIONS:
                raise UserError(f"{name} {getattr(self, name)!r} is not supported; use one of {', '.join(ACTIVATIONS)}")
        if self.model_type == "modernbert":
            self._check_modernbert()
        elif self.layer_types is not None:
            raise UserError(f"layer_types is a ModernBERT setting; a {self.model_type} config must not set it")

    def _check_modernbert(self):
        if self.layer_types is not None:
            object.__setattr__(self, "layer_types", tuple(self.layer_types))  # a JSON list becomes a tuple
            unknown = sorted(set(self.layer_types) - set(LAYER_TYPES))
            if unknown:
                raise UserError(
                    f"ModernBERT layer_types {unknown} cannot be honoured; each layer must be one of "
                    f"{', '.join(LAYER_TYPES)}"
                )
            if len(self.layer_types) != self.num_hidden_layers:
                raise UserError(
                    f"ModernBERT layer_types names {len(self.layer_types)} layers but num_hidden_layers is "
                    f"{self.num_hidden_layers}; give one type per layer (or none for HF's pattern)"
                )
        if self.head_dim % 2:
            raise UserError(f"rotary positions need an even head dimension; hidden_size / heads is {self.head_dim}")
        if "sliding_attention" in self.attention_layer_types and (
            self.local_attention < 2 or self.local_attention % 2 or self.local_attention > self.max_position_embeddings
        ):
            raise UserError(
                f"local_attention {self.local_attention} must be an even window of at least 2 and at most "
                f"max_position_embeddings {self.max_position_embeddings} (a query sees local_attention / 2 "
                "keys on each side); fix the config"
            )

    @property
    def attention_layer_types(self) -> tuple[str, ...]:
        """ModernBERT's attention per layer: layer_types, or HF's pattern when it is None."""
        if self.layer_types is not None:
            return self.layer_types
        return tuple(
            "full_attention" if i % GLOBAL_ATTENTION_EVERY == 0 else "sliding_attention"
            for i in range(self.num_hidden_layers)
        )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def position_offset(self) -> int:
        """RoBERTa numbers positions from padding_idx + 1; BERT and ModernBERT from 0."""
        return self.pad_token_id + 1 if self.model_type == "roberta" else 0

    @property
    def special_token_ids(self) -> tuple[int, ...]:
        """pad, BOS, EOS and mask ids: never masked by training, never counted in samples."""
        ids = (self.pad_token_id, self.bos_token_id, self.eos_token_id, self.mask_token_id)
        return tuple(sorted({i for i in ids if i is not None}))

    @property
    def max_length(self) -> int:
        """The longest sequence the model can embed."""
        return self.max_position_embeddings - self.position_offset

    def replace(self, **changes) -> "EncoderConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        if values["layer_types"] is not None:
            values["layer_types"] = list(values["layer_types"])
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "EncoderConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"unknown encoder config keys {unknown}; known keys: {sorted(known)}")
        return cls(**values)

    def save(self, directory: str | Path) -> None:
        path = Path(directory) / CONFIG_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> "EncoderConfig":
        path = Path(directory) / CONFIG_FILE
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise UserError(f"{directory} has no {CONFIG_FILE}; is it a dlm-jax checkpoint?") from None
        except json.JSONDecodeError as err:
            raise UserError(f"{path} is not valid JSON ({err}); restore or re-convert it") from None
