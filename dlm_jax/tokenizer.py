"""Loading a HuggingFace tokenizer from a directory, and the special ids diffusion needs.

The one place that knows the transformers 5 traps: a directory holding only BERT's vocab.txt
cannot be read by AutoTokenizer, and BERT's [CLS]/[SEP] play the roles of RoBERTa's <s>/</s>.
Training a tokenizer on a corpus lives in `data` (it reads corpora).
"""

from pathlib import Path

from dlm_jax.errors import UserError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt")


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
        raise UserError(
            f"{directory} holds no tokenizer (tokenizer.json or vocab.txt); "
            "see `dlm-jax tokenizer train`"
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


def special_token_ids(tokenizer) -> dict:
    """bos/eos/pad/mask ids; BERT's [CLS]/[SEP] play the roles of <s>/</s>."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    return {"bos": bos, "eos": eos, "pad": tokenizer.pad_token_id, "mask": tokenizer.mask_token_id}
