"""Training a byte-level BPE (the GPT-2/RoBERTa scheme) with RoBERTa's special tokens on a corpus,
and the tokenizer a run keeps in its workdir."""

import logging
import os
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from dlm_jax.data.sources import check_writable, open_source, pieces_of
from dlm_jax.errors import UserError
from dlm_jax.tokenizer import load_tokenizer

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")  # RoBERTa's, ids 0..4
# As in roberta-base, <mask> takes the spaces before it: "of <mask>" is "of", "<mask>", the
# way a word's token carries its space, so the model never sees a lone space before a mask.
_MASK = AddedToken("<mask>", lstrip=True, special=True, normalized=False)
_TOKENIZER_TRAIN_CHARS = 200_000_000  # a BPE vocabulary does not need more text than this


def train_tokenizer(source, out_dir, vocab_size: int = 8192):
    """Trains a byte-level BPE with RoBERTa's special tokens and saves it for AutoTokenizer.

    source: a data spec (path or `tfds:...`, its train split is read) or an iterable of texts.
    A spec's corpus and out_dir are checked before training, and nothing is written on failure.
    A small corpus may yield fewer than vocab_size tokens: use len(tokenizer) as the model's vocab.
    """
    from transformers import RobertaTokenizerFast

    if vocab_size < 300:  # 256 byte symbols + 5 specials leave no room for merges below this
        raise UserError(f"vocab size {vocab_size} is too small for a byte-level BPE; use 300 or more")
    is_spec = isinstance(source, (str, os.PathLike))
    texts = _training_texts(source) if is_spec else iter(source)
    out_dir = Path(out_dir)
    check_writable(out_dir, "give the tokenizer a directory (another --out or workdir)")
    log.warning(
        "training a %d-token byte-level BPE on %s into %s",
        vocab_size,
        source if is_spec else "the given texts",
        out_dir,
    )
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=2,
            special_tokens=[*SPECIAL_TOKENS[:-1], _MASK],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    if bpe.get_vocab_size() <= len(SPECIAL_TOKENS) + 256:
        raise UserError(f"no text to train a tokenizer on in {source}; give a corpus with text")
    bpe.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tokenizer = RobertaTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token=_MASK,
    )
    staging = out_dir.with_name(out_dir.name + ".tokenizer-tmp")
    try:
        tokenizer.save_pretrained(staging)
        out_dir.mkdir(parents=True, exist_ok=True)
        # tokenizer.json moves last: its presence means "a complete tokenizer is here".
        for file in sorted(staging.iterdir(), key=lambda f: f.name == "tokenizer.json"):
            file.replace(out_dir / file.name)
    finally:
        for file in staging.glob("*"):
            file.unlink()
        if staging.exists():
            staging.rmdir()
    return load_tokenizer(out_dir)


def _training_texts(spec):
    """The texts of a spec's train split (at most _TOKENIZER_TRAIN_CHARS characters); the
    corpus is opened and checked here, before any training."""
    source = open_source(spec, "train")
    documents = source.splits[source.split.split("[")[0]].documents()

    def texts():
        budget = _TOKENIZER_TRAIN_CHARS
        for doc in documents:
            for text in doc if isinstance(doc, tuple) else pieces_of(doc):
                yield text
                budget -= len(text)
                if budget <= 0:
                    return

    return texts()
