"""Train-step throughput: dlm-jax's jitted step vs a PyTorch AdamW step on transformers'
RobertaForMaskedLM and ModernBertForMaskedLM, same weights, same batch and masks, same CPU, one
run; float32 and bf16.

    python scripts/bench_train.py [--family both --hidden 256 --layers 4 --batch 8 --seq-len 128 --steps 5]
    python scripts/bench_train.py --dtypes float32   # a CPU without bf16 matrix instructions (avx2 only),
                                                     # where PyTorch's bf16 products crawl (about 1 GFLOP/s)

Both sides train on the same masked batches: PyTorch gets the corruption our step draws
(ratio_set, key fold_in(seed, step)). The two then compute the same loss; ours decodes only the
scored tokens (ops.vocab_cross_entropy), RobertaForMaskedLM decodes every token. MFU = model
FLOPs (dlm_jax.train.metrics.step_flops: encoder for every token, decoder for scored tokens, the
same count for both) per second / the matmul ceiling measured here in the same dtype (bf16
inputs with float32 accumulation for bf16). Times are medians over the timed steps.
"""

import argparse
import copy
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from bench_common import converted, cpu_description, hf_masked_lm

from dlm_jax import diffusion
from dlm_jax.models import COMPUTE_DTYPES
from dlm_jax.models.params import abstract_encoder
from dlm_jax.train.config import MeshConfig, TrainConfig
from dlm_jax.train.mesh import make_mesh
from dlm_jax.train.metrics import measure_matmul_tflops, step_flops
from dlm_jax.train.step import TrainState, make_optimizer, make_train_step


def torch_matmul_tflops(dtype, size=2048, repeats=3):
    a = torch.ones(size, size, dtype=dtype)
    a @ a
    start = time.perf_counter()
    for _ in range(repeats):
        a @ a
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def train_config(model_config, batch, dtype):
    return TrainConfig(
        model=model_config,
        seq_len=batch.shape[1],
        batch_size=batch.shape[0],
        dtype=dtype,
        mesh=MeshConfig(data=1),
        warmup_steps=1,
        steps=1000,
    )


def corruptions(config, batch, steps):
    """The (masked inputs, scored mask) of our step s = 0 .. steps - 1, as NumPy arrays."""
    model = config.model
    eligible = diffusion.eligible_positions(
        batch, np.zeros(batch.shape, bool), pad_id=model.pad_token_id, special_ids=model.special_token_ids, prefix_len=0
    )
    out = []
    for step in range(steps):
        key = jax.random.fold_in(jax.random.key(config.seed), step)
        c = diffusion.corrupt(
            key, batch, eligible, config.objective, mask_token_id=model.mask_token_id, vocab_size=model.vocab_size
        )
        out.append((np.asarray(c.input_ids), np.asarray(c.target_mask)))
    return out


def median_step_time(one_step, steps):
    one_step(0)  # warm-up
    times = []
    for s in range(1, steps + 1):
        start = time.perf_counter()
        one_step(s)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def bench_jax(model_config, params, batch, dtype, steps):
    config = train_config(model_config, batch, dtype)
    mesh = make_mesh(1, 1)
    optimizer = make_optimizer(config)
    graphdef, _ = abstract_encoder(model_config, dtype=dtype)
    params = jax.tree.map(jnp.asarray, params)
    state = [TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), None)]
    step = jax.jit(make_train_step(config, graphdef, mesh, optimizer), donate_argnums=0)
    data = {"input_ids": jnp.asarray(batch), "prompt_mask": jnp.zeros(batch.shape, bool)}
    compiled = step.lower(state[0], data).compile()

    def one_step(_):
        state[0], metrics = compiled(state[0], data)
        jax.block_until_ready(metrics)

    return median_step_time(one_step, steps)


def bench_torch(torch_model, batch, dtype, masks):
    model = copy.deepcopy(torch_model).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    ids = torch.as_tensor(batch, dtype=torch.long)

    def one_step(s):
        inputs, scored = (torch.from_numpy(a.copy()) for a in masks[s])
        labels = torch.where(scored, ids, torch.full_like(ids, -100))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            loss = model(input_ids=inputs.long(), labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return median_step_time(one_step, len(masks) - 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=("both", "roberta", "modernbert"), default="both")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=50265)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--dtypes", nargs="+", choices=("float32", "bfloat16"), default=["float32", "bfloat16"])
    args = parser.parse_args()
    print(
        f"CPU: {cpu_description()}; JAX {jax.__version__}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)"
    )
    batch = np.random.default_rng(0).integers(4, args.vocab - 1, (args.batch, args.seq_len), dtype=np.int32)
    for family in ("roberta", "modernbert") if args.family == "both" else (args.family,):
        torch_model = hf_masked_lm(
            family, vocab=args.vocab, hidden=args.hidden, layers=args.layers, length=args.seq_len
        )
        model_config, params = converted(torch_model)
        model_config = model_config.replace(mask_token_id=args.vocab - 1)
        masks = corruptions(train_config(model_config, batch, "float32"), batch, args.steps + 1)
        scored = float(np.mean([m.sum() for _, m in masks]))
        flops = step_flops(model_config, args.seq_len, batch.size, scored)
        print(
            f"\n{family}: hidden {args.hidden} x {args.layers} layers, intermediate "
            f"{model_config.intermediate_size}, vocab {args.vocab}; batch {args.batch} x {args.seq_len}, "
            f"{scored:.0f} scored tokens per step on average; model FLOPs/step {flops:.3e}"
        )
        print("| dtype | matmul ceiling JAX / torch (TFLOP/s) | dlm-jax tok/s | MFU | PyTorch tok/s | MFU | speed-up |")
        print("|---|---|---|---|---|---|---|")
        times = {}
        for dtype in args.dtypes:
            ceiling_jax = measure_matmul_tflops(COMPUTE_DTYPES[dtype])
            ceiling_torch = torch_matmul_tflops(getattr(torch, dtype))
            times[dtype] = t_jax, t_torch = (
                bench_jax(model_config, params, batch, dtype, args.steps),
                bench_torch(torch_model, batch, dtype, masks),
            )
            print(
                f"| {dtype} | {ceiling_jax:.3f} / {ceiling_torch:.3f} | {batch.size / t_jax:.0f} | "
                f"{flops / t_jax / 1e12 / ceiling_jax:.1%} | {batch.size / t_torch:.0f} | "
                f"{flops / t_torch / 1e12 / ceiling_torch:.1%} | {t_torch / t_jax:.2f}x |",
                flush=True,
            )
        if len(times) == 2:
            print(f"{family}: dlm-jax bf16 vs PyTorch float32: {times['float32'][1] / times['bfloat16'][0]:.2f}x")


if __name__ == "__main__":
    main()
