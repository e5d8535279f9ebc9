"""Evaluation of a masked diffusion encoder: what it knows and what it writes.

Three families of numbers, each defined in docs/evaluation.md:
- `nelbo`: the Monte-Carlo negative ELBO on held-out text (MDLM / LLaDA's estimator): for each
  sequence, K draws of t stratified over [eps, 1], the elbo corruption, sum of CE / t over the
  masked tokens divided by the sequence's eligible tokens; an upper bound on the model's
  negative log-likelihood per token.
- `accuracy_by_ratio`: masked-token accuracy and CE when exactly one mask ratio is applied (0.1
  ... 1.0), the curve that separates a diffusion-trained encoder from a 15% MLM.
- `sample_statistics` / `generative_perplexity`: unigram entropy, distinct-n, repetition rate of
  generated token lists, and their perplexity under any HuggingFace causal LM (the judge).

Randomness: sequence i of the held-out set draws from fold_in(fold_in(key(seed), stream), i)
(stream 0: NELBO, 1: mask ratios), so every number is a function of (model, data, seed) alone,
whatever the batch size.
"""

import functools
import math
import numbers
from collections import Counter
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dlm_jax import api, data, diffusion, ops, sampling
from dlm_jax import checkpoint as checkpoint_lib
from dlm_jax.data.sources import check_writable
from dlm_jax.errors import UserError, flag
from dlm_jax.tokenizer import encode_texts

REPEAT_NGRAM = 4  # repetition rate counts repeated 4-grams


# ---------------------------------------------------------------------------------------------
# Statistics of generated samples (pure Python / NumPy).


