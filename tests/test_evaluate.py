"""dlm_jax.evaluate and `dlm-jax eval`: estimators against NumPy, statistics against hand
computation, the judge against a direct torch computation, bad input as one line."""

import json
import math
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlm_jax import diffusion, evaluate
from dlm_jax.errors import UserError
from dlm_jax.models.config import EncoderConfig
from dlm_jax.models.params import new_encoder

TINY = EncoderConfig(
    model_type="roberta",
    vocab_size=40,
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=34,
    pad_token_id=1,
    mask_token_id=39,
    bos_token_id=0,
    eos_token_id=2,
)
SEQ_LEN = 12


def tiny_dataset(num=5, seed=0, config=TINY):
    """Packed-text records: BOS, random ordinary tokens, EOS (no padding, no prompt)."""
    rng = np.random.default_rng(seed)
    records = []
    for _ in range(num):
        ids = rng.integers(4, config.vocab_size - 1, SEQ_LEN).astype(np.int32)
        ids[0], ids[-1] = config.bos_token_id, config.eos_token_id
        records.append({"input_ids": ids, "prompt_mask": np.zeros(SEQ_LEN, bool)})
    return records


@pytest.fixture(scope="module")
def encoder():
    return new_encoder(TINY, seed=0)


def uniform_encoder():
    """Zero the MLM head's LayerNorm and bias: every position's logits are exactly 0."""
    model = new_encoder(TINY, seed=1)
    head = model.mlm_head
    for param in (head.layer_norm.scale, head.layer_norm.bias, head.bias):
        param[...] = jnp.zeros_like(param[...])
    return model


# --------------------------------------------------------------------------------- statistics


def test_sample_statistics_hand_computed():
    stats = evaluate.sample_statistics([[1, 2, 1, 2, 1, 2], [3, 3, 3]])
    assert stats["num_samples"] == 2 and stats["mean_length"] == 4.5
    assert stats["unigram_entropy_bits"] == pytest.approx((1.0 + 0.0) / 2)
    assert stats["distinct_1"] == pytest.approx(3 / 9)
    assert stats["distinct_2"] == pytest.approx(3 / 7)  # (1,2) (2,1) (3,3) of 5 + 2 bigrams
    assert stats["repetition_rate"] == pytest.approx(1 / 3)  # (1,2,1,2) again, of 3 4-grams


def test_statistic_building_blocks():
    assert evaluate.unigram_entropy_bits([1, 2, 3, 4]) == pytest.approx(2.0)
    assert evaluate.unigram_entropy_bits([5, 5, 6, 7]) == pytest.approx(1.5)
    assert evaluate.unigram_entropy_bits([]) == 0.0
    assert evaluate.distinct_n([[1, 2, 3], [1, 2, 3]], 2) == pytest.approx(2 / 4)
    assert evaluate.distinct_n([[1]], 2) == 0.0
    # 7 4-grams; the 4-grams at i=4,5,6 repeat those at 0,1,2 (period 4: 1 2 3 4 1 2 3 4 1 2)
    assert evaluate.repetition_rate([[1, 2, 3, 4, 1, 2, 3, 4, 1, 2]]) == pytest.approx(3 / 7)
    assert evaluate.repetition_rate([[9, 8, 7, 6, 5]]) == 0.0


# --------------------------------------------------------------------------------- judge


@pytest.fixture(scope="module")
def gpt2_judge(tmp_path_factory, shared_data):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    torch.manual_seed(0)
    tokenizer = GPT2TokenizerFast.from_pretrained(shared_data / "tokenizers" / "gpt2")
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=1, n_head=2, n_positions=32)
    directory = tmp_path_factory.mktemp("gpt2_judge")
    GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def torch_nll(model, ids, scored):
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits[:-1], -1)
    nll = -logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    return float(nll[-scored:].sum()), scored


