"""Throughput accounting and the three metric sinks (console, TensorBoard, metrics.jsonl).

Model FLOPs of a step (docs/training.md): every token goes through the encoder, only scored
tokens through the vocabulary decoder (ops.vocab_cross_entropy skips the others, and the loss
does not depend on them):
    encoder: 6 * (layers * (4 h^2 + 2 h i) + h^2) + 12 * layers * seq_len * h   per token
    decoder: 6 * h * V                                                        per scored token
The first term counts the weights that take part in a matmul (attention and feed-forward
kernels, the MLM head's dense layer), the second attention's scores and weighted sum (2 matmuls
of 2 * seq_len * h FLOPs per token forward, times 3 for forward + backward). Remat's
recomputation is not counted (the usual MFU convention).
"""

import json
import math
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from etils import epath

from dlm_jax.train.checkpointing import is_remote

# Dense bf16 peak FLOP/s per device (vendor data sheets); override with peak_tflops.
PEAK_TFLOPS = {
    "H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0,
    "TPU v6": 918.0, "TPU v5p": 459.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v4": 275.0,
}


def step_flops(model_config, seq_len: int, tokens: float, scored_tokens: float) -> float:
    """Model FLOPs of a training step over `tokens` tokens of which `scored_tokens` are scored."""
    h, i, layers = model_config.hidden_size, model_config.intermediate_size, model_config.num_hidden_layers
    encoder = 6.0 * (layers * (4 * h * h + 2 * h * i) + h * h) + 12.0 * layers * seq_len * h
    return encoder * tokens + 6.0 * h * model_config.vocab_size * scored_tokens


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
    """Writes logged steps to WORKDIR/metrics.jsonl and TensorBoard (process 0 only).

    A remote workdir (gs://...) gets the same files, written another way: object stores cannot
    append (gcsfs silently overwrites instead), so metrics.jsonl is rewritten whole at each
    logged step; TensorBoard writes its event files into a local temporary directory, copied to
    WORKDIR/tensorboard/ at each logged step (tensorboardX's own GCS writer uploads again when
    garbage-collected, as late as interpreter exit)."""

    def __init__(self, workdir: epath.Path, resume_step: int, enabled: bool):
        self.enabled = enabled
        self.path = workdir / "metrics.jsonl"
        self.tensorboard_dir = workdir / "tensorboard"
        self.remote = is_remote(workdir)
        self.lines = []  # the file's content, kept for rewrites
        self.tensorboard = None
        self.local_tensorboard = None
        if not enabled:
            return
        if self.path.exists():  # drop lines past the checkpoint we resume from: they are redone
            self.lines = [l + "\n" for l in self.path.read_text().splitlines()
                          if l and json.loads(l)["step"] <= resume_step]
            self.path.write_text("".join(self.lines))
        from tensorboardX import SummaryWriter

        if self.remote:
            self.local_tensorboard = tempfile.TemporaryDirectory()
        logdir = self.local_tensorboard.name if self.remote else str(self.tensorboard_dir)
        self.tensorboard = SummaryWriter(logdir, purge_step=resume_step + 1)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        line = json.dumps(record) + "\n"
        if self.remote:
            self.lines.append(line)
            self.path.write_text("".join(self.lines))
        else:
            with self.path.open("a") as f:
                f.write(line)
        for key, value in record.items():
            if key != "step" and isinstance(value, int | float) and math.isfinite(value):
                self.tensorboard.add_scalar(key, value, record["step"])
        if self.remote:
            self.tensorboard.flush()
            self._copy_tensorboard()

    def _copy_tensorboard(self) -> None:
        self.tensorboard_dir.mkdir(parents=True, exist_ok=True)
        for file in Path(self.local_tensorboard.name).iterdir():
            (self.tensorboard_dir / file.name).write_bytes(file.read_bytes())

    def close(self) -> None:
        if self.tensorboard is None:
            return
        self.tensorboard.close()
        if self.remote:
            self._copy_tensorboard()
            self.local_tensorboard.cleanup()


def summarize(metrics: dict, objective_name: str) -> dict:
    """Device sums of one step -> the logged numbers (ratios computed after the global sums)."""
    m = {k: jax.device_get(v) for k, v in metrics.items()}
    record = {"loss": float(m["loss"]), "grad_norm": float(m["grad_norm"]), "lr": float(m["lr"])}
    record["scored_tokens"] = float(m["tokens"])
    record["accuracy"] = float(m["correct"] / max(float(m["tokens"]), 1.0))
    for b, (ce, ok, n) in enumerate(zip(m["bucket_ce"], m["bucket_correct"], m["bucket_tokens"])):
        if n > 0:  # bucket b holds mask ratios in (b / 10, (b + 1) / 10]
            record[f"loss_r{b + 1:02d}"] = float(ce / n)
            record[f"accuracy_r{b + 1:02d}"] = float(ok / n)
    if objective_name == "elbo":
        record["bits_per_token"] = record["loss"] / math.log(2)
        record["perplexity_bound"] = math.exp(min(record["loss"], 700.0))
    return record