def _ngrams(tokens, n):
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def unigram_entropy_bits(tokens) -> float:
    """Entropy in bits of the empirical unigram distribution of one token list (0 when empty)."""
    counts = np.array(list(Counter(tokens).values()), np.float64)
    if counts.size == 0:
        return 0.0
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def distinct_n(token_lists, n) -> float:
    """Unique n-grams / all n-grams, pooled over every list (0 when there is no n-gram)."""
    grams = [g for tokens in token_lists for g in _ngrams(list(tokens), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(token_lists, n=REPEAT_NGRAM) -> float:
    """Fraction of n-grams that repeat an n-gram seen earlier in the same list, pooled."""
    total = repeated = 0
    for tokens in token_lists:
        grams = _ngrams(list(tokens), n)
        total += len(grams)
        repeated += len(grams) - len(set(grams))
    return repeated / total if total else 0.0


def sample_statistics(token_lists) -> dict:
    """Diversity statistics of generated samples, each a list of token ids (specials removed)."""
    token_lists = [list(tokens) for tokens in token_lists]
    entropies = [unigram_entropy_bits(tokens) for tokens in token_lists]
    return {
        "num_samples": len(token_lists),
        "mean_length": float(np.mean([len(t) for t in token_lists])) if token_lists else 0.0,
        "unigram_entropy_bits": float(np.mean(entropies)) if entropies else 0.0,
        "distinct_1": distinct_n(token_lists, 1),
        "distinct_2": distinct_n(token_lists, 2),
        "repetition_rate": repetition_rate(token_lists),
    }


# ---------------------------------------------------------------------------------------------
# Generative perplexity under a judge (any HuggingFace causal LM, PyTorch).


def _causal_lm_classes():
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


def check_judge(judge_dir) -> None:
    """Raise UserError unless judge_dir holds a causal LM config (cheap: reads config.json only)."""
    from transformers import AutoConfig

    path = Path(judge_dir)
    fix = "pass a HuggingFace causal-LM directory (e.g. gpt2) to --judge"
    if not (path / "config.json").is_file():
        raise UserError(f"judge {judge_dir} has no config.json; {fix}")
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"judge {judge_dir} has an unreadable config ({err}); {fix}") from None
    causal = _causal_lm_classes()
    architectures = getattr(config, "architectures", None) or []
    if architectures:
        is_causal = any(a in causal.values() for a in architectures)
    else:  # no architectures recorded: a causal model type that is not an encoder left as is
        is_causal = config.model_type in causal and (
            getattr(config, "is_decoder", False) or config.model_type not in ("bert", "roberta")
        )
    if not is_causal or getattr(config, "is_encoder_decoder", False):
        kind = ", ".join(architectures) or config.model_type
        raise UserError(f"judge {judge_dir} is a {kind}, not a causal language model; {fix}")


def load_judge(judge_dir):
    """(torch causal LM in eval mode, its tokenizer); UserError for anything that is not one."""
    check_judge(judge_dir)
    try:
        import torch  # noqa: F401  (the judge is the one place dlm-jax runs PyTorch)
    except ImportError:
        raise UserError("a --judge model needs PyTorch: pip install torch") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(judge_dir)
    except (OSError, ValueError) as err:
        raise UserError(f"judge {judge_dir} has no usable tokenizer ({err}); save one beside it") from None
    model = AutoModelForCausalLM.from_pretrained(judge_dir, dtype="float32")
    return model.eval(), tokenizer


def generative_perplexity(texts, judge, *, contexts=None) -> float | None:
    """exp(total NLL / total tokens) of `texts` under the judge, a directory or (model, tokenizer);
    None when no text has a token to score.

    Each text is retokenised with the judge's tokenizer and scored token by token after its
    context: the judge's BOS token (GPT-2's <|endoftext|>) followed by the tokens of
    contexts[i] when given (the prompt the sample continued). Context tokens are not scored.
    Texts that tokenise to nothing are skipped. Over-long inputs keep their last tokens.
    """
    import torch

    model, tokenizer = load_judge(judge) if isinstance(judge, (str, Path)) else judge
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    max_len = getattr(model.config, "max_position_embeddings", None) or 1024
    total_nll, total_tokens = 0.0, 0
    context_ids = encode_texts(tokenizer, contexts) if contexts is not None else None
    for i, target in enumerate(encode_texts(tokenizer, texts)):
        if not target:
            continue
        context = [] if start is None else [start]
        if context_ids is not None:
            context += context_ids[i]
        ids = (context + target)[-max_len:]
        scored = min(len(target), len(ids) - 1)  # the first kept token has no prediction
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, :-1].double()
        nll = -torch.log_softmax(logits, -1)[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
        total_nll += float(nll[-scored:].sum()) if scored else 0.0
        total_tokens += scored
    return math.exp(total_nll / total_tokens) if total_tokens else None


# ---------------------------------------------------------------------------------------------
# NELBO and accuracy by mask ratio (jitted, on the model's device).


def _encoder(model):
    """Our `Model` (from dlm_jax.load) or a bare `Encoder`."""
    return getattr(model, "encoder", model)


def _check_dataset(dataset, config):
    if len(dataset) == 0:
        raise UserError("the evaluation data holds no complete sequence; give more text or a smaller --seq-len")
    length = len(dataset[0]["input_ids"])
    if length > config.max_length:
        raise UserError(
            f"sequences of {length} tokens exceed the model's {config.max_length} positions; "
            f"pass --seq-len {config.max_length} or less"
        )


def _row_keys(seed, stream, first, batch_size):
    """Key of held-out sequence `first + b` for the given stream (0: NELBO, 1: ratios)."""
    base = jax.random.fold_in(jax.random.key(seed), stream)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(first + jnp.arange(batch_size))


def _eligible(config, input_ids, prompt_mask, valid):
    """Maskable positions; the repeated rows that fill the last batch have none, so they add
    nothing to any sum."""
    eligible = diffusion.eligible_positions(
        input_ids, prompt_mask, pad_id=config.pad_token_id, special_ids=config.special_token_ids, prefix_len=0
    )
    return eligible & (jnp.arange(input_ids.shape[0]) < valid)[:, None]


def _token_ce(model, corruption, input_ids, attention_mask):
    """CE and correctness of the scored tokens, decoded without the [B, L, V] logits."""
    features, embedding, bias = model.head_inputs(corruption.input_ids, attention_mask)
    _, ce, correct = ops.vocab_cross_entropy(
        features, embedding, bias, input_ids, corruption.weights, dtype=model.dtype
    )
    return ce, correct


@functools.partial(jax.jit, static_argnames=("graphdef", "num_samples", "eps"))
def _nelbo_batch(graphdef, params, keys, input_ids, prompt_mask, valid, *, num_samples, eps):
    """-> (elbo numerator averaged over the K draws [B], eligible tokens [B]).

    The K draws of one sequence have t stratified over (eps, 1] among themselves, and mask
    each eligible token with probability t (no forced token: that would bias the estimate);
    the forward passes run one draw at a time to bound memory.
    """
    model = nnx.merge(graphdef, params)
    config = model.config
    objective = diffusion.ObjectiveConfig(name="elbo", eps=eps)
    eligible = _eligible(config, input_ids, prompt_mask, valid)
    attention_mask = input_ids != config.pad_token_id

    def draws(key, ids, row_eligible):
        key_t, key_mask = jax.random.split(key)
        t = diffusion.stratified_times(key_t, num_samples, eps)
        copies = lambda x: jnp.broadcast_to(x, (num_samples,) + x.shape)
        return diffusion.mask_at_times(
            key_mask, copies(ids), copies(row_eligible), t, mask_token_id=config.mask_token_id, force_one=False
        )

    def one_draw(_, draw):
        ce, correct = _token_ce(model, draw, input_ids, attention_mask)
        numerator, _, _ = diffusion.loss_terms(ce, correct, eligible, draw, objective)
        return None, numerator

    by_draw = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), jax.vmap(draws)(keys, input_ids, eligible))
    _, numerators = jax.lax.scan(one_draw, None, by_draw)  # [K, B]
    return numerators.mean(0), eligible.sum(-1)