def test_judge_perplexity_equals_torch(gpt2_judge):
    from transformers import AutoModelForCausalLM, GPT2TokenizerFast

    texts = ["The cat sat on the mat.", " and then it rained for a long while", "x"]
    contexts = ["Once upon a time", "Yesterday", ""]
    model = AutoModelForCausalLM.from_pretrained(gpt2_judge).eval()
    tokenizer = GPT2TokenizerFast.from_pretrained(gpt2_judge)
    eot = tokenizer.eos_token_id

    plain = [torch_nll(model, [eot] + tokenizer(t)["input_ids"], len(tokenizer(t)["input_ids"])) for t in texts]
    expected = math.exp(sum(n for n, _ in plain) / sum(c for _, c in plain))
    assert evaluate.generative_perplexity(texts, gpt2_judge) == pytest.approx(expected, rel=1e-9)

    conditioned = []
    for text, context in zip(texts, contexts):
        target = tokenizer(text)["input_ids"]
        conditioned.append(torch_nll(model, [eot] + tokenizer(context)["input_ids"] + target, len(target)))
    expected = math.exp(sum(n for n, _ in conditioned) / sum(c for _, c in conditioned))
    got = evaluate.generative_perplexity(texts, gpt2_judge, contexts=contexts)
    assert got == pytest.approx(expected, rel=1e-9)

    # 40 tokens through a 32-position judge: the last 32 are kept, 31 of them scored
    long_text = " one two" * 20
    target = tokenizer(long_text)["input_ids"]
    assert len(target) == 40
    nll, count = torch_nll(model, target[-32:], 31)
    assert evaluate.generative_perplexity([long_text], gpt2_judge) == pytest.approx(math.exp(nll / count), rel=1e-9)


# --------------------------------------------------------------------------------- NELBO


def reference_draws(seed, index, ids, num_samples, eps=1e-3):
    """The documented randomness: sequence `index` draws from fold_in(fold_in(key(seed), 0), index)."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 0), index)
    key_t, key_mask = jax.random.split(key)
    t = diffusion.stratified_times(key_t, num_samples, eps)
    eligible = np.isin(ids, TINY.special_token_ids, invert=True)
    copies = lambda x: np.broadcast_to(x, (num_samples,) + x.shape)
    draw = diffusion.mask_at_times(
        key_mask, copies(ids), copies(eligible), t, mask_token_id=TINY.mask_token_id, force_one=False
    )
    return np.asarray(draw.input_ids), np.asarray(draw.target_mask), np.asarray(t, np.float64), eligible


def numpy_ce(logits, targets):
    logits = np.asarray(logits, np.float64)
    top = logits.max(-1, keepdims=True)
    lse = top[..., 0] + np.log(np.exp(logits - top).sum(-1))
    return lse - np.take_along_axis(logits, targets[..., None], -1)[..., 0]


def test_nelbo_equals_numpy_reference(encoder):
    records, num_samples = tiny_dataset(5), 4
    got = evaluate.nelbo(encoder, records, num_samples=num_samples, batch_size=2, seed=3)

    numerators, eligible_counts = [], []
    for i, record in enumerate(records):
        ids = record["input_ids"]
        corrupted, masked, t, eligible = reference_draws(3, i, ids, num_samples)
        strata = np.sort((1 - t) / (1 - 1e-3))  # one t in each quarter of (eps, 1]
        assert np.all((strata >= np.arange(4) / 4) & (strata < np.arange(1, 5) / 4))
        assert not (masked & ~eligible).any()
        logits = np.asarray(encoder(jnp.asarray(corrupted)))
        ce = numpy_ce(logits, np.broadcast_to(ids, corrupted.shape))
        numerators.append(np.mean((ce * masked).sum(-1) / t))
        eligible_counts.append(eligible.sum())
    numerators, eligible_counts = np.array(numerators), np.array(eligible_counts, np.float64)
    nats = numerators.sum() / eligible_counts.sum()
    residual = (numerators - nats * eligible_counts) / eligible_counts.mean()

    np.testing.assert_allclose(got["numerators"], numerators, rtol=1e-5)
    assert got["eligible"] == [10] * 5
    assert got["nelbo_nats"] == pytest.approx(nats, rel=1e-5)
    assert got["nelbo_stderr"] == pytest.approx(residual.std(ddof=1) / math.sqrt(5), rel=1e-4)
    assert got["nelbo_bits_per_token"] == pytest.approx(nats / math.log(2), rel=1e-5)
    assert got["ppl_bound"] == pytest.approx(math.exp(nats), rel=1e-5)
    assert got["num_sequences"] == 5 and got["nelbo_samples"] == 4

    # The same numbers whatever the batch size (keys belong to sequences); another seed differs.
    assert evaluate.nelbo(encoder, records, num_samples=4, batch_size=5, seed=3)["numerators"] == got["numerators"]
    assert evaluate.nelbo(encoder, records, num_samples=4, batch_size=2, seed=4)["numerators"] != got["numerators"]
    assert (
        evaluate.nelbo(encoder, records, num_samples=4, batch_size=2, seed=3, max_sequences=3)["numerators"]
        == got["numerators"][:3]
    )


def test_uniform_model_nelbo_is_log_vocab():
    """Uniform logits: CE = ln V at every masked token, so a draw contributes ln V * n_masked / t
    and the estimator's expectation is ln V nats per token (E[n_masked] = t * n_eligible)."""
    model, records, num_samples = uniform_encoder(), tiny_dataset(24, seed=1), 16
    got = evaluate.nelbo(model, records, num_samples=num_samples, batch_size=8, seed=0)
    expected = []
    for i, record in enumerate(records):
        _, masked, t, _ = reference_draws(0, i, record["input_ids"], num_samples)
        expected.append(math.log(TINY.vocab_size) * np.mean(masked.sum(-1) / t))
    np.testing.assert_allclose(got["numerators"], expected, rtol=1e-6)
    assert abs(got["nelbo_nats"] - math.log(TINY.vocab_size)) < 3 * got["nelbo_stderr"]
    assert got["nelbo_stderr"] < 0.1 * math.log(TINY.vocab_size)


