"""Data: packing, caching, batches, tokenizers and bad input, on real text and real tokenizers."""

import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from transformers import AutoTokenizer

from dlm_jax import data
from dlm_jax.data import sources, tfds_source
from dlm_jax.cli import main as cli_main
from dlm_jax.data import (
    BatchIterator,
    default_corpus,
    prepare_dataset,
    tokenizer_for_run,
    train_tokenizer,
)
from dlm_jax.errors import UserError
from dlm_jax.tokenizer import load_tokenizer, special_token_ids


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
    (corpus / "c.jsonl").write_text(
        "".join(json.dumps({"text": t}) + "\n" for t in lines), encoding="utf-8"
    )
    (corpus / "notes.md").write_text("not part of the corpus", encoding="utf-8")
    dataset = prepare_dataset(corpus, roberta, 32, cache_dir=tmp_path / "cache")
    # sorted paths: a.txt, c.jsonl (one document per record), sub/b.txt
    documents = [texts[0], *lines, texts[1]]
    stream = [t for doc in documents for t in (0, *_encode(roberta, doc), 2)]
    input_ids, _ = _all_records(dataset)
    np.testing.assert_array_equal(input_ids.reshape(-1), stream[: len(dataset) * 32])
    assert dataset.stats["documents"] == len(documents)
    ids = input_ids.reshape(-1)
    assert (ids == 0).sum() == (ids == 2).sum() or abs(
        int((ids == 0).sum() - (ids == 2).sum())
    ) == 1


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
    assert [
        f.stat().st_mtime_ns for f in sorted(second.directory.iterdir())
    ] == stamps  # not rebuilt
    np.testing.assert_array_equal(_all_records(first)[0], _all_records(second)[0])
    assert (
        prepare_dataset(corpus, roberta, 32, cache_dir=tmp_path / "cache").directory
        != first.directory
    )
    corpus.write_text(shakespeare[:8001], encoding="utf-8")
    assert (
        prepare_dataset(corpus, roberta, 64, cache_dir=tmp_path / "cache").directory
        != first.directory
    )
    assert len(list((tmp_path / "cache").glob("packed-*"))) == 3


