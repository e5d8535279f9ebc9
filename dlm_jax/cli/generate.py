"""`dlm-jax generate`: fill masks after a prompt with the on-device sampler; print the text."""

import json
from pathlib import Path

from dlm_jax.errors import UserError


def add_parser(subparsers):
    p = subparsers.add_parser(
        "generate",
        help="generate text by unmasking (diffusion sampling)",
        description="Fill --gen-length mask tokens after each prompt in --steps unmasking steps, "
        "all on the accelerator in one compiled program. Mask tokens written inside the prompt "
        "(e.g. <mask>) are filled too.",
    )
    p.add_argument("--checkpoint", required=True, help="our model dir, a training workdir or a HF dir")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text")
    src.add_argument("--prompt-file", type=Path, help="file with one prompt per line (a batch)")
    p.add_argument("--gen-length", type=int, required=True, help="tokens to generate per prompt")
    p.add_argument("--steps", type=int, required=True, help="unmasking steps (the bound for threshold)")
    p.add_argument("--block-length", type=int, help="semi-autoregressive block length (default: one block)")
    p.add_argument("--remasking", default="low_confidence", help="low_confidence (default), random, topk_margin, entropy, origin, threshold, "
                   "random_remask; see docs/sampling.md")
    p.add_argument("--schedule", default="even", help="tokens committed per step: even (default), cosine, linear")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, help="nucleus sampling mass in (0, 1]")
    p.add_argument("--top-k", type=int, help="sample among the k most likely tokens")
    p.add_argument("--cfg-scale", type=float, default=0.0, help="classifier-free guidance weight")
    p.add_argument("--confidence-threshold", type=float, help="for --remasking threshold (default 0.9)")
    p.add_argument("--forbid-eos", action="store_true", help="never generate the EOS token")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="compute dtype")
    p.add_argument("--json", action="store_true", help="print ids and text as JSON lines")
    p.add_argument("--show", action="store_true", help="replay the unmasking in the terminal")
    p.add_argument("--trajectory", type=Path, help="write the replay to FILE.html or FILE.gif (first prompt)")
    p.set_defaults(run=run)


def _prompts(args) -> list[str]:
    if args.prompt is not None:
        return [args.prompt]
    try:
        lines = [line for line in args.prompt_file.read_text().splitlines() if line.strip()]
    except OSError as err:
        raise UserError(f"cannot read --prompt-file {args.prompt_file}: {err.strerror}") from None
    if not lines:
        raise UserError(f"--prompt-file {args.prompt_file} has no prompts (one per line)")
    return lines


def _check_args(args):
    """Mistakes visible from the flags alone, before the checkpoint is read."""
    from dlm_jax.sampling import SCHEDULES, STRATEGIES

    if args.remasking not in STRATEGIES:
        raise UserError(f"unknown --remasking {args.remasking!r}; choose one of {', '.join(STRATEGIES)}")
    if args.schedule not in SCHEDULES:
        raise UserError(f"unknown --schedule {args.schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if args.steps <= 0 or args.gen_length <= 0:
        raise UserError("--steps and --gen-length must be positive")
    if args.trajectory is not None and args.trajectory.suffix.lower() not in (".html", ".gif"):
        raise UserError(f"--trajectory {args.trajectory} must end in .html or .gif")


def run(args):
    _check_args(args)
    texts = _prompts(args)
    import numpy as np

    from dlm_jax.api import load
    from dlm_jax.sampling import encode_prompt, generate, generated_text

    model = load(args.checkpoint, dtype=args.dtype)
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise UserError(f"{args.checkpoint} has no tokenizer files; save the tokenizer with the checkpoint")
    prompts = [encode_prompt(tokenizer, t) for t in texts]
    want_history = args.show or args.trajectory is not None
    result = generate(
        model, prompts, gen_length=args.gen_length, steps=args.steps, block_length=args.block_length,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, remasking=args.remasking,
        schedule=args.schedule, cfg_scale=args.cfg_scale, confidence_threshold=args.confidence_threshold,
        forbid_eos=args.forbid_eos, seed=args.seed, return_history=want_history,
    )
    ids, history = result if want_history else (result, None)
    width = max(len(p) for p in prompts)
    outputs = generated_text(tokenizer, ids, width, eos_id=model.config.eos_token_id)

    if want_history:
        from dlm_jax import trajectory

        first = prompts[0]
        initial = np.asarray(first + [model.config.mask_token_id] * args.gen_length)
        frames = trajectory.frames(tokenizer, history[:, 0, width - len(first):], initial, len(first),
                                   model.config.mask_token_id)
        if args.show:
            trajectory.show(frames)
        if args.trajectory is not None:
            if args.trajectory.suffix.lower() == ".gif":
                trajectory.write_gif(args.trajectory, frames)
            else:
                trajectory.write_html(args.trajectory, frames)

    for prompt_ids, text, row in zip(prompts, outputs, ids):
        if args.json:
            print(json.dumps({"prompt_ids": prompt_ids, "ids": row[width:].tolist(), "text": text}))
        else:
            print(text)
