"""Benchmark of the on-device sampler (a script, never a timed test).

For each shape (tiny, small, roberta-base; vocabulary 50265) and compute dtype, on one random
RobertaForMaskedLM converted with dlm_jax.convert:
  (a) overhead = time(generate, S steps) / (S * time(one jitted forward of the same shape));
  (b) speed-up over a PyTorch loop of the same LLaDA-style greedy low_confidence algorithm over
      transformers' RobertaForMaskedLM with the same weights;
  (c) compile time of the sampler (first call minus a warm call).
Batch 8, 128 positions (64 prompt + 64 generated). Prints a Markdown table.

    python scripts/bench_sampler.py [--sizes tiny small base] [--steps 16] [--dtypes float32 bfloat16]
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import nnx

from dlm_jax import sampling
from dlm_jax.api import Model, build_encoder
from dlm_jax.convert import encoder_config_from_hf, params_from_hf

SHAPES = {
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}
BATCH, PROMPT, GEN = 8, 64, 64
MASK_ID = 50264


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def torch_generate(model, canvas, steps):
    """LLaDA's loop (one block, even split, greedy, low_confidence) written plainly in PyTorch."""
    x = canvas.clone()
    masked_total = (x == MASK_ID).sum(1)
    counts = [(masked_total // steps + (s < masked_total % steps).long()) for s in range(steps)]
    with torch.inference_mode():
        for s in range(steps):
            mask_index = x == MASK_ID
            logits = model(input_ids=x).logits.float()
            proposal = logits.argmax(-1)
            confidence = torch.softmax(logits, -1).gather(-1, proposal[..., None])[..., 0]
            confidence = torch.where(mask_index, confidence, -torch.inf)
            commit = torch.zeros_like(mask_index)
            for row in range(x.shape[0]):
                _, chosen = torch.topk(confidence[row], int(counts[s][row]))
                commit[row, chosen] = True
            x = torch.where(commit, proposal, x)
    return x


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
    rows = []
    for dtype in dtypes:
        model = Model(config, build_encoder(config, params, dtype=dtype))
        run = lambda: sampling.generate(model, prompts, gen_length=GEN, steps=steps)
        start = time.perf_counter()
        ours = run()
        first = time.perf_counter() - start
        t_generate = best_of(run, repeats)

        graphdef, state = nnx.split(model.encoder)
        forward = jax.jit(lambda s, ids: nnx.merge(graphdef, s)(ids))
        ids = jnp.asarray(canvas.numpy(), jnp.int32)
        forward(state, ids).block_until_ready()
        t_forward = best_of(lambda: forward(state, ids).block_until_ready(), max(repeats, 3))

        torch_model = hf.to(torch.bfloat16 if dtype == "bfloat16" else torch.float32)
        theirs = torch_generate(torch_model, canvas, steps)
        t_torch = best_of(lambda: torch_generate(torch_model, canvas, steps), repeats)
        agree = float((theirs.numpy() == ours).mean())
        rows.append((name, dtype, steps, t_generate, t_forward, t_generate / (steps * t_forward),
                     t_torch, t_torch / t_generate, first - t_generate, agree))
        hf = hf.float()
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); batch {BATCH}, {PROMPT}+{GEN} positions, {args.steps} steps")
    header = ("| shape | dtype | steps | generate s | forward s | overhead (a) | torch loop s | speed-up (b) "
              "| compile s (c) | same tokens as torch |")
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for name in args.sizes:
        for row in bench_shape(name, args.steps, args.dtypes, args.repeats):
            n, d, s, tg, tf, ov, tt, sp, tc, ag = row
            print(f"| {n} | {d} | {s} | {tg:.3f} | {tf:.4f} | {ov:.3f} | {tt:.3f} | {sp:.2f}x | {tc:.1f} | {ag:.1%} |",
                  flush=True)


if __name__ == "__main__":
    main()
