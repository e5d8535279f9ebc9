"""Tiny random HuggingFace checkpoints for tests, with the real tokenizer files.

`make_hf_checkpoint(tmp_path, "roberta"|"bert"|"modernbert")` builds a small model with the
real vocabulary size of roberta-base (50265; ModernBERT uses that tokenizer too) or
bert-base-uncased (30522), perturbs every LayerNorm and bias away from its trivial init (so a
mix-up of two tensors shows), and saves it with `save_pretrained` (plus the tokenizer) into a
fresh directory under tmp_path. The ModernBERT has 4 layers (global, local, local, global) and
an 8-token sliding window, so sequences of ~20 tokens exercise both kinds of attention.
"""

import itertools
from pathlib import Path

TOKENIZERS = Path(__file__).resolve().parents[2] / "shared" / "data" / "tokenizers"
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
TINY_MODERNBERT = dict(
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=48,
    local_attention=8,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
    cls_token_id=0,
    sep_token_id=2,
)


def hf_tokenizer(model_type: str):
    """The real roberta-base or bert-base-uncased tokenizer (fast)."""
    from transformers import BertTokenizerFast, RobertaTokenizerFast

    if model_type in ("roberta", "modernbert"):
        return RobertaTokenizerFast.from_pretrained(str(TOKENIZERS / "roberta-base"))
    # bert-base-uncased ships only vocab.txt: `vocab_file=` would be ignored, `vocab=` is read.
    return BertTokenizerFast(vocab=str(TOKENIZERS / "bert-base-uncased" / "vocab.txt"))


def hf_model(model_type: str, mlm: bool = True, seed: int = 0, **config_overrides):
    """A tiny random HF model (eval mode) with the tokenizer's real vocabulary size."""
    import torch
    import transformers as tf

    tokenizer = hf_tokenizer(model_type)
    settings = dict(TINY, vocab_size=len(tokenizer), max_position_embeddings=66)
    if model_type == "roberta":
        settings.update(pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1, layer_norm_eps=1e-5)
        config_cls, mlm_cls, bare_cls = tf.RobertaConfig, tf.RobertaForMaskedLM, tf.RobertaModel
    elif model_type == "modernbert":
        settings = dict(TINY_MODERNBERT, vocab_size=len(tokenizer), max_position_embeddings=128)
        config_cls, mlm_cls, bare_cls = tf.ModernBertConfig, tf.ModernBertForMaskedLM, tf.ModernBertModel
    else:
        config_cls, mlm_cls, bare_cls = tf.BertConfig, tf.BertForMaskedLM, tf.BertModel
    settings.update(config_overrides)
    torch.manual_seed(seed)
    model = (mlm_cls if mlm else bare_cls)(config_cls(**settings))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("LayerNorm.weight", "layer_norm.weight", "norm.weight")):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    return model.eval(), tokenizer


def make_hf_checkpoint(tmp_path, model_type="roberta", with_tokenizer=True, mlm=True, **config_overrides) -> Path:
    """Save a tiny random HF checkpoint into a new directory under tmp_path; return its path.

    Extra keywords override the HF config (e.g. num_hidden_layers=3)."""
    model, tokenizer = hf_model(model_type, mlm=mlm, **config_overrides)
    kind = "mlm" if mlm else "bare"
    out = next(path for n in itertools.count() if not (path := Path(tmp_path) / f"hf-{model_type}-{kind}-{n}").exists())
    model.save_pretrained(str(out))
    if with_tokenizer:
        tokenizer.save_pretrained(str(out))
    return out
