"""Plots and tables for scripts/reproduce_cpu.sh and scripts/reproduce_pretrained.sh: reads each
run folder (config.json, metrics.jsonl, eval.json, samples.jsonl; other NAME.jsonl sample files
with their NAME.flags; progress/STEP.json evaluations of earlier checkpoints) and the stage
timings; writes PREFIXloss_curves.png, PREFIXaccuracy_by_ratio.png and
PREFIXlearning_per_minute.png to --figures and prints the Markdown tables; with --doc, also puts
them into that page between the lines `<!-- SECTION:start -->` and `<!-- SECTION:end -->`. With
--sweep, the tables compare training variants instead.

    python scripts/reproduce_report.py runs/reproduce --figures docs/reproduction --doc docs/reproduction.md
"""

import argparse
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

OBJECTIVES = ("ratio_set", "elbo", "bert")
LABELS = {"ratio_set": "ratio_set (r in 0.1..1.0)", "elbo": "elbo (t ~ U(0,1], 1/t)", "bert": "bert (fixed 15%)"}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_flags(samples: Path) -> str:
    """The generate flags written beside a sample file (empty when there are none)."""
    flags = samples.with_suffix(".flags")
    return flags.read_text().strip() if flags.is_file() else ""


def load_runs(out: Path, names) -> dict:
    runs = {}
    for name in names:
        folder = out / name
        runs[name] = {
            "metrics": read_jsonl(folder / "metrics.jsonl"),
            "config": json.loads((folder / "config.json").read_text()),
            "eval": json.loads((folder / "eval.json").read_text()),
            "samples": read_jsonl(folder / "samples.jsonl"),
            "samples_flags": read_flags(folder / "samples.jsonl"),
        }
        # Further sample files (other sampler settings) by name, in the order they were made.
        runs[name]["other_samples"] = {
            p.stem: {"rows": read_jsonl(p), "flags": read_flags(p)}
            for p in sorted(folder.glob("*.jsonl"), key=lambda p: p.stat().st_mtime)
            if p.stem not in ("metrics", "samples")
        }
        # Held-out numbers and greedy samples at earlier checkpoints, by step.
        runs[name]["progress"] = {
            int(p.stem): {"eval": json.loads(p.read_text()), "greedy": read_jsonl(p.with_suffix(".jsonl"))}
            for p in sorted((folder / "progress").glob("*.json"), key=lambda p: int(p.stem))
        }
    return runs


def training_minutes(metrics: list[dict]) -> list[float]:
    """Wall minutes of training (compilation excluded) at each logged step: each line's step_time
    is the mean over the steps since the line before."""
    minutes, previous, total = [], 0, 0.0
    for m in metrics:
        total += m["step_time"] * (m["step"] - previous) / 60
        previous = m["step"]
        minutes.append(total)
    return minutes


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
        left.plot(steps, [m["loss"] for m in run["metrics"]], label=LABELS.get(name, name))
        right.plot(steps, [m["accuracy"] for m in run["metrics"]], label=LABELS.get(name, name))
    left.set(
        xlabel="step",
        ylabel="training loss (nats, each objective's own)",
        title="Training loss (not comparable across objectives)",
    )
    right.set(
        xlabel="step", ylabel="accuracy on the masked tokens of the batch", title="Training masked-token accuracy"
    )
    _save(fig, (left, right), path)


