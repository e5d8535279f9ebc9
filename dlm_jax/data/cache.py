"""The packed cache: the records of a corpus + tokenizer + seq_len written once as array_record
by a TFDS builder, read back as a `tfds` data source (`PackedDataset`)."""

import fcntl
import hashlib
import logging
import sys
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from tqdm import tqdm

from dlm_jax.data.packing import pack
from dlm_jax.data.sources import CACHE_FIX, check_writable, open_source
from dlm_jax.errors import UserError
from dlm_jax.tokenizer import tokenizer_fingerprint

log = logging.getLogger(__name__)

# Part of the cache key: bump when the records of a corpus change. 2: a tokenizer's own
# truncation and padding no longer touch the text (caches of version 1 may hold cut text).
_PACKING_VERSION = "2"


class _PackedTextBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Writes the packed records of a corpus + tokenizer + seq_len as array_record."""

    name = "dlm_packed_text"
    VERSION = tfds.core.Version("1.0.0")
    # It downloads nothing, so it has no checksums file to locate; looking for one imports
    # importlib_resources, which tfds does not install on Python >= 3.9.
    code_path = None

    def __init__(self, *, seq_len, records=None, splits=(), **kwargs):
        self._seq_len, self._records, self._splits = seq_len, records, splits
        super().__init__(**kwargs)

    # Our own log line says what is being packed; tfds's "Downloading and preparing dataset
    # Unknown size" banners would mislead for a local corpus.
    def _log_download_bytes(self):
        pass

    def _log_download_done(self):
        pass

    def _info(self):
        features = tfds.features.FeaturesDict(
            {
                "input_ids": tfds.features.Tensor(shape=(self._seq_len,), dtype=np.int32),
                "prompt_mask": tfds.features.Tensor(shape=(self._seq_len,), dtype=np.bool_),
            }
        )
        return tfds.core.DatasetInfo(
            builder=self, features=features, disable_shuffling=True, metadata=tfds.core.MetadataDict()
        )

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in self._splits}

    def _generate_examples(self, split):
        stats = {"documents": 0, "tokens": 0, "truncated": 0, "skipped": 0}
        count = 0
        for count, (input_ids, prompt_mask) in enumerate(self._records(split, stats), 1):
            yield count - 1, {"input_ids": input_ids, "prompt_mask": prompt_mask}
        if count == 0:
            raise UserError(
                f"the corpus's {split!r} split gives no sequence of {self._seq_len} tokens "
                f"({stats['documents']} documents, {stats.get('dropped_tail_tokens', 0)} tokens, "
                f"{stats['skipped']} records too long); use more text or a smaller seq_len"
            )
        self.info.metadata[split] = dict(stats, sequences=count)


class PackedDataset:
    """Random access to packed records {"input_ids": int32[L], "prompt_mask": bool[L]}."""

    def __init__(self, source, seq_len, stats, directory):
        self.source, self.seq_len, self.stats, self.directory = (source, seq_len, stats, Path(directory))

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index):
        return self.source[index]

    def rows(self, indices) -> dict:
        """Records at `indices`, stacked: {"input_ids": int32[n, L], "prompt_mask": bool[n, L]}."""
        records = self.source.__getitems__([int(i) for i in indices])
        return {key: np.stack([r[key] for r in records]) for key in ("input_ids", "prompt_mask")}


def prepare_dataset(spec, tokenizer, seq_len: int, *, cache_dir, split: str = "train") -> PackedDataset:
    """Tokenises and packs a corpus once into cache_dir and returns its split as a PackedDataset.

    The split may be sliced the TFDS way ("train[:95%]"); a `tfds:NAME:SPLIT` spec names its own.
    """
    if seq_len < 4:
        raise UserError(f"seq_len {seq_len} is too short; use at least 4 tokens")
    source = open_source(spec, split)
    key = hashlib.sha256(
        f"{_PACKING_VERSION}|{source.fingerprint}|{tokenizer_fingerprint(tokenizer)}|{seq_len}".encode()
    ).hexdigest()
    cache_dir = Path(cache_dir).expanduser()
    check_writable(cache_dir, CACHE_FIX)
    data_dir = cache_dir / f"packed-{key[:20]}"

    def records(name, stats):
        split = source.splits[name]
        # disable=None: a bar on a terminal only, never carriage returns in a log file
        with tqdm(
            total=split.size, unit=split.unit, unit_scale=True, desc=f"packing {name}", file=sys.stderr, disable=None
        ) as bar:
            yield from pack(iter(split.documents(bar.update)), tokenizer, seq_len, stats)
            bar.update(bar.total - bar.n)  # all read (CRLF read as LF counts 1 byte less)

    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / "build.lock", "w") as lock:  # one writer when hosts share the cache
        fcntl.flock(lock, fcntl.LOCK_EX)
        builder = _PackedTextBuilder(
            seq_len=seq_len, records=records, splits=tuple(source.splits), data_dir=data_dir, file_format="array_record"
        )
        if not builder.is_prepared():
            log.warning("packing %s into %d-token sequences in %s", spec, seq_len, data_dir)
            tfds.display_progress_bar(False)
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP)
            )
    stats = dict(builder.info.metadata[source.split.split("[")[0]])
    if stats["truncated"] or stats["skipped"]:
        log.warning(
            "%s: %d prompt/response records truncated, %d skipped (prompt longer than %d tokens)",
            spec,
            stats["truncated"],
            stats["skipped"],
            seq_len - 2,
        )
    return PackedDataset(builder.as_data_source(source.split), seq_len, stats, builder.data_dir)
