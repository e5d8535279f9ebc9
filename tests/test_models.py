"""The encoders against HuggingFace's PyTorch BERT, RoBERTa and ModernBERT, module by module.

Weights come from a tiny random HF model (real vocabulary size) through the converter's table;
each check compares one stage on the same input so a failure names the stage: embeddings, one
transformer block (for ModernBERT a global and a sliding-window block), the MLM head, then the
whole forward on a ragged, padded batch.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from helpers_hf import hf_model

from dlm_jax.convert import encoder_config_from_hf, params_from_hf
from dlm_jax.models.params import encoder_with_params

TOL = 1e-5
TEXTS = [
    "The quick brown fox jumps over the lazy dog, twice.",
    "Masked diffusion unmasks a canvas of tokens step by step until no mask remains.",
    "Short one.",
]
# ModernBERT variants: HF's defaults (no biases, tied decoder), and every optional tensor on
# (biases in norms, attention, MLP, head; an untied decoder) so each row of the table is used.
MODERNBERT_BIASED = dict(
    norm_bias=True, attention_bias=True, mlp_bias=True, classifier_bias=True, tie_word_embeddings=False
)
VARIANTS = {
    "roberta": ("roberta", {}),
    "bert": ("bert", {}),
    "modernbert": ("modernbert", {}),
    "modernbert-biased": ("modernbert", MODERNBERT_BIASED),
}


def converted_pair(name):
    hf, tokenizer = hf_model(VARIANTS[name][0], **VARIANTS[name][1])
    config = encoder_config_from_hf(hf.config.to_dict(), tokenizer)
    tensors = {k: v.detach().numpy().copy() for k, v in hf.state_dict().items()}
    params, report = params_from_hf(tensors, config)
    assert not report.unmatched and not report.initialised
    return hf, tokenizer, config, params


@pytest.fixture(scope="module", params=list(VARIANTS))
def pair(request):
    """(HF model, our encoder with the same weights, ids, mask) for one model type."""
    hf, tokenizer, config, params = converted_pair(request.param)
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
    if encoder.config.model_type == "modernbert":
        ours = encoder.embeddings(ids_j)
    else:
        ours = encoder.embeddings(ids_j, encoder.position_ids(ids_j, mask_j), jnp.zeros_like(ids_j))
    assert max_err(ours, out.hidden_states[0], mask) <= TOL


def block_inputs(encoder, ids, mask):
    """What encode() hands each block besides x: the key mask, and for ModernBERT the
    (global, local) masks and rotary tables."""
    key_mask = jnp.asarray(mask, bool)[:, None, None, :]
    if encoder.config.model_type != "modernbert":
        return (key_mask,)
    from dlm_jax.models.modernbert import rotary_tables, window_mask

    config = encoder.config
    positions = encoder.position_ids(jnp.asarray(ids), jnp.asarray(mask))
    masks = (key_mask, key_mask & window_mask(ids.shape[1], config.local_attention // 2))
    rotaries = tuple(
        rotary_tables(positions, config.head_dim, theta, config.max_position_embeddings)
        for theta in (config.global_rope_theta, config.local_rope_theta)
    )
    return masks, rotaries


@pytest.mark.parametrize("layer", [0, 1])  # ModernBERT: block 0 is global (no attention norm), 1 sliding
def test_one_block_matches_hf(pair, layer):
    hf, encoder, ids, mask = pair
    out = hf_run(hf, ids, mask)
    x = jnp.asarray(out.hidden_states[layer].numpy())
    ours = encoder.layers[layer](x, *block_inputs(encoder, ids, mask), jnp.float32, None)
    assert max_err(ours, out.hidden_states[layer + 1], mask) <= TOL


def test_mlm_head_matches_hf(pair):
    hf, encoder, ids, mask = pair
    out = hf_run(hf, ids, mask)
    ours = encoder.logits_from_hidden(jnp.asarray(out.hidden_states[-1].numpy()))
    assert max_err(ours, out.logits, mask) <= TOL


def test_sliding_window_matters_at_this_length(pair):
    """The test batch is longer than ModernBERT's window, so a wrong window would show: the
    sliding block given the global mask instead of its window gives different outputs."""
    hf, encoder, ids, mask = pair
    if encoder.config.model_type != "modernbert":
        pytest.skip("BERT and RoBERTa have no sliding window")
    assert ids.shape[1] > encoder.config.local_attention // 2 + 1
    x = jnp.asarray(hf_run(hf, ids, mask).hidden_states[1].numpy())
    (key_mask, local_mask), rotaries = block_inputs(encoder, ids, mask)
    windowed = encoder.layers[1](x, (key_mask, local_mask), rotaries, jnp.float32, None)
    unwindowed = encoder.layers[1](x, (key_mask, key_mask), rotaries, jnp.float32, None)
    assert encoder.layers[1].sliding
    assert float(jnp.abs(windowed - unwindowed).max()) > 1e-3


def test_left_padding_changes_nothing(pair):
    """A left-padded row (the sampler's batches) gives the same logits as the row alone."""
    _, encoder, ids, mask = pair
    row = ids[2][mask[2] == 1]  # the short text, unpadded
    alone = np.asarray(encoder(jnp.asarray(row[None]), jnp.ones((1, len(row)), jnp.int32)))[0]
    pad = 5
    padded = np.concatenate([np.full(pad, encoder.config.pad_token_id), row])[None]
    left = np.concatenate([np.zeros(pad, np.int32), np.ones(len(row), np.int32)])[None]
    ours = np.asarray(encoder(jnp.asarray(padded), jnp.asarray(left)))[0, pad:]
    assert np.abs(ours - alone).max() <= TOL


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


def test_bfloat16_inference_stores_matrices_in_bf16(pair):
    """In bf16, encoder_with_params stores every matrix in bf16 and every vector in float32, and
    computes exactly what the float32-stored encoder computes in bf16 from the same rounded
    matrices: storing them changes no product, only when the rounding happens."""
    from dlm_jax.models.params import flatten, params_of

    _, encoder, ids, mask = pair
    params = params_of(encoder)
    low = encoder_with_params(encoder.config, params, dtype="bfloat16")
    stored = {path: leaf.dtype for path, leaf in flatten(params_of(low)).items()}
    assert stored == {path: jnp.bfloat16 if leaf.ndim >= 2 else jnp.float32 for path, leaf in flatten(params).items()}
    rounded = jax.tree.map(lambda x: x.astype(jnp.bfloat16).astype(jnp.float32) if x.ndim >= 2 else x, params)
    reference = encoder_with_params(encoder.config, rounded)
    reference.dtype = jnp.bfloat16
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    np.testing.assert_array_equal(np.asarray(low(ids, mask)), np.asarray(reference(ids, mask)))


@pytest.mark.parametrize("queries", [16, 5])  # the whole sequence, and a window of it (cached sampling)
def test_folded_heads_attention_equals_jax_dot_product_attention(queries):
    """The CPU attention (heads folded into the batch) computes what jax.nn.dot_product_attention
    does, with padded keys, a sliding window and a query row that may see no key at all: float32
    outputs bit for bit, their gradients up to float32 rounding (the products sum in another
    order), bf16 outputs within one bf16 rounding."""
    from dlm_jax.models.layers import folded_heads_attention
    from dlm_jax.models.modernbert import window_mask

    batch, keys, heads, head_dim = 3, 16, 4, 8
    shapes = [(batch, n, heads, head_dim) for n in (queries, keys, keys)]
    q, k, v = (jax.random.normal(jax.random.key(i), shape) for i, shape in enumerate(shapes))
    lengths = jnp.array([16, 11, 3])
    padding = (jnp.arange(keys)[None] < lengths[:, None])[:, None, None, :]
    offset = keys - queries  # the queries are the last `queries` positions
    mask = padding & window_mask(keys, 2, offset + jnp.arange(queries)[None])
    assert not bool(mask[2, 0, -1].any())  # a query of the short row sees no key
    jax_attention = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask).reshape(batch, queries, -1)
    ours = folded_heads_attention(q, k, v, mask)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(jax_attention(q, k, v)))
    loss = lambda fn: lambda *qkv: jnp.sum(jnp.sin(fn(*qkv)))
    for ours_grad, jax_grad in zip(
        jax.grad(loss(lambda *a: folded_heads_attention(*a, mask)), argnums=(0, 1, 2))(q, k, v),
        jax.grad(loss(jax_attention), argnums=(0, 1, 2))(q, k, v),
    ):
        np.testing.assert_allclose(np.asarray(ours_grad), np.asarray(jax_grad), rtol=1e-6, atol=1e-6)
    low = [x.astype(jnp.bfloat16) for x in (q, k, v)]
    outputs = (folded_heads_attention(*low, mask), jax_attention(*low))
    ours, theirs = (np.asarray(out.astype(jnp.float32)) for out in outputs)
    assert np.abs(ours - theirs).max() <= 2.0**-7 * np.abs(theirs).max()