# --------------------------------------------------------------------------------- accuracy by ratio


def test_accuracy_by_ratio(encoder):
    records = tiny_dataset(5)
    curve = evaluate.accuracy_by_ratio(encoder, records, batch_size=2, seed=0)
    assert [c["ratio"] for c in curve] == list(diffusion.DEFAULT_RATIOS)
    # 10 eligible tokens per sequence: round(r * 10) masked in each of the 5 sequences
    assert [c["tokens"] for c in curve] == [5 * k for k in range(1, 11)]
    assert all(0.0 <= c["accuracy"] <= 1.0 and c["ce"] > 0 for c in curve)

    # Ratio 1.0 masks every eligible token: no randomness left, so NumPy recomputes it exactly.
    ids = np.stack([r["input_ids"] for r in records])
    eligible = np.isin(ids, TINY.special_token_ids, invert=True)
    logits = np.asarray(encoder(jnp.asarray(np.where(eligible, TINY.mask_token_id, ids))), np.float64)
    ce = numpy_ce(logits, ids)[eligible]
    hit = (logits.argmax(-1) == ids)[eligible]
    assert curve[-1]["ce"] == pytest.approx(ce.mean(), rel=1e-5)
    assert curve[-1]["accuracy"] == pytest.approx(hit.mean())

    uniform = evaluate.accuracy_by_ratio(uniform_encoder(), records, ratios=(0.3, 0.7), batch_size=4)
    assert [c["ce"] for c in uniform] == pytest.approx([math.log(TINY.vocab_size)] * 2, rel=1e-6)
    # A tie is no hit: uniform logits are right only where the target is id 0 (never eligible).
    assert [c["accuracy"] for c in uniform] == [0.0, 0.0]


# --------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def hf_roberta(tmp_path_factory):
    from helpers_hf import make_hf_checkpoint

    return make_hf_checkpoint(tmp_path_factory.mktemp("hf"), "roberta")


@pytest.fixture(scope="module")
def held_out_text(tmp_path_factory, shared_data):
    path = tmp_path_factory.mktemp("text") / "held_out.txt"
    path.write_text((shared_data / "tinyshakespeare" / "input.txt").read_text()[:4000])
    return path


