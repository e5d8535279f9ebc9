"""`dlm-jax` command line: one sub-command per module in this package.

Each sub-command module defines `HELP` (a line per command it holds), `add_parser(subparsers)`
(its flags) and `run(args)` (calls into the library). This file only dispatches and turns
`UserError` and argparse's complaints into one line on stderr (exit status 2).
"""

import argparse
import importlib
import logging
import os
import sys

from dlm_jax import __version__
from dlm_jax.errors import UserError

# name -> module under dlm_jax.cli; imported lazily so `dlm-jax --help` does not import JAX.
COMMANDS = {
    "convert": "convert",
    "export": "convert",
    "tokenizer": "tokenizer",
    "train": "train",
    "generate": "generate",
    "eval": "evaluate",
}


class OneLineParser(argparse.ArgumentParser):
    """argparse's complaints as one line, without the usage block above it (the sub-commands'
    parsers are of this class too: add_subparsers makes them of the parent's)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _build_parser(argv):
    parser = OneLineParser(prog="dlm-jax", description="Masked text diffusion with BERT-family encoders in JAX.")
    parser.add_argument("--version", action="version", version=f"dlm-jax {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = argv[0] if argv and argv[0] in COMMANDS else None
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"dlm_jax.cli.{module_name}")
        if name == wanted:
            module.add_parser(sub, name)
        else:  # listed in --help; its flags (which may import JAX for choices) only when chosen
            sub.add_parser(name, help=module.HELP[name])
    return parser


def _quiet_logging():
    """dlm-jax's own progress lines as plain text on stderr; libraries' chatter (absl warnings
    about tfds cache folders, for one) only when it is an error."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    ours = logging.getLogger("dlm_jax")
    ours.handlers[:] = [handler]
    ours.setLevel(logging.INFO)
    ours.propagate = False
    logging.getLogger("absl").setLevel(logging.ERROR)
    # transformers announces at import that PyTorch is missing, which only its models need.
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    _quiet_logging()
    parser = _build_parser(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # --help, --version, or a bad flag (its line is printed)
        return exit.code
    if getattr(args, "run", None) is None:
        parser.print_help()
        return 2
    try:
        result = args.run(args)
    except UserError as err:
        print(f"dlm-jax {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:  # its message, if any, says what was kept
        print(f"dlm-jax {args.command}: interrupted{f': {interrupt}' if str(interrupt) else ''}", file=sys.stderr)
        return 130
    return 0 if result is None else int(result)


if __name__ == "__main__":
    sys.exit(main())
