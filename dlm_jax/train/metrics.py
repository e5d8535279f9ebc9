"""Throughput accounting and the three metric sinks (console, TensorBoard, metrics.jsonl).

FLOPs per trained token (docs/training.md): 6 * N_matmul + 12 * layers * seq_len * hidden, where
N_matmul counts the parameters that take part in a matmul (attention and feed-forward kernels,
the MLM head's dense layer and its vocab projection) and the second term is attention's
scores and weighted sum (2 matmuls of 2 * seq_len * hidden FLOPs per token forward, times 3 for
forward + backward). Remat's recomputation is not counted (the usual MFU convention).
"""

import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp

# Dense bf16 peak FLOP/s per device (vendor data sheets); override with peak_tflops.
PEAK_TFLOPS = {
    "H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0,
    "TPU v6": 918.0, "TPU v5p": 459.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v4": 275.0,
}


def flops_per_token(model_config, seq_len: int) -> float:
    h, i, layers = model_config.hidden_size, model_config.intermediate_size, model_config.num_hidden_layers
    matmul_params = layers * (4 * h * h + 2 * h * i) + h * h + h * model_config.vocab_size
    return 6.0 * matmul_params + 12.0 * layers * seq_len * h


def measure_matmul_tflops(dtype, size: int = 2048, repeats: int = 3) -> float:
    """This host's matmul ceiling in the compute dtype (bf16 in, float32 accumulation)."""
    a = jnp.ones((size, size), dtype)
    f = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
    f(a, a).block_until_ready()
    start = time.perf_counter()
    for _ in range(repeats):
        f(a, a).block_until_ready()
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def peak_tflops(override: float | None, dtype, num_devices: int) -> tuple[float, str]:
    """Peak FLOP/s of the whole mesh in TFLOP/s, and where the number comes from.

    Accelerators: per-device table (or `override`) times the device count. CPU: the measured
    matmul ceiling of each host (simulated CPU devices share the host's cores)."""
    if override is not None:
        return override * num_devices, f"configured {override} per device"
    kind = jax.devices()[0].device_kind
    for name, tflops in PEAK_TFLOPS.items():
        if name.lower() in kind.lower():
            return tflops * num_devices, f"{kind}: {tflops} per device"
    per_host = measure_matmul_tflops(dtype)
    return per_host * jax.process_count(), f"measured {kind} matmul ceiling {per_host:.3f} per host"


class MetricsWriter:
    """Writes logged steps to WORKDIR/metrics.jsonl and TensorBoard (process 0 only)."""

    def __init__(self, workdir: Path, resume_step: int, enabled: bool):
        self.enabled = enabled
        self.path = Path(workdir) / "metrics.jsonl"
        self.tensorboard = None
        if not enabled:
            return
        if self.path.exists():  # drop lines past the checkpoint we resume from: they are redone
            kept = [l for l in self.path.read_text().splitlines() if l and json.loads(l)["step"] <= resume_step]
            self.path.write_text("".join(l + "\n" for l in kept))
        from tensorboardX import SummaryWriter

        self.tensorboard = SummaryWriter(str(Path(workdir) / "tensorboard"), purge_step=resume_step + 1)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key != "step" and isinstance(value, int | float) and math.isfinite(value):
                self.tensorboard.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def summarize(metrics: dict, objective_name: str) -> dict:
    """Device sums of one step -> the logged numbers (ratios computed after the global sums)."""
    m = {k: jax.device_get(v) for k, v in metrics.items()}
    record = {"loss": float(m["loss"]), "grad_norm": float(m["grad_norm"]), "lr": float(m["lr"])}
    record["accuracy"] = float(m["correct"] / max(float(m["tokens"]), 1.0))
    for b, (ce, ok, n) in enumerate(zip(m["bucket_ce"], m["bucket_correct"], m["bucket_tokens"])):
        if n > 0:  # bucket b holds mask ratios in (b / 10, (b + 1) / 10]
            record[f"loss_r{b + 1:02d}"] = float(ce / n)
            record[f"accuracy_r{b + 1:02d}"] = float(ok / n)
    if objective_name == "elbo":
        record["bits_per_token"] = record["loss"] / math.log(2)
        record["perplexity_bound"] = math.exp(min(record["loss"], 700.0))
    return record
