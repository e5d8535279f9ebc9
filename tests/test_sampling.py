"""The scanned sampler against the plain NumPy loop in sampler_reference.py, token for token,
plus the program's properties: one compilation, no host round trip, sharding, bad input."""

import json
import types

import jax
import numpy as np
import pytest
from sampler_reference import reference_generate, schedule_counts

from dlm_jax import ops, sampling
from dlm_jax.errors import UserError
from dlm_jax.models import EncoderConfig
from dlm_jax.models.params import encoder_with_params, new_encoder, params_of

MASK, EOS = 95, 2


def tiny_model(model_type="roberta", seed=0):
    """A 2-layer random encoder whose word embeddings are scaled up so the logits are spread out
    (at HF's init scale every probability is about 1/vocab and scores nearly tie)."""
    config = EncoderConfig(
        model_type=model_type,
        vocab_size=96,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        type_vocab_size=2 if model_type == "bert" else 1,
        pad_token_id=1 if model_type == "roberta" else 0,
        mask_token_id=MASK,
        bos_token_id=0 if model_type == "roberta" else 3,
        eos_token_id=EOS,
        layer_norm_eps=1e-5,
    )
    encoder = new_encoder(config, seed=seed)
    embedding = encoder.embeddings.word_embeddings.embedding
    embedding[...] = embedding[...] * 25
    return types.SimpleNamespace(config=config, encoder=encoder, tokenizer=None)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


# Prompts of different lengths (left padding) with a mask inside one of them (infilling).
PROMPTS = [[0, 5, 6, 7, 8], [0, 9, MASK, 11], [0, 12]]

CASES = {
    "greedy": dict(),
    "blocks": dict(block_length=4),
    "random": dict(remasking="random", temperature=1.0),
    "topk_margin": dict(remasking="topk_margin", block_length=8),
    "entropy": dict(remasking="entropy", temperature=0.5),
    "origin": dict(remasking="origin", temperature=1.0),
    "threshold": dict(remasking="threshold", confidence_threshold=0.5),
    "threshold_blocks": dict(remasking="threshold", block_length=4, temperature=1.0),
    "factor": dict(remasking="factor", factor=2.0, block_length=4),
    "random_remask": dict(remasking="random_remask", schedule="linear"),
    "cosine": dict(schedule="cosine", block_length=8),
    "sampled": dict(temperature=1.0),
    "top_k": dict(temperature=0.7, top_k=5),
    "top_p": dict(temperature=1.0, top_p=0.8),
    "cfg": dict(cfg_scale=1.5, temperature=1.0, block_length=8),
    "forbid_eos": dict(forbid_eos=True, temperature=1.0),
}


@pytest.mark.parametrize("name", CASES)
def test_equals_numpy_reference(model, name):
    kwargs = dict(gen_length=16, steps=8, seed=3, **CASES[name])
    out = sampling.generate(model, PROMPTS, **kwargs)
    ref = reference_generate(model, PROMPTS, **kwargs)
    np.testing.assert_array_equal(out, ref)
    width = max(map(len, PROMPTS))
    real = np.arange(out.shape[1]) >= width - np.array([len(p) for p in PROMPTS])[:, None]
    assert not (out[real] == MASK).any(), "masks left"
    for row, prompt in zip(out, PROMPTS):  # prompt tokens never change; its mask got filled
        kept = np.array(prompt) != MASK
        np.testing.assert_array_equal(row[width - len(prompt) : width][kept], np.array(prompt)[kept])
    if kwargs.get("forbid_eos"):
        assert not (out[:, width:] == EOS).any()
    # a different seed changes sampled output (so the noise is really used)
    if kwargs.get("temperature", 0) > 0 or kwargs.get("remasking") in ("random", "origin", "random_remask"):
        other = sampling.generate(model, PROMPTS, **{**kwargs, "seed": 4})
        assert (other != out).any()


