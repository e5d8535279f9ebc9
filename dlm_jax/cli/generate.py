"""`dlm-jax generate`: fill masks after a prompt with the on-device sampler; print the text."""

import importlib.util
import json
import sys
from pathlib import Path

from dlm_jax.cli.options import non_negative_float, non_negative_int, positive_float, positive_int, probability, seed
from dlm_jax.errors import UserError

HELP = {"generate": "generate text by unmasking (diffusion sampling)"}
GEN_LENGTH_CAP = 128  # the default --gen-length: what fits after the longest prompt, at most this


def add_parser(subparsers, name):
    from dlm_jax.models import COMPUTE_DTYPES
    from dlm_jax.sampling import CACHES, STRATEGIES

    p = subparsers.add_parser(
        name,
        help=HELP[name],
        description="Fill --gen-length mask tokens after each prompt in --steps unmasking steps, "
        "all on the accelerator in one compiled program. Mask tokens written inside the prompt "
        "(e.g. <mask>) are filled too, and the filled prompt is printed.",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="our model dir, a training workdir (or one of its checkpoints/STEP dirs) or a HF dir",
    )
    p.add_argument("--step", type=non_negative_int, help="the workdir checkpoint to use (default: latest)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text")
    src.add_argument("--prompt-file", type=Path, help="UTF-8 file with one prompt per line (a batch)")
    p.add_argument(
        "--gen-length",
        type=positive_int,
        help=f"tokens to generate per prompt (default: what fits after the prompt in the workdir's "
        f"training length or the model's positions, at most {GEN_LENGTH_CAP})",
    )
    p.add_argument(
        "--steps", type=positive_int, help="unmasking steps (default: --gen-length; the bound for threshold and factor)"
    )
    p.add_argument("--block-length", type=positive_int, help="semi-autoregressive block length (default: one block)")
    p.add_argument(
        "--remasking",
        default="low_confidence",
        help=f"{', '.join(STRATEGIES)} (default low_confidence); see docs/sampling.md",
    )
    p.add_argument("--schedule", default="even", help="tokens committed per step: even (default), cosine, linear")
    p.add_argument("--temperature", type=non_negative_float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=probability, help="nucleus sampling mass in (0, 1]; needs --temperature > 0")
    p.add_argument("--top-k", type=positive_int, help="sample among the k most likely tokens; needs --temperature > 0")
    p.add_argument("--cfg-scale", type=non_negative_float, default=0.0, help="classifier-free guidance weight")
    p.add_argument("--confidence-threshold", type=probability, help="for --remasking threshold (default 0.9)")
    p.add_argument("--factor", type=positive_float, help="for --remasking factor: Fast-dLLM's rule (default 1.0)")
    p.add_argument(
        "--alg-temp",
        type=non_negative_float,
        help="Dream's alg_temp: draw the positions to commit by softmax(score / T) instead of the best",
    )
    p.add_argument("--forbid-eos", action="store_true", help="never generate the EOS token")
    p.add_argument(
        "--stop-at-eos",
        action="store_true",
        help="a row whose text has ended (an EOS with no mask before it) is done: its remaining masks "
        "become EOS, and the loop ends once every row is done",
    )
    p.add_argument(
        "--cache",
        choices=CACHES,
        help="reuse keys/values outside the active block between refreshes "
        "(prefix: before it; dual: also after it); approximate, faster",
    )
    p.add_argument(
        "--refresh-every",
        type=positive_int,
        help="with --cache: recompute the whole canvas every K steps too (default: at block starts only; "
        "1 gives exactly the uncached tokens)",
    )
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--dtype", default="float32", choices=tuple(COMPUTE_DTYPES), help="compute dtype (default float32)")
    p.add_argument("--json", action="store_true", help="print one JSON line per prompt")
    p.add_argument("--show", action="store_true", help="replay the unmasking in the terminal (first prompt)")
    p.add_argument("--trajectory", type=Path, help="write the replay to FILE.html or FILE.gif (first prompt)")
    p.set_defaults(run=run)


def _prompts(args) -> list[str]:
    if args.prompt is not None:
        return [args.prompt]
    try:
        raw = args.prompt_file.read_bytes()
    except OSError as err:
        raise UserError(f"cannot read --prompt-file {args.prompt_file}: {err.strerror}") from None
    fix = "give a UTF-8 text file with one prompt per line"
    if b"\0" in raw:
        raise UserError(f"--prompt-file {args.prompt_file} holds NUL bytes (a binary file?); {fix}")
    try:
        # utf-8-sig: a byte-order mark (Windows editors write one) is not part of the first prompt.
        lines = [line for line in raw.decode("utf-8-sig").splitlines() if line.strip()]
    except UnicodeDecodeError as err:
        raise UserError(f"--prompt-file {args.prompt_file} is not UTF-8 text (byte {err.start}); {fix}") from None
    if not lines:
        raise UserError(f"--prompt-file {args.prompt_file} has no prompts (one per line)")
    return lines


