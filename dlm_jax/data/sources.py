"""Corpora: a data spec -> the documents of each split, checked before any tokenising.

A spec is a text file, a folder of .txt/.jsonl files, a folder of WikiText raw files or
`tfds:NAME[/CONFIG][:SPLIT]` (read by `tfds_source`, imported only then). A document is a tuple
(prompt, response) or an iterable of text pieces.
"""

import codecs
import functools
import hashlib
import json
import os
import re
import sysconfig
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from dlm_jax.errors import UserError

WIKITEXT_SPLITS = {"wiki.train.raw": "train", "wiki.valid.raw": "validation", "wiki.test.raw": "test"}
_WIKITEXT_ARTICLE = re.compile(r"^ = [^=].* = $")  # a top-level heading starts an article
_PIECE_CHARS = 1 << 16  # long documents are tokenised in pieces of about this many characters
# Long texts are tokenised in pieces cut only after a lone "\n" between non-space characters:
# no pre-token (GPT-2 regex, BERT whitespace split) spans such a point, so the tokens of the
# pieces equal the tokens of the whole text.
_CUT_POINT = re.compile(r"(?<=\S\n)(?=\S)")


def no_progress(units):
    pass


class Split(NamedTuple):
    """One split of a corpus. documents(progress) gives a fresh iterator of its documents and
    calls progress(n) as it reads n more of the split's `size` units."""

    documents: Callable
    size: int
    unit: str  # "B" (bytes of its files) or "doc" (TFDS records)


class Source(NamedTuple):
    splits: dict  # split name -> Split
    fingerprint: str  # a hash of the content: part of the packing cache key
    split: str  # the split asked for, as it is read back (TFDS: a slice of "train")


CACHE_FIX = "set DLM_JAX_CACHE to a writable directory for the data cache"


