"""The encoder against HuggingFace's PyTorch BERT/RoBERTa, module by module.

Weights come from a tiny random HF model (real vocabulary size) through the converter's table;
each check compares one stage on the same input so a failure names the stage: embeddings, one
transformer block, the MLM head, then the whole forward on a ragged, padded batch.
"""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from helpers_hf import hf_model

from dlm_jax.models.params import encoder_with_params
from dlm_jax.convert import encoder_config_from_hf, params_from_hf

TOL = 1e-5
TEXTS = [
    "The quick brown fox jumps over the lazy dog, twice.",
    "Masked diffusion unmasks a canvas of tokens step by step until no mask remains.",
    "Short one.",
]


@pytest.fixture(scope="module", params=["roberta", "bert"])
def pair(request):
    """(HF model, our Encoder with the same weights, ids, mask) for one model type."""
    hf, tokenizer = hf_model(request.param)
    config = encoder_config_from_hf(hf.config.to_dict(), tokenizer)
    tensors = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    params, report = params_from_hf(tensors, config)
    assert not report.unmatched and not report.initialised
    batch = tokenizer(TEXTS, padding=True, return_tensors="np")
    assert batch["attention_mask"].min() == 0  # ragged: some rows are padded
    return hf, encoder_with_params(config, params), batch["input_ids"], batch["attention_mask"]


def hf_run(hf, ids, mask):
    with torch.no_grad():
        return hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True)


def max_err(ours, theirs, mask):
    real = mask.astype(bool)
    return float(np.abs(np.asarray(ours) - theirs.numpy())[real].max())


def test_embeddings_match_hf(pair):
    hf, encoder, ids, mask = pair
    out = hf_run(hf, ids, mask)
    ids_j, mask_j = jnp.asarray(ids), jnp.asarray(mask)
    positions = encoder.position_ids(ids_j, mask_j)
    ours = encoder.embeddings(ids_j, positions, jnp.zeros_like(ids_j))
    assert max_err(ours, out.hidden_states[0], mask) <= TOL


def test_first_block_matches_hf(pair):
    hf, encoder, ids, mask = pair
    out = hf_run(hf, ids, mask)
    x = jnp.asarray(out.hidden_states[0].numpy())
    key_mask = jnp.asarray(mask, bool)[:, None, None, :]
    ours = encoder.layers[0](x, key_mask, jnp.float32, None)
    assert max_err(ours, out.hidden_states[1], mask) <= TOL


def test_mlm_head_matches_hf(pair):
    hf, encoder, ids, mask = pair
    out = hf_run(hf, ids, mask)
    ours = encoder.logits_from_hidden(jnp.asarray(out.hidden_states[-1].numpy()))
    assert max_err(ours, out.logits, mask) <= TOL


def test_full_forward_matches_hf(pair):
    hf, encoder, ids, mask = pair
    out = hf_run(hf, ids, mask)
    ours = encoder(jnp.asarray(ids), jnp.asarray(mask))
    assert ours.dtype == jnp.float32
    assert max_err(ours, out.logits, mask) <= TOL


def test_bfloat16_compute_stays_close_to_float32(pair):
    """bf16 matmuls (float32 accumulation) change logits by far less than their spread."""
    hf, encoder, ids, mask = pair
    f32 = np.asarray(encoder(jnp.asarray(ids), jnp.asarray(mask)))
    encoder.dtype = jnp.bfloat16
    try:
        bf16 = np.asarray(encoder(jnp.asarray(ids), jnp.asarray(mask)))
    finally:
        encoder.dtype = jnp.float32
    real = mask.astype(bool)
    err = np.abs(bf16 - f32)[real].max()
    assert bf16.dtype == np.float32
    # loose: bf16 keeps 8 mantissa bits; measured about 0.25% of the largest logit
    assert 0 < err <= 0.01 * np.abs(f32[real]).max(), err
    # the predicted token agrees almost everywhere
    agree = (bf16.argmax(-1) == f32.argmax(-1))[real].mean()
    assert agree >= 0.9, agree


def test_training_follows_pytorch_step_for_step():
    """Gradients, not just the forward: the same masked-LM loss optimised with AdamW from the same
    weights gives the same loss curve in JAX and in PyTorch (dropout off)."""
    import jax
    import optax
    from flax import nnx

    hf, tokenizer = hf_model("roberta")
    config = encoder_config_from_hf(hf.config.to_dict(), tokenizer)
    tensors = {k: v.detach().numpy().copy() for k, v in hf.state_dict().items()}
    params, _ = params_from_hf(tensors, config)
    graphdef, state = nnx.split(encoder_with_params(config, params))
    optimizer = optax.adamw(1e-3, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.01)
    opt_state = optimizer.init(state)
    hf.config.hidden_dropout_prob = hf.config.attention_probs_dropout_prob = 0.0
    for module in hf.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    torch_optimizer = torch.optim.AdamW(hf.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-6,
                                        weight_decay=0.01)

    @jax.jit
    def step(state, opt_state, inputs, targets, masked):
        def loss_fn(state):
            logits = nnx.merge(graphdef, state)(inputs)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
            return (ce * masked).sum() / masked.sum()

        loss, grads = jax.value_and_grad(loss_fn)(state)
        updates, opt_state = optimizer.update(grads, opt_state, state)
        return optax.apply_updates(state, updates), opt_state, loss

    rng = np.random.default_rng(0)
    ids = tokenizer(TEXTS[:2], padding="max_length", max_length=24, return_tensors="np")["input_ids"]
    for _ in range(15):
        masked = rng.random(ids.shape) < 0.3
        inputs = np.where(masked, config.mask_token_id, ids)
        state, opt_state, loss = step(state, opt_state, inputs, ids, masked)
        logits = hf(input_ids=torch.tensor(inputs)).logits
        ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), torch.tensor(ids).flatten(),
                                               reduction="none")
        torch_loss = (ce * torch.tensor(masked).flatten()).sum() / masked.sum()
        torch_optimizer.zero_grad()
        torch_loss.backward()
        torch_optimizer.step()
        assert abs(float(loss) - torch_loss.item()) <= 1e-4 * max(1.0, abs(torch_loss.item()))