def nelbo(model, dataset, *, num_samples=8, batch_size=8, seed=0, max_sequences=None, eps=1e-3) -> dict:
    """Monte-Carlo NELBO of held-out sequences (the first max_sequences of `dataset`).

    Sequence i draws t_1..t_K stratified over (eps, 1] and masks each eligible token with
    probability t_k; its elbo numerator is (1/K) sum_k sum_{masked} CE / t_k. The estimate is
    sum_i numerator_i / sum_i n_eligible_i nats per token (diffusion.nelbo_summary, which also
    gives the standard error over sequences), in bits (/ ln 2) and as the perplexity bound
    exp(nats). Also returns the per-sequence numerators and eligible counts.
    """
    encoder = _encoder(model)
    _check_dataset(dataset, encoder.config)
    graphdef, params = nnx.split(encoder)
    numerators, eligible = [], []
    for first, ids, prompt, valid in data.batches_in_order(dataset, batch_size, max_sequences, desc="NELBO"):
        num, den = jax.device_get(
            _nelbo_batch(
                graphdef,
                params,
                _row_keys(seed, 0, first, batch_size),
                ids,
                prompt,
                valid,
                num_samples=int(num_samples),
                eps=float(eps),
            )
        )
        numerators += num[:valid].tolist()
        eligible += den[:valid].tolist()
    summary = diffusion.nelbo_summary(numerators, eligible)
    return {
        "nelbo_nats": summary["nats_per_token"],
        "nelbo_stderr": summary["stderr_nats"],
        "nelbo_bits_per_token": summary["bits_per_token"],
        "nelbo_bits_stderr": summary["stderr_bits"],
        "ppl_bound": summary["ppl_bound"],
        "num_sequences": summary["sequences"],
        "nelbo_samples": int(num_samples),
        "numerators": numerators,
        "eligible": eligible,
    }


@functools.partial(jax.jit, static_argnames=("graphdef", "ratios"))
def _ratio_batch(graphdef, params, keys, input_ids, prompt_mask, valid, *, ratios):
    """-> metric sums [R, 3] (ce, correct, tokens) where ratio r masks exactly round(r * n_eligible)
    tokens of every row (the ratio_set objective with the single ratio r); one forward pass per
    ratio. Row b's draw for ratio index j uses fold_in(keys[b], j)."""
    model = nnx.merge(graphdef, params)
    config = model.config
    eligible = _eligible(config, input_ids, prompt_mask, valid)
    attention_mask = input_ids != config.pad_token_id
    objectives = [diffusion.ObjectiveConfig(name="ratio_set", ratios=(r,)) for r in ratios]

    def one_row(objective, key, ids, row_eligible):
        c = diffusion.corrupt(
            key,
            ids[None],
            row_eligible[None],
            objective,
            mask_token_id=config.mask_token_id,
            vocab_size=config.vocab_size,
        )
        return jax.tree.map(lambda x: x[0], c)

    by_ratio = [
        jax.vmap(functools.partial(one_row, objective))(
            jax.vmap(jax.random.fold_in, (0, None))(keys, j), input_ids, eligible
        )
        for j, objective in enumerate(objectives)
    ]

    def one_ratio(_, corruption):
        ce, correct = _token_ce(model, corruption, input_ids, attention_mask)
        _, _, metrics = diffusion.loss_terms(ce, correct, eligible, corruption, objectives[0])
        return None, jnp.stack([metrics["ce"], metrics["correct"], metrics["tokens"]])

    _, sums = jax.lax.scan(one_ratio, None, jax.tree.map(lambda *x: jnp.stack(x), *by_ratio))
    return sums


