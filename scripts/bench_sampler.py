"""Benchmark of the on-device sampler (a script, never a timed test).

Part 1 (--sizes). For each shape (tiny, small, roberta-base; vocabulary 50265) and compute dtype, on one random
RobertaForMaskedLM converted with dlm_jax.convert (same weights, same prompts, same steps):
  (a) overhead = time(generate, S steps) / (S * time(one jitted forward of the same shape, all
      128 positions through the vocabulary head));
  (b) speed-up over a PyTorch loop of the same LLaDA-style greedy low_confidence algorithm over
      transformers' RobertaForMaskedLM (all 128 positions through the head every step, as in
      LLaDA): in float32, and for the bfloat16 row also under torch.autocast("cpu", bfloat16)
      (bf16 matmuls, float32 LayerNorm/softmax, like ours); PyTorch runs at 1 thread and at all
      threads and the faster counts;
  (c) compile time of the sampler (first call minus the median warm call; 0 where a program
      compiled for an earlier row is reused).
Batch 8, 128 positions (64 prompt + 64 generated), one block. Times are medians of --repeats
runs, every contender interleaved in each repeat so a shared machine's load hits all alike.
"same tokens" is the share of the 8 x 64 generated tokens equal to the PyTorch loop's (float32
loop for float32 rows, autocast loop for bfloat16 rows). Prints a Markdown table.

Part 2 (--cache-sizes, --checkpoint): cached sampling, prompt 64 + 128 generated positions in
blocks of 32, greedy low_confidence with LLaDA's even split (--cache-steps 32: 8 steps and 4
tokens per step per block), batch 8. cache=None against cache="dual" at K = the block's steps
(refresh only at block starts, as Fast-dLLM's DualCache) and at each K of --refresh (the curve),
and cache="prefix": time, speed-up over cache=None, and the share of generated tokens equal to
cache=None's. Agreement means something only on a trained model: --checkpoint DIR (a dlm-jax model
dir, a training workdir or a HF dir) adds its rows, with prompts cut from real text (WikiText-2
valid, or --prompt-text FILE: held-out text of the model's own kind, where it is confident, such
as dlm_jax.data.default_held_out_corpus() for the quickstart); the random shapes (small: hidden
256 x 4 layers; base: roberta-base) are for speed. Beside them, a Fast-dLLM-style dual-cache loop
written here in PyTorch over transformers' model with the same weights and the same rule (full
forward at each block start keeping every layer's keys and values, then forwards over the block
only; commits as above), at 1 thread and at all threads, the faster counting; "same tokens" there
is against our dual cache. A control row, cache=None with bfloat16 compute against float32,
measures how far rounding alone moves greedy decoding on the model. On the trained model a second
agreement column rewrites each block from the uncached run's text before it, so a changed commit
in one block no longer changes the blocks after it: what is left is the block's own steps (the
uncached row of that column, 100%, checks that the replay is exact). --threshold T (with
--checkpoint) adds Fast-dLLM's threshold rule (steps bound = gen length): none, dual refreshed at
block starts, dual with K = 2.

    python scripts/bench_sampler.py [--sizes tiny small base] [--steps 16] [--dtypes float32 bfloat16]
    python scripts/bench_sampler.py --sizes --cache-sizes small base [--checkpoint runs/quickstart]
        [--prompt-length 64 --gen-length 128 --block-length 32 --cache-steps 32 --refresh 1 2 4] [--threshold 0.9]
        [--prompt-text "$(python -c 'import dlm_jax.data as d; print(d.default_held_out_corpus())')"]
"""

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import nnx

import dlm_jax
from dlm_jax import sampling
from dlm_jax.api import Model
from dlm_jax.convert import encoder_config_from_hf, export_hf, params_from_hf
from dlm_jax.models.params import encoder_with_params, params_of

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import converted, cpu_description, hf_masked_lm  # noqa: E402

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
                threads, lambda: torch_generate(hf, canvas, steps, autocast=True)
            )
    times = {k: [] for k in contenders}
    outputs = {}
    for _ in range(repeats):  # interleaved: each repeat times every contender once
        for k, fn in contenders.items():
            t, outputs[k] = timed(fn)
            times[k].append(t)
    torch.set_num_threads(cores)
    t = {k: float(np.median(v)) for k, v in times.items()}
    best = {
        d: min((t[k], k[2]) for k in t if k[:2] == ("torch", d))
        for d in ("float32", "bfloat16")
        if ("torch", d, 1) in t
    }
    rows = []
    for dtype in dtypes:
        ours = outputs[("generate", dtype)][:, PROMPT:]
        theirs = outputs[("torch", dtype, 1)][:, PROMPT:]
        rows.append(
            dict(
                shape=name,
                dtype=dtype,
                steps=steps,
                generate=t[("generate", dtype)],
                forward=t[("forward", dtype)],
                torch=best["float32"],
                torch_bf16=best.get("bfloat16"),
                compile=max(compile_s[dtype] - t[("generate", dtype)], 0.0),
                agree=float((ours == theirs).mean()),
            )
        )
    return rows


