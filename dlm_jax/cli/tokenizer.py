"""`dlm-jax tokenizer train --data SPEC --out DIR [--vocab-size N]`: a BPE for a corpus."""

from pathlib import Path

from dlm_jax.cli.options import positive_int
from dlm_jax.errors import UserError

HELP = {"tokenizer": "train a byte-level BPE tokenizer on a corpus"}


def add_parser(subparsers, name):
    parser = subparsers.add_parser(name, help=HELP[name])
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    train = actions.add_parser(
        "train", help="train a byte-level BPE with RoBERTa's special tokens (<s> <pad> </s> <unk> <mask>)"
    )
    train.add_argument(
        "--data",
        required=True,
        help="a text file, a folder of .txt/.jsonl, WikiText raw files or tfds:NAME[/CONFIG][:SPLIT]",
    )
    train.add_argument("--out", required=True, type=Path, help="directory to write the tokenizer files into")
    train.add_argument("--vocab-size", type=positive_int, default=8192, help="target vocabulary size (default 8192)")
    train.set_defaults(run=run_train)


def run_train(args):
    from dlm_jax.data import train_tokenizer

    if (args.out / "tokenizer.json").exists():
        raise UserError(f"--out {args.out} already holds a tokenizer; choose another --out or remove it")
    tokenizer = train_tokenizer(args.data, args.out, vocab_size=args.vocab_size)
    sample = "Hello world, this is dlm-jax."
    ids = tokenizer(sample)["input_ids"]
    print(
        f"wrote a {len(tokenizer)}-token byte-level BPE to {args.out} "
        f"(mask token {tokenizer.mask_token!r} "
        f"= {tokenizer.mask_token_id}); {sample!r} -> {len(ids)} tokens"
    )