def cache_home() -> Path:
    """The data cache: $DLM_JAX_CACHE, else $XDG_CACHE_HOME/dlm_jax, else ~/.cache/dlm_jax."""
    if "DLM_JAX_CACHE" in os.environ:
        return Path(os.environ["DLM_JAX_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dlm_jax"


def check_writable(directory: Path, fix: str) -> None:
    """UserError (ending in `fix`) unless `directory` is or can be made a writable directory:
    one line before any work, not an OSError halfway through it."""
    directory = directory.absolute()
    existing = next(p for p in (directory, *directory.parents) if p.exists())
    if not existing.is_dir():
        where = "" if existing == directory else f" (in {directory})"
        raise UserError(f"{existing} is a file, not a directory{where}; {fix}")
    if not os.access(existing, os.W_OK):
        raise UserError(f"cannot write into {directory}: {existing} is not writable; {fix}")
    try:  # os.access says yes to root everywhere, also where nothing can be created (/proc, read-only mounts)
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise UserError(f"cannot write into {directory}: {err.strerror or err}; {fix}") from None


def open_source(spec, split) -> Source:
    """Opens a spec and checks its content (files exist, are text, are not empty). A catalog
    dataset's split is named "train"."""
    spec = str(spec)
    if spec.startswith("tfds:"):
        from dlm_jax.data.tfds_source import tfds_source

        documents, fingerprint = tfds_source(spec[len("tfds:") :], split)
        return Source({"train": documents}, fingerprint, "train")
    files = _local_files(Path(spec).expanduser())
    if split.split("[")[0] not in files:
        raise UserError(
            f"{spec} has no {split.split('[')[0]!r} split (it has {', '.join(files)}); "
            "WikiText folders split by wiki.{train,valid,test}.raw, other data is all 'train'"
        )
    fingerprint = _scan_files([f for split_files in files.values() for f in split_files], spec)
    splits = {
        name: Split(functools.partial(_file_documents, paths), sum(p.stat().st_size for p in paths), "B")
        for name, paths in files.items()
    }
    return Source(splits, fingerprint, split)


def held_out_split(spec) -> str:
    """The split evaluated by default: a TFDS dataset's "test" (a `tfds:NAME:SPLIT` spec names
    its own), a WikiText folder's test (else valid) file; any other local data is read whole."""
    if str(spec).startswith("tfds:"):
        return "test"
    path = Path(spec).expanduser()
    for name in ("wiki.test.raw", "wiki.valid.raw"):
        if path.is_dir() and (path / name).is_file():
            return WIKITEXT_SPLITS[name]
    return "train"


def _local_files(path: Path) -> dict:
    if not path.exists():
        raise UserError(
            f"data path {path} does not exist; give a text file, a folder of .txt/.jsonl "
            "files, WikiText raw files or tfds:NAME"
        )
    if path.is_file():
        return {"train": [path]}
    wikitext = {split: [path / name] for name, split in WIKITEXT_SPLITS.items() if (path / name).exists()}
    if wikitext:
        return wikitext
    files = sorted(f for f in path.rglob("*") if f.suffix in (".txt", ".jsonl") and f.is_file())
    if not files:
        raise UserError(f"no .txt or .jsonl files in {path}; give a text file or a folder of them")
    return {"train": files}


def _scan_files(files, spec) -> str:
    """Content hash of the files; checks, before any tokenising, that they are non-empty UTF-8
    text (a NUL byte marks a binary file: valid UTF-8, but no text)."""
    digest, has_text = hashlib.sha256(), False
    for file in files:
        digest.update(f"{file.name}\0{file.stat().st_size}\0".encode())
        decoder, offset = codecs.getincrementaldecoder("utf-8")(), 0
        with open(file, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                if (nul := block.find(b"\0")) >= 0:
                    raise UserError(
                        f"{file} is a binary file, not text (a NUL byte at offset "
                        f"{offset + nul}); give --data text files"
                    )
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


def _file_documents(files, progress=no_progress):
    for file in files:
        if file.suffix == ".jsonl":
            yield from _jsonl_documents(file, progress)
        elif file.name in WIKITEXT_SPLITS:
            yield from _wikitext_articles(file, progress)
        else:
            yield _file_pieces(file, progress=progress)


def _jsonl_documents(file, progress=no_progress):
    with open(file, encoding="utf-8") as stream:
        for line_number, line in enumerate(stream, 1):
            progress(len(line.encode()))
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
                    f'{file}:{line_number}: a JSONL record needs a "text" string, or "prompt" and "response" strings'
                )


def _wikitext_articles(file, progress=no_progress):
    article = []
    for line in file.read_text(encoding="utf-8").splitlines(keepends=True):
        if _WIKITEXT_ARTICLE.match(line.rstrip("\n")) and "".join(article).strip():
            yield [_reported("".join(article), progress)]
            article = []
        article.append(line)
    if "".join(article).strip():
        yield [_reported("".join(article), progress)]


def _file_pieces(file, piece_chars=_PIECE_CHARS, progress=no_progress):
    piece, size = [], 0
    with open(file, encoding="utf-8", newline="") as stream:
        for line in stream:
            if size >= piece_chars and _CUT_POINT.match(piece[-1][-2:] + line[:1], 2):
                yield _reported("".join(piece), progress)
                piece, size = [], 0
            piece.append(line)
            size += len(line)
    if piece:
        yield _reported("".join(piece), progress)


def _reported(text, progress):
    """text, after reporting its bytes as read."""
    progress(len(text.encode()))
    return text


def pieces_of(document, piece_chars=_PIECE_CHARS):
    """The texts of a document cut at safe points into pieces of about piece_chars."""
    for text in document:
        start = 0
        for match in _CUT_POINT.finditer(text, piece_chars):
            if match.start() - start >= piece_chars:
                yield text[start : match.start()]
                start = match.start()
        yield text[start:]


def joined_paragraphs(text: str, keep=None, clean_line=str.strip) -> list[str]:
    """The paragraphs of `text` (separated by blank lines), each joined into one line of its
    cleaned, non-empty lines; with `keep`, only those whose raw lines pass keep(lines).
    Hard-wrapped text (docstrings, Gutenberg books) becomes running prose, which small models
    learn far sooner than line fragments and newline runs."""
    paragraphs = []
    for paragraph in re.split(r"\n\s*\n", text):
        lines = paragraph.splitlines()
        if keep is not None and not keep(lines):
            continue
        if joined := " ".join(line for line in map(clean_line, lines) if line):
            paragraphs.append(joined)
    return paragraphs


def prose_paragraphs(text: str) -> list[str]:
    """The paragraphs of `text` that are prose, each on one line; paragraphs with an indented or
    doctest line (code, tables, option lists) are dropped."""
    return joined_paragraphs(
        text, keep=lambda lines: not any(line.startswith((" ", "\t", ">>>", "...")) for line in lines)
    )


def spec_or_default_corpus(spec: str | None) -> str:
    """`spec`, or the built-in corpus (`default_corpus`) where none is given: what a training run
    without --data reads."""
    return spec if spec is not None else str(default_corpus())


def default_corpus(cache_dir=None) -> Path:
    """The prose of this Python's standard library docstrings as one text file (about 1.2 MB).

    Present on any machine with Python, so a first run needs no download. Modules are read in
    sorted path order and nodes in source order, so the file is the same on every run. Only
    prose paragraphs are kept, each on one line (`prose_paragraphs`): docstrings wrap their
    lines at ~72 columns, and a small model trained on wrapped text spends its first hundreds of
    steps predicting newlines. The standard library's test suite is left out: it is the held-out
    text (`default_held_out_corpus`).
    """
    path = Path(cache_dir or cache_home()) / f"stdlib_prose_py{sysconfig.get_python_version()}.txt"
    if path.exists():
        return path
    check_writable(path.parent, CACHE_FIX)
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
        subfolders[:] = [d for d in subfolders if d not in skip]  # prune: site-packages can be huge
        modules += [Path(folder, f) for f in files if f.endswith(".py") and not f.startswith("test_")]
    paragraphs = _docstring_prose(modules)
    if not paragraphs:
        raise UserError(f"no standard library sources under {stdlib}; pass --data with a text file")
    return _write_paragraphs(path, paragraphs)


def default_held_out_corpus(cache_dir=None) -> Path | None:
    """Held-out text for a model trained on `default_corpus`: the prose of the docstrings of this
    Python's own test suite (the standard library's test/ package, about 0.2 MB), which that
    corpus leaves out: the same kind of text, by the same authors. None where the test suite is
    not installed (some Linux distributions ship it as a package of its own)."""
    path = Path(cache_dir or cache_home()) / f"stdlib_test_prose_py{sysconfig.get_python_version()}.txt"
    if path.exists():
        return path
    check_writable(path.parent, CACHE_FIX)
    suite = Path(sysconfig.get_paths()["stdlib"]) / "test"
    paragraphs = _docstring_prose(p for p in suite.rglob("*.py") if "__pycache__" not in p.parts)
    return _write_paragraphs(path, paragraphs) if paragraphs else None


def _docstring_prose(modules) -> list[str]:
    """The prose paragraphs of the docstrings of `modules` (paths, read in sorted order; module,
    classes and functions in source order)."""
    import ast

    paragraphs = []
    for module in sorted(modules):
        try:
            with warnings.catch_warnings():  # invalid escapes in old sources: not ours to report
                warnings.simplefilter("ignore", (SyntaxWarning, DeprecationWarning))
                tree = ast.parse(module.read_bytes())
        except (SyntaxError, ValueError):
            continue  # a file for another Python version
        nodes = [tree]  # module, classes and functions in source order (top-level bodies only)
        while nodes:
            node = nodes.pop(0)
            doc = ast.get_docstring(node)
            if doc and len(doc) >= 40:  # lone surrogates from escapes become "?"
                paragraphs += prose_paragraphs(doc.encode("utf-8", "replace").decode("utf-8"))
            nodes[:0] = [n for n in node.body if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    return paragraphs


def _write_paragraphs(path: Path, paragraphs: list[str]) -> Path:
    """`paragraphs` as one text file at `path`, a blank line between them; written whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(f".tmp{os.getpid()}")
    staging.write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    staging.replace(path)
    return path