# ---------------------------------------------------------------------------------------------
# Part 2: cached sampling.

WIKITEXT_VALID = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2-raw" / "wiki.valid.raw"


def even_counts(masks, steps):
    """LLaDA's even split of each row's masks [B] over `steps` steps: [steps, B]."""
    return [masks // steps + (s < masks % steps).long() for s in range(steps)]


def torch_parts(model):
    """(embeddings, layers, MLM head) of a transformers BERT or RoBERTa MLM."""
    base = model.roberta if hasattr(model, "roberta") else model.bert
    return base.embeddings, base.encoder.layer, (model.lm_head if hasattr(model, "lm_head") else model.cls)


def torch_block(layer, x, kv=None, start=0):
    """One transformers BERT block over x [B, W, H]; with kv (keys, values [B, heads, L, d] of
    the whole canvas), x is the window start .. start + W and its keys and values replace the
    cached ones there. Returns (output, x's keys and values)."""
    attention = layer.attention.self
    split = lambda t: t.view(*x.shape[:2], attention.num_attention_heads, -1).transpose(1, 2)
    q, k, v = split(attention.query(x)), split(attention.key(x)), split(attention.value(x))
    keys, values = k, v
    if kv is not None:
        keys, values = kv[0].clone(), kv[1].clone()
        keys[:, :, start : start + x.shape[1]], values[:, :, start : start + x.shape[1]] = k, v
    context = torch.nn.functional.scaled_dot_product_attention(q, keys, values)
    h = layer.attention.output(context.transpose(1, 2).reshape(x.shape), x)
    return layer.output(layer.intermediate(h), h), (k, v)


def torch_dual_cache_generate(model, canvas, prompt_length, block_length, steps, mask_id, position_offset):
    """Fast-dLLM's generate_with_dual_cache (greedy low_confidence, even split per block),
    written plainly over transformers' modules: per block, one full forward keeping every
    layer's keys and values, then steps over the block only (its keys and values recomputed,
    the prompt's and the masked suffix's read from the cache)."""
    embeddings, layers, head = torch_parts(model)
    x = canvas.clone()
    num_blocks = (x.shape[1] - prompt_length) // block_length
    per_block = steps // num_blocks
    positions = torch.arange(x.shape[1])[None].expand(x.shape[0], -1) + position_offset
    with torch.inference_mode():
        for b in range(num_blocks):
            start, end = prompt_length + b * block_length, prompt_length + (b + 1) * block_length
            counts = even_counts((x[:, start:end] == mask_id).sum(1), per_block)
            cache = None  # refreshed at the block's first step
            for i in range(per_block):
                lo, hi = (0, x.shape[1]) if cache is None else (start, end)
                h = embeddings(input_ids=x[:, lo:hi], position_ids=positions[:, lo:hi])
                fresh = []
                for j, layer in enumerate(layers):
                    h, layer_kv = torch_block(layer, h, None if cache is None else cache[j], start)
                    fresh.append(layer_kv)
                if cache is None:
                    cache, h = fresh, h[:, start:end]
                logits = head(h).float()
                logits[..., mask_id] = -torch.inf  # a mask is never proposed (as in dlm_jax)
                proposal = logits.argmax(-1)
                confidence = torch.softmax(logits, -1).gather(-1, proposal[..., None])[..., 0]
                block = x[:, start:end]
                confidence = torch.where(block == mask_id, confidence, -torch.inf)
                for row in range(x.shape[0]):
                    chosen = torch.topk(confidence[row], int(counts[i][row])).indices
                    block[row, chosen] = proposal[row, chosen]
    return x.numpy()


def text_prompts(tokenizer, batch, length, text: Path):
    """`batch` prompts of BOS + length - 1 tokens cut from the start of `text`."""
    ids = sampling.encode_prompt(tokenizer, text.read_text()[:200_000])
    bos, body = ids[:1], ids[1:]
    return np.stack([bos + body[i * length : (i + 1) * length - 1] for i in range(batch)])


def random_model(name):
    torch_model = hf_masked_lm(
        "roberta", vocab=50265, hidden=SHAPES[name]["hidden_size"], layers=SHAPES[name]["num_hidden_layers"], length=512
    )
    config, params = converted(torch_model)
    return config.replace(mask_token_id=MASK_ID), params, torch_model


def trained_model(path):
    """(config, params, tokenizer, transformers model with the same weights or None) of a
    checkpoint; the PyTorch loop covers BERT and RoBERTa."""
    import transformers

    model = dlm_jax.load(path)
    torch_model = None
    if model.config.model_type in ("bert", "roberta"):
        with tempfile.TemporaryDirectory() as tmp:
            export_hf(tmp, model.config, params_of(model.encoder))
            torch_model = transformers.AutoModelForMaskedLM.from_pretrained(tmp).eval()
    return model.config, params_of(model.encoder), model.tokenizer, torch_model


def bench_cache(label, config, params, torch_model, prompts, args, dtype, trained):
    """Rows of part 2 for one model: (cache, K, rule) -> time, speed-up and agreement against the
    same rule uncached. The control row ("none" in bfloat16 against float32) is the same exact
    sampler with only the rounding changed: the agreement an approximation cannot beat by much on
    this model, since one changed commit changes what greedy decoding writes after it.

    On a trained model a second agreement is measured without that inheritance: each block is
    written again from the uncached run's text before it (its prompt), so only the block's own
    steps can differ; the uncached sampler rewriting its own blocks this way is the check that
    the measure is exact (100%)."""
    gen, block, steps = args.gen_length, args.block_length, args.cache_steps
    per_block = steps // (gen // block)
    model = Model(config, encoder_with_params(config, params, dtype=dtype))
    rule = "low_confidence"
    control = ("none", "-", f"{rule}, bfloat16 (control)")  # compared with the float32 rule uncached
    # (model, generate options): each run, replayable from any prompt and generation length.
    specs = {("none", "-", rule): (model, dict(steps=steps))}
    for k in sorted(set(args.refresh) | {per_block}):
        specs[("dual", k, rule)] = (model, dict(steps=steps, cache="dual", refresh_every=k))
    specs[("prefix", per_block, rule)] = (model, dict(steps=steps, cache="prefix"))
    if dtype == "float32":
        specs[control] = (Model(config, encoder_with_params(config, params, dtype="bfloat16")), dict(steps=steps))
    if trained and args.threshold is not None:  # Fast-dLLM's setting; `gen` steps is only the bound
        threshold = f"threshold {args.threshold}"
        rule_args = dict(steps=gen, remasking="threshold", confidence_threshold=args.threshold)
        specs[("none", "-", threshold)] = (model, rule_args)
        for k in (None, 2):
            specs[("dual", k or "block", threshold)] = (model, dict(rule_args, cache="dual", refresh_every=k))

    def write(spec, start, length):
        """The spec's tokens after `start` [B, P + length]: steps scale with the length, so each
        block keeps its number of steps."""
        spec_model, options = spec
        options = dict(options, steps=options["steps"] * length // gen)
        return sampling.generate(spec_model, start, gen_length=length, block_length=block, **options)

    runs = {key: lambda spec=spec: write(spec, prompts, gen) for key, spec in specs.items()}
    canvas = torch.tensor(np.concatenate([prompts, np.full((len(prompts), gen), config.mask_token_id)], 1))
    if torch_model is not None and dtype == "float32":
        for threads in sorted({1, torch.get_num_threads()}):
            runs[("torch", threads, rule)] = with_threads(
                threads,
                lambda: torch_dual_cache_generate(
                    torch_model, canvas, prompts.shape[1], block, steps, config.mask_token_id, config.position_offset
                ),
            )
    first, outputs = {}, {}
    for key, fn in runs.items():  # the first call compiles; its tokens are the ones compared
        first[key], outputs[key] = timed(fn)
    times = {key: [] for key in runs}
    for _ in range(args.repeats):
        for key, fn in runs.items():
            times[key].append(timed(fn)[0])
    torch.set_num_threads(os.cpu_count())
    t = {key: float(np.median(v)) for key, v in times.items()}
    p = prompts.shape[1]
    same = lambda a, b: float((a[:, p:] == b[:, p:]).mean())

    def from_reference_text(key, reference):
        """Each block of run `key` written from `reference`'s text before it (the first block's
        is the prompt: the free run's first block)."""
        blocks = [
            write(specs[key], reference[:, :start], gen - (start - p))[:, start : start + block]
            for start in range(p + block, p + gen, block)
        ]
        return np.concatenate([outputs[key][:, : p + block], *blocks], 1)

    for key in runs:
        if key[0] == "torch":
            continue
        ref = ("none", "-", rule if key == control else key[2])
        forced = f"{same(from_reference_text(key, outputs[ref]), outputs[ref]):.1%}" if trained else "-"
        print(
            f"| {label} | {dtype} | {key[2]} | {key[0]} | {key[1]} | {t[key]:.3f} | {t[ref] / t[key]:.2f}x | "
            f"{same(outputs[key], outputs[ref]):.1%} | {forced} | {max(first[key] - t[key], 0.0):.1f} |",
            flush=True,
        )
    torch_runs = [key for key in runs if key[0] == "torch"]
    if torch_runs:
        best, dual = min(torch_runs, key=t.get), ("dual", per_block, rule)
        agree = same(outputs[best], outputs[dual])
        print(
            f"| {label} | {dtype} | {rule} | torch dual-cache loop ({best[1]} threads) | {per_block} | {t[best]:.3f} | "
            f"ours dual {t[best] / t[dual]:.2f}x faster | {agree:.1%} of ours dual | - | - |",
            flush=True,
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="*", default=list(SHAPES), choices=list(SHAPES), help="part 1")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache-sizes", nargs="*", default=[], choices=list(SHAPES), help="part 2")
    parser.add_argument("--checkpoint", help="part 2 on a trained model (agreement)")
    parser.add_argument("--cache-dtypes", nargs="+", default=["float32"])
    parser.add_argument("--prompt-length", type=int, default=64)
    parser.add_argument("--gen-length", type=int, default=128)
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--cache-steps", type=int, default=32)
    parser.add_argument("--refresh", type=int, nargs="*", default=[1, 2, 4], help="K of the curve")
    parser.add_argument(
        "--threshold", type=float, help="also rows of the threshold rule (Fast-dLLM's), none against dual"
    )
    parser.add_argument(
        "--prompt-text",
        type=Path,
        default=WIKITEXT_VALID,
        help="the --checkpoint's prompts are cut from this text (default: WikiText-2 valid); held-out text "
        "of the model's own domain measures agreement where the model is confident",
    )
    args = parser.parse_args()
    print(
        f"CPU: {cpu_description()}; jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); load average {os.getloadavg()[0]:.1f} at start"
    )
    if args.sizes:
        print(f"\nPart 1: batch {BATCH}, {PROMPT}+{GEN} positions, {args.steps} steps, median of {args.repeats}")
        header = (
            "| shape | dtype | generate s | forward s | overhead (a) | torch fp32 loop s (threads) | speed-up (b) "
            "| torch bf16 autocast loop s (threads) | speed-up vs autocast | compile s (c) | same tokens |"
        )
        print(header)
        print("|---" * (header.count("|") - 1) + "|")
    for name in args.sizes:
        for r in bench_shape(name, args.steps, args.dtypes, args.repeats):
            (t32, n32), bf16 = r["torch"], r["torch_bf16"]
            autocast = f"{bf16[0]:.3f} ({bf16[1]}) | {bf16[0] / r['generate']:.2f}x" if bf16 else "- | -"
            print(
                f"| {r['shape']} | {r['dtype']} | {r['generate']:.3f} | {r['forward']:.4f} | "
                f"{r['generate'] / (r['steps'] * r['forward']):.3f} | {t32:.3f} ({n32}) | "
                f"{t32 / r['generate']:.2f}x | {autocast} | {r['compile']:.1f} | {r['agree']:.1%} |",
                flush=True,
            )
    if not (args.cache_sizes or args.checkpoint):
        return
    print(
        f"\nPart 2: batch {BATCH}, prompt {args.prompt_length} + {args.gen_length} generated in blocks of "
        f"{args.block_length}, {args.cache_steps} steps, greedy (argmax) proposals, median of {args.repeats}"
    )
    header = (
        "| model | dtype | rule | cache | K | generate s | speed-up vs cache=None | same tokens as uncached "
        "| same tokens, each block from the uncached text "
        "| compile s |"
    )
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    models = []
    if args.checkpoint:
        config, params, tokenizer, torch_model = trained_model(args.checkpoint)
        need = args.prompt_length + args.gen_length
        if need > config.max_length:
            parser.error(
                f"{args.checkpoint} embeds {config.max_length} positions; lower --prompt-length + --gen-length ({need})"
            )
        models.append(
            (
                f"{Path(args.checkpoint).name} (checkpoint)",
                config,
                params,
                torch_model,
                text_prompts(tokenizer, BATCH, args.prompt_length, args.prompt_text),
                True,
            )
        )
    for name in args.cache_sizes:
        config, params, torch_model = random_model(name)
        prompts = np.random.default_rng(0).integers(3, 50000, (BATCH, args.prompt_length))
        prompts[:, 0] = 0
        models.append((f"{name} (random)", config, params, torch_model, prompts, False))
    for label, config, params, torch_model, prompts, trained in models:
        for dtype in args.cache_dtypes:
            bench_cache(label, config, params, torch_model, prompts, args, dtype, trained)


if __name__ == "__main__":
    main()
