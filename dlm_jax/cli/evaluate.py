"""`dlm-jax eval`: NELBO, accuracy by mask ratio and sample statistics -> a table or JSON."""

import importlib.util
import json
import math
import sys
from pathlib import Path

from dlm_jax.cli.options import non_negative_float, non_negative_int, positive_int, seed
from dlm_jax.errors import UserError

HELP = {"eval": "evaluate a model on held-out text"}


def add_parser(subparsers, name):
    p = subparsers.add_parser(
        name,
        help=HELP[name],
        description="NELBO (bits per token, perplexity bound), masked-token accuracy at mask ratios "
        "0.1..1.0, and statistics of generated samples. See docs/evaluation.md.",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a dlm-jax model dir, a training workdir (or one of its checkpoints/STEP dirs) or a HF dir",
    )
    p.add_argument("--step", type=non_negative_int, help="the workdir checkpoint to evaluate (default: latest)")
    p.add_argument(
        "--data",
        help="tfds:NAME[/CONFIG][:SPLIT] or a local text file/directory (default for a training workdir: the "
        "data it was trained on, whose test split is held out; a local text has none, so it is scored whole)",
    )
    p.add_argument("--split", help="split to evaluate (default: test for TFDS and WikiText, else the whole data)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument(
        "--seq-len",
        type=positive_int,
        help="tokens per held-out sequence (default: the workdir's training length, else at most 128)",
    )
    p.add_argument("--batch-size", type=positive_int, default=8, help="sequences per forward pass (default 8)")
    p.add_argument("--max-sequences", type=positive_int, help="evaluate only the first M sequences (default: all)")
    p.add_argument(
        "--nelbo-samples", type=positive_int, default=8, help="Monte-Carlo draws of t per sequence (default 8)"
    )
    p.add_argument(
        "--samples", type=non_negative_int, default=8, help="samples to generate for statistics (0: none; default 8)"
    )
    p.add_argument(
        "--prompt-len",
        type=positive_int,
        default=16,
        help="prompt tokens taken from each held-out sequence (default 16)",
    )
    p.add_argument(
        "--gen-length",
        type=positive_int,
        help="tokens generated after each prompt (default: what fits after the prompt, at most 64)",
    )
    p.add_argument("--steps", type=positive_int, help="unmasking steps (default: --gen-length)")
    p.add_argument(
        "--temperature", type=non_negative_float, default=1.0, help="sampling temperature (0: greedy; default 1)"
    )
    p.add_argument("--judge", help="a HF causal-LM directory (e.g. gpt2) for generative perplexity (needs PyTorch)")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument(
        "--cache-dir",
        type=Path,
        help="where packed data is cached (default: $DLM_JAX_CACHE, else $XDG_CACHE_HOME/dlm_jax or ~/.cache/dlm_jax)",
    )
    p.set_defaults(run=run)


def _check_args(args):
    """What the library would find only after loading the checkpoint: a missing optional dependency."""
    if args.judge and args.samples and importlib.util.find_spec("torch") is None:
        raise UserError(
            "--judge runs a PyTorch causal LM, and PyTorch is not installed: pip install torch, or drop --judge"
        )


def run(args):
    _check_args(args)
    from dlm_jax.evaluate import evaluate

    results = evaluate(
        args.checkpoint,
        args.data,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        max_sequences=args.max_sequences,
        nelbo_samples=args.nelbo_samples,
        num_samples=args.samples,
        prompt_len=args.prompt_len,
        gen_length=args.gen_length,
        steps=args.steps,
        temperature=args.temperature,
        judge=args.judge,
        split=args.split,
        seed=args.seed,
        step=args.step,
        cache_dir=args.cache_dir,
        log=lambda message: print(f"eval: {message}", file=sys.stderr, flush=True),
    )
    print(json.dumps(json_safe(results)) if args.json else table(results))


def json_safe(value):
    """NaN (e.g. the standard error of a single sequence) becomes null: strict JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def table(r) -> str:
    from dlm_jax.data.sources import held_out_split

    # Local data without splits is read whole; internally that is its one split, "train".
    part = "the whole text" if r["split"] == "train" == held_out_split(r["data"]) else f"split {r['split']}"
    lines = [
        f"checkpoint   {r['checkpoint']}",
        f"data         {r['data']} ({part}, {r['num_sequences']} sequences of {r['seq_len']} tokens)"
        + ("; the training text, not held out" if r.get("training_text") else ""),
        f"NELBO        {r['nelbo_nats']:.4f} ± {r['nelbo_stderr']:.4f} nats/token"
        f" = {r['nelbo_bits_per_token']:.4f} ± {r['nelbo_bits_stderr']:.4f} bits/token"
        f" ({r['nelbo_samples']} draws of t per sequence)",
        f"perplexity   <= {r['ppl_bound']:.2f}",
        "",
        "mask ratio   accuracy   CE (nats)   tokens",
    ]
    lines += [
        f"{a['ratio']:>10.1f}   {a['accuracy']:>8.4f}   {a['ce']:>9.4f}   {a['tokens']:>6d}"
        for a in r["accuracy_by_ratio"]
    ]
    s = r.get("samples")
    if s:
        lines += [
            "",
            f"samples      {s['num_samples']} x {s['gen_length']} tokens after {s['prompt_len']}-token prompts, "
            f"{s['steps']} steps, temperature {s['temperature']}",
            f"  unigram entropy        {s['unigram_entropy_bits']:.3f} bits (mean per sample)",
            f"  distinct-1 / -2        {s['distinct_1']:.3f} / {s['distinct_2']:.3f}",
            f"  repeated 4-grams       {s['repetition_rate']:.3f}",
        ]
        if "gen_ppl" in s:
            ppl = "n/a (no text)" if s["gen_ppl"] is None else f"{s['gen_ppl']:.2f}"
            lines.append(f"  judge perplexity       {ppl} under {s['judge']}")
        for i, (prompt, text) in enumerate(zip(s["prompts"], s["texts"]), 1):
            lines.append(f"  [{i}] {prompt!r} -> {text!r}")
    return "\n".join(lines)