def plot_accuracy_by_ratio(runs: dict, path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, run in runs.items():
        rows = run["eval"]["accuracy_by_ratio"]
        ratios = [r["ratio"] for r in rows]
        left.plot(ratios, [r["accuracy"] for r in rows], marker="o", label=LABELS.get(name, name))
        right.plot(ratios, [r["ce"] for r in rows], marker="o", label=LABELS.get(name, name))
    left.set(
        xlabel="mask ratio",
        ylabel="accuracy of the masked tokens",
        title="Held-out accuracy by mask ratio (WikiText-2 test)",
    )
    right.set(xlabel="mask ratio", ylabel="cross-entropy (nats)", title="Held-out CE by mask ratio")
    _save(fig, (left, right), path)


def plot_learning_per_minute(runs: dict, path: Path, buckets=("r01", "r05", "r10"), window=5) -> None:
    """Training CE at mask ratios 0.1, 0.5 and 1.0 against wall minutes, a running mean over
    `window` logged steps (each logged value is one batch's few rows of that ratio)."""
    fig, axes = plt.subplots(1, len(buckets), figsize=(4.5 * len(buckets), 4), sharey=True)
    for ax, bucket in zip(axes, buckets):
        for name, run in runs.items():
            points = [
                (t, m[f"loss_{bucket}"])
                for t, m in zip(training_minutes(run["metrics"]), run["metrics"])
                if f"loss_{bucket}" in m
            ]
            means = [statistics.fmean(v for _, v in points[max(0, i - window + 1) : i + 1]) for i in range(len(points))]
            ax.plot([t for t, _ in points], means, label=LABELS.get(name, name))
        ax.set(
            xlabel="training minutes (compilation excluded)",
            ylabel="training CE (nats)",
            title=f"mask ratio {int(bucket[1:]) / 10:.1f}",
        )
    _save(fig, axes, path)


def ratio_cells(run: dict, ratios, key: str) -> list[str]:
    values = {round(r["ratio"], 1): r[key] for r in run["eval"]["accuracy_by_ratio"]}
    return [f"{values[r]:.3f}" for r in ratios]


def eval_table(runs: dict, timings: dict) -> str:
    lines = [
        "| objective | train s | final train loss | NELBO bits/token | ppl bound | acc r=0.1 | acc r=0.5 "
        "| acc r=1.0 | sample entropy (bits) | distinct-1 / -2 | repeated 4-grams |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, run in runs.items():
        e, s = run["eval"], run["eval"].get("samples", {})
        stderr = e["nelbo_bits_stderr"]
        bits = f"{e['nelbo_bits_per_token']:.3f}" + (f" ± {stderr:.3f}" if stderr is not None else "")
        lines.append(
            f"| {name} | {timings.get('train_' + name, '?')} | {run['metrics'][-1]['loss']:.3f} | {bits} "
            f"| {e['ppl_bound']:.1f} | "
            + " | ".join(ratio_cells(run, (0.1, 0.5, 1.0), "accuracy"))
            + f" | {s.get('unigram_entropy_bits', float('nan')):.2f} "
            f"| {s.get('distinct_1', float('nan')):.3f} / {s.get('distinct_2', float('nan')):.3f} "
            f"| {s.get('repetition_rate', float('nan')):.3f} |"
        )
    return "\n".join(lines)


def ratio_table(runs: dict, key: str = "accuracy") -> str:
    ratios = [round(r["ratio"], 1) for r in next(iter(runs.values()))["eval"]["accuracy_by_ratio"]]
    lines = ["| objective | " + " | ".join(f"{r:.1f}" for r in ratios) + " |", "|---|" + "---|" * len(ratios)]
    lines += [f"| {name} | " + " | ".join(ratio_cells(run, ratios, key)) + " |" for name, run in runs.items()]
    return "\n".join(lines)


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip() or "(empty)"


def samples_table(columns: dict, prompts: list[str], header: str = "prompt") -> str:
    """One row per prompt, one column per sample list (name -> rows of `dlm-jax generate --json`)."""
    lines = [f"| {header} | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for i, prompt in enumerate(prompts):
        cells = [cell(rows[i]["text"]) if i < len(rows) else "" for rows in columns.values()]
        lines.append(f"| {cell(prompt)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sampler_table(settings: dict, prompts: list[str]) -> str:
    """One row per sampler setting (name -> rows and flags), one column per prompt."""
    lines = ["| setting | " + " | ".join(f"`{cell(p)}`" for p in prompts) + " |", "|---|" + "---|" * len(prompts)]
    for name, setting in settings.items():
        cells = [cell(row["text"]) for row in setting["rows"]]
        lines.append(f"| {name} (`{setting['flags']}`) | " + " | ".join(cells) + " |")
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


def changed_keys(config: dict, base: dict, prefix: str = "") -> list[str]:
    """key=value for each leaf of `config` that differs from `base` (steps and bookkeeping aside)."""
    skip = {"steps", "checkpoint_every", "keep_checkpoints", "log_every", "init", "tokenizer", "data", "model"}
    changes = []
    for key, value in config.items():
        if prefix + key in skip or base.get(key) == value:
            continue
        if isinstance(value, dict):
            changes += changed_keys(value, base.get(key, {}), prefix + key + ".")
        else:
            changes.append(f"{prefix}{key}={value}")
    return changes


def sweep_table(runs: dict, timings: dict) -> str:
    """One row per training variant: what changed, its cost, and held-out CE at three ratios."""
    base = next(iter(runs.values()))["config"]
    lines = [
        "| run | changed | steps x batch x length | train s | s/step (median) | held-out CE r=0.1 | r=0.5 "
        "| r=1.0 | NELBO bits/token |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, run in runs.items():
        c, e = run["config"], run["eval"]
        s_per_step = statistics.median(m["step_time"] for m in run["metrics"])
        lines.append(
            f"| {name} | {' '.join(changed_keys(c, base)) or '(the first run)'} "
            f"| {c['steps']} x {c['batch_size']} x {c['seq_len']} | {timings.get('train_' + name, '?')} "
            f"| {s_per_step:.2f} | "
            + " | ".join(ratio_cells(run, (0.1, 0.5, 1.0), "ce"))
            + f" | {e['nelbo_bits_per_token']:.3f} |"
        )
    return "\n".join(lines)


def progress_table(run: dict, prompt: str) -> str:
    """Held-out CE and the greedy sample of the first prompt at each evaluated checkpoint."""
    logged = [m["step"] for m in run["metrics"]]
    minutes = training_minutes(run["metrics"])
    lines = [
        f"| step | training minutes | held-out CE r=0.1 | r=0.5 | r=1.0 | greedy: `{cell(prompt)}` ... |",
        "|---|---|---|---|---|---|",
    ]
    for step, point in run["progress"].items():
        at = float(np.interp(step, logged, minutes))  # checkpoints fall between logged steps
        lines.append(
            f"| {step} | {at:.1f} | "
            + " | ".join(ratio_cells(point, (0.1, 0.5, 1.0), "ce"))
            + f" | {cell(point['greedy'][0]['text'])} |"
        )
    return "\n".join(lines)


def results_markdown(runs: dict, timings: dict, prompts: list[str], sampler: str, script: str) -> str:
    first = next(iter(runs.values()))
    sections = [
        f"Measured by {script}: {first['metrics'][-1]['step']} steps per objective; "
        f"held out: the first {first['eval']['num_sequences']} WikiText-2 test sequences of "
        f"{first['eval']['seq_len']} tokens.",
        eval_table(runs, timings),
        "Held-out accuracy by mask ratio:",
        ratio_table(runs),
        "Held-out cross-entropy (nats) by mask ratio:",
        ratio_table(runs, "ce"),
        f"Samples from the same prompts (`dlm-jax generate --prompt-file prompts.txt {sampler}`):",
        samples_table({name: run["samples"] for name, run in runs.items()}, prompts),
    ]
    for name, run in runs.items():
        if run["progress"]:
            held_out = next(iter(run["progress"].values()))["eval"]["num_sequences"]
            sections += [
                f"The {name} run at its checkpoints (held out: the first {held_out} sequences; "
                "compilation excluded from the minutes):",
                progress_table(run, prompts[0]),
            ]
        if run["other_samples"]:
            sections += [
                f"The {name} model with other sampler settings (`dlm-jax generate --prompt-file "
                "prompts.txt` and the flags given):",
                sampler_table(run["other_samples"], prompts),
            ]
    if any(run["eval"].get("samples") for run in runs.values()):
        sections += [
            "Samples of `dlm-jax eval` (the first 16 tokens of WikiText-2 test sequences as prompts, "
            "temperature 1.0, one token per step):",
            eval_samples(runs),
        ]
    sections.append("Stage timings (s): " + ", ".join(f"{k} {v}" for k, v in timings.items()))
    return "\n\n".join(sections)


def sweep_markdown(runs: dict, timings: dict, prompts: list[str]) -> str:
    sections = [sweep_table(runs, timings), "<details><summary>The samples of every variant</summary>"]
    first = next(iter(runs.values()))
    for kind, setting in first["other_samples"].items():
        sections += [
            f"{kind} (`{setting['flags']}`):",
            samples_table({name: run["other_samples"][kind]["rows"] for name, run in runs.items()}, prompts),
        ]
    sections += [
        f"samples (`{first['samples_flags']}`):",
        samples_table({name: run["samples"] for name, run in runs.items()}, prompts),
        "</details>",
    ]
    sections.append("Stage timings (s): " + ", ".join(f"{k} {v}" for k, v in timings.items()))
    return "\n\n".join(sections)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the OUT folder of the script")
    parser.add_argument("--runs", nargs="+", default=list(OBJECTIVES), help="run folders in OUT, in order")
    parser.add_argument("--figures", type=Path, help="folder for the PNG files")
    parser.add_argument("--figure-prefix", default="", help="start of the PNG file names")
    parser.add_argument(
        "--prompts", type=Path, help="the prompt file given to dlm-jax generate (default: OUT/prompts.txt)"
    )
    parser.add_argument("--sampler", default="", help="the sampler flags, for the text")
    parser.add_argument("--script", default="scripts/reproduce_cpu.sh", help="the script that made the runs")
    parser.add_argument("--sweep", action="store_true", help="one table comparing training variants")
    parser.add_argument("--doc", type=Path, help="a Markdown page whose results section to replace")
    parser.add_argument("--section", default="results", help="the marker name of that section")
    args = parser.parse_args()

    runs = load_runs(args.out, args.runs)
    timings = {}
    if (args.out / "timings.tsv").is_file():
        timings = dict(line.split("\t") for line in (args.out / "timings.tsv").read_text().splitlines())
    prompts_file = args.prompts or args.out / "prompts.txt"
    prompts = prompts_file.read_text().splitlines() if prompts_file.is_file() else []
    if args.figures:
        args.figures.mkdir(parents=True, exist_ok=True)
        plot_losses(runs, args.figures / f"{args.figure_prefix}loss_curves.png")
        plot_accuracy_by_ratio(runs, args.figures / f"{args.figure_prefix}accuracy_by_ratio.png")
        plot_learning_per_minute(runs, args.figures / f"{args.figure_prefix}learning_per_minute.png")
    if args.sweep:
        report = sweep_markdown(runs, timings, prompts)
    else:
        report = results_markdown(runs, timings, prompts, args.sampler, args.script)
    print(report)
    if args.doc:
        start, end = f"<!-- {args.section}:start -->", f"<!-- {args.section}:end -->"
        page = args.doc.read_text()
        head, rest = page.split(start, 1)
        args.doc.write_text(f"{head}{start}\n{report}\n{end}{rest.split(end, 1)[1]}")


if __name__ == "__main__":
    main()
