"""dlm_jax/checkpoint.py: model directories and training workdirs on disk (Orbax).

A model directory round-trips exactly (bf16 arrays are stored as float32); a real workdir trained
here (tiny, steps 1 and 2 saved) is read at its latest step, at a chosen step and through a
checkpoint step directory, which agree; wrong paths and steps are one clear UserError.
"""

import dataclasses
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers_hf import make_hf_checkpoint

import dlm_jax
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
    tokenizer = load_tokenizer(shared_data / "tokenizers" / "roberta-base")
    sized = dataclasses.replace(TINY, vocab_size=len(tokenizer))
    params = init_params(sized, seed=3)
    # bf16 leaves come back float32 with the same values
    halved = jax.tree.map(lambda x: np.asarray(x, jax.numpy.bfloat16), params)
    save_model(tmp_path / "m", sized, halved, tokenizer)
    assert is_model_dir(tmp_path / "m") and not is_workdir(tmp_path / "m")
    config, loaded, loaded_tokenizer = load_model_dir(tmp_path / "m")
    assert config == sized and loaded_tokenizer.get_vocab() == tokenizer.get_vocab()
    assert {x.dtype for x in jax.tree.leaves(loaded)} == {np.dtype(np.float32)}
    assert equal_trees(loaded, jax.tree.map(lambda x: np.asarray(x, np.float32), halved))
    assert equal_trees(read_any(tmp_path / "m")[1], loaded)
    save_model(tmp_path / "bare", sized, params)  # no tokenizer: none comes back
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


# ----------------------------------------------------------------------------- damaged input
def truncate_params(step_dir):
    """Cut every data file of a saved params tree to half its size, as a full disk or an
    interrupted copy would."""
    data_files = [p for p in (step_dir / "params").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert data_files
    for path in data_files:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def one_line_error(call, *words):
    with pytest.raises(UserError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and len(message) < 1000, message
    for word in words:
        assert word in message, message
    return message


def test_damaged_workdir_step_is_one_line_naming_the_other_steps(workdir, tmp_path):
    truncated = shutil.copytree(workdir, tmp_path / "truncated")
    truncate_params(truncated / "checkpoints" / "2")
    step_dir = truncated / "checkpoints" / "2"
    for load in (lambda: read_any(truncated), lambda: dlm_jax.load(truncated), lambda: read_any(step_dir)):
        one_line_error(load, f"checkpoint {step_dir} is damaged or incomplete", "--step N (1)", f"delete {step_dir}")
    assert equal_trees(read_any(truncated, 1)[1], read_any(workdir, 1)[1])  # the other step still loads

    no_params = shutil.copytree(workdir, tmp_path / "no-params")
    shutil.rmtree(no_params / "checkpoints" / "2" / "params")
    one_line_error(lambda: dlm_jax.load(no_params), 'Item "params" was not found', "--step N (1)")
    shutil.rmtree(no_params / "checkpoints" / "1")  # now the damaged step is the only one
    one_line_error(
        lambda: dlm_jax.load(no_params),
        f"checkpoint {no_params / 'checkpoints' / '2'} is damaged",
        "it is the only saved step",
        "train again",
    )


def test_damaged_model_directory_is_one_line(tmp_path):
    save_model(tmp_path / "m", TINY, init_params(TINY))
    truncate_params(tmp_path / "m")
    one_line_error(lambda: dlm_jax.load(tmp_path / "m"), f"{tmp_path / 'm' / 'params'} is damaged", "re-save it")


def test_cli_prints_only_the_line_for_a_damaged_checkpoint(workdir, tmp_path):
    """The installed entry point, as a user runs it: Orbax's abandoned reads print nothing after
    the line (they used to add hundreds of traceback lines, at random)."""
    truncated = shutil.copytree(workdir, tmp_path / "truncated")
    truncate_params(truncated / "checkpoints" / "2")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dlm_jax",
            "generate",
            "--checkpoint",
            str(truncated),
            "--prompt",
            "hi",
            "--gen-length",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith(f"dlm-jax generate: error: --checkpoint: checkpoint {truncated / 'checkpoints' / '2'}")


def test_a_tokenizer_larger_than_the_vocabulary_is_refused(workdir, tmp_path, shared_data):
    """Ids past vocab_size would be clamped silently by JAX's gather: refused before the params
    are read, naming both sizes."""
    save_model(tmp_path / "m", TINY, init_params(TINY), load_tokenizer(shared_data / "tokenizers" / "roberta-base"))
    one_line_error(lambda: load_model_dir(tmp_path / "m"), "the tokenizer has 50265 tokens", "vocab_size is 512")
    shrunk = shutil.copytree(workdir, tmp_path / "shrunk")
    config_file = shrunk / "model" / "dlm_config.json"
    config_file.write_text(config_file.read_text().replace('"vocab_size": 512', '"vocab_size": 500'))
    one_line_error(lambda: read_any(shrunk), "the tokenizer has 512 tokens", "vocab_size is 500")
