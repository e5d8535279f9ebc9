"""`dlm-jax convert HF_DIR OUT_DIR` and `dlm-jax export CKPT_DIR HF_DIR`.

Everything is read and converted in memory first, so a mistake in the input is reported before
anything is written. The output is written beside OUT_DIR and moved into place at the end, so
an existing OUT_DIR survives a failure. --force replaces only an earlier output of the same
command (convert: a dlm-jax model directory; export: a HF model folder, config.json plus
weights), never the source, a folder holding it, a training workdir or any other folder.
"""

import os
import shutil
import tempfile
from pathlib import Path

from dlm_jax.cli.options import non_negative_int, seed
from dlm_jax.errors import UserError

HELP = {
    "convert": "HuggingFace BERT/RoBERTa/ModernBERT directory -> dlm-jax model directory",
    "export": "dlm-jax model directory or training workdir -> HuggingFace directory",
}


def add_parser(subparsers, name):
    p = subparsers.add_parser(name, help=HELP[name])
    if name == "convert":
        p.add_argument("hf_dir", type=Path, metavar="HF_DIR")
        p.add_argument("out_dir", type=Path, metavar="OUT_DIR")
        p.add_argument(
            "--force",
            action="store_true",
            help="replace an earlier conversion in OUT_DIR (a dlm-jax model directory); any other "
            "non-empty folder is refused",
        )
        p.add_argument("--seed", type=seed, default=0, help="seed for a head missing from the checkpoint")
        p.set_defaults(run=run_convert)
    else:
        p.add_argument("ckpt_dir", type=Path, metavar="CKPT_DIR")
        p.add_argument("hf_dir", type=Path, metavar="HF_DIR")
        p.add_argument("--step", type=non_negative_int, default=None, help="workdir checkpoint step (default: latest)")
        p.add_argument(
            "--force",
            action="store_true",
            help="replace an earlier export in HF_DIR (a HF model folder: config.json plus weights); "
            "any other non-empty folder is refused",
        )
        p.set_defaults(run=run_export)


def _is_conversion(path: Path) -> bool:
    from dlm_jax.checkpoint import is_model_dir

    return is_model_dir(path)


def _is_export(path: Path) -> bool:
    """A HF model folder, as export writes it: config.json and weights."""
    from dlm_jax.convert import WEIGHT_FILES

    return (path / "config.json").is_file() and any((path / name).is_file() for name in WEIGHT_FILES)


# command -> (what it writes, whether a folder holds an earlier one, how that folder looks)
EARLIER_OUTPUT = {
    "convert": ("conversion", _is_conversion, "dlm_config.json and params/"),
    "export": ("export", _is_export, "config.json and model.safetensors"),
}


def _check_out_dir(out_dir: Path, source: Path, force: bool, option: str, command: str) -> None:
    """Refuse an output directory whose replacement would lose work: --force replaces only an
    earlier output of `command`."""
    from dlm_jax.checkpoint import WORKDIR_CHECKPOINTS_DIR
    from dlm_jax.data.sources import check_writable

    what, is_earlier, looks = EARLIER_OUTPUT[command]
    out, src = out_dir.resolve(), source.resolve()
    if out == src or out in src.parents:
        held = "is the source" if out == src else f"holds the source {source}"
        raise UserError(f"{option} {out_dir} {held}; write the output to another directory")
    check_writable(out_dir, f"choose another {option}")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if not force:
        raise UserError(
            f"{option} {out_dir} is not empty; choose another directory or pass --force to replace "
            f"an earlier {what} there"
        )
    if (out_dir / WORKDIR_CHECKPOINTS_DIR).is_dir():
        raise UserError(
            f"{option} {out_dir} is a training workdir with checkpoints; --force replaces only an "
            f"earlier {what}, choose another directory"
        )
    if not is_earlier(out_dir):
        raise UserError(
            f"{option} {out_dir} is not empty and holds no earlier {what} ({looks}); --force "
            "replaces only that, choose another directory or empty this one"
        )


def _write_then_move(out_dir: Path, write) -> None:
    """write(tmp_dir) beside out_dir, then replace out_dir with it."""
    out_dir = out_dir.absolute()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        write(tmp)
        # The user's umask, not mkdtemp's 0700 or the 0600 safetensors gives its files.
        umask = os.umask(0)
        os.umask(umask)
        for path in [tmp, *tmp.rglob("*")]:
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def run_convert(args):
    from dlm_jax.checkpoint import save_model
    from dlm_jax.convert import convert_hf_dir

    _check_out_dir(args.out_dir, args.hf_dir, args.force, "OUT_DIR", "convert")
    config, params, tokenizer, report = convert_hf_dir(args.hf_dir, seed=args.seed)
    _write_then_move(args.out_dir, lambda d: save_model(d, config, params, tokenizer))
    print(
        f"converted {args.hf_dir} ({config.model_type}, {config.num_hidden_layers} layers, "
        f"vocab {config.vocab_size}) -> {args.out_dir}"
    )
    for line in report.lines():
        print(f"  {line}")
    if tokenizer is None:
        print("  no tokenizer files found; the model directory has none")


def run_export(args):
    from dlm_jax.checkpoint import read_any, workdir_and_step
    from dlm_jax.convert import export_hf

    source, _ = workdir_and_step(args.ckpt_dir)
    _check_out_dir(args.hf_dir, source, args.force, "HF_DIR", "export")
    config, params, tokenizer = read_any(args.ckpt_dir, args.step)
    _write_then_move(args.hf_dir, lambda d: export_hf(d, config, params, tokenizer))
    print(
        f"exported {args.ckpt_dir} -> {args.hf_dir} ({config.model_type}, loads with "
        "transformers.AutoModelForMaskedLM / AutoTokenizer)"
    )
