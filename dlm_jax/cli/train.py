"""`dlm-jax train`: flags -> TrainConfig -> dlm_jax.train.loop.train."""

from dlm_jax.errors import UserError


def add_parser(subparsers):
    p = subparsers.add_parser("train", help="train an encoder as a masked diffusion model")
    p.add_argument("--config", default="tiny", help="preset name (configs/NAME.py) or a JSON/YAML file")
    p.add_argument("--workdir", required=True, help="run directory: config, model, checkpoints, metrics")
    p.add_argument("--data", help="tfds:NAME[/CONFIG][:SPLIT] or a local text file/directory")
    p.add_argument("--steps", type=int, help="total optimizer steps")
    p.add_argument("--init", help="start from a HF directory, a dlm-jax model dir or a workdir")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set lr=3e-4 --set model.hidden_size=256")
    p.add_argument("--coordinator", help="multi-host: coordinator HOST:PORT (else from the environment)")
    p.add_argument("--num-processes", type=int, help="multi-host: number of processes")
    p.add_argument("--process-id", type=int, help="multi-host: this process's index")
    p.set_defaults(run=run)


def run(args):
    from dlm_jax.train.config import resolve_config
    from dlm_jax.train.mesh import init_distributed

    config = resolve_config(args.config, args.sets, data=args.data, steps=args.steps, init=args.init)
    init_distributed(args.coordinator, args.num_processes, args.process_id)
    from dlm_jax.train.loop import train

    try:
        train(config, args.workdir)
    except OSError as err:
        raise UserError(f"{err.filename or args.workdir}: {err.strerror or err}") from None
