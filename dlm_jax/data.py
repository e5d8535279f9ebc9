"""Text data: tokenizers, corpora, packing into fixed-length sequences, resumable batches.

The path of a corpus through this module:
  spec (`tfds:NAME[/CONFIG][:SPLIT]`, a text file, a folder of .txt/.jsonl, WikiText raw files)
  -> documents (text, or prompt/response pairs) -> token ids without specials
  -> records of exactly seq_len tokens -> array_record files, written once by a TFDS builder under
  cache_dir (keyed by corpus content, tokenizer and seq_len) -> `tfds` data source
  -> `BatchIterator`: a shuffled, resumable stream of this host's rows of each global batch.
"""

import codecs
import difflib
import fcntl
import functools
import hashlib
import itertools
import json
import logging
import os
import re
import socket
import sysconfig
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AddedToken, RobertaTokenizerFast

from dlm_jax.errors import UserError
from dlm_jax.tokenizer import load_tokenizer, special_token_ids

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")  # RoBERTa's, ids 0..4
# The text feature of the TFDS catalog datasets we name in the docs; others default to "text".
TFDS_TEXT_FEATURES = {
    "lm1b": "text",
    "wiki40b": "text",
    "c4": "text",
    "pg19": "book_text",
    "tiny_shakespeare": "text",
}
WIKITEXT_SPLITS = {
    "wiki.train.raw": "train",
    "wiki.valid.raw": "validation",
    "wiki.test.raw": "test",
}
_WIKITEXT_ARTICLE = re.compile(r"^ = [^=].* = $")  # a top-level heading starts an article
_PACKING_VERSION = "1"  # part of the cache key: bump when the record layout changes
_PIECE_CHARS = 1 << 16  # long documents are tokenised in pieces of about this many characters
_ENCODE_BATCH = 256
_TOKENIZER_TRAIN_CHARS = 200_000_000  # a BPE vocabulary does not need more text than this