def run_eval(capsys, *args):
    from dlm_jax.cli import main

    status = main(
        [
            "eval",
            "--seq-len",
            "32",
            "--batch-size",
            "4",
            "--nelbo-samples",
            "2",
            "--samples",
            "2",
            "--prompt-len",
            "8",
            "--gen-length",
            "8",
            "--steps",
            "4",
            *map(str, args),
        ]
    )
    out, err = capsys.readouterr()
    return status, out, err


def test_cli_json_last_line(capsys, tmp_path, hf_roberta, held_out_text, gpt2_judge):
    from dlm_jax.cli.evaluate import table

    status, out, _ = run_eval(
        capsys,
        "--checkpoint",
        hf_roberta,
        "--data",
        held_out_text,
        "--judge",
        gpt2_judge,
        "--max-sequences",
        "6",
        "--cache-dir",
        tmp_path,
        "--json",
    )
    assert status == 0
    result = json.loads(out.strip().splitlines()[-1])
    assert result["num_sequences"] == 6 and result["split"] == "train"
    assert result["nelbo_bits_per_token"] == pytest.approx(result["nelbo_nats"] / math.log(2))
    assert result["ppl_bound"] == pytest.approx(math.exp(result["nelbo_nats"]))
    assert result["nelbo_stderr"] > 0
    assert [a["ratio"] for a in result["accuracy_by_ratio"]] == list(diffusion.DEFAULT_RATIOS)
    samples = result["samples"]
    assert samples["num_samples"] == 2 and len(samples["texts"]) == 2
    assert 0 < samples["distinct_1"] <= 1 and samples["gen_ppl"] > 1
    # A random 50265-token model with hidden size 32 knows nothing: near-uniform predictions.
    assert result["accuracy_by_ratio"][0]["ce"] == pytest.approx(math.log(50265), rel=0.1)
    text = table(result)
    assert "bits/token" in text and "judge perplexity" in text and len(text.splitlines()) > 20


def one_error_line(err):
    assert "Traceback" not in err
    assert err.count("dlm-jax eval: error: ") == 1
    line = err.split("dlm-jax eval: error: ")[1]
    assert line.endswith("\n") and line.count("\n") == 1
    return line


def test_cli_bad_input_is_one_line(capsys, tmp_path, hf_roberta, held_out_text):
    from transformers import BertConfig, BertForMaskedLM

    (tmp_path / "empty").mkdir()
    status, _, err = run_eval(capsys, "--checkpoint", tmp_path / "empty", "--data", held_out_text)
    assert status == 2 and "is not a dlm-jax model directory" in one_error_line(err)
    status, _, err = run_eval(capsys, "--checkpoint", hf_roberta)
    assert status == 2 and "--data is needed" in one_error_line(err)

    few = tmp_path / "few.txt"
    few.write_text("Too short for one sequence.")
    status, _, err = run_eval(capsys, "--checkpoint", hf_roberta, "--data", few, "--cache-dir", tmp_path / "cache")
    assert status == 2 and "gives no sequence of 32 tokens" in one_error_line(err)

    bert = tmp_path / "bert"
    BertForMaskedLM(
        BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    ).save_pretrained(bert)
    for judge, problem in ((bert, "not a causal language model"), (tmp_path / "empty", "has no config.json")):
        status, _, err = run_eval(capsys, "--checkpoint", hf_roberta, "--data", held_out_text, "--judge", judge)
        assert status == 2 and problem in one_error_line(err)

    status, _, err = run_eval(capsys, "--checkpoint", hf_roberta, "--data", held_out_text, "--seq-len", "200")
    assert status == 2 and "exceeds the model's 64 positions" in one_error_line(err)


