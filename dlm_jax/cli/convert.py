"""`dlm-jax convert HF_DIR OUT_DIR` and `dlm-jax export CKPT_DIR HF_DIR`.

Everything is read and converted in memory first, so a mistake in the input is reported before
anything is written. The output is written beside OUT_DIR and moved into place at the end, so
an existing OUT_DIR (replaced only with --force) survives a failure.
"""

import shutil
import tempfile
from pathlib import Path

from dlm_jax.errors import UserError


def add_parser(subparsers):
    p = subparsers.add_parser("convert", help="HuggingFace BERT/RoBERTa directory -> dlm-jax model directory")
    p.add_argument("hf_dir", type=Path, metavar="HF_DIR")
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    p.add_argument("--force", action="store_true", help="replace a non-empty OUT_DIR")
    p.add_argument("--seed", type=int, default=0, help="seed for a head missing from the checkpoint")
    p.set_defaults(run=run_convert)

    p = subparsers.add_parser("export", help="dlm-jax model directory or training workdir -> HuggingFace directory")
    p.add_argument("ckpt_dir", type=Path, metavar="CKPT_DIR")
    p.add_argument("hf_dir", type=Path, metavar="HF_DIR")
    p.add_argument("--step", type=int, default=None, help="workdir checkpoint step (default: latest)")
    p.add_argument("--force", action="store_true", help="replace a non-empty HF_DIR")
    p.set_defaults(run=run_export)


def _check_out_dir(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir} exists and is not a directory; choose another output path")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise UserError(f"{out_dir} is not empty; choose another output directory or pass --force to replace it")


def _write_then_move(out_dir: Path, write) -> None:
    """write(tmp_dir) beside out_dir, then replace out_dir with it."""
    out_dir = out_dir.absolute()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        write(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def run_convert(args):
    from dlm_jax.checkpoint import save_model
    from dlm_jax.convert import convert_hf_dir

    _check_out_dir(args.out_dir, args.force)
    config, params, tokenizer, report = convert_hf_dir(args.hf_dir, seed=args.seed)
    _write_then_move(args.out_dir, lambda d: save_model(d, config, params, tokenizer))
    print(f"converted {args.hf_dir} ({config.model_type}, {config.num_hidden_layers} layers, "
          f"vocab {config.vocab_size}) -> {args.out_dir}")
    for line in report.lines():
        print(f"  {line}")
    if tokenizer is None:
        print("  no tokenizer files found; the model directory has none")


def run_export(args):
    from dlm_jax.checkpoint import read_any
    from dlm_jax.convert import export_hf

    _check_out_dir(args.hf_dir, args.force)
    config, params, tokenizer = read_any(args.ckpt_dir, args.step)
    _write_then_move(args.hf_dir, lambda d: export_hf(d, config, params, tokenizer))
    print(f"exported {args.ckpt_dir} -> {args.hf_dir} ({config.model_type}, loads with "
          "transformers.AutoModelForMaskedLM / AutoTokenizer)")
