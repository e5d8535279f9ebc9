"""`dlm-jax train`: flags -> TrainConfig -> dlm_jax.train.loop.train."""

from dlm_jax.cli.options import non_negative_int, positive_int
from dlm_jax.errors import UserError

HELP = {"train": "train an encoder as a masked diffusion model"}


def add_parser(subparsers, name):
    p = subparsers.add_parser(name, help=HELP[name])
    p.add_argument("--config", default="tiny", help="preset name (configs/NAME.py) or a JSON/YAML file (default: tiny)")
    p.add_argument("--workdir", required=True, help="run directory: config, model, checkpoints, metrics")
    p.add_argument("--data", help="tfds:NAME[/CONFIG][:SPLIT] or a local text file/directory")
    p.add_argument("--steps", type=positive_int, help="total optimizer steps")
    p.add_argument("--init", help="start from a HF directory, a dlm-jax model dir or a workdir")
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set lr=3e-4 --set model.hidden_size=256",
    )
    p.add_argument(
        "--allow-changes",
        action="store_true",
        help="resume even when the config changes what the next steps compute (lr, data, batch, ...)",
    )
    p.add_argument("--coordinator", help="multi-host: coordinator HOST:PORT (else from the environment)")
    p.add_argument("--num-processes", type=positive_int, help="multi-host: number of processes")
    p.add_argument("--process-id", type=non_negative_int, help="multi-host: this process's index")
    p.set_defaults(run=run)


def _check_args(args):
    """Mistakes visible from the flags alone, before JAX starts."""
    if args.coordinator is not None:
        host, _, port = args.coordinator.rpartition(":")
        if not host or not port.isdigit():
            raise UserError(f"--coordinator {args.coordinator!r} must be HOST:PORT (e.g. 10.0.0.1:12355)")
    if args.process_id is not None and args.num_processes is not None and args.process_id >= args.num_processes:
        raise UserError(f"--process-id {args.process_id} must be below --num-processes {args.num_processes}")


def run(args):
    _check_args(args)
    from dlm_jax.train.config import resolve_config
    from dlm_jax.train.mesh import init_distributed

    config = resolve_config(args.config, args.sets, data=args.data, steps=args.steps, init=args.init)
    init_distributed(args.coordinator, args.num_processes, args.process_id)
    from dlm_jax.train.loop import train

    try:
        train(config, args.workdir, allow_changes=args.allow_changes)
    except OSError as err:
        raise UserError(f"{err.filename or args.workdir}: {err.strerror or err}") from None