def cache_home() -> Path:
    """The data cache: $DLM_JAX_CACHE, else $XDG_CACHE_HOME/dlm_jax, else ~/.cache/dlm_jax."""
    if "DLM_JAX_CACHE" in os.environ:
        return Path(os.environ["DLM_JAX_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dlm_jax"


# ---------------------------------------------------------------------------------- tokenizers


def train_tokenizer(source, out_dir, vocab_size: int = 8192):
    """Trains a byte-level BPE with RoBERTa's special tokens and saves it for AutoTokenizer.

    source: a data spec (path or `tfds:...`, its train split is read) or an iterable of texts.
    A small corpus may yield fewer than vocab_size tokens: use len(tokenizer) as the model's vocab.
    """
    if vocab_size < 300:  # 256 byte symbols + 5 specials leave no room for merges below this
        raise UserError(
            f"vocab size {vocab_size} is too small for a byte-level BPE; use 300 or more"
        )
    texts = _training_texts(source) if isinstance(source, (str, os.PathLike)) else iter(source)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=2,
            special_tokens=list(SPECIAL_TOKENS),
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
        mask_token=AddedToken("<mask>", lstrip=True),
    )
    out_dir = Path(out_dir)
    staging = out_dir.with_name(out_dir.name + ".tokenizer-tmp")
    tokenizer.save_pretrained(staging)
    out_dir.mkdir(parents=True, exist_ok=True)
    # tokenizer.json moves last: its presence means "a complete tokenizer is here".
    for file in sorted(staging.iterdir(), key=lambda f: f.name == "tokenizer.json"):
        file.replace(out_dir / file.name)
    staging.rmdir()
    return load_tokenizer(out_dir)


def tokenizer_for_run(spec, model_dir, vocab_size: int = 8192):
    """The tokenizer kept in a run's model dir; trained on the run's corpus the first time."""
    model_dir = Path(model_dir)
    if (model_dir / "tokenizer.json").exists():
        return load_tokenizer(model_dir)
    log.warning("training a %d-token byte-level BPE on %s into %s", vocab_size, spec, model_dir)
    return train_tokenizer(spec, model_dir, vocab_size)


def _training_texts(spec):
    splits, _, split = _open_source(spec, "train")
    budget = _TOKENIZER_TRAIN_CHARS
    for doc in splits[split.split("[")[0]]():
        for text in doc if isinstance(doc, tuple) else _pieces_of(doc):
            yield text
            budget -= len(text)
            if budget <= 0:
                return


# ------------------------------------------------------------------------------------- corpora


def default_corpus(cache_dir=None) -> Path:
    """The docstrings of this Python's standard library as one text file (about 1.5 MB).

    Present on any machine with Python, so a first run needs no download. Modules are read in
    sorted path order and nodes in `ast.walk` order, so the file is the same on every run.
    """
    import ast

    path = (
        Path(cache_dir or cache_home())
        / f"stdlib_docstrings_py{sysconfig.get_python_version()}.txt"
    )
    if path.exists():
        return path
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = {
        "test",
        "tests",
        "idlelib",
        "lib2to3",
        "turtledemo",
        "site-packages",
        "dist-packages",
        "ensurepip",
        "pydoc_data",
        "__pycache__",
    }
    modules = []
    for folder, subfolders, files in os.walk(stdlib):
        subfolders[:] = [
            d for d in subfolders if d not in skip
        ]  # prune: site-packages can be huge
        modules += [
            Path(folder, f) for f in files if f.endswith(".py") and not f.startswith("test_")
        ]
    docstrings = []
    for module in sorted(modules):
        try:
            tree = ast.parse(module.read_bytes())
        except (SyntaxError, ValueError):
            continue  # a file for another Python version
        nodes = [tree]  # module, classes and functions in source order (top-level bodies only)
        while nodes:
            node = nodes.pop(0)
            doc = ast.get_docstring(node)
            if doc and len(doc) >= 40:  # lone surrogates from escapes become "?"
                docstrings.append(doc.encode("utf-8", "replace").decode("utf-8"))
            nodes[:0] = [
                n
                for n in node.body
                if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            ]
    if not docstrings:
        raise UserError(
            f"no standard library sources under {stdlib}; pass --data with a text file"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(f".tmp{os.getpid()}")
    staging.write_text("\n\n".join(docstrings) + "\n", encoding="utf-8")
    staging.replace(path)
    return path


# ------------------------------------------------------------------------------------- sources


def _open_source(spec, split):
    """-> ({split name: documents()}, content fingerprint, the split to read back).

    documents() gives a fresh iterator of a split's documents; a document is a tuple
    (prompt, response) or an iterable of text pieces. A catalog dataset's split is named "train".
    """
    spec = str(spec)
    if spec.startswith("tfds:"):
        documents, fingerprint = _tfds_source(spec[len("tfds:") :], split)
        return {"train": documents}, fingerprint, "train"
    files = _local_files(Path(spec).expanduser())
    if split.split("[")[0] not in files:
        raise UserError(
            f"{spec} has no {split.split('[')[0]!r} split (it has {', '.join(files)}); "
            "WikiText folders split by wiki.{train,valid,test}.raw, other data is all 'train'"
        )
    fingerprint = _scan_files([f for split_files in files.values() for f in split_files], spec)
    return (
        {name: functools.partial(_file_documents, paths) for name, paths in files.items()},
        fingerprint,
        split,
    )


def _local_files(path: Path) -> dict:
    if not path.exists():
        raise UserError(
            f"data path {path} does not exist; give a text file, a folder of .txt/.jsonl "
            "files, WikiText raw files or tfds:NAME"
        )
    if path.is_file():
        return {"train": [path]}
    wikitext = {
        split: [path / name] for name, split in WIKITEXT_SPLITS.items() if (path / name).exists()
    }
    if wikitext:
        return wikitext
    files = sorted(f for f in path.rglob("*") if f.suffix in (".txt", ".jsonl") and f.is_file())
    if not files:
        raise UserError(f"no .txt or .jsonl files in {path}; give a text file or a folder of them")
    return {"train": files}


def _scan_files(files, spec) -> str:
    """Content hash of the files; checks, before any tokenising, that they are non-empty UTF-8."""
    digest, has_text = hashlib.sha256(), False
    for file in files:
        digest.update(f"{file.name}\0{file.stat().st_size}\0".encode())
        decoder, offset = codecs.getincrementaldecoder("utf-8")(), 0
        with open(file, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                pending = len(decoder.getstate()[0])
                try:
                    decoder.decode(block)
                except UnicodeDecodeError as err:
                    raise UserError(
                        f"{file} is not UTF-8 text (bad byte at offset "
                        f"{offset - pending + err.start});"
                        f" re-encode it, e.g. iconv -f latin1 -t utf-8 {file.name} > fixed.txt"
                    ) from None
                digest.update(block)
                has_text = has_text or bool(block.strip())
                offset += len(block)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise UserError(
                f"{file} is not UTF-8 text (it ends inside a character at offset "
                f"{offset - len(decoder.getstate()[0])}); re-encode it as UTF-8"
            ) from None
    if not has_text:
        raise UserError(f"the corpus {spec} is empty; give --data a file or folder with text")
    return digest.hexdigest()


def _file_documents(files):
    for file in files:
        if file.suffix == ".jsonl":
            yield from _jsonl_documents(file)
        elif file.name in WIKITEXT_SPLITS:
            yield from _wikitext_articles(file)
        else:
            yield _file_pieces(file)


def _jsonl_documents(file):
    with open(file, encoding="utf-8") as stream:
        for line_number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{file}:{line_number}: not valid JSON ({err.msg})") from None
            if (
                isinstance(record, dict)
                and isinstance(record.get("prompt"), str)
                and isinstance(record.get("response"), str)
            ):
                yield record["prompt"], record["response"]
            elif isinstance(record, dict) and isinstance(record.get("text"), str):
                yield [record["text"]]
            else:
                raise UserError(
                    f'{file}:{line_number}: a JSONL record needs a "text" string, or '
                    '"prompt" and "response" strings'
                )


def _wikitext_articles(file):
    article = []
    for line in file.read_text(encoding="utf-8").splitlines(keepends=True):
        if _WIKITEXT_ARTICLE.match(line.rstrip("\n")) and "".join(article).strip():
            yield ["".join(article)]
            article = []
        article.append(line)
    if "".join(article).strip():
        yield ["".join(article)]


# Long texts are tokenised in pieces cut only after a lone "\n" between non-space characters:
# no pre-token (GPT-2 regex, BERT whitespace split) spans such a point, so the tokens of the
# pieces equal the tokens of the whole text.
_CUT_POINT = re.compile(r"(?<=\S\n)(?=\S)")


def _file_pieces(file, piece_chars=_PIECE_CHARS):
    piece, size = [], 0
    with open(file, encoding="utf-8", newline="") as stream:
        for line in stream:
            if size >= piece_chars and _CUT_POINT.match(piece[-1][-2:] + line[:1], 2):
                yield "".join(piece)
                piece, size = [], 0
            piece.append(line)
            size += len(line)
    if piece:
        yield "".join(piece)


def _pieces_of(document, piece_chars=_PIECE_CHARS):
    for text in document:
        start = 0
        for match in _CUT_POINT.finditer(text, piece_chars):
            if match.start() - start >= piece_chars:
                yield text[start : match.start()]
                start = match.start()
        yield text[start:]


def _tfds_source(name_spec, split):
    name, _, spec_split = name_spec.partition(":")
    split = spec_split or split
    import tensorflow_datasets.text  # noqa: F401  (registers c4, wiki40b and the other text datasets)

    base, _, config = name.partition("/")
    known = sorted(set(tfds.list_builders(with_community_datasets=False)))
    if base not in known:
        close = difflib.get_close_matches(base, known, n=3, cutoff=0.6) or list(TFDS_TEXT_FEATURES)
        raise UserError(
            f"no TFDS dataset named {base!r}; "
            f"did you mean {', '.join('tfds:' + c for c in close)}?"
        )
    configs = [c.name for c in tfds.builder_cls(base).BUILDER_CONFIGS]
    if config and config not in configs:
        close = difflib.get_close_matches(config, configs, n=5, cutoff=0.3) or configs[:5]
        raise UserError(
            f"tfds:{base} has no config {config!r}; "
            f"try {', '.join(f'tfds:{base}/{c}' for c in close)}"
        )
    # tfds reads TFDS_DATA_DIR once at import; read it now so a later setting counts.
    builder = tfds.builder(
        name, data_dir=os.environ.get("TFDS_DATA_DIR"), file_format="array_record"
    )
    feature = TFDS_TEXT_FEATURES.get(base, "text")
    if feature not in builder.info.features:
        raise UserError(
            f"tfds:{name} has no {feature!r} text feature; dlm-jax reads text datasets only"
        )
    if not builder.is_prepared():
        if os.environ.get("DLM_JAX_OFFLINE") or not _online():
            raise UserError(
                f"tfds:{name} is not downloaded in {builder.data_dir} and this machine is "
                "offline; prepare it once on a connected machine (file_format=array_record) "
                "and set TFDS_DATA_DIR"
            )
        try:
            builder.download_and_prepare()
        except Exception as err:  # most catalog generators need TensorFlow; downloads can fail
            raise UserError(
                f"tfds:{name} is not prepared in {builder.data_dir} and preparing it here failed "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                "prepare it once where tensorflow is installed (file_format='array_record', "
                "see docs/data.md) and point "
                "TFDS_DATA_DIR at it"
            ) from None
    if builder.info.file_format != tfds.core.file_adapters.FileFormat.ARRAY_RECORD:
        raise UserError(
            f"tfds:{name} in {builder.data_dir} is stored as {builder.info.file_format.value}; "
            "dlm-jax reads array_record (no TensorFlow): prepare it with file_format=array_record"
        )
    if split.split("[")[0] not in builder.info.splits:
        raise UserError(
            f"tfds:{name} has no split {split!r}; it has {', '.join(builder.info.splits)}"
        )

    def documents():
        for record in builder.as_data_source(split):
            text = record[feature]
            yield [text.decode("utf-8") if isinstance(text, bytes) else text]

    return documents, f"tfds:{builder.info.full_name}:{split}"


def _online(host="storage.googleapis.com") -> bool:
    """A quick probe: tfds retries a failed download for minutes before it gives up.
    DLM_JAX_OFFLINE=1 (set by the tests) skips it and treats the machine as offline."""
    try:
        socket.create_connection((host, 443), timeout=5).close()
        return True
    except OSError:
        return False


# ------------------------------------------------------------------------------------- packing


def _batched(iterable, n):
    iterator = iter(iterable)
    while batch := list(itertools.islice(iterator, n)):
        yield batch


def _pack(documents, tokenizer, seq_len, stats):
    """Yields (input_ids int32[seq_len], prompt_mask bool[seq_len]) records in corpus order."""
    first = next(documents, None)
    if first is None:
        raise UserError("the corpus has no documents; give --data a file or folder with text")
    documents = itertools.chain([first], documents)
    pack = _pack_pairs if isinstance(first, tuple) else _pack_texts
    yield from pack(documents, tokenizer, seq_len, stats)


def _encode(tokenizer, texts):
    return [
        e.ids for e in tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    ]


def _pack_texts(documents, tokenizer, seq_len, stats):
    """<s> doc </s> <s> doc </s> ... cut into full windows of seq_len; the tail is dropped."""
    ids = special_token_ids(tokenizer)
    stream = []  # pieces of text and special token ids, in order, tokenised in batches

    def flush():
        encoded = iter(_encode(tokenizer, [item for item in stream if isinstance(item, str)]))
        tokens = [
            t for item in stream for t in ([item] if isinstance(item, int) else next(encoded))
        ]
        stream.clear()
        return tokens

    buffer = []
    for document in documents:
        if isinstance(document, tuple):
            raise UserError(
                "the corpus mixes plain text and prompt/response records; keep them apart"
            )
        stats["documents"] += 1
        stream.append(ids["bos"])
        for piece in _pieces_of(document):
            stream.append(piece)
            if len(stream) >= _ENCODE_BATCH:
                buffer += flush()
                yield from _windows(buffer, seq_len, stats)
        stream.append(ids["eos"])
    buffer += flush()
    yield from _windows(buffer, seq_len, stats)
    stats["dropped_tail_tokens"] = len(buffer)


def _windows(buffer, seq_len, stats):
    full = len(buffer) // seq_len
    for k in range(full):
        yield (
            np.asarray(buffer[k * seq_len : (k + 1) * seq_len], np.int32),
            np.zeros(seq_len, bool),
        )
    stats["tokens"] += full * seq_len
    del buffer[: full * seq_len]


def _pack_pairs(documents, tokenizer, seq_len, stats):
    """<s> prompt </s> response </s> padded with </s>; prompt_mask marks <s> prompt </s>.

    A response that does not fit is cut (and gets no </s>: it did not end); a prompt that leaves
    no room for one response token skips the record. Both are counted in the stats."""
    ids = special_token_ids(tokenizer)
    for batch in _batched(documents, _ENCODE_BATCH):
        if not all(isinstance(document, tuple) for document in batch):
            raise UserError(
                "the corpus mixes plain text and prompt/response records; keep them apart"
            )
        prompts = _encode(tokenizer, [prompt for prompt, _ in batch])
        responses = _encode(tokenizer, [response for _, response in batch])
        for prompt, response in zip(prompts, responses, strict=True):
            stats["documents"] += 1
            head, room = [ids["bos"], *prompt, ids["eos"]], seq_len - len(prompt) - 2
            if room < 1:
                stats["skipped"] += 1
                continue
            body = response + [ids["eos"]]
            if len(body) > room:
                stats["truncated"] += 1
                body = response[:room]
            input_ids = np.full(seq_len, ids["eos"], np.int32)
            input_ids[: len(head) + len(body)] = head + body
            stats["tokens"] += len(head) + len(body)
            yield input_ids, np.arange(seq_len) < len(head)


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
            builder=self,
            features=features,
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
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
        self.source, self.seq_len, self.stats, self.directory = (
            source,
            seq_len,
            stats,
            Path(directory),
        )

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index):
        return self.source[index]

    def rows(self, indices) -> dict:
        """Records at `indices`, stacked: {"input_ids": int32[n, L], "prompt_mask": bool[n, L]}."""
        records = self.source.__getitems__([int(i) for i in indices])
        return {key: np.stack([r[key] for r in records]) for key in ("input_ids", "prompt_mask")}


def prepare_dataset(
    spec, tokenizer, seq_len: int, *, cache_dir, split: str = "train"
) -> PackedDataset:
    """Tokenises and packs a corpus once into cache_dir and returns its split as a PackedDataset.

    The split may be sliced the TFDS way ("train[:95%]"); a `tfds:NAME:SPLIT` spec names its own.
    """
    if seq_len < 4:
        raise UserError(f"seq_len {seq_len} is too short; use at least 4 tokens")
    splits, fingerprint, split = _open_source(spec, split)
    tokenizer_hash = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()
    key = hashlib.sha256(
        f"{_PACKING_VERSION}|{fingerprint}|{tokenizer_hash}|{seq_len}".encode()
    ).hexdigest()
    data_dir = Path(cache_dir).expanduser() / f"packed-{key[:20]}"

    def records(name, stats):
        return _pack(iter(splits[name]()), tokenizer, seq_len, stats)

    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / "build.lock", "w") as lock:  # one writer when hosts share the cache
        fcntl.flock(lock, fcntl.LOCK_EX)
        builder = _PackedTextBuilder(
            seq_len=seq_len,
            records=records,
            splits=tuple(splits),
            data_dir=data_dir,
            file_format="array_record",
        )
        if not builder.is_prepared():
            log.warning("packing %s into %d-token sequences in %s", spec, seq_len, data_dir)
            tfds.display_progress_bar(False)
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(
                    compute_stats=tfds.download.ComputeStatsMode.SKIP
                )
            )
    stats = dict(builder.info.metadata[split.split("[")[0]])
    if stats["truncated"] or stats["skipped"]:
        log.warning(
            "%s: %d prompt/response records truncated, %d skipped (prompt longer than %d tokens)",
            spec,
            stats["truncated"],
            stats["skipped"],
            seq_len - 2,
        )
    return PackedDataset(builder.as_data_source(split), seq_len, stats, builder.data_dir)


