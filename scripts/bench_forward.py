"""Forward-pass speed: dlm-jax's jitted encoder vs transformers' PyTorch RobertaForMaskedLM and
ModernBertForMaskedLM.

Same random weights (the transformers model converted by dlm_jax.convert), same CPU, same
batch, one run. Prints the CPU and its matrix instructions, then per family the median of
--repeats timed calls after warm-up (interleaved) for PyTorch float32, ours in float32, and ours
in bfloat16 compute (bf16 matmul inputs, float32 accumulation), with the speed-up over PyTorch
float32.

    python scripts/bench_forward.py                       # roberta-base shape, batch 8 x 128, both families
    python scripts/bench_forward.py --family modernbert  # one family
    python scripts/bench_forward.py --layers 2 --hidden 256 --repeats 3   # a quick run
    python scripts/bench_forward.py --single-thread      # both libraries on one core

On a machine shared with other jobs the wall times of both libraries suffer, PyTorch's more
(its worker threads wait at barriers for descheduled peers); the CPU seconds column (all
threads of this process) and --single-thread are less sensitive to that.
"""

import argparse
import os

from bench_common import converted, cpu_description, hf_masked_lm, interleaved_medians

TITLES = {"roberta": "RoBERTa", "modernbert": "ModernBERT"}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=50265)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--family", choices=("both", *TITLES), default="both")
    parser.add_argument("--single-thread", action="store_true", help="run both libraries on one thread")
    args = parser.parse_args()
    if args.single_thread:  # before JAX and torch start their thread pools
        flags = " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + flags
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    from flax import nnx

    from dlm_jax.models.params import encoder_with_params

    if args.single_thread:
        torch.set_num_threads(1)
    print(
        f"CPU: {cpu_description()}; JAX {jax.__version__} ({jax.devices()[0].platform}), torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads)"
    )
    forward = jax.jit(lambda graphdef, state, ids, mask: nnx.merge(graphdef, state)(ids, mask), static_argnums=0)
    for family in TITLES if args.family == "both" else (args.family,):
        torch_model = hf_masked_lm(family, vocab=args.vocab, hidden=args.hidden, layers=args.layers, length=args.length)
        config, params = converted(torch_model)
        rng = np.random.default_rng(0)
        ids = rng.integers(3, args.vocab, size=(args.batch, args.length)).astype(np.int32)
        mask = np.ones_like(ids)
        ids_t, mask_t = torch.from_numpy(ids).long(), torch.from_numpy(mask).long()

        def torch_forward(torch_model=torch_model, ids_t=ids_t, mask_t=mask_t):
            with torch.inference_mode():
                return torch_model(input_ids=ids_t, attention_mask=mask_t).logits

        reference = torch_forward().numpy()
        ids_j, mask_j = jnp.asarray(ids), jnp.asarray(mask)
        fns = {"pytorch float32": torch_forward}
        for dtype in ("float32", "bfloat16"):
            graphdef, state = nnx.split(encoder_with_params(config, params, dtype=dtype))
            run = lambda graphdef=graphdef, state=state, ids_j=ids_j, mask_j=mask_j: forward(
                graphdef, state, ids_j, mask_j
            ).block_until_ready()
            error = float(np.abs(np.asarray(run()) - reference).max())
            print(f"{TITLES[family]} dlm-jax {dtype}: max |logits - pytorch| = {error:.2e}")
            fns[f"dlm-jax {dtype}"] = run
        results = interleaved_medians(fns, args.repeats)

        base = results["pytorch float32"][0]
        print(
            f"\n{TITLES[family]} MLM forward, batch {args.batch} x {args.length}, {args.layers} layers, hidden "
            f"{args.hidden}, intermediate {config.intermediate_size}, vocab {args.vocab}; median of "
            f"{args.repeats}; load average {os.getloadavg()[0]:.1f}"
        )
        print(f"{'':18s} {'seconds':>8s} {'vs pytorch fp32':>16s} {'CPU seconds':>12s}")
        for name, (seconds, cpu) in results.items():
            print(f"{name:18s} {seconds:8.3f} {base / seconds:15.2f}x {cpu:12.3f}")
        print(flush=True)


if __name__ == "__main__":
    main()
