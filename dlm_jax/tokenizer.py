"""Loading a HuggingFace tokenizer from a directory, encoding text with it, and the special ids
diffusion needs.

The one place that knows the tokenizer traps:
- a directory holding only BERT's vocab.txt cannot be read by AutoTokenizer;
- BERT's [CLS]/[SEP] play the roles of RoBERTa's <s>/</s>;
- many tokenizer.json files carry their own `truncation` and `padding` (sentence-transformers'
  all-MiniLM-L6-v2: max_length 128, Fixed 128). The Rust backend applies both to every
  `encode`/`encode_batch`, silently cutting each text to 128 tokens, until some HF `__call__`
  happens to reset them. `encode_texts` is the one way dlm-jax turns text into ids: it uses a
  copy of the backend with both switched off, so no tokenizer setting can change the data.
Training a tokenizer on a corpus lives in `data.bpe` (it reads corpora).
"""

import hashlib
import weakref
from pathlib import Path

from dlm_jax.errors import UserError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt")
# The files holding a vocabulary (with SentencePiece's *.model). tokenizer_config.json holds only
# settings and special tokens: from it alone transformers builds a tokenizer of just those tokens
# without complaint, and every text encodes to unknown tokens.
VOCABULARY_FILES = ("tokenizer.json", "vocab.txt", "vocab.json")


def load_tokenizer(directory, *, required: bool = True):
    """The HF tokenizer saved in `directory`.

    required=True (training, generation): the tokenizer must exist and have a mask token.
    required=False (reading a checkpoint): None when the directory holds no tokenizer files.
    """
    from transformers import AutoTokenizer, BertTokenizer

    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"tokenizer directory {directory} does not exist")
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        if not required:
            return None
        raise UserError(f"{directory} holds no tokenizer (tokenizer.json or vocab.txt); see `dlm-jax tokenizer train`")
    if not any((directory / name).is_file() for name in VOCABULARY_FILES) and not any(directory.glob("*.model")):
        raise UserError(
            f"{directory} has tokenizer_config.json but no tokenizer.json (or vocab.txt for a WordPiece "
            "tokenizer), so no vocabulary; copy that file from where the tokenizer came from"
        )
    try:
        if (directory / "vocab.txt").is_file() and not (directory / "tokenizer.json").is_file():
            tokenizer = BertTokenizer.from_pretrained(str(directory))  # AutoTokenizer fails here
        else:
            tokenizer = AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError, TypeError) as err:
        raise UserError(
            f"cannot load the tokenizer in {directory} ({str(err).splitlines()[0]}); "
            "fix or remove its files (it needs tokenizer.json or vocab.txt)"
        ) from None
    if required and tokenizer.mask_token_id is None:
        raise UserError(f"the tokenizer in {directory} has no mask token; diffusion needs one")
    return tokenizer


def check_tokenizer_fits(config, tokenizer, where) -> None:
    """A tokenizer with ids beyond the embedding table of `config` (an EncoderConfig) would be
    silently clamped by JAX's gather."""
    if tokenizer is not None and len(tokenizer) > config.vocab_size:
        raise UserError(
            f"{where}: the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
            f"{config.vocab_size}; ids past {config.vocab_size - 1} have no embedding. Use the "
            "checkpoint's own tokenizer files"
        )


def special_token_ids(tokenizer) -> dict:
    """bos/eos/pad/mask ids; BERT's [CLS]/[SEP] play the roles of <s>/</s>."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    return {"bos": bos, "eos": eos, "pad": tokenizer.pad_token_id, "mask": tokenizer.mask_token_id}


_PLAIN_BACKENDS = weakref.WeakKeyDictionary()  # tokenizer -> its backend without truncation/padding


def plain_backend(tokenizer):
    """A copy of `tokenizer`'s Rust backend with its own truncation and padding switched off (the
    tokenizer itself is left as it is). Made once per tokenizer object."""
    backend = _PLAIN_BACKENDS.get(tokenizer)
    if backend is None:
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        backend.no_truncation()
        backend.no_padding()
        _PLAIN_BACKENDS[tokenizer] = backend
    return backend


def encode_texts(tokenizer, texts) -> list[list[int]]:
    """Token ids of each text, without special tokens and whole: never truncated or padded."""
    encodings = plain_backend(tokenizer).encode_batch(list(texts), add_special_tokens=False)
    return [encoding.ids for encoding in encodings]


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what the tokenizer does to text (vocabulary, merges, normalisation), ignoring its
    truncation and padding settings, which HF's `__call__` resets as a side effect."""
    return hashlib.sha256(plain_backend(tokenizer).to_str().encode()).hexdigest()
