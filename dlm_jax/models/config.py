"""The encoder's configuration: one frozen dataclass for every BERT-family model.

Field names follow HuggingFace's `config.json` so a config converts by copying keys. What
differs between families (RoBERTa's position offset, LayerNorm eps) is data here, not code in
the model, so a new family (ALBERT, DistilBERT, ELECTRA, ModernBERT) adds fields with defaults
that leave BERT and RoBERTa unchanged.
"""

import dataclasses
import json
from pathlib import Path

from dlm_jax.errors import UserError

SUPPORTED_MODEL_TYPES = ("bert", "roberta")
CONFIG_FILE = "dlm_config.json"


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    model_type: str = "roberta"
    vocab_size: int = 50265
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-5
    hidden_act: str = "gelu"
    # Std of the normal init of every weight matrix and embedding (HF's name). HF's 0.02 suits
    # width 768; small models trained from scratch need about 1/sqrt(hidden_size), or attention
    # stays uniform for thousands of steps (see docs/training.md).
    initializer_range: float = 0.02
    pad_token_id: int = 1
    # Special tokens the diffusion code needs; None when the tokenizer does not define one.
    mask_token_id: int | None = 50264
    bos_token_id: int | None = 0  # <s> / [CLS]
    eos_token_id: int | None = 2  # </s> / [SEP]

    def __post_init__(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise UserError(
                f"model type {self.model_type!r} is not supported; supported types: "
                + ", ".join(SUPPORTED_MODEL_TYPES)
            )
        if self.hidden_size % self.num_attention_heads:
            raise UserError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}; fix the config"
            )
        if self.hidden_act not in ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu"):
            raise UserError(f"hidden_act {self.hidden_act!r} is not supported; use gelu")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def position_offset(self) -> int:
        """RoBERTa numbers positions from padding_idx + 1; BERT from 0."""
        return self.pad_token_id + 1 if self.model_type == "roberta" else 0

    @property
    def special_token_ids(self) -> tuple[int, ...]:
        """pad, BOS, EOS and mask ids: never masked by training, never counted in samples."""
        ids = (self.pad_token_id, self.bos_token_id, self.eos_token_id, self.mask_token_id)
        return tuple(sorted({i for i in ids if i is not None}))

    @property
    def max_length(self) -> int:
        """The longest sequence the position table can embed."""
        return self.max_position_embeddings - self.position_offset

    def replace(self, **changes) -> "EncoderConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

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
