"""Tokenizer loading on the real tokenizer files: BERT's bare vocab.txt, RoBERTa, refusals."""

import pytest
from transformers import GPT2TokenizerFast

from dlm_jax.errors import UserError
from dlm_jax.tokenizer import load_tokenizer, special_token_ids


def test_bert_vocab_txt_alone_loads_with_cls_sep_as_bos_eos(shared_data):
    bert = load_tokenizer(shared_data / "tokenizers" / "bert-base-uncased")
    assert special_token_ids(bert) == {"bos": 101, "eos": 102, "pad": 0, "mask": 103}


def test_roberta_special_ids(shared_data):
    roberta = load_tokenizer(shared_data / "tokenizers" / "roberta-base")
    assert special_token_ids(roberta) == {"bos": 0, "eos": 2, "pad": 1, "mask": 50264}


def test_refusals_and_optional_tokenizer(shared_data, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_tokenizer(tmp_path / "none")
    # gpt2's vocab.json + merges.txt without a tokenizer config: not loadable as a directory.
    with pytest.raises(UserError, match="cannot load the tokenizer in"):
        load_tokenizer(shared_data / "tokenizers" / "gpt2")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert load_tokenizer(empty, required=False) is None
    with pytest.raises(UserError, match="holds no tokenizer"):
        load_tokenizer(empty)
    # A real tokenizer without a mask token: fine for reading a checkpoint, refused for diffusion.
    gpt2 = tmp_path / "gpt2"
    GPT2TokenizerFast.from_pretrained(str(shared_data / "tokenizers" / "gpt2")).save_pretrained(gpt2)
    assert load_tokenizer(gpt2, required=False).mask_token_id is None
    with pytest.raises(UserError, match="has no mask token"):
        load_tokenizer(gpt2)
