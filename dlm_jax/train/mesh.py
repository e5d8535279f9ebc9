"""Devices: multi-host start-up, the (data, fsdp) mesh, and parameter/batch shardings.

Parameters are placed by name with MaxText-style rules (TrainConfig.sharding_rules): the first
regex matching the path "layers/3/attention/query/kernel" gives one mesh axis (or None) per
dimension. An axis that does not divide its dimension is dropped, so one rule set serves every
model size. The batch is split over both axes: FSDP devices are data-parallel too.
"""

import os
import re

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dlm_jax.errors import UserError
from dlm_jax.models.params import path_name

BATCH_AXES = ("data", "fsdp")

# Environment variables that mean "a cluster launched this process": jax.distributed.initialize()
# then finds the coordinator and this process's id by itself.
_CLUSTER_ENV = (
    "SLURM_JOB_ID",
    "TPU_WORKER_HOSTNAMES",
    "MEGASCALE_COORDINATOR_ADDRESS",
    "JAX_COORDINATOR_ADDRESS",
    "OMPI_COMM_WORLD_SIZE",
)


def init_distributed(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> None:
    """Join the other hosts: from flags when given, else from a cluster's environment."""
    if jax.distributed.is_initialized():
        return
    if coordinator is not None:
        if num_processes is None or process_id is None:
            raise UserError("--coordinator needs --num-processes and --process-id too")
        if num_processes > 1:
            _cpu_collectives()
            jax.distributed.initialize(coordinator, num_processes, process_id)
        return
    slurm_tasks = int(os.environ.get("SLURM_NTASKS", "1"))
    if any(k in os.environ for k in _CLUSTER_ENV if k != "SLURM_JOB_ID") or slurm_tasks > 1:
        _cpu_collectives()
        jax.distributed.initialize()


def _cpu_collectives():
    # CPU processes talk through gloo; accelerators use their own collectives and ignore this.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")


def make_mesh(data: int = -1, fsdp: int = 1, devices=None) -> Mesh:
    devices = list(jax.devices() if devices is None else devices)
    if fsdp < 1 or len(devices) % fsdp:
        divisors = [d for d in range(1, len(devices) + 1) if len(devices) % d == 0]
        raise UserError(
            f"mesh.fsdp={fsdp} does not divide the {len(devices)} devices; set mesh.fsdp to one of "
            f"{', '.join(map(str, divisors))}"
        )
    if data == -1:
        data = len(devices) // fsdp
    if data * fsdp < len(devices) and jax.process_count() == 1:
        devices = devices[: data * fsdp]  # a smaller mesh on one host (e.g. data=1: one device)
    if data * fsdp != len(devices):
        raise UserError(
            f"mesh data={data} x fsdp={fsdp} needs {data * fsdp} devices, found {len(devices)}; "
            "set mesh.data=-1 to use them all"
        )
    grid = np.asarray(devices, dtype=object).reshape(data, fsdp)
    # Auto axes: shardings are hints that XLA propagates (Explicit would type every array).
    return Mesh(grid, ("data", "fsdp"), axis_types=(AxisType.Auto, AxisType.Auto))


def spec_for(name: str, shape, rules, mesh: Mesh) -> P:
    for pattern, spec in rules:
        if re.search(pattern, name):
            spec = tuple(spec)[: len(shape)] + (None,) * (len(shape) - len(spec))
            kept = tuple(
                axis if axis is not None and dim % mesh.shape[axis] == 0 else None for axis, dim in zip(spec, shape)
            )
            return P(*kept)
    return P()


def param_shardings(params, rules, mesh: Mesh):
    """A NamedSharding per parameter (params may be arrays or ShapeDtypeStructs)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: NamedSharding(mesh, spec_for(path_name(path), x.shape, rules, mesh)), params
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def global_batch(local: dict, mesh: Mesh, global_rows: int) -> dict:
    """This host's rows -> one global array per field, sharded over the batch axes."""
    sharding = batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, v, (global_rows,) + v.shape[1:]) for k, v in local.items()
    }