@pytest.mark.parametrize("name", ["roberta", "modernbert"])
def test_training_follows_pytorch_step_for_step(name):
    """Gradients, not just the forward: the same masked-LM loss optimised with AdamW from the same
    weights gives the same loss curve in JAX and in PyTorch (dropout off)."""
    import optax
    from flax import nnx

    hf, tokenizer, config, params = converted_pair(name)
    graphdef, state = nnx.split(encoder_with_params(config, params))
    optimizer = optax.adamw(1e-3, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.01)
    opt_state = optimizer.init(state)
    for module in hf.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    torch_optimizer = torch.optim.AdamW(hf.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)

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
        ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), torch.tensor(ids).flatten(), reduction="none")
        torch_loss = (ce * torch.tensor(masked).flatten()).sum() / masked.sum()
        torch_optimizer.zero_grad()
        torch_loss.backward()
        torch_optimizer.step()
        assert abs(float(loss) - torch_loss.item()) <= 1e-4 * max(1.0, abs(torch_loss.item()))


def test_two_loads_of_a_model_share_one_compiled_program():
    """The encoder's graphdef is a static jit argument: equal configs must give equal graphdefs,
    or every dlm_jax.load / generate / evaluate call compiles again."""
    from flax import nnx

    from dlm_jax.models import EncoderConfig
    from dlm_jax.models.params import init_params

    for config in (
        EncoderConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            vocab_size=100,
            max_position_embeddings=34,
        ),
        EncoderConfig(
            model_type="modernbert",
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            vocab_size=100,
            max_position_embeddings=32,
            local_attention=8,
        ),
    ):
        params = init_params(config)
        first, second = (nnx.graphdef(encoder_with_params(config, params)) for _ in range(2))
        assert first == second and hash(first) == hash(second)
