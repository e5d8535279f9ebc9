"""The from-scratch recipe sweep behind configs/quickstart.py (docs/training.md, "Training from
scratch"): each variant of the quickstart preset trains on six Gutenberg novels and is scored on
their held-out tails.

Corpus: austen-emma, austen-persuasion, austen-sense, chesterton-brown, chesterton-thursday and
melville-moby_dick from ../shared/data/gutenberg; the first 95% of each book's lines train, the
rest is held out. The hard-wrapped lines of each paragraph are joined into one line (paragraphs
stay separated by a blank line), except for the `wrapped` variant. Every variant
gets a fresh 2048-token BPE trained on the same text, 600 steps unless it says otherwise, then
held-out CE at mask ratios 0.1 / 0.5 / 1.0 (evaluate.accuracy_by_ratio, 256 sequences) and a
greedy and a T = 0.8 sample per prompt.

    python scripts/recipe_sweep.py                    # every variant, about 1 h 30 on 2 idle cores
    python scripts/recipe_sweep.py --only base l8     # some of them
"""

import argparse
import json
import shutil
import time
from pathlib import Path

from dlm_jax.data.sources import joined_paragraphs

BOOKS = (
    "austen-emma",
    "austen-persuasion",
    "austen-sense",
    "chesterton-brown",
    "chesterton-thursday",
    "melville-moby_dick",
)
# The quickstart preset at the time of the sweep was this base: ModernBERT 128 x 3 layers, GeGLU
# intermediate 512, local_attention 32, batch 64 x 64, lr 2e-3, warmup 50, bf16.
BASE = ["model.intermediate_size=512", "model.local_attention=32", "batch_size=64", "warmup_steps=50", "steps=600"]
VARIANTS = {
    "wrapped": ["--wrapped"],  # the text as Gutenberg ships it
    "base": [],
    "base-seed1": ["seed=1"],
    "lr1e-3": ["lr=1e-3"],
    "lr3e-3": ["lr=3e-3"],
    "global": ['model.layer_types=["full_attention","full_attention","full_attention"]'],
    "l16": ["model.local_attention=16"],
    "l8": ["model.local_attention=8"],
    "l8-i256": ["model.local_attention=8", "model.intermediate_size=256"],
    "l8-b32x1200": ["model.local_attention=8", "batch_size=32", "steps=1200", "warmup_steps=100"],
    "steps1200": ["steps=1200"],
    "post-ln-bert": ["model.model_type=bert", "model.max_position_embeddings=66", "model.initializer_range=0.088"],
}
PROMPTS = ("The whale", "She was not")


def unwrapped(text: str) -> str:
    return "\n\n".join(joined_paragraphs(text)) + "\n"


def corpus(shared: Path, out: Path, unwrap: bool):
    for split in ("train", "heldout"):
        (out / split).mkdir(parents=True, exist_ok=True)
    for book in BOOKS:
        lines = (shared / "gutenberg" / f"{book}.txt").read_text(encoding="utf-8").splitlines(keepends=True)
        cut = len(lines) * 95 // 100
        for split, part in (("train", lines[:cut]), ("heldout", lines[cut:])):
            text = "".join(part)
            if unwrap:
                text = unwrapped(text)
            (out / split / f"{book}.txt").write_text(text, encoding="utf-8")


def run_variant(name, sets, shared, out):
    from dlm_jax import api, data, evaluate, sampling
    from dlm_jax.train import resolve_config, train

    wrapped = "--wrapped" in sets
    text = out / ("wrapped" if wrapped else "unwrapped")
    if not text.is_dir():
        corpus(shared, text, unwrap=not wrapped)
    workdir = out / "runs" / name
    shutil.rmtree(workdir, ignore_errors=True)
    config = resolve_config("quickstart", BASE + [s for s in sets if s != "--wrapped"], data=str(text / "train"))
    start = time.perf_counter()
    record = train(config, workdir)
    seconds = time.perf_counter() - start
    model = api.load(workdir)
    heldout = data.prepare_dataset(text / "heldout", model.tokenizer, config.seq_len, cache_dir=data.cache_home())
    ce = {
        r["ratio"]: r["ce"]
        for r in evaluate.accuracy_by_ratio(model, heldout, ratios=(0.1, 0.5, 1.0), batch_size=16, max_sequences=256)
    }
    prompts = [sampling.encode_prompt(model.tokenizer, p) for p in PROMPTS]
    width = max(len(p) for p in prompts)
    samples = {}
    for temperature in (0.0, 0.8):
        ids = sampling.generate(model, prompts, gen_length=32, steps=32, temperature=temperature, seed=0)
        samples[temperature] = sampling.generated_text(model.tokenizer, ids, width, eos_id=model.config.eos_token_id)
    return {
        "variant": name,
        "steps": config.steps,
        "batch": config.batch_size,
        "train_seconds": round(seconds),
        "seconds_per_step": record.get("step_time"),
        "ce": ce,
        "samples": samples,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared-data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--out", type=Path, default=Path("runs/recipe_sweep"))
    parser.add_argument("--only", nargs="*", choices=list(VARIANTS))
    args = parser.parse_args()
    rows = [run_variant(name, VARIANTS[name], args.shared_data, args.out) for name in args.only or VARIANTS]
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    print("| variant | steps x batch | held-out CE at ratio 0.1 / 0.5 / 1.0 (nats) | s/step |")
    print("|---|---|---|---|")
    for r in rows:
        ce = " / ".join(f"{r['ce'][k]:.2f}" for k in (0.1, 0.5, 1.0))
        print(f"| {r['variant']} | {r['steps']} x {r['batch']} | {ce} | {r['seconds_per_step']:.2f} |")
    for r in rows:
        for temperature, texts in r["samples"].items():
            for prompt, text in zip(PROMPTS, texts):
                print(f"{r['variant']} T={temperature} {prompt!r} -> {text!r}")


if __name__ == "__main__":
    main()
