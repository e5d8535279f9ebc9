"""Train-step throughput: dlm-jax's jitted step vs a PyTorch AdamW step on transformers'
RobertaForMaskedLM, same model config, same batch, same CPU, one run; float32 and bf16.

    python scripts/bench_train.py [--hidden 256 --layers 4 --batch 8 --seq-len 128 --steps 5]

MFU = (FLOPs per token from dlm_jax.train.metrics.flops_per_token x tokens/s) / the matmul
ceiling measured here in the same dtype (bf16 inputs with float32 accumulation for bf16).
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from dlm_jax.models import COMPUTE_DTYPES, Encoder, EncoderConfig
from dlm_jax.train.config import MeshConfig, TrainConfig
from dlm_jax.train.mesh import make_mesh
from dlm_jax.train.metrics import flops_per_token, measure_matmul_tflops
from dlm_jax.train.step import TrainState, make_optimizer, make_train_step



def torch_matmul_tflops(dtype, size=2048, repeats=3):
    a = torch.ones(size, size, dtype=dtype)
    a @ a
    start = time.perf_counter()
    for _ in range(repeats):
        a @ a
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def bench_jax(model_config, batch, dtype, steps):
    config = TrainConfig(model=model_config, seq_len=batch.shape[1], batch_size=batch.shape[0],
                         dtype=dtype, mesh=MeshConfig(data=1), warmup_steps=1, steps=1000)
    mesh = make_mesh(1, 1)
    optimizer = make_optimizer(config)
    model = Encoder(model_config, rngs=nnx.Rngs(0), dtype=COMPUTE_DTYPES[dtype])
    graphdef, params = nnx.split(model)
    params = nnx.to_pure_dict(params)
    state = TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), None)
    step = jax.jit(make_train_step(config, graphdef, model_config, mesh, optimizer), donate_argnums=0)
    data = {"input_ids": jnp.asarray(batch), "prompt_mask": jnp.zeros(batch.shape, bool)}
    compiled = step.lower(state, data).compile()
    state, metrics = compiled(state, data)  # warm-up
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, data)
    jax.block_until_ready(metrics)
    return (time.perf_counter() - start) / steps


def bench_torch(model_config, batch, dtype, steps):
    from transformers import RobertaConfig, RobertaForMaskedLM

    hf = RobertaConfig(vocab_size=model_config.vocab_size, hidden_size=model_config.hidden_size,
                       num_hidden_layers=model_config.num_hidden_layers,
                       num_attention_heads=model_config.num_attention_heads,
                       intermediate_size=model_config.intermediate_size,
                       max_position_embeddings=model_config.max_position_embeddings,
                       type_vocab_size=1, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = RobertaForMaskedLM(hf).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    ids = torch.as_tensor(batch, dtype=torch.long)
    gen = torch.Generator().manual_seed(0)

    def one_step():
        # The same work as our step: a random mask ratio per row, masked input, CE on masked.
        ratio = torch.rand(ids.shape[0], 1, generator=gen)
        masked = torch.rand(ids.shape, generator=gen) < ratio
        labels = torch.where(masked, ids, torch.full_like(ids, -100))
        inputs = torch.where(masked, torch.full_like(ids, model_config.mask_token_id), ids)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            loss = model(input_ids=inputs, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    one_step()
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    return (time.perf_counter() - start) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=50265)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    model_config = EncoderConfig(vocab_size=args.vocab, hidden_size=args.hidden,
                                 num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                                 intermediate_size=4 * args.hidden, max_position_embeddings=args.seq_len + 2,
                                 mask_token_id=args.vocab - 1)
    batch = np.random.default_rng(0).integers(4, args.vocab - 1, (args.batch, args.seq_len), dtype=np.int32)
    tokens = batch.size
    flops = flops_per_token(model_config, args.seq_len) * tokens
    print(f"model hidden {args.hidden} x {args.layers} layers, vocab {args.vocab}; batch "
          f"{args.batch} x {args.seq_len}; {jax.devices()[0].device_kind}, torch threads "
          f"{torch.get_num_threads()}; FLOPs/step {flops:.3e}")
    print("| dtype | matmul ceiling JAX / torch (TFLOP/s) | dlm-jax tok/s | MFU | PyTorch tok/s | MFU | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for dtype in ("float32", "bfloat16"):
        ceiling_jax = measure_matmul_tflops(COMPUTE_DTYPES[dtype])
        ceiling_torch = torch_matmul_tflops(getattr(torch, dtype))
        t_jax = bench_jax(model_config, batch, dtype, args.steps)
        t_torch = bench_torch(model_config, batch, dtype, args.steps)
        print(f"| {dtype} | {ceiling_jax:.3f} / {ceiling_torch:.3f} | {tokens / t_jax:.0f} | "
              f"{flops / t_jax / 1e12 / ceiling_jax:.1%} | {tokens / t_torch:.0f} | "
              f"{flops / t_torch / 1e12 / ceiling_torch:.1%} | {t_torch / t_jax:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