# ------------------------------------------------------------------------------------- batches


class BatchIterator:
    """Endless global batches in a shuffled order that is a function of (seed, epoch) only.

    Each epoch is a fresh permutation of the sequences, cut into len // global_batch_size batches
    (the remainder waits for a later epoch's permutation). Host `process_index` of
    `process_count` gets rows [i * local, (i + 1) * local) of each global batch and reads only
    those.
    """

    def __init__(
        self,
        dataset,
        global_batch_size: int,
        *,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
    ):
        if global_batch_size % process_count:
            raise UserError(
                f"global batch size {global_batch_size} does not split over "
                f"{process_count} hosts; use a multiple of {process_count}"
            )
        if len(dataset) < global_batch_size:
            raise UserError(
                f"the corpus has {len(dataset)} sequences of {dataset.seq_len} tokens but one "
                f"batch needs {global_batch_size}; use more text, a smaller batch or a shorter "
                "seq_len"
            )
        self.dataset, self.global_batch_size, self.seed = dataset, global_batch_size, seed
        self.local_batch_size = global_batch_size // process_count
        self.process_index = process_index
        self.batches_per_epoch = len(dataset) // global_batch_size
        self.epoch, self.batch_in_epoch = 0, 0
        self._order = None

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self.batch_in_epoch == self.batches_per_epoch:
            self.epoch, self.batch_in_epoch, self._order = self.epoch + 1, 0, None
        if self._order is None:
            self._order = np.random.default_rng([self.seed, self.epoch]).permutation(
                len(self.dataset)
            )
        start = (
            self.batch_in_epoch * self.global_batch_size
            + self.process_index * self.local_batch_size
        )
        self.batch_in_epoch += 1
        return self.dataset.rows(self._order[start : start + self.local_batch_size])

    def get_state(self) -> dict:
        return {
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "seed": self.seed,
            "num_sequences": len(self.dataset),
            "global_batch_size": self.global_batch_size,
        }

    def set_state(self, state: dict) -> None:
        mine = self.get_state()
        for key in ("seed", "num_sequences", "global_batch_size"):
            if state[key] != mine[key]:
                raise UserError(
                    f"the saved data position is for {key}={state[key]} but this run has "
                    f"{mine[key]}; resume with the same data, seed and batch size"
                )
        self.epoch, self.batch_in_epoch, self._order = (
            state["epoch"],
            state["batch_in_epoch"],
            None,
        )