def accuracy_by_ratio(
    model, dataset, ratios=diffusion.DEFAULT_RATIOS, *, batch_size=8, seed=0, max_sequences=None
) -> list:
    """[{ratio, accuracy, ce, tokens}] over the held-out sequences: with round(r * n) eligible
    tokens of each sequence masked, the fraction of them whose original token gets the highest
    logit (ties count, as in training metrics) and their mean CE in nats."""
    encoder = _encoder(model)
    _check_dataset(dataset, encoder.config)
    ratios = tuple(float(r) for r in ratios)
    graphdef, params = nnx.split(encoder)
    totals = np.zeros((len(ratios), 3), np.float64)
    for first, ids, prompt, valid in data.batches_in_order(
        dataset, batch_size, max_sequences, desc="accuracy by ratio"
    ):
        totals += jax.device_get(
            _ratio_batch(graphdef, params, _row_keys(seed, 1, first, batch_size), ids, prompt, valid, ratios=ratios)
        )
    return [
        {
            "ratio": r,
            "accuracy": float(correct / max(tokens, 1)),
            "ce": float(ce / max(tokens, 1)),
            "tokens": int(tokens),
        }
        for r, (ce, correct, tokens) in zip(ratios, totals)
    ]


# ---------------------------------------------------------------------------------------------
# Samples and the whole evaluation.


def generated_tokens(ids, prompt_len, config) -> list:
    """The generated part of each row as a token list: cut at the first EOS, specials dropped."""
    specials = set(config.special_token_ids)
    return [
        [t for t in sampling.cut_at_eos(row, config.eos_token_id) if t not in specials]
        for row in np.asarray(ids)[:, prompt_len:]
    ]


_FLAGS = {"data_spec": "--data", "num_samples": "--samples"}  # else errors.flag's --name-with-dashes


def _flag(name):
    return _FLAGS.get(name) or flag(name)


def _check_integers(least, **values):
    """Each value is None or an integer >= least (bool is no integer here)."""
    for name, value in values.items():
        if value is not None and (not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < least):
            kind = "a positive integer" if least == 1 else f"an integer >= {least}"
            raise UserError(f"{_flag(name)} must be {kind}, got {value!r}")


def _check_arguments(
    batch_size,
    max_sequences,
    nelbo_samples,
    num_samples,
    prompt_len,
    seq_len,
    gen_length,
    steps,
    step,
    temperature,
    seed,
):
    """The checks that need no model, so a typo costs no loading."""
    _check_integers(
        1,
        seq_len=seq_len,
        batch_size=batch_size,
        max_sequences=max_sequences,
        nelbo_samples=nelbo_samples,
        prompt_len=prompt_len,
        gen_length=gen_length,
        steps=steps,
    )
    _check_integers(0, num_samples=num_samples, step=step, seed=seed)
    if seed >= 2**32:  # the sampler's key is a uint32
        raise UserError(f"--seed must be below 2**32, got {seed}")
    if not isinstance(temperature, numbers.Real):
        raise UserError(f"--temperature must be a number >= 0 (0 is greedy), got {temperature!r}")


