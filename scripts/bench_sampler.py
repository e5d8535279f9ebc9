"""Benchmark of the on-device sampler (a script, never a timed test).

For each shape (tiny, small, roberta-base; vocabulary 50265) and compute dtype, on one random
RobertaForMaskedLM converted with dlm_jax.convert (same weights, same prompts, same steps):
  (a) overhead = time(generate, S steps) / (S * time(one jitted forward of the same shape, all
      128 positions through the vocabulary head));
  (b) speed-up over a PyTorch loop of the same LLaDA-style greedy low_confidence algorithm over
      transformers' RobertaForMaskedLM (all 128 positions through the head every step, as in
      LLaDA): in float32, and for the bfloat16 row also under torch.autocast("cpu", bfloat16)
      (bf16 matmuls, float32 LayerNorm/softmax, like ours); PyTorch runs at 1 thread and at all
      threads and the faster counts;
  (c) compile time of the sampler (first call minus the median warm call).
Batch 8, 128 positions (64 prompt + 64 generated), one block. Times are medians of --repeats
runs, every contender interleaved in each repeat so a shared machine's load hits all alike.
"same tokens" is the share of the 8 x 64 generated tokens equal to the PyTorch loop's (float32
loop for float32 rows, autocast loop for bfloat16 rows). Prints a Markdown table.

    python scripts/bench_sampler.py [--sizes tiny small base] [--steps 16] [--dtypes float32 bfloat16]
"""

import argparse
import contextlib
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import nnx

from dlm_jax import sampling
from dlm_jax.api import Model
from dlm_jax.models.params import encoder_with_params
from dlm_jax.convert import encoder_config_from_hf, params_from_hf

SHAPES = {
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}
BATCH, PROMPT, GEN = 8, 64, 64
MASK_ID = 50264


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def torch_generate(model, canvas, steps, autocast=False):
    """LLaDA's loop (one block, even split, greedy, low_confidence) written plainly in PyTorch."""
    x = canvas.clone()
    masked_total = (x == MASK_ID).sum(1)
    counts = [(masked_total // steps + (s < masked_total % steps).long()) for s in range(steps)]
    precision = torch.autocast("cpu", torch.bfloat16) if autocast else contextlib.nullcontext()
    with torch.inference_mode(), precision:
        for s in range(steps):
            mask_index = x == MASK_ID
            logits = model(input_ids=x).logits.float()
            logits[..., MASK_ID] = -torch.inf  # a mask is never proposed (as in dlm_jax)
            proposal = logits.argmax(-1)
            confidence = torch.softmax(logits, -1).gather(-1, proposal[..., None])[..., 0]
            confidence = torch.where(mask_index, confidence, -torch.inf)
            commit = torch.zeros_like(mask_index)
            for row in range(x.shape[0]):
                _, chosen = torch.topk(confidence[row], int(counts[s][row]))
                commit[row, chosen] = True
            x = torch.where(commit, proposal, x)
    return x.numpy()


def with_threads(threads, fn):
    def run():
        torch.set_num_threads(threads)
        return fn()
    return run


def bench_shape(name, steps, dtypes, repeats):
    torch.manual_seed(0)
    hf_config = transformers.RobertaConfig(vocab_size=50265, max_position_embeddings=514, **SHAPES[name])
    hf = transformers.RobertaForMaskedLM(hf_config).eval()
    tensors = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    hf_dict = hf_config.to_dict() | {"model_type": "roberta", "mask_token_id": MASK_ID}
    config = encoder_config_from_hf(hf_dict)
    params, _ = params_from_hf(tensors, config)

    rng = np.random.default_rng(0)
    prompts = rng.integers(3, 50000, (BATCH, PROMPT))
    prompts[:, 0] = 0
    canvas = torch.tensor(np.concatenate([prompts, np.full((BATCH, GEN), MASK_ID)], 1))
    ids = jnp.asarray(canvas.numpy(), jnp.int32)
    contenders, compile_s = {}, {}
    for dtype in dtypes:
        model = Model(config, encoder_with_params(config, params, dtype=dtype))
        run = lambda model=model: sampling.generate(model, prompts, gen_length=GEN, steps=steps)
        compile_s[dtype], _ = timed(run)
        graphdef, state = nnx.split(model.encoder)
        forward = jax.jit(lambda s, ids, graphdef=graphdef: nnx.merge(graphdef, s)(ids))
        forward(state, ids).block_until_ready()
        contenders[("generate", dtype)] = run
        contenders[("forward", dtype)] = lambda forward=forward, state=state: forward(state, ids).block_until_ready()
    # PyTorch at 1 thread and at all threads: the faster counts (its OpenMP threads slow down
    # sharply when other jobs share the cores, JAX's much less).
    cores = torch.get_num_threads()
    for threads in sorted({1, cores}):
        contenders[("torch", "float32", threads)] = with_threads(threads, lambda: torch_generate(hf, canvas, steps))
        if "bfloat16" in dtypes:
            contenders[("torch", "bfloat16", threads)] = with_threads(
                threads, lambda: torch_generate(hf, canvas, steps, autocast=True))
    times = {k: [] for k in contenders}
    outputs = {}
    for _ in range(repeats):  # interleaved: each repeat times every contender once
        for k, fn in contenders.items():
            t, outputs[k] = timed(fn)
            times[k].append(t)
    torch.set_num_threads(cores)
    t = {k: float(np.median(v)) for k, v in times.items()}
    best = {d: min((t[k], k[2]) for k in t if k[:2] == ("torch", d)) for d in ("float32", "bfloat16") if ("torch", d, 1) in t}
    rows = []
    for dtype in dtypes:
        ours = outputs[("generate", dtype)][:, PROMPT:]
        theirs = outputs[("torch", dtype, 1)][:, PROMPT:]
        rows.append(dict(shape=name, dtype=dtype, steps=steps, generate=t[("generate", dtype)],
                         forward=t[("forward", dtype)], torch=best["float32"], torch_bf16=best.get("bfloat16"),
                         compile=compile_s[dtype] - t[("generate", dtype)], agree=float((ours == theirs).mean())))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); batch {BATCH}, {PROMPT}+{GEN} positions, {args.steps} steps, "
          f"median of {args.repeats}; load average {os.getloadavg()[0]:.1f} at start")
    header = ("| shape | dtype | generate s | forward s | overhead (a) | torch fp32 loop s (threads) | speed-up (b) "
              "| torch bf16 autocast loop s (threads) | speed-up vs autocast | compile s (c) | same tokens |")
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for name in args.sizes:
        for r in bench_shape(name, args.steps, args.dtypes, args.repeats):
            (t32, n32), bf16 = r["torch"], r["torch_bf16"]
            autocast = f"{bf16[0]:.3f} ({bf16[1]}) | {bf16[0] / r['generate']:.2f}x" if bf16 else "- | -"
            print(f"| {r['shape']} | {r['dtype']} | {r['generate']:.3f} | {r['forward']:.4f} | "
                  f"{r['generate'] / (r['steps'] * r['forward']):.3f} | {t32:.3f} ({n32}) | "
                  f"{t32 / r['generate']:.2f}x | {autocast} | {r['compile']:.1f} | {r['agree']:.1%} |",
                  flush=True)


if __name__ == "__main__":
    main()
