"""Plots and tables for scripts/reproduce_cpu.sh: reads each objective's run folder (metrics.jsonl,
eval.json, samples.jsonl) and the stage timings; writes loss_curves.png and accuracy_by_ratio.png
to --figures and prints the Markdown tables; with --doc, also puts them into that page between
the lines `<!-- results:start -->` and `<!-- results:end -->`.

    python scripts/reproduce_report.py runs/reproduce --figures docs/reproduction --doc docs/reproduction.md
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

OBJECTIVES = ("ratio_set", "elbo", "bert")
LABELS = {"ratio_set": "ratio_set (r in 0.1..1.0)", "elbo": "elbo (t ~ U(0,1], 1/t)", "bert": "bert (fixed 15%)"}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_runs(out: Path) -> dict:
    runs = {}
    for name in OBJECTIVES:
        folder = out / name
        runs[name] = {
            "metrics": read_jsonl(folder / "metrics.jsonl"),
            "eval": json.loads((folder / "eval.json").read_text()),
            "samples": read_jsonl(folder / "samples.jsonl"),
        }
    return runs


def _save(fig, axes, path: Path) -> None:
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_losses(runs: dict, path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, run in runs.items():
        steps = [m["step"] for m in run["metrics"]]
        left.plot(steps, [m["loss"] for m in run["metrics"]], label=LABELS[name])
        right.plot(steps, [m["accuracy"] for m in run["metrics"]], label=LABELS[name])
    left.set(xlabel="step", ylabel="training loss (nats, each objective's own)",
             title="Training loss (not comparable across objectives)")
    right.set(xlabel="step", ylabel="accuracy on the masked tokens of the batch",
              title="Training masked-token accuracy")
    _save(fig, (left, right), path)


def plot_accuracy_by_ratio(runs: dict, path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, run in runs.items():
        rows = run["eval"]["accuracy_by_ratio"]
        ratios = [r["ratio"] for r in rows]
        left.plot(ratios, [r["accuracy"] for r in rows], marker="o", label=LABELS[name])
        right.plot(ratios, [r["ce"] for r in rows], marker="o", label=LABELS[name])
    left.set(xlabel="mask ratio", ylabel="accuracy of the masked tokens",
             title="Held-out accuracy by mask ratio (WikiText-2 test)")
    right.set(xlabel="mask ratio", ylabel="cross-entropy (nats)", title="Held-out CE by mask ratio")
    _save(fig, (left, right), path)


def eval_table(runs: dict, timings: dict) -> str:
    lines = [
        "| objective | train s | final train loss | NELBO bits/token | ppl bound | acc r=0.1 | acc r=0.5 "
        "| acc r=1.0 | sample entropy (bits) | distinct-1 / -2 | repeated 4-grams |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, run in runs.items():
        e, s = run["eval"], run["eval"].get("samples", {})
        acc = {round(r["ratio"], 1): r["accuracy"] for r in e["accuracy_by_ratio"]}
        stderr = e["nelbo_bits_stderr"]
        bits = f"{e['nelbo_bits_per_token']:.3f}" + (f" ± {stderr:.3f}" if stderr is not None else "")
        lines.append(
            f"| {name} | {timings.get('train_' + name, '?')} | {run['metrics'][-1]['loss']:.3f} | {bits} "
            f"| {e['ppl_bound']:.1f} | {acc[0.1]:.3f} | {acc[0.5]:.3f} | {acc[1.0]:.3f} "
            f"| {s.get('unigram_entropy_bits', float('nan')):.2f} "
            f"| {s.get('distinct_1', float('nan')):.3f} / {s.get('distinct_2', float('nan')):.3f} "
            f"| {s.get('repetition_rate', float('nan')):.3f} |"
        )
    return "\n".join(lines)


def ratio_table(runs: dict) -> str:
    ratios = [r["ratio"] for r in next(iter(runs.values()))["eval"]["accuracy_by_ratio"]]
    lines = ["| objective | " + " | ".join(f"{r:.1f}" for r in ratios) + " |",
             "|---|" + "---|" * len(ratios)]
    for name, run in runs.items():
        cells = [f"{r['accuracy']:.3f}" for r in run["eval"]["accuracy_by_ratio"]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip() or "(empty)"


def samples_table(runs: dict, prompts: list[str]) -> str:
    lines = ["| prompt | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]
    for i, prompt in enumerate(prompts):
        cells = [cell(run["samples"][i]["text"]) if i < len(run["samples"]) else "" for run in runs.values()]
        lines.append(f"| {cell(prompt)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def eval_samples(runs: dict) -> str:
    lines = []
    for name, run in runs.items():
        s = run["eval"].get("samples")
        if not s:
            continue
        lines.append(f"\n**{name}**\n")
        lines += [f"- `{cell(p)}` -> {cell(t)}" for p, t in zip(s["prompts"][:3], s["texts"][:3])]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the OUT folder of scripts/reproduce_cpu.sh")
    parser.add_argument("--figures", type=Path, required=True, help="folder for the PNG files")
    parser.add_argument("--prompts", type=Path, help="the prompt file given to dlm-jax generate")
    parser.add_argument("--sampler", default="", help="the sampler flags, for the text")
    parser.add_argument("--doc", type=Path, help="a Markdown page whose results section to replace")
    args = parser.parse_args()

    runs = load_runs(args.out)
    timings = {}
    if (args.out / "timings.tsv").is_file():
        timings = dict(line.split("\t") for line in (args.out / "timings.tsv").read_text().splitlines())
    args.figures.mkdir(parents=True, exist_ok=True)
    plot_losses(runs, args.figures / "loss_curves.png")
    plot_accuracy_by_ratio(runs, args.figures / "accuracy_by_ratio.png")
    prompts = args.prompts.read_text().splitlines() if args.prompts else []
    report = results_markdown(runs, timings, prompts, args.sampler)
    print(report)
    if args.doc:
        start, end = "<!-- results:start -->", "<!-- results:end -->"
        page = args.doc.read_text()
        head, rest = page.split(start, 1)
        args.doc.write_text(f"{head}{start}\n{report}\n{end}{rest.split(end, 1)[1]}")


def results_markdown(runs: dict, timings: dict, prompts: list[str], sampler: str) -> str:
    first = next(iter(runs.values()))
    return "\n\n".join([
        f"Measured by scripts/reproduce_cpu.sh: {first['metrics'][-1]['step']} steps per objective; "
        f"held out: the first {first['eval']['num_sequences']} WikiText-2 test sequences of "
        f"{first['eval']['seq_len']} tokens.",
        eval_table(runs, timings),
        "Held-out accuracy by mask ratio:",
        ratio_table(runs),
        f"Samples from the same prompts (`dlm-jax generate --prompt-file prompts.txt {sampler}`):",
        samples_table(runs, prompts),
        "Samples of `dlm-jax eval` (the first 16 tokens of WikiText-2 test sequences as prompts, "
        "temperature 1.0, one token per step):",
        eval_samples(runs),
        "Stage timings (s): " + ", ".join(f"{k} {v}" for k, v in timings.items()),
    ])


if __name__ == "__main__":
    main()