@pytest.mark.parametrize("name", ["greedy", "sampled", "cfg"])
def test_bfloat16_inference_model_equals_numpy_reference(model, name):
    """An inference encoder in bf16 (matrices stored in bf16, as dlm_jax.load builds it) samples
    what the reference computes from its own bf16 forward."""
    low = types.SimpleNamespace(
        config=model.config,
        encoder=encoder_with_params(model.config, params_of(model.encoder), dtype="bfloat16"),
        tokenizer=None,
    )
    kwargs = dict(gen_length=16, steps=8, seed=3, **CASES[name])
    out = sampling.generate(low, PROMPTS, **kwargs)
    np.testing.assert_array_equal(out, reference_generate(low, PROMPTS, **kwargs))
    ids = np.array([[0, 5, MASK, 7]])
    assert not np.array_equal(low.encoder(ids), model.encoder(ids))  # the rounding is really bf16


@pytest.mark.parametrize("chunk", [32, 40])
def test_vocabulary_chunks_keep_first_argmax(monkeypatch, chunk):
    """greedy_head reduces the vocabulary chunk by chunk (96 ids: 3 chunks of 32, or of 40 with
    padding). Every odd id below 48 is a twin of the even id before it (same chunk) and ids
    48..94 are twins of 0..46 (another chunk): exact ties, which must go to the lowest id."""
    monkeypatch.setattr(ops, "VOCAB_CHUNK", chunk)
    tied = tiny_model(seed=2)  # its greedy output mixes ids 6 and 28
    embedding = tied.encoder.embeddings.word_embeddings.embedding
    twins = np.concatenate([np.arange(48) // 2 * 2, np.arange(47) // 2 * 2, [MASK]])
    embedding[...] = embedding[...][twins]
    for kwargs in (dict(block_length=8), dict(cfg_scale=1.5, remasking="threshold", confidence_threshold=0.3)):
        kwargs = dict(gen_length=16, steps=8, **kwargs)
        out = sampling.generate(tied, PROMPTS, **kwargs)
        np.testing.assert_array_equal(out, reference_generate(tied, PROMPTS, **kwargs))
        generated = out[:, max(map(len, PROMPTS)) :]
        assert len(np.unique(generated)) > 1 and (generated % 2 == 0).all() and (generated < 48).all()


@pytest.mark.parametrize("schedule", sampling.SCHEDULES)
def test_schedules(schedule):
    assert list(sampling.commit_counts(10, 4, "even")) == [3, 3, 2, 2]  # LLaDA's example
    for n in range(1, 40):
        for steps in range(1, n + 1):
            counts = sampling.commit_counts(n, steps, schedule)
            assert counts.sum() == n and counts.min() >= 1
            assert list(counts) == schedule_counts(n, steps, schedule)
    # cosine commits few tokens first and many last (MaskGIT), linear evenly
    assert list(sampling.commit_counts(100, 10, "linear")) == [10] * 10
    cosine = sampling.commit_counts(100, 10, "cosine")
    assert cosine[0] < cosine[-1]


def test_history_follows_the_schedule(model):
    out, history = sampling.generate(
        model, [[0, 5, 6]], gen_length=12, steps=4, block_length=6, schedule="even", return_history=True
    )
    assert history.shape == (4, 1, 15)
    np.testing.assert_array_equal(history[-1], out)
    # 6 masks per block in 2 steps: 3 + 3, block by block
    assert [(h[0] == MASK).sum() for h in history] == [9, 6, 3, 0]
    assert (history[0][0, 9:] == MASK).all()  # the second block waits for the first


def test_threshold_stops_early_and_pads_history(model):
    out, history = sampling.generate(
        model, PROMPTS, gen_length=16, steps=16, remasking="threshold", confidence_threshold=0.05, return_history=True
    )
    masks = [(h == MASK).sum() for h in history]
    assert masks[-1] == 0 and masks.index(0) < 15  # finished well before the bound
    np.testing.assert_array_equal(history[masks.index(0) :], np.broadcast_to(out, history[masks.index(0) :].shape))


@pytest.mark.parametrize("model_type", ["roberta", "bert"])
def test_left_padding_changes_nothing(model_type):
    """A prompt generated inside a left-padded batch gives the same tokens as alone."""
    m = tiny_model(model_type, seed=1)
    prompts = [[3, 5, 6, 7, 8, 9, 10], [3, 12, 13]]
    batch = sampling.generate(m, prompts, gen_length=8, steps=8)
    alone = sampling.generate(m, [prompts[1]], gen_length=8, steps=8)
    np.testing.assert_array_equal(batch[1, 4:], alone[0])


def test_one_program_no_host_round_trip(model):
    """After warm-up, new prompts and a new seed reuse the compiled program, and the whole
    schedule runs without any implicit transfer."""
    kwargs = dict(gen_length=16, steps=8, temperature=1.0, top_k=7, cfg_scale=1.0, block_length=8)
    sampling.generate(model, PROMPTS, seed=0, **kwargs)
    compiled = sampling._program._cache_size()
    with jax.transfer_guard("disallow"):
        a = sampling.generate(model, [[0, 20, 21, 22, 23], [0, 24, MASK, 25], [0, 26]], seed=1, **kwargs)
        b = sampling.generate(model, PROMPTS, seed=2, **{**kwargs, "temperature": 0.5})
    assert sampling._program._cache_size() == compiled
    assert a.shape == b.shape == (3, 21)


def test_sharded_equals_single_device(model):
    devices = jax.devices()
    assert len(devices) == 8
    mesh = jax.make_mesh((8,), ("batch",), axis_types=(jax.sharding.AxisType.Auto,))
    prompts = [[0, 5 + i, 6 + i, 7] for i in range(10)] + [[0, 9]]  # 11 rows: padded to 16 inside
    kwargs = dict(gen_length=8, steps=4, temperature=1.0, seed=5)
    single = sampling.generate(model, prompts, **kwargs)
    sharded = sampling.generate(model, prompts, mesh=mesh, **kwargs)
    np.testing.assert_array_equal(sharded, single)


BAD = [
    (dict(gen_length=60), "positions"),
    (dict(steps=0), "steps must be a positive"),
    (dict(steps=17), "cannot each commit"),
    (dict(block_length=5), "not divisible by block_length"),
    (dict(block_length=4, steps=6), "number of blocks"),
    (dict(temperature=-1.0), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(remasking="confident"), "unknown remasking"),
    (dict(schedule="quadratic"), "unknown schedule"),
    (dict(confidence_threshold=0.9), "only applies"),
    (dict(block_length=0), "block_length must be a positive integer"),
    (dict(block_length=-4), "block_length must be a positive integer"),
    (dict(top_k=1000, temperature=1.0), "exceeds the vocabulary"),
    (dict(top_k=5), "decodes greedily"),
    (dict(top_p=0.9), "decodes greedily"),
    (dict(seed=-1), "seed must be"),
    (dict(seed=2**32), "seed must be"),
    (dict(schedule="cosine", remasking="threshold"), "decides that itself"),
    (dict(schedule="linear", remasking="origin", temperature=1.0), "decides that itself"),
]


@pytest.mark.parametrize("change,message", BAD)
def test_bad_input_before_compiling(model, change, message):
    compiled = sampling._program._cache_size()
    with pytest.raises(UserError, match=message):
        sampling.generate(model, PROMPTS, **{**dict(gen_length=16, steps=8), **change})
    assert sampling._program._cache_size() == compiled


def test_integral_floats_and_origin_with_more_steps_than_tokens(model):
    """gen_length=16.0 is 16; origin decides its own commits (some steps commit none), so it may
    take more steps than a block has tokens, and still fills every mask by its last step."""
    kwargs = dict(gen_length=16, steps=8, temperature=1.0, seed=3)
    np.testing.assert_array_equal(
        sampling.generate(model, PROMPTS, **{**kwargs, "gen_length": 16.0, "steps": 8.0}),
        sampling.generate(model, PROMPTS, **kwargs),
    )
    kwargs = dict(gen_length=16, steps=32, block_length=8, remasking="origin", temperature=1.0, seed=3)
    out = sampling.generate(model, PROMPTS, **kwargs)
    np.testing.assert_array_equal(out, reference_generate(model, PROMPTS, **kwargs))
    assert not (out[:, max(map(len, PROMPTS)) :] == MASK).any()


def test_no_mask_token_is_refused(model):
    no_mask = types.SimpleNamespace(config=model.config.replace(mask_token_id=None), encoder=model.encoder)
    with pytest.raises(UserError, match="no mask token"):
        sampling.generate(no_mask, PROMPTS, gen_length=16, steps=8)
    with pytest.raises(UserError, match="vocabulary|must lie in"):
        sampling.generate(model, [[0, 500]], gen_length=16, steps=8)


def test_generated_text_trims_at_eos(shared_data):
    from helpers_hf import hf_tokenizer

    tokenizer = hf_tokenizer("roberta")
    hello = tokenizer(" hello world", add_special_tokens=False)["input_ids"]
    rest = tokenizer(" more", add_special_tokens=False)["input_ids"]
    ids = np.array([[0] + hello + [tokenizer.eos_token_id] + rest])
    assert sampling.generated_text(tokenizer, ids, 1, eos_id=tokenizer.eos_token_id) == [" hello world"]
    assert sampling.generated_text(tokenizer, ids, 1) == [" hello world more"]


def test_encode_prompt_ignores_the_tokenizers_truncation(shared_data):
    """A tokenizer.json may truncate (MiniLM's cuts at 128 tokens); prompts are encoded whole."""
    from helpers_hf import hf_tokenizer

    tokenizer = hf_tokenizer("roberta")
    text = (shared_data / "wikitext-2-raw" / "wiki.valid.raw").read_text()[:2000]
    whole = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
    tokenizer.backend_tokenizer.enable_truncation(16)
    assert len(tokenizer.backend_tokenizer.encode(text).ids) == 16
    assert sampling.encode_prompt(tokenizer, text) == whole and len(whole) > 100
    assert sampling.cut_at_eos([5, 6, 2, 7, 2], 2) == [5, 6] and sampling.cut_at_eos([5, 6], None) == [5, 6]


def test_cli_generate(tmp_path, capsys):
    """End to end through dlm_jax.load on a real (tiny, random) HF checkpoint and tokenizer."""
    from helpers_hf import make_hf_checkpoint

    from dlm_jax.cli import main

    ckpt = make_hf_checkpoint(tmp_path, "roberta")
    page = tmp_path / "steps.html"
    argv = [
        "generate",
        "--checkpoint",
        str(ckpt),
        "--prompt",
        "The quick <mask> fox",
        "--gen-length",
        "8",
        "--steps",
        "4",
        "--json",
        "--trajectory",
        str(page),
        "--temperature",
        "0.8",
        "--top-p",
        "0.9",
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    record = json.loads(captured.out.strip().splitlines()[-1])
    assert captured.err.strip().splitlines()[-1] == f"the replay of the first prompt is in {page}"
    assert len(record["ids"]) == 8 and isinstance(record["text"], str)
    assert 50264 in record["prompt_ids"]  # <mask> in the prompt is a mask token (infilled)
    text = page.read_text()
    assert "const frames" in text and text.count('"mask"') > 0
    gif = tmp_path / "steps.gif"
    assert main(argv[:-6] + ["--trajectory", str(gif)]) == 0
    from PIL import Image

    assert Image.open(gif).n_frames == 5
    # a user mistake is one line on stderr and exit status 2
    assert (
        main(
            [
                "generate",
                "--checkpoint",
                str(ckpt),
                "--prompt",
                "x",
                "--gen-length",
                "8",
                "--steps",
                "4",
                "--block-length",
                "3",
            ]
        )
        == 2
    )
    assert "not divisible by --block-length" in capsys.readouterr().err