def _check_args(args):
    """Mistakes visible from the flags alone, and outputs that could not be written, before the
    checkpoint is read: nothing the run computes may be lost at its end."""
    from dlm_jax.data.sources import check_writable
    from dlm_jax.sampling import SCHEDULES, STRATEGIES

    if args.remasking not in STRATEGIES:
        raise UserError(f"unknown --remasking {args.remasking!r}; choose one of {', '.join(STRATEGIES)}")
    if args.schedule not in SCHEDULES:
        raise UserError(f"unknown --schedule {args.schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if args.show and not sys.stdout.isatty():
        raise UserError(
            "--show replays in a terminal, but the output is not one; use --trajectory FILE.html to keep the replay"
        )
    if args.trajectory is not None:
        suffix = args.trajectory.suffix.lower()
        if suffix not in (".html", ".gif"):
            raise UserError(f"--trajectory {args.trajectory} must end in .html or .gif")
        if args.trajectory.is_dir():
            raise UserError(f"--trajectory {args.trajectory} is a directory; name a file")
        check_writable(args.trajectory.parent, "choose another --trajectory")
        if suffix == ".gif" and importlib.util.find_spec("PIL") is None:
            raise UserError(
                "--trajectory .gif needs Pillow, which is not installed: pip install pillow, or write FILE.html"
            )


def _gen_length(args, model, prompts) -> int:
    """--gen-length, or what fits after the longest prompt in the length the model was trained
    at (a workdir) or its positions, at most GEN_LENGTH_CAP (a multiple of --block-length)."""
    if args.gen_length is not None:
        return args.gen_length
    from dlm_jax.checkpoint import trained_seq_len

    longest = max(len(p) for p in prompts)
    length = trained_seq_len(args.checkpoint) or model.config.max_length
    room = min(length - longest, GEN_LENGTH_CAP)
    if args.block_length is not None and room > 0:
        if args.block_length > room:
            raise UserError(
                f"--block-length {args.block_length} exceeds the {room} positions left after a prompt of "
                f"{longest} tokens in {args.checkpoint}; use at most {room}"
            )
        room -= room % args.block_length
    if room <= 0:
        raise UserError(
            f"a prompt of {longest} tokens leaves no room in the {length} positions of "
            f"{args.checkpoint}; shorten the prompt"
        )
    return room


def run(args):
    _check_args(args)
    texts = _prompts(args)
    import numpy as np

    from dlm_jax.api import load
    from dlm_jax.sampling import check, cut_at_eos, encode_prompt, generate, generated_text
    from dlm_jax.sampling.plan import as_batch

    try:
        model = load(args.checkpoint, dtype=args.dtype, step=args.step)
    except UserError as err:
        raise UserError(f"--checkpoint: {err}") from None
    tokenizer, config = model.tokenizer, model.config
    if tokenizer is None:
        raise UserError(f"{args.checkpoint} has no tokenizer files; save the tokenizer with the checkpoint")
    prompts = [encode_prompt(tokenizer, t) for t in texts]
    gen_length = _gen_length(args, model, prompts)
    want_history = args.show or args.trajectory is not None
    settings = dict(
        gen_length=gen_length,
        steps=args.steps or gen_length,
        block_length=args.block_length,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        remasking=args.remasking,
        schedule=args.schedule,
        cfg_scale=args.cfg_scale,
        confidence_threshold=args.confidence_threshold,
        forbid_eos=args.forbid_eos,
        factor=args.factor,
        alg_temp=args.alg_temp,
        stop_at_eos=args.stop_at_eos,
        cache=args.cache,
        refresh_every=args.refresh_every,
    )
    # generate() checks these too, naming its keywords; here the messages name the flags.
    check(config, tokenizer, as_batch(prompts, None, config.pad_token_id)[0], **settings, flags=True)
    result = generate(model, prompts, **settings, seed=args.seed, return_history=want_history)
    ids, history = result if want_history else (result, None)
    width = ids.shape[1] - gen_length  # prompts are left-padded to the longest

    frames = None
    if want_history:
        from dlm_jax import trajectory

        first = prompts[0]
        initial = np.asarray(first + [config.mask_token_id] * gen_length)
        frames = trajectory.frames(
            tokenizer, history[:, 0, width - len(first) :], initial, len(first), config.mask_token_id
        )
        if args.show:  # first: the replay clears the screen
            trajectory.show(frames)

    for i, (text, prompt_ids, row) in enumerate(zip(texts, prompts, ids)):
        start = width - len(prompt_ids)
        generated = generated_text(tokenizer, row[None], width, eos_id=config.eos_token_id)[0]
        filled = tokenizer.decode(row[start:width].tolist(), skip_special_tokens=True)
        if args.json:
            print(
                json.dumps(
                    {"prompt_ids": prompt_ids, "filled_prompt": filled, "ids": row[width:].tolist(), "text": generated}
                )
            )
            continue
        if len(texts) > 1:  # one block per prompt
            if i:
                print()
            print(f"--- prompt {i + 1} of {len(texts)}: {text}")
        if config.mask_token_id in prompt_ids:  # the filled prompt, then what follows it up to EOS
            print(
                tokenizer.decode(
                    row[start:width].tolist() + cut_at_eos(row[width:], config.eos_token_id), skip_special_tokens=True
                )
            )
        else:
            print(generated)
    sys.stdout.flush()

    if args.trajectory is not None:  # after the text: a failed write cannot take it along
        write = trajectory.write_gif if args.trajectory.suffix.lower() == ".gif" else trajectory.write_html
        try:
            args.trajectory.parent.mkdir(parents=True, exist_ok=True)
            write(args.trajectory, frames)
        except OSError as err:
            raise UserError(
                f"the text above was generated, but --trajectory {args.trajectory} could not be written: "
                f"{err.strerror}; choose another path"
            ) from None
        print(f"the replay of the first prompt is in {args.trajectory}", file=sys.stderr)  # stdout stays the text