def test_bad_arguments_are_one_line_naming_the_option_before_any_compile(tmp_path, hf_roberta, held_out_text):
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    compiled = evaluate._nelbo_batch._cache_size(), evaluate._ratio_batch._cache_size()
    for arguments, message in [
        ({"seq_len": 0}, "--seq-len must be a positive integer, got 0"),
        ({"batch_size": "8"}, "--batch-size must be a positive integer, got '8'"),
        ({"max_sequences": 2.5}, "--max-sequences must be a positive integer, got 2.5"),
        ({"nelbo_samples": True}, "--nelbo-samples must be a positive integer, got True"),
        ({"num_samples": -1}, "--samples must be an integer >= 0, got -1"),
        ({"prompt_len": 0}, "--prompt-len must be a positive integer, got 0"),
        ({"gen_length": -4}, "--gen-length must be a positive integer, got -4"),
        ({"steps": 0}, "--steps must be a positive integer, got 0"),
        ({"step": -1}, "--step must be an integer >= 0, got -1"),
        ({"seed": -1}, "--seed must be an integer >= 0, got -1"),
        ({"seed": 2**32}, r"--seed must be below 2\*\*32, got 4294967296"),
        ({"temperature": -0.5}, r"--temperature must be >= 0 \(0 is greedy\), got -0.5"),
        ({"temperature": math.nan}, "--temperature must be >= 0 .*, got nan"),
        ({"step": 3}, "--checkpoint: --step 3 needs a training workdir, but .* holds a single model"),
        ({"seq_len": 65}, "--seq-len 65 exceeds the model's 64 positions; pass --seq-len 64 or less"),
        # seq_len None is min(128, the model's 64 positions) for a model that is no workdir
        ({"prompt_len": 64}, "--prompt-len 64 must be shorter than --seq-len 64"),
        ({"gen_length": 49}, r"prompt of 16 tokens \+ --gen-length 49 exceeds the 64 positions this model has"),
        ({"gen_length": 8, "steps": 9}, "9 steps per block cannot each commit a token of a 8-token block"),
        ({"cache_dir": afile / "cache"}, f"{afile} is a file, not a directory .*--cache-dir"),
    ]:
        with pytest.raises(UserError, match=f"^{message}") as err:
            evaluate.evaluate(hf_roberta, held_out_text, **arguments)
        assert "\n" not in str(err.value)
    assert (evaluate._nelbo_batch._cache_size(), evaluate._ratio_batch._cache_size()) == compiled


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, shared_data):
    """A real training workdir: the tiny preset trained at seq_len 32 (the model has 64
    positions) for 2 steps, with a checkpoint after each."""
    from dlm_jax.data import train_tokenizer
    from dlm_jax.train.config import resolve_config
    from dlm_jax.train.loop import train

    corpus = shared_data / "tinyshakespeare" / "input.txt"
    tokenizer = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(corpus, tokenizer, vocab_size=512)
    config = resolve_config(
        "tiny",
        (f"tokenizer={tokenizer}", "seq_len=32", "batch_size=8", "checkpoint_every=1", "log_every=1", "warmup_steps=1"),
        data=str(corpus),
        steps=2,
    )
    directory = tmp_path_factory.mktemp("run") / "workdir"
    train(config, directory)
    return directory


def test_defaults_and_step_fit_the_workdir(tmp_path, workdir, held_out_text):
    settings = {"batch_size": 2, "max_sequences": 2, "nelbo_samples": 1, "cache_dir": tmp_path}
    latest = evaluate.evaluate(workdir, held_out_text, num_samples=1, steps=4, **settings)
    assert latest["seq_len"] == 32  # trained at 32, not min(128, 64 positions)
    # gen_length: what fits the 64 positions after the 16-token prompt, at most 64
    assert (latest["samples"]["prompt_len"], latest["samples"]["gen_length"]) == (16, 48)
    first = evaluate.evaluate(workdir, held_out_text, step=1, num_samples=0, **settings)
    assert first["nelbo_nats"] != latest["nelbo_nats"]  # the other checkpoint
    with pytest.raises(UserError, match=r"^--checkpoint: .* has no step 5; saved steps: \[1, 2\]"):
        evaluate.evaluate(workdir, held_out_text, step=5, **settings)
    # a checkpoint step directory is that step (read by checkpoint.read_any)
    with pytest.raises(UserError, match=r"^--checkpoint: .*checkpoints/1 is the checkpoint of step 1 but step 2"):
        evaluate.evaluate(workdir / "checkpoints" / "1", held_out_text, step=2, **settings)