def test_wikitext_folder_splits(tmp_path, shared_data, roberta):
    wiki = tmp_path / "wikitext"
    wiki.mkdir()
    for name in ("wiki.valid.raw", "wiki.test.raw"):
        lines = (
            (shared_data / "wikitext-2-raw" / name)
            .read_text(encoding="utf-8")
            .splitlines(keepends=True)
        )
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
    records.append(
        {"prompt": " ".join(turns[:10]), "response": "Nobody."}
    )  # prompt too long: skipped
    path = tmp_path / "dialog.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    dataset = prepare_dataset(path, roberta, 96, cache_dir=tmp_path / "cache")
    ids = special_token_ids(roberta)
    expected, truncated, skipped = [], 0, 0  # the rule, written out once more by hand
    for record in records:
        prompt, response = _encode(roberta, record["prompt"]), _encode(roberta, record["response"])
        head = [ids["bos"], *prompt, ids["eos"]]
        if len(head) >= 96:
            skipped += 1
        elif len(head) + len(response) + 1 <= 96:
            expected.append(
                (head + response + [ids["eos"]] * (96 - len(head) - len(response)), len(head))
            )
        else:
            truncated += 1
            expected.append(
                (head + response[: 96 - len(head)], len(head))
            )  # cut: no </s>, it did not end
    assert len(dataset) == len(expected) and truncated >= 1 and skipped >= 1
    assert (dataset.stats["truncated"], dataset.stats["skipped"]) == (truncated, skipped)
    for row, (input_ids, prompt_length) in enumerate(expected):
        np.testing.assert_array_equal(dataset[row]["input_ids"], input_ids)
        np.testing.assert_array_equal(dataset[row]["prompt_mask"], np.arange(96) < prompt_length)


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
    PreparedTinyShakespeare(
        data_dir=tmp_path / "tfds", file_format="array_record"
    ).download_and_prepare()
    dataset = prepare_dataset(
        "tfds:tiny_shakespeare:test", roberta, 64, cache_dir=tmp_path / "cache"
    )
    stream = [0, *_encode(roberta, shakespeare[5000:9000]), 2]
    np.testing.assert_array_equal(
        _all_records(dataset)[0].reshape(-1), stream[: len(dataset) * 64]
    )
    with pytest.raises(UserError, match="has no split 'validation'; it has train, test"):
        prepare_dataset(
            "tfds:tiny_shakespeare", roberta, 64, cache_dir=tmp_path / "cache", split="validation"
        )


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
    assert [index_of[r.tobytes()] for b in _take(again, 3) for r in b["input_ids"]] == epochs[0][
        :48
    ]
    other = BatchIterator(packed, 16, seed=4)
    assert [index_of[r.tobytes()] for b in _take(other, 3) for r in b["input_ids"]] != epochs[0][
        :48
    ]
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
    assert (
        loaded.bos_token_id,
        loaded.pad_token_id,
        loaded.eos_token_id,
        loaded.mask_token_id,
    ) == (0, 1, 2, 4)
    unseen = (shared_data / "gutenberg" / "austen-emma.txt").read_text(encoding="utf-8")[:2000]
    ids = loaded(unseen)["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2 and loaded.decode(ids[1:-1]) == unseen
    assert len(ids) < len(unseen.encode()) / 2  # merges were learned
    # `train` keeps one tokenizer in the workdir: trained once, then reused.
    model_dir = tmp_path / "workdir" / "model"
    first = tokenizer_for_run(corpus, model_dir, vocab_size=600)
    stamp = (model_dir / "tokenizer.json").stat().st_mtime_ns
    again = tokenizer_for_run(corpus, model_dir, vocab_size=600)
    assert (model_dir / "tokenizer.json").stat().st_mtime_ns == stamp and len(again) == len(
        first
    ) == 600
    assert sorted(p.name for p in model_dir.parent.iterdir()) == [
        "model"
    ]  # no staging left behind


def test_tokenizer_cli(tmp_path, shakespeare, capsys):
    corpus = tmp_path / "play.txt"
    corpus.write_text(shakespeare[:50_000], encoding="utf-8")
    out = tmp_path / "tok"
    assert (
        cli_main(
            ["tokenizer", "train", "--data", str(corpus), "--out", str(out), "--vocab-size", "500"]
        )
        == 0
    )
    assert "500-token byte-level BPE" in capsys.readouterr().out
    assert load_tokenizer(out).mask_token == "<mask>"
    assert cli_main(["tokenizer", "train", "--data", str(corpus), "--out", str(out)]) == 2
    assert (
        cli_main(
            [
                "tokenizer",
                "train",
                "--data",
                str(tmp_path / "nope.txt"),
                "--out",
                str(tmp_path / "t2"),
            ]
        )
        == 2
    )
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
    assert (
        default_corpus(stdlib_corpus.parent) == stdlib_corpus
        and stdlib_corpus.stat().st_mtime_ns == stamp
    )


@pytest.mark.slow  # a second walk over the standard library: ~5-10 s on 2 busy cores
def test_default_corpus_is_deterministic(stdlib_corpus, tmp_path):
    assert default_corpus(tmp_path).read_bytes() == stdlib_corpus.read_bytes()


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
    fails(
        tmp_path / "latin1.txt",
        rf"latin1.txt is not UTF-8 text \(bad byte at offset {offset}\); re-encode",
    )
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"txt": "no"}\n', encoding="utf-8")
    fails(tmp_path / "bad.jsonl", r'bad.jsonl:2: a JSONL record needs a "text" string')
    (tmp_path / "mixed.jsonl").write_text(
        '{"text": "a"}\n{"prompt": "b", "response": "c"}\n', encoding="utf-8"
    )
    fails(tmp_path / "mixed.jsonl", "mixes plain text and prompt/response")
    (tmp_path / "short.txt").write_text(shakespeare[:100], encoding="utf-8")
    fails(tmp_path / "short.txt", "gives no sequence of 64 tokens", seq_len=64)
    fails(
        "tfds:tiny_shakspeare",
        "no TFDS dataset named 'tiny_shakspeare'; did you mean tfds:tiny_shakespeare",
    )
    fails("tfds:wiki40b/klingon", "tfds:wiki40b has no config 'klingon'; try tfds:wiki40b/")
    if (
        not tfds_source._online()
    ):  # existing but not downloaded (on a connected machine it would download)
        monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
        fails("tfds:lm1b", "tfds:lm1b is not downloaded in .* and this machine is offline")
    (tmp_path / "small.txt").write_text(shakespeare[:3000], encoding="utf-8")
    small = prepare_dataset(tmp_path / "small.txt", roberta, 64, cache_dir=cache)
    with pytest.raises(
        UserError, match=f"corpus has {len(small)} sequences of 64 tokens but one batch needs 64"
    ):
        BatchIterator(small, 64, seed=0)
    assert not list(
        cache.glob("packed-*/dlm_packed_text/incomplete*")
    )  # failed builds leave nothing
