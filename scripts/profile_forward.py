"""Where the forward's time goes on this CPU (a diagnostic, never a timed test).

Prints, for the roberta-base shape (batch 8 x 128 = 1024 tokens, hidden 768, vocabulary 50265):
  1. the rate of each product the forward runs, alone: float32, bf16 inputs with float32
     accumulation (what ops.matmul asks for), and the same bf16 product with its right operand
     stored transposed ([N, K], as the tied vocabulary decoder [V, H] is);
  2. the forward in --dtype (bf16 unless told) split into the encoder (token ids -> hidden states) and the MLM head with
     its vocabulary decoder, each jitted alone, beside the whole forward.
The first part is what a kernel or layout change can win; the second says where to spend it.
With --trace DIR, also a profiler trace of three whole forwards written to DIR (open it in
TensorBoard or xprof) and, where the `xprof` package is installed (it is not a dependency:
`pip install xprof`), the time per kind of XLA op per forward, so a flag or layout change can be
read off op by op.

    python scripts/profile_forward.py [--family roberta|modernbert] [--dtype bfloat16|float32] [--repeats 7] \\
        [--trace /tmp/trace]
    XLA_FLAGS=--xla_cpu_experimental_xnn_fusion_type=dot python scripts/profile_forward.py  # a flag's effect
"""

import argparse
import collections
import json
import os
import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dlm_jax.models.params import encoder_with_params

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import converted, cpu_description, hf_masked_lm, interleaved_medians  # noqa: E402

TOKENS, HIDDEN, VOCAB = 1024, 768, 50265


def wall_seconds(calls: dict, repeats: int) -> dict:
    """{name: median wall seconds} of {name: (jitted function, its arguments)}, timed in turn."""
    timed = {name: (lambda fn=fn, args=args: jax.block_until_ready(fn(*args))) for name, (fn, args) in calls.items()}
    return {name: seconds for name, (seconds, _) in interleaved_medians(timed, repeats).items()}


# (K, N) of each product per token: RoBERTa's q/k/v/output, FFN in and out; ModernBERT's fused
# Wqkv (and GeGLU Wi, the same shape), attention output, Wo; both end with the vocabulary decoder.
PRODUCTS = {
    "roberta": ((HIDDEN, HIDDEN), (HIDDEN, 3072), (3072, HIDDEN), (HIDDEN, VOCAB)),
    "modernbert": ((HIDDEN, 3 * HIDDEN), (HIDDEN, HIDDEN), (1152, HIDDEN), (HIDDEN, VOCAB)),
}


def product_rates(family: str, repeats: int):
    f32, bf16 = jnp.float32, jnp.bfloat16
    accumulate = lambda a, b: jnp.matmul(a, b, preferred_element_type=f32)
    print(f"{'product (M x K x N)':26s} {'f32':>8s} {'bf16':>8s} {'bf16, N x K operand':>20s}  GFLOP/s")
    for k, n in PRODUCTS[family]:
        x = jax.random.normal(jax.random.key(0), (TOKENS, k), f32)
        w = jax.random.normal(jax.random.key(1), (k, n), f32)
        w_t = jnp.asarray(np.asarray(w).T.copy())  # the same weights stored [N, K]
        x_bf16, w_bf16, w_t_bf16 = x.astype(bf16), w.astype(bf16), w_t.astype(bf16)
        product, accumulated = jax.jit(lambda a, b: a @ b), jax.jit(accumulate)
        transposed = jax.jit(lambda a, b: accumulate(a, b.T))
        seconds = wall_seconds(
            {
                "f32": (product, (x, w)),
                "bf16": (accumulated, (x_bf16, w_bf16)),
                "bf16, N x K operand": (transposed, (x_bf16, w_t_bf16)),
            },
            repeats,
        )
        flops = 2 * TOKENS * k * n / 1e9
        f32_rate, bf16_rate, transposed_rate = (flops / t for t in seconds.values())
        print(f"{f'{TOKENS} x {k} x {n}':26s} {f32_rate:8.0f} {bf16_rate:8.0f} {transposed_rate:20.0f}")


def forward_split(family: str, repeats: int, dtype: str):
    torch_model = hf_masked_lm(family, vocab=VOCAB, hidden=HIDDEN, layers=12, length=128)
    config, params = converted(torch_model)
    ids = jnp.asarray(np.random.default_rng(0).integers(3, VOCAB, size=(8, 128)).astype(np.int32))
    mask = jnp.ones_like(ids)
    graphdef, state = nnx.split(encoder_with_params(config, params, dtype=dtype))
    whole = jax.jit(lambda s, i, m: nnx.merge(graphdef, s)(i, m))
    encode = jax.jit(lambda s, i, m: nnx.merge(graphdef, s).encode(i, m))
    head = jax.jit(lambda s, h: nnx.merge(graphdef, s).logits_from_hidden(h))
    hidden = encode(state, ids, mask)
    parts = wall_seconds(
        {
            "whole forward": (whole, (state, ids, mask)),
            "encoder": (encode, (state, ids, mask)),
            "head + vocabulary decoder": (head, (state, hidden)),
        },
        repeats,
    )
    print(f"\n{family} {dtype} forward, batch 8 x 128, {config.num_hidden_layers} layers; median of {repeats}")
    for name, seconds in parts.items():
        print(f"{name:26s} {seconds:7.3f} s")
    return whole, (state, ids, mask)


def trace_ops(forward, args, directory: str, calls: int = 3):
    """A profiler trace of `calls` forwards in `directory`; with xprof, the ms per op kind per call."""
    jax.block_until_ready(forward(*args))
    jax.profiler.start_trace(directory)
    for _ in range(calls):
        jax.block_until_ready(forward(*args))
    jax.profiler.stop_trace()
    print(f"\ntrace of {calls} forwards in {directory}")
    try:
        from xprof.convert.raw_to_tool_data import xspace_to_tool_data
    except ImportError:
        print("(pip install xprof for the time per op kind)")
        return
    latest = sorted(Path(directory).rglob("*.xplane.pb"))[-1]  # this run's, if DIR held older ones
    events = json.loads(xspace_to_tool_data([str(latest)], "trace_viewer@", {})[0])["traceEvents"]
    per_kind = collections.Counter()
    for event in events:
        name = event.get("name", "")
        # XLA's ops only: the executor's own spans (Thunk*, Pjit*, ...) and thread-pool regions overlap them
        if event.get("ph") == "X" and not name.startswith(("$", "Thunk", "Threadpool", "Slinky", "Pjit", "Common")):
            per_kind[re.sub(r"\.\d+$", "", name)] += event.get("dur", 0) / 1e3 / calls
    print(f"{'op kind':32s} {'ms per forward':>14s}")
    for kind, ms in per_kind.most_common(12):
        print(f"{kind:32s} {ms:14.1f}")
    print(f"{'all ops':32s} {sum(per_kind.values()):14.1f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=("roberta", "modernbert"), default="roberta")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="of parts 2 and 3")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--trace", metavar="DIR", help="also write a profiler trace of the whole forward here")
    args = parser.parse_args()
    if args.trace:  # XLA's per-op trace annotations; read when the CPU backend starts, so set first
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_enable_xprof_traceme=true"
    print(f"CPU: {cpu_description()}; JAX {jax.__version__}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}\n")
    product_rates(args.family, args.repeats)
    forward, forward_args = forward_split(args.family, args.repeats, args.dtype)
    if args.trace:
        trace_ops(forward, forward_args, args.trace)


if __name__ == "__main__":
    main()
