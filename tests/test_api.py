"""dlm_jax/api.py: `load(path)` and `Model.logits`.

A HF directory (converted in memory) and our model directory written from it give the same
model, whose logits equal PyTorch's; bf16 compute still returns float32 logits; bad ids, lengths
and masks are one clear UserError before anything is compiled. (Training workdirs and their
steps: test_checkpoint.py.)
"""

import numpy as np
import pytest
import torch
from helpers_hf import make_hf_checkpoint

from dlm_jax import load
from dlm_jax.checkpoint import save_model
from dlm_jax.errors import UserError
from dlm_jax.models.params import params_of


@pytest.fixture(scope="module", params=["roberta", "modernbert"])
def hf_dir(request, tmp_path_factory):
    return make_hf_checkpoint(tmp_path_factory.mktemp("hf"), request.param)


def batch(vocab_size: int):
    rng = np.random.default_rng(0)
    ids = rng.integers(5, vocab_size, (2, 12))
    mask = np.ones_like(ids)
    mask[1, 9:] = 0  # a padded row
    return ids, mask


def test_hf_directory_logits_equal_pytorch(hf_dir):
    from transformers import AutoModelForMaskedLM

    model = load(hf_dir)
    ids, mask = batch(model.config.vocab_size)
    ours = model.logits(ids, mask)
    with torch.no_grad():
        theirs = (
            AutoModelForMaskedLM.from_pretrained(hf_dir)
            .eval()(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
            .logits.numpy()
        )
    assert ours.dtype == np.float32 and ours.shape == (*ids.shape, model.config.vocab_size)
    real = mask.astype(bool)  # padded positions are undefined in both
    assert np.abs(ours[real] - theirs[real]).max() <= 1e-4
    assert model.tokenizer is not None and model.tokenizer.mask_token_id == model.config.mask_token_id


def test_model_directory_and_bf16(hf_dir, tmp_path):
    converted = load(hf_dir)
    save_model(tmp_path / "ours", converted.config, params_of(converted.encoder), converted.tokenizer)
    ids, mask = batch(converted.config.vocab_size)
    reference = converted.logits(ids, mask)
    np.testing.assert_array_equal(load(tmp_path / "ours").logits(ids, mask), reference)
    low = load(tmp_path / "ours", dtype="bfloat16").logits(ids, mask)
    assert low.dtype == np.float32 and not np.array_equal(low, reference)
    assert np.abs(low - reference).max() < 0.1 * np.abs(reference).max()  # bf16 compute, same model


def test_bad_inputs_are_one_clear_error(hf_dir):
    model = load(hf_dir)
    vocab, longest = model.config.vocab_size, model.config.max_length
    ids, mask = batch(vocab)
    cases = [
        (ids[0], "2-D integer array"),
        (ids.astype(np.float32), "2-D integer array"),
        (np.full((1, 4), vocab), f"token id {vocab} is outside the vocabulary"),
        (np.full((1, 4), -1), "token id -1 is outside the vocabulary"),
        (np.full((1, longest + 1), 5), f"exceeds the model's maximum {longest}"),
    ]
    for bad, message in cases:
        with pytest.raises(UserError, match=message):
            model.logits(bad)
    with pytest.raises(UserError, match="attention_mask shape"):
        model.logits(ids, mask[:, :5])
