"""dlm_jax/checkpoint.py: model directories and training workdirs on disk (Orbax).

A model directory round-trips exactly (bf16 arrays are stored as float32); a real workdir trained
here (tiny, steps 1 and 2 saved) is read at its latest step, at a chosen step and through a
checkpoint step directory, which agree; wrong paths and steps are one clear UserError.
"""

import jax
import numpy as np
import pytest
from helpers_hf import make_hf_checkpoint

from dlm_jax.checkpoint import (
    is_model_dir,
    is_workdir,
    load_model_dir,
    load_params_from_workdir,
    read_any,
    save_model,
    trained_seq_len,
    workdir_and_step,
)
from dlm_jax.errors import UserError
from dlm_jax.models import EncoderConfig
from dlm_jax.models.params import init_params
from dlm_jax.tokenizer import load_tokenizer
from dlm_jax.train import resolve_config, train

TINY = EncoderConfig(
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=64,
    vocab_size=512,
    max_position_embeddings=66,
    mask_token_id=4,
)


def equal_trees(a, b) -> bool:
    a, b = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(a) == len(b) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, shared_data, monkeypatch_module):
    from dlm_jax.data import train_tokenizer

    root = tmp_path_factory.mktemp("ckpt")
    monkeypatch_module.setenv("DLM_JAX_CACHE", str(root / "cache"))
    corpus = root / "corpus.txt"
    corpus.write_text((shared_data / "tinyshakespeare" / "input.txt").read_text()[:60_000])
    train_tokenizer(str(corpus), root / "tokenizer", vocab_size=512)
    train(
        resolve_config("tiny", ["steps=2", "checkpoint_every=1", f"tokenizer={root / 'tokenizer'}"], data=str(corpus)),
        root / "w",
    )
    return root / "w"


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_model_directory_round_trip(tmp_path, shared_data):
    params = init_params(TINY, seed=3)
    tokenizer = load_tokenizer(shared_data / "tokenizers" / "roberta-base")
    # bf16 leaves come back float32 with the same values
    halved = jax.tree.map(lambda x: np.asarray(x, jax.numpy.bfloat16), params)
    save_model(tmp_path / "m", TINY, halved, tokenizer)
    assert is_model_dir(tmp_path / "m") and not is_workdir(tmp_path / "m")
    config, loaded, loaded_tokenizer = load_model_dir(tmp_path / "m")
    assert config == TINY and loaded_tokenizer.get_vocab() == tokenizer.get_vocab()
    assert {x.dtype for x in jax.tree.leaves(loaded)} == {np.dtype(np.float32)}
    assert equal_trees(loaded, jax.tree.map(lambda x: np.asarray(x, np.float32), halved))
    assert equal_trees(read_any(tmp_path / "m")[1], loaded)
    save_model(tmp_path / "bare", TINY, params)  # no tokenizer: none comes back
    assert load_model_dir(tmp_path / "bare")[2] is None and equal_trees(load_model_dir(tmp_path / "bare")[1], params)
    with pytest.raises(UserError, match="needs a training workdir"):
        read_any(tmp_path / "m", 1)
    with pytest.raises(UserError, match="is not a dlm-jax model directory"):
        load_model_dir(tmp_path)


def test_workdir_steps_and_step_directories_agree(workdir):
    assert is_workdir(workdir) and not is_model_dir(workdir)
    config, latest, tokenizer = read_any(workdir)
    assert tokenizer is not None and config.vocab_size == len(tokenizer)
    assert equal_trees(latest, read_any(workdir, 2)[1]) and equal_trees(latest, load_params_from_workdir(workdir))
    first = read_any(workdir, 1)[1]
    assert equal_trees(first, read_any(workdir / "checkpoints" / "1")[1]) and not equal_trees(first, latest)
    assert workdir_and_step(workdir / "checkpoints" / "1") == (workdir, 1)
    assert workdir_and_step(workdir, 2) == (workdir, 2)
    with pytest.raises(UserError, match="is the checkpoint of step 1 but step 2 was asked for"):
        read_any(workdir / "checkpoints" / "1", 2)
    with pytest.raises(UserError, match=r"has no step 5; saved steps: \[1, 2\]"):
        read_any(workdir, 5)


def test_trained_seq_len(workdir, tmp_path):
    assert trained_seq_len(workdir) == 64 and trained_seq_len(workdir / "checkpoints" / "2") == 64
    save_model(tmp_path / "m", TINY, init_params(TINY))
    assert trained_seq_len(tmp_path / "m") is None and trained_seq_len(make_hf_checkpoint(tmp_path, "roberta")) is None


def test_paths_that_are_not_models(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_any(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="is not a dlm-jax model directory, a training workdir or a HuggingFace"):
        read_any(tmp_path / "empty")
    (tmp_path / "empty" / "checkpoints").mkdir()
    with pytest.raises(UserError, match="holds no checkpoint yet"):
        load_params_from_workdir(tmp_path / "empty")
    hf = make_hf_checkpoint(tmp_path, "bert")
    config, params, tokenizer = read_any(hf)  # converted in memory
    assert config.model_type == "bert" and tokenizer is not None and jax.tree.leaves(params)