def evaluate(
    checkpoint,
    data_spec,
    *,
    seq_len=None,
    batch_size=8,
    max_sequences=None,
    nelbo_samples=8,
    num_samples=8,
    prompt_len=16,
    gen_length=None,
    steps=None,
    temperature=1.0,
    judge=None,
    split=None,
    seed=0,
    step=None,
    cache_dir=None,
    log=lambda message: None,
) -> dict:
    """NELBO, accuracy by mask ratio and sample statistics of `checkpoint` (a workdir's latest
    checkpoint, or `step`) on the held-out split of `data_spec`. data_spec None is the data a
    training workdir was trained on (the built-in corpus when it had none); for a local text,
    which has no held-out split, the result then says that it scored the training text.

    Defaults that fit the checkpoint: seq_len None is the length a training workdir was trained
    at, else min(128, the model's positions); gen_length None is what fits the model's positions
    after the prompt, at most 64; steps None is gen_length. Every argument is checked before
    anything is compiled, and a bad one is refused in one line naming its CLI option.
    """
    _check_arguments(
        batch_size,
        max_sequences,
        nelbo_samples,
        num_samples,
        prompt_len,
        seq_len,
        gen_length,
        steps,
        step,
        temperature,
        seed,
    )
    if judge and num_samples:
        check_judge(judge)
    if cache_dir is not None:
        check_writable(Path(cache_dir).expanduser(), "choose another --cache-dir")
    try:
        model = api.load(checkpoint, step=step)
    except UserError as err:
        raise UserError(f"--checkpoint: {err}") from None
    config = model.config
    trained_on = held_out_corpus = None
    if data_spec is None:
        training = checkpoint_lib.training_config(checkpoint)
        if training is None:
            raise UserError(
                f"--data is needed: {checkpoint} is not a training workdir, so there is no training data to "
                "fall back on; pass --data tfds:NAME, a text file or a folder of them"
            )
        trained_on = data.spec_or_default_corpus(training.get("data"))
        # The built-in corpus is scored on its held-out part, where this Python has its test suite;
        # a TFDS spec that named its training split on the dataset's held-out split.
        if training.get("data") is None:
            held_out_corpus = data.default_held_out_corpus()
        data_spec = "tfds:" + trained_on[5:].partition(":")[0] if trained_on.startswith("tfds:") else trained_on
        data_spec = str(held_out_corpus or data_spec)
    if model.tokenizer is None:
        raise UserError(f"--checkpoint {checkpoint} has no tokenizer files; save the tokenizer beside the model")
    if seq_len is None:
        seq_len = checkpoint_lib.trained_seq_len(checkpoint) or min(128, config.max_length)
    if seq_len > config.max_length:
        raise UserError(
            f"--seq-len {seq_len} exceeds the model's {config.max_length} positions; "
            f"pass --seq-len {config.max_length} or less"
        )
    if num_samples:
        if prompt_len >= seq_len:
            raise UserError(f"--prompt-len {prompt_len} must be shorter than --seq-len {seq_len}")
        if gen_length is None:
            gen_length = min(64, config.max_length - prompt_len)
        steps = gen_length if steps is None else steps
        # The sampler's own checks, on prompts of the length the samples will have.
        sampling.check(
            config,
            model.tokenizer,
            np.full((1, prompt_len), config.pad_token_id),
            gen_length=gen_length,
            steps=steps,
            temperature=temperature,
            flags=True,
        )
    split = split or data.held_out_split(data_spec)
    # A local text has no held-out part (the built-in corpus's is another file).
    training_text = trained_on is not None and held_out_corpus is None and split == "train"
    if held_out_corpus is not None:
        log(
            f"no --data: {checkpoint} was trained on the built-in corpus {trained_on}; scoring its held-out "
            f"part, the docstrings of the standard library's test suite, {data_spec}"
        )
    elif trained_on is not None:
        held_out = "its training text, not held out" if training_text else f"its {split} split"
        log(f"no --data: the data {checkpoint} was trained on, {data_spec}: {held_out}")
    dataset = data.prepare_dataset(
        data_spec, model.tokenizer, seq_len, cache_dir=cache_dir or data.cache_home(), split=split
    )
    _check_dataset(dataset, config)
    judge_model = load_judge(judge) if judge and num_samples else None
    results = {
        "checkpoint": str(checkpoint),
        "data": str(data_spec),
        "split": split,
        "training_text": training_text,
        "seq_len": seq_len,
        "seed": seed,
    }

    num_sequences = len(dataset) if max_sequences is None else min(len(dataset), max_sequences)
    log(f"NELBO: {nelbo_samples} draws x {num_sequences} sequences")
    estimate = nelbo(
        model, dataset, num_samples=nelbo_samples, batch_size=batch_size, seed=seed, max_sequences=max_sequences
    )
    results.update({k: v for k, v in estimate.items() if k not in ("numerators", "eligible")})
    log("accuracy by mask ratio")
    results["accuracy_by_ratio"] = accuracy_by_ratio(
        model, dataset, batch_size=batch_size, seed=seed, max_sequences=max_sequences
    )
    if num_samples:
        log(f"generating {num_samples} samples of {gen_length} tokens in {steps} steps")
        count = min(num_samples, len(dataset))
        prompts = np.stack([np.asarray(dataset[i]["input_ids"][:prompt_len]) for i in range(count)])
        ids = sampling.generate(model, prompts, gen_length=gen_length, steps=steps, temperature=temperature, seed=seed)
        tokens = generated_tokens(ids, prompt_len, config)
        texts = [model.tokenizer.decode(t) for t in tokens]
        contexts = [model.tokenizer.decode(p, skip_special_tokens=True) for p in prompts.tolist()]
        samples = sample_statistics(tokens)
        samples.update(prompt_len=prompt_len, gen_length=gen_length, steps=steps, temperature=temperature)
        if judge_model is not None:
            log(f"judging the samples with {judge}")
            samples["judge"] = str(judge)
            samples["gen_ppl"] = generative_perplexity(texts, judge_model, contexts=contexts)
        samples["prompts"], samples["texts"] = contexts, texts
        results["samples"] = samples
    return results