def test_without_data_a_workdir_is_scored_on_its_training_data(tmp_path, workdir, shared_data, hf_roberta):
    from dlm_jax.cli.evaluate import table

    settings = {"batch_size": 2, "max_sequences": 2, "nelbo_samples": 1, "num_samples": 0, "cache_dir": tmp_path}
    messages = []
    defaulted = evaluate.evaluate(workdir, None, log=messages.append, **settings)
    given = evaluate.evaluate(workdir, str(shared_data / "tinyshakespeare" / "input.txt"), **settings)
    assert defaulted["data"] == given["data"] and defaulted["nelbo_nats"] == given["nelbo_nats"]
    # a local text has no held-out split: the result and the table say it scored the training text
    assert defaulted["training_text"] and not given["training_text"]
    assert "; the training text, not held out" in table(defaulted) and "not held out" not in table(given)
    assert any(message.startswith("no --data: the data") for message in messages)
    with pytest.raises(UserError, match=r"^--data is needed: .* is not a training workdir"):
        evaluate.evaluate(hf_roberta, None, **settings)


def test_without_data_the_built_in_corpus_is_scored_on_its_held_out_part(tmp_path, shared_data, monkeypatch):
    """A run trained without --data read the built-in corpus (the standard library's docstrings);
    eval without --data scores the docstrings of the standard library's test suite, which that
    corpus leaves out, and says so."""
    from dlm_jax import data
    from dlm_jax.data import train_tokenizer
    from dlm_jax.train.config import resolve_config
    from dlm_jax.train.loop import train

    monkeypatch.setenv("DLM_JAX_CACHE", str(tmp_path / "cache"))
    tokenizer = tmp_path / "tokenizer"
    train_tokenizer(shared_data / "tinyshakespeare" / "input.txt", tokenizer, vocab_size=512)
    workdir = tmp_path / "workdir"
    overrides = (f"tokenizer={tokenizer}", "batch_size=8", "log_every=1", "warmup_steps=1")
    train(resolve_config("tiny", overrides, steps=1), workdir)
    messages = []
    settings = {"batch_size": 2, "max_sequences": 2, "nelbo_samples": 1, "num_samples": 0, "cache_dir": tmp_path}
    result = evaluate.evaluate(workdir, None, log=messages.append, **settings)
    held_out = data.default_held_out_corpus()
    assert held_out is not None and held_out.parent == tmp_path / "cache"
    assert result["data"] == str(held_out) and not result["training_text"]
    assert any("scoring its held-out part, the docstrings of the standard library's test suite" in m for m in messages)
    assert result["nelbo_nats"] == evaluate.evaluate(workdir, str(held_out), **settings)["nelbo_nats"]


def test_nelbo_shows_a_progress_bar_on_a_terminal(encoder):
    from helpers_terminal import stderr_on_a_terminal

    with stderr_on_a_terminal() as terminal:
        evaluate.nelbo(encoder, tiny_dataset(5), num_samples=4, batch_size=2, seed=3)
        evaluate.accuracy_by_ratio(encoder, tiny_dataset(5), batch_size=2)
    assert re.search(r"\rNELBO: 100%\|█+\| 5/5 \[\d\d:\d\d<\d\d:\d\d, ", terminal.text)
    assert re.search(r"\raccuracy by ratio: 100%\|█+\| 5/5 \[\d\d:\d\d<\d\d:\d\d, ", terminal.text)


def test_judge_ignores_its_tokenizers_truncation_and_padding(tmp_path, gpt2_judge):
    from tokenizers import Tokenizer

    texts, contexts = [" and then it rained for a long while"] * 2, ["Once upon a time", ""]
    judge = tmp_path / "judge"
    shutil.copytree(gpt2_judge, judge)
    backend = Tokenizer.from_file(str(judge / "tokenizer.json"))
    backend.enable_truncation(4)
    backend.enable_padding(length=16, pad_id=0, pad_token="!")
    backend.save(str(judge / "tokenizer.json"))
    assert evaluate.generative_perplexity(texts, judge, contexts=contexts) == evaluate.generative_perplexity(
        texts, gpt2_judge, contexts=contexts
    )
