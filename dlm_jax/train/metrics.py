"""Throughput accounting, the console (one stream: stderr, with a progress bar on a terminal)
and the metric sinks (TensorBoard, metrics.jsonl).

Model FLOPs of a step (docs/training.md): every token goes through the encoder, only scored
tokens through the vocabulary decoder (ops.vocab_cross_entropy skips the others, and the loss
does not depend on them):
    encoder: 6 * N + 12 * layers * seq_len * h   per token
    decoder: 6 * h * V                           per scored token
N counts the weights that take part in a matmul: every kernel of the parameter tree (attention
and feed-forward, the MLM head's dense layer; embedding lookups are free), so each family's
layout counts as built (BERT: layers * (4 h^2 + 2 h i) + h^2; ModernBERT's gated feed-forward
has 3 h i). The second term is attention's scores and weighted sum (2 matmuls of 2 * seq_len * h
FLOPs per token forward, times 3 for forward + backward). Remat's recomputation is not counted
(the usual MFU convention).
"""

import functools
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from etils import epath
from tqdm import tqdm

from dlm_jax.models.params import shapes

# Dense bf16 peak FLOP/s per device (vendor data sheets); override with peak_tflops.
PEAK_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,
    "A100": 312.0,
    "L4": 121.0,
    "A10": 125.0,
    "TPU v6": 918.0,
    "TPU v5p": 459.0,
    "TPU v5 lite": 197.0,
    "TPU v5e": 197.0,
    "TPU v4": 275.0,
}


@functools.lru_cache
def matmul_weights(model_config) -> int:
    """Weights of the encoder's matmul kernels (embedding tables and the decoder excluded)."""
    return sum(math.prod(shape) for path, shape in shapes(model_config).items() if path.endswith("kernel"))


def step_flops(model_config, seq_len: int, tokens: float, scored_tokens: float) -> float:
    """Model FLOPs of a training step over `tokens` tokens of which `scored_tokens` are scored."""
    h, layers = model_config.hidden_size, model_config.num_hidden_layers
    encoder = 6.0 * matmul_weights(model_config) + 12.0 * layers * seq_len * h
    return encoder * tokens + 6.0 * h * model_config.vocab_size * scored_tokens


class Throughput:
    """Step time, tokens/s, model TFLOP/s and MFU over the steps since the last logged one."""

    def __init__(self, config, peak: float):
        self.model, self.seq_len, self.peak = config.model, config.seq_len, peak
        self.tokens_per_step = config.batch_size * config.seq_len
        self.start, self.steps = time.perf_counter(), 0

    def tick(self) -> None:
        self.steps += 1

    def record(self, step: int, metrics: dict, objective_name: str) -> dict:
        """The logged line of `step` (its device metrics summarised) with the interval's rates;
        starts the next interval. Call after the step's results are on the host."""
        step_time = (time.perf_counter() - self.start) / max(self.steps, 1)
        record = {"step": step, **summarize(metrics, objective_name)}
        record["step_time"] = step_time
        record["tokens_per_s"] = self.tokens_per_step / step_time
        # Model FLOPs of the logged step (its scored tokens) over the interval's mean time.
        flops = step_flops(self.model, self.seq_len, self.tokens_per_step, record["scored_tokens"])
        record["tflops"] = flops / step_time / 1e12
        record["mfu"] = record["tflops"] / self.peak
        self.start, self.steps = time.perf_counter(), 0
        return record


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
    source = f"measured {kind} matmul ceiling {per_host:.3f} per host"
    if jnp.dtype(dtype) != jnp.float32:
        source += slower_than_float32(per_host, measure_matmul_tflops(jnp.float32))
    return per_host * jax.process_count(), source


def slower_than_float32(low_precision: float, float32: float) -> str:
    """The start-up line's advice when this CPU's bf16 products are clearly slower than its
    float32 ones (a CPU without bf16 matrix instructions, e.g. AVX2 only, converts them)."""
    if low_precision >= 0.8 * float32:
        return ""
    return (
        f"; bf16 products are slower than float32 ({float32:.3f}) on this CPU: "
        "a wide model may train faster with --set dtype=float32"
    )


def say(message: str, *, every_process: bool = False) -> None:
    """One console line on stderr, above the progress bar when there is one (process 0 only,
    unless every_process)."""
    if every_process or jax.process_index() == 0:
        tqdm.write(message, file=sys.stderr)


def progress_bar(start: int, total: int) -> tqdm:
    """Steps done, rate and ETA on process 0 when stderr is a terminal (tqdm leaves pipes and log
    files alone; the logged lines say the same there)."""
    return tqdm(
        initial=start,
        total=total,
        unit="step",
        file=sys.stderr,
        dynamic_ncols=True,
        leave=False,
        disable=None if jax.process_index() == 0 else True,
    )


def progress_line(record: dict, total: int) -> str:
    parts = [f"step {record['step']}/{total}", f"loss {record['loss']:.4f}"]
    if "accuracy" in record:
        parts.append(f"acc {record['accuracy']:.3f}")
    if "bits_per_token" in record:
        parts.append(f"{record['bits_per_token']:.3f} bits/tok")
    parts += [
        f"gnorm {record['grad_norm']:.3f}",
        f"lr {record['lr']:.2e}",
        f"{record['step_time'] * 1e3:.0f} ms/step",
        f"{record['tokens_per_s']:.0f} tok/s",
        f"{record['tflops']:.3f} TFLOP/s",
        f"MFU {100 * record['mfu']:.1f}%",
    ]
    return " | ".join(parts)


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
        from dlm_jax.train.checkpointing import is_remote  # checkpointing imports `say` from here

        self.remote = is_remote(workdir)
        self.lines = []  # the file's content, kept for rewrites
        self.tensorboard = None
        self.local_tensorboard = None
        if not enabled:
            return
        if self.path.exists():  # drop lines past the checkpoint we resume from: they are redone
            self.lines = [
                line + "\n"
                for line in self.path.read_text().splitlines()
                if line and json.loads(line)["step"] <= resume_step
            ]
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
