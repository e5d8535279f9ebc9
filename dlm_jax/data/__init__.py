"""Text data: corpora, tokenizer training, packing into fixed-length sequences, batches.

The path of a corpus through this package:
  spec (`tfds:NAME[/CONFIG][:SPLIT]`, a text file, a folder of .txt/.jsonl, WikiText raw files)
  -> documents (`sources`, `tfds_source`), checked before any tokenising
  -> token ids without specials (`tokenizer.encode_texts`: never truncated or padded)
  -> records of exactly seq_len tokens (`packing`)
  -> array_record files, written once by a TFDS builder under cache_dir, keyed by corpus
     content, tokenizer and seq_len, read back as a `tfds` data source (`cache`)
  -> `BatchIterator`: a shuffled, resumable stream of this host's rows of each global batch,
     or `batches_in_order` for evaluation (`batches`).
`bpe` trains a byte-level BPE on a corpus. tensorflow_datasets is imported only by `cache` and
`tfds_source`, so `import dlm_jax.data` stays cheap until packed data or a TFDS corpus is used.
"""

from dlm_jax.data.batches import BatchIterator, batches_in_order
from dlm_jax.data.bpe import SPECIAL_TOKENS, train_tokenizer
from dlm_jax.data.sources import (
    WIKITEXT_SPLITS,
    cache_home,
    default_corpus,
    default_held_out_corpus,
    held_out_split,
    spec_or_default_corpus,
)

_CACHE_NAMES = ("prepare_dataset", "PackedDataset")


def __getattr__(name):
    if name in _CACHE_NAMES:  # imports tensorflow_datasets
        from dlm_jax.data import cache

        return getattr(cache, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "SPECIAL_TOKENS",
    "WIKITEXT_SPLITS",
    "BatchIterator",
    "PackedDataset",
    "batches_in_order",
    "cache_home",
    "default_corpus",
    "default_held_out_corpus",
    "held_out_split",
    "prepare_dataset",
    "spec_or_default_corpus",
    "train_tokenizer",
]
