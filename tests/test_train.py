"""Training: parallel modes agree, accumulation is exact, resume is bit-exact, loss falls, and
every bad input stops with one line before anything is lost. A workdir has one owner (a second
run is refused, a dead run's lock taken over), Ctrl-C saves like SIGTERM, a resume says what
changed and refuses what would not continue the run exactly, and a failed run leaves nothing a
later one reuses. Tiny models on 8 CPU devices; locks and signals in real processes."""

import json
import os
import re
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers_terminal import stderr_on_a_terminal

from dlm_jax.checkpoint import load_params_from_workdir
from dlm_jax.cli import main
from dlm_jax.errors import UserError
from dlm_jax.train import resolve_config, train

# Equal up to float32 summation order: the 8-device all-reduce adds per-device partial sums in
# a different order than one device does; after 3 AdamW steps of lr 2e-3 the parameters differ
# by a few ULPs of the update.
ATOL = 2e-6


@pytest.fixture(scope="module")
def corpus(shared_data):
    return str(shared_data / "tinyshakespeare" / "input.txt")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, corpus):
    from dlm_jax.data import train_tokenizer

    os.environ["DLM_JAX_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    out = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(corpus, out, vocab_size=512)
    return str(out)


def run(workdir, corpus, tokenizer_dir, *sets, **overrides):
    sets = ("log_every=1", "checkpoint_every=100", f"tokenizer={tokenizer_dir}", *sets)
    config = resolve_config("tiny", sets, data=corpus, **overrides)
    record = train(config, workdir)
    return record, load_params_from_workdir(workdir)


def assert_trees_close(a, b, atol):
    flat_a, flat_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(flat_a) == len(flat_b)
    worst = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(flat_a, flat_b))
    assert worst <= atol, worst


def test_config_sets_and_unknown_key():
    config = resolve_config(
        "tiny", ["objective.name=elbo", "mesh.fsdp=2", "ema_decay=none", "objective.ratios=0.5,1.0", "remat=true"]
    )
    assert config.objective.name == "elbo" and config.objective.ratios == (0.5, 1.0)
    assert config.mesh.fsdp == 2 and config.ema_decay is None and config.remat is True
    with pytest.raises(UserError, match=r"unknown config key 'lrr'; did you mean lr\?"):
        resolve_config("tiny", ["lrr=1e-3"])
    with pytest.raises(UserError, match="objective.name"):
        resolve_config("tiny", ["objective.nme=elbo"])
    with pytest.raises(UserError, match="cannot read 'fast' as float"):
        resolve_config("tiny", ["lr=fast"])
    with pytest.raises(UserError, match="no config preset or file 'tinyy'"):
        resolve_config("tinyy")
    # HuggingFace's names point to ours; the dtype names are models.COMPUTE_DTYPES'
    with pytest.raises(UserError, match="HuggingFace's learning_rate is lr here"):
        resolve_config("tiny", ["learning_rate=1e-3"])
    with pytest.raises(UserError, match="choose one of float32, bfloat16"):
        resolve_config("tiny", ["dtype=float16"])
    for bad, key in (("seed=-1", "seed"), ("lr=0", "lr"), ("b2=1", "b2"), ("warmup_steps=-1", "warmup_steps")):
        with pytest.raises(UserError, match=f"^{key} must be"):
            resolve_config("tiny", [bad])


def test_step_flops_count_every_matmul_kernel_of_each_family():
    """6 FLOPs per weight of every matmul and token, attention's scores and sums, the decoder for
    scored tokens only; the weights as each family builds them (ModernBERT's gated feed-forward
    has a 2i-wide input kernel)."""
    from dlm_jax.models import EncoderConfig
    from dlm_jax.train.metrics import step_flops

    h, i, layers, vocab, seq = 64, 256, 2, 1000, 32
    common = dict(
        hidden_size=h,
        intermediate_size=i,
        num_hidden_layers=layers,
        num_attention_heads=2,
        vocab_size=vocab,
        max_position_embeddings=66,
    )
    for config, feed_forward in (
        (EncoderConfig(model_type="roberta", **common), 2 * h * i),
        (EncoderConfig(model_type="bert", **common), 2 * h * i),
        (EncoderConfig(model_type="modernbert", local_attention=16, **common), 3 * h * i),
    ):
        weights = layers * (4 * h * h + feed_forward) + h * h  # + the MLM head's dense layer
        per_token = 6 * weights + 12 * layers * seq * h
        assert step_flops(config, seq, 512, 100) == per_token * 512 + 6 * h * vocab * 100, config.model_type


def test_start_up_line_advises_float32_only_where_bf16_products_are_clearly_slower():
    """An AVX2-only CPU converts bf16 products (0.052 against 0.130 TFLOP/s on one): the line says
    so and names the fix; within noise of float32, or faster (AMX, avx512_bf16), it says nothing."""
    from dlm_jax.train.metrics import slower_than_float32

    advice = slower_than_float32(0.052, 0.130)
    assert "slower than float32 (0.130)" in advice and "--set dtype=float32" in advice
    assert slower_than_float32(0.110, 0.130) == ""  # within 20%
    assert slower_than_float32(1.44, 0.28) == ""


def test_parallel_modes_and_accumulation_agree(tmp_path, corpus, tokenizer_dir):
    steps = ("steps=3",)
    _, one = run(tmp_path / "one", corpus, tokenizer_dir, *steps, "mesh.data=1")
    _, mesh = run(tmp_path / "mesh", corpus, tokenizer_dir, *steps)
    _, pmap = run(tmp_path / "pmap", corpus, tokenizer_dir, *steps, "parallelism=pmap")
    _, fsdp = run(tmp_path / "fsdp", corpus, tokenizer_dir, *steps, "mesh.fsdp=4")
    _, accum = run(tmp_path / "accum", corpus, tokenizer_dir, *steps, "grad_accum_steps=2")
    for name, params in [("mesh", mesh), ("pmap", pmap), ("fsdp", fsdp), ("accum", accum)]:
        assert_trees_close(params, one, ATOL), name


# The presets train ModernBERT; the post-LN family trains through the same step.
ROBERTA = ("model.model_type=roberta", "model.max_position_embeddings=66")


@pytest.mark.parametrize("family", ["modernbert", "roberta"])
def test_loss_falls_and_metrics_written(tmp_path, corpus, tokenizer_dir, family):
    with stderr_on_a_terminal() as terminal:
        record, _ = run(
            tmp_path / "w",
            corpus,
            tokenizer_dir,
            "steps=60",
            "log_every=10",
            "objective.name=elbo",
            "lr=3e-3",
            *(ROBERTA if family == "roberta" else ()),
        )
    # on a terminal, tqdm's bar (steps done of all, elapsed < left) below the logged lines
    assert re.search(r"\| 60/60 \[\d\d:\d\d<\d\d:\d\d", terminal.text) and "step 60/60 | loss" in terminal.text
    lines = [json.loads(line) for line in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [10, 20, 30, 40, 50, 60]
    assert lines[-1]["loss"] < lines[0]["loss"] - 0.5
    assert {"bits_per_token", "perplexity_bound", "mfu", "tokens_per_s", "grad_norm"} <= set(lines[-1])
    assert json.loads((tmp_path / "w" / "config.json").read_text())["objective"]["name"] == "elbo"
    assert (tmp_path / "w" / "model" / "dlm_config.json").is_file()
    assert list((tmp_path / "w" / "tensorboard").iterdir())
    import dlm_jax

    model = dlm_jax.load(tmp_path / "w")
    assert model.tokenizer is not None and model.config.vocab_size == len(model.tokenizer)
    assert model.config.model_type == family


def _cli(workdir, corpus, tokenizer_dir, *extra):
    return [
        sys.executable,
        "-c",
        "import sys; from dlm_jax.cli import main; sys.exit(main())",
        "train",
        "--config",
        "tiny",
        "--workdir",
        str(workdir),
        "--data",
        corpus,
        "--set",
        f"tokenizer={tokenizer_dir}",
        "--set",
        "log_every=1",
        *extra,
    ]


TWELVE_STEPS = ("--steps", "12", "--set", "checkpoint_every=3")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, corpus, tokenizer_dir):
    """The parameters of a 12-step run never interrupted (in a process, like the runs it is
    compared with)."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    subprocess.run(_cli(workdir, corpus, tokenizer_dir, *TWELVE_STEPS), check=True, capture_output=True)
    return load_params_from_workdir(workdir)


@pytest.mark.slow
def test_resume_after_kill9_is_bit_exact(tmp_path, corpus, tokenizer_dir, uninterrupted):
    args = TWELVE_STEPS
    env = dict(os.environ)
    proc = subprocess.Popen(
        _cli(tmp_path / "cut", corpus, tokenizer_dir, *args),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for line in proc.stdout:  # kill -9 right after step 7 is logged: mid-interval, a save in flight
        if line.startswith("step 7/"):
            proc.kill()
            break
    proc.wait()
    saved = sorted(int(p.name) for p in (tmp_path / "cut" / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and saved[-1] < 12
    subprocess.run(_cli(tmp_path / "cut", corpus, tokenizer_dir, *args), check=True, env=env, capture_output=True)
    full = uninterrupted
    cut = load_params_from_workdir(tmp_path / "cut")
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(cut)):
        assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_sigterm_saves_and_exits(tmp_path, corpus, tokenizer_dir):
    proc = subprocess.Popen(
        _cli(tmp_path / "w", corpus, tokenizer_dir, "--steps", "1000", "--set", "checkpoint_every=1000"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for line in proc.stdout:
        if line.startswith("step 5/"):
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, rest
    saved = [int(p.name) for p in (tmp_path / "w" / "checkpoints").iterdir() if p.name.isdigit()]
    assert len(saved) == 1 and 5 <= saved[0] < 1000
    assert f"saved step {saved[0]}, exiting" in rest


def _snapshot(workdir):
    return {p: p.read_bytes() for p in sorted(workdir.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", ["empty", "not_utf8", "tfds", "too_small", "unknown_key", "nan"])
def test_bad_input_one_line(tmp_path, corpus, tokenizer_dir, capsys, case):
    data, sets = corpus, []
    if case == "empty":
        data = tmp_path / "empty.txt"
        data.write_text("")
    elif case == "not_utf8":
        data = tmp_path / "latin1.txt"
        data.write_bytes("caf\xe9 au lait\n".encode("latin-1") * 100)
    elif case == "tfds":
        data = "tfds:no_such_dataset_xyz"
    elif case == "too_small":
        data = tmp_path / "small.txt"
        data.write_text(open(corpus).read()[:1000])  # a few sequences, fewer than one batch
    elif case == "unknown_key":
        sets = ["--set", "learning_rate=1e-3"]
    elif case == "nan":
        sets = ["--set", "lr=1e30", "--set", "warmup_steps=1", "--set", "checkpoint_every=2"]
    rc = main(
        [
            "train",
            "--config",
            "tiny",
            "--workdir",
            str(tmp_path / "w"),
            "--data",
            str(data),
            "--steps",
            "8",
            "--set",
            f"tokenizer={tokenizer_dir}",
            *sets,
        ]
    )
    err = capsys.readouterr().err  # TFDS progress bars may precede the error line
    errors = [line for line in err.splitlines() if line.startswith("dlm-jax train: error: ")]
    assert rc == 2 and len(errors) == 1 and errors[0] == err.strip().splitlines()[-1], err
    assert "Traceback" not in err
    err = errors
    expected = {
        "empty": "empty",
        "not_utf8": "UTF-8",
        "tfds": "no_such_dataset_xyz",
        "too_small": "batch",
        "unknown_key": "learning_rate",
        "nan": "loss became nan at step",
    }[case]
    assert expected in err[0]
    if case == "nan":  # the good checkpoints before the NaN step are kept, none after it
        bad_step = int(err[0].split("at step ")[1].split(";")[0])
        saved = [int(p.name) for p in (tmp_path / "w" / "checkpoints").iterdir() if p.name.isdigit()]
        assert all(s < bad_step for s in saved)
        assert f"last good checkpoint is step {max(saved)}" in err[0] if saved else "no checkpoint" in err[0]
    elif case != "unknown_key":
        assert not (tmp_path / "w" / "config.json").exists()


def test_workdir_of_another_model_is_refused(tmp_path, corpus, tokenizer_dir, capsys):
    run(tmp_path / "w", corpus, tokenizer_dir, "steps=2")
    capsys.readouterr()  # the first run's lines
    before = _snapshot(tmp_path / "w")
    rc = main(
        [
            "train",
            "--config",
            "tiny",
            "--workdir",
            str(tmp_path / "w"),
            "--data",
            corpus,
            "--steps",
            "4",
            "--set",
            f"tokenizer={tokenizer_dir}",
            "--set",
            "model.hidden_size=32",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "different model (differs in hidden_size)" in err[0]
    assert _snapshot(tmp_path / "w") == before


def _lines_until(proc, prefix: str) -> list[str]:
    """The process's output lines up to the first that starts with `prefix`."""
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(prefix):
            return seen
    raise AssertionError("".join(seen)[-3000:])


def _saved_steps(workdir) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def test_workdir_has_one_owner(tmp_path, corpus, tokenizer_dir, capsys):
    """A second run into a workdir in use is refused at once, naming the running process; the
    lock of a run killed with -9 is taken over by the next one."""
    workdir = tmp_path / "w"
    args = ("--steps", "1000", "--set", "checkpoint_every=1000")
    first = subprocess.Popen(
        _cli(workdir, corpus, tokenizer_dir, *args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    _lines_until(first, "step 2/")
    second = subprocess.run(_cli(workdir, corpus, tokenizer_dir, *args), capture_output=True, text=True, timeout=300)
    assert second.returncode == 2, second.stderr
    last = second.stderr.strip().splitlines()[-1]
    assert last.startswith("dlm-jax train: error: ") and f"in use by dlm-jax train (pid {first.pid} " in last
    assert "compiled" not in second.stderr and "step 1/" not in second.stderr
    first.kill()
    first.wait()
    assert json.loads((workdir / "train.lock").read_text())["pid"] == first.pid  # left behind by kill -9
    # the next run takes the lock over (and is then refused for its missing corpus, at no cost)
    assert (
        main(
            [
                "train",
                "--config",
                "tiny",
                "--workdir",
                str(workdir),
                "--data",
                str(tmp_path / "missing.txt"),
                "--set",
                f"tokenizer={tokenizer_dir}",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert f"took over the lock of dlm-jax train (pid {first.pid} " in err and "missing.txt" in err
    assert not (workdir / "train.lock").exists()


def test_ctrl_c_saves_the_current_step_and_resume_is_exact(tmp_path, corpus, tokenizer_dir, uninterrupted):
    """Ctrl-C right after step 3 is logged, while step 3's checkpoint is being written: that
    checkpoint and the current step are kept, the run exits 0 naming the step, and resuming
    from it gives the parameters of a run never interrupted."""
    cut = subprocess.Popen(
        _cli(tmp_path / "cut", corpus, tokenizer_dir, "--steps", "1000", "--set", "checkpoint_every=3"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _lines_until(cut, "step 3/")
    cut.send_signal(signal.SIGINT)
    rest = cut.communicate(timeout=120)[0]
    assert cut.returncode == 0, rest
    step = int(re.search(r"^Ctrl-C: saved step (\d+), exiting", rest, re.MULTILINE).group(1))
    assert 3 <= step < 12 and {3, step} <= set(_saved_steps(tmp_path / "cut"))
    # Resumed with the budget of 12: the warmup rates of the steps done do not depend on it.
    resumed = subprocess.run(
        _cli(tmp_path / "cut", corpus, tokenizer_dir, *TWELVE_STEPS), capture_output=True, text=True, check=True
    )
    assert (
        f"resuming step {step} with steps 1000 -> 12 (the learning rate of the steps done is unchanged)"
        in resumed.stderr
    )
    for a, b in zip(
        jax.tree.leaves(uninterrupted), jax.tree.leaves(load_params_from_workdir(tmp_path / "cut")), strict=True
    ):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_second_ctrl_c_aborts_keeping_every_complete_checkpoint(tmp_path, corpus, tokenizer_dir):
    proc = subprocess.Popen(
        _cli(tmp_path / "w", corpus, tokenizer_dir, "--steps", "1000", "--set", "checkpoint_every=2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _lines_until(proc, "step 3/")
    proc.send_signal(signal.SIGINT)
    _lines_until(proc, "Ctrl-C: saving the current step")
    proc.send_signal(signal.SIGINT)  # while the current step finishes and is saved
    rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130 and "saved step" not in rest, rest
    # The last line of ours (a library may still log while the process exits): the surviving step.
    ours = [line for line in rest.splitlines() if line.startswith("dlm-jax train:")]
    aborted = re.fullmatch(
        r"dlm-jax train: interrupted: aborted at step \d+; the last complete checkpoint is step (\d+)",
        ours[-1] if ours else "",
    )
    assert aborted and "Traceback" not in rest, rest
    kept = int(aborted.group(1))
    assert kept == _saved_steps(tmp_path / "w")[-1] >= 2


def test_resume_says_what_changed_and_refuses_what_breaks_it(tmp_path, corpus, tokenizer_dir, capsys):
    workdir = tmp_path / "w"
    base = [
        "train",
        "--config",
        "tiny",
        "--workdir",
        str(workdir),
        "--data",
        corpus,
        "--set",
        f"tokenizer={tokenizer_dir}",
        "--set",
        "log_every=1",
    ]
    assert main(base + ["--steps", "2"]) == 0
    capsys.readouterr()
    before = _snapshot(workdir)
    other = tmp_path / "other.txt"
    other.write_text(open(corpus).read()[:200_000])
    refusals = {
        ("--set", "lr=0.004"): "lr 0.002 -> 0.004",
        ("--data", str(other)): "data",
        ("--set", "batch_size=32"): "batch_size 16 -> 32",
        ("--set", "objective.name=elbo"): "objective.name 'ratio_set' -> 'elbo'",
        ("--set", "warmup_steps=1"): "learning rate of steps already trained",
    }
    for extra, said in refusals.items():
        assert main(base + ["--steps", "4", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and said in err[0] and "--allow-changes" in err[0], err
    assert _snapshot(workdir) == before  # config.json included: a refused resume writes nothing
    assert main(base + ["--steps", "4", "--set", "lr=0.004", "--allow-changes"]) == 0
    err = capsys.readouterr().err
    assert "resuming step 2 with lr 0.002 -> 0.004, steps 2 -> 4 (allowed by --allow-changes" in err
    assert json.loads((workdir / "config.json").read_text())["lr"] == 0.004 and _saved_steps(workdir)[-1] == 4
    # every line on stderr, no progress bar drawn into a pipe or file
    assert "step 4/4 | loss" in err and "\r" not in err and "step/s" not in err


def test_failed_run_leaves_nothing_a_later_run_reuses(tmp_path, corpus, capsys):
    """No tokenizer named: each run trains one. A run refused after training it (too little
    text for a batch) leaves no model/, no staging and no config, so the next run trains its own.
    (Runs that pass their checks commit model/: test_loss_falls_and_metrics_written.)"""
    workdir = tmp_path / "w"
    small = tmp_path / "small.txt"
    small.write_text(open(corpus).read()[:1000])
    base = ["train", "--config", "tiny", "--workdir", str(workdir), "--steps", "2", "--set", "tokenizer_vocab_size=400"]
    assert main(base + ["--data", str(small)]) == 2
    err = capsys.readouterr().err
    assert "training a 400-token byte-level BPE" in err and "one batch needs 16" in err.strip().splitlines()[-1]
    assert not workdir.exists()  # made for the run, empty again: removed
    # The next run finds no tokenizer to reuse: it trains its own (and fails the same way).
    assert main(base + ["--data", str(small)]) == 2
    assert "training a 400-token byte-level BPE" in capsys.readouterr().err
    assert not workdir.exists()


def test_workdir_that_is_a_file_is_refused(tmp_path, corpus, tokenizer_dir, capsys):
    file = tmp_path / "w"
    file.write_text("notes")
    assert main(["train", "--workdir", str(file), "--data", corpus, "--set", f"tokenizer={tokenizer_dir}"]) == 2
    assert "is a file" in capsys.readouterr().err.strip().splitlines()[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"] and file.read_text() == "notes"


def _refused(capsys, argv) -> str:
    """The one line `dlm-jax train` stops with (exit status 2, no traceback)."""
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("dlm-jax train: error: "), err
    return err[0]


def test_workdir_holding_other_files_is_refused_untouched(tmp_path, corpus, tokenizer_dir, capsys):
    """A HuggingFace folder as --workdir would get our config.json over its own: refused before
    anything is written. An empty folder, or one holding only what a killed run leaves (its lock,
    staging/), is a workdir (each run below then stops at its missing corpus, at no cost)."""
    from helpers_hf import make_hf_checkpoint

    hf = make_hf_checkpoint(tmp_path, "roberta")
    capsys.readouterr()  # transformers' progress bars
    before = _snapshot(hf)
    base = ["train", "--config", "tiny", "--data", corpus, "--steps", "3", "--set", f"tokenizer={tokenizer_dir}"]
    line = _refused(capsys, base + ["--workdir", str(hf)])
    assert f"workdir {hf} is not empty and holds no dlm-jax training run (config.json, " in line
    assert "pick an empty or new --workdir" in line and "--init" in line
    assert _snapshot(hf) == before
    empty = tmp_path / "empty"
    empty.mkdir()
    killed = tmp_path / "killed"
    (killed / "staging" / "tokenizer").mkdir(parents=True)
    (killed / "staging" / "tokenizer" / "vocab.json").write_text("{}")
    (killed / "train.lock").write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": "then"}))
    missing = str(tmp_path / "missing.txt")
    for workdir in (empty, killed):
        assert main(base + ["--workdir", str(workdir), "--data", missing]) == 2
        err = capsys.readouterr().err  # the killed run's lock is taken over, with a note
        assert "missing.txt" in err.strip().splitlines()[-1] and "not empty" not in err
        assert workdir.is_dir() and list(workdir.iterdir()) == []  # the lock released, staging/ removed


def test_prefix_that_leaves_nothing_to_mask_is_refused(tmp_path, corpus, tokenizer_dir, capsys):
    """Every objective masks only after objective.prefix_len: at seq_len 64 a prefix of 64 would
    train on nothing (loss 0)."""
    base = ["train", "--config", "tiny", "--workdir", str(tmp_path / "w"), "--data", corpus]
    for prefix in (64, 100):
        line = _refused(capsys, base + ["--set", f"objective.prefix_len={prefix}"])
        assert f"objective.prefix_len {prefix} leaves no token of seq_len 64 to mask" in line
        assert "set objective.prefix_len below 64" in line
    assert not (tmp_path / "w").exists()
    assert resolve_config("tiny", ["objective.prefix_len=63"]).objective.prefix_len == 63


def test_model_set_that_init_would_ignore_is_refused(tmp_path, corpus, capsys, monkeypatch):
    """With --init the model is the checkpoint's: a --set model.KEY that differs from it is
    refused, naming both values, from the checkpoint's config alone (no weight is read); one equal
    to it passes (the run then stops at its missing corpus)."""
    from helpers_hf import make_hf_checkpoint

    from dlm_jax import convert

    hf = make_hf_checkpoint(tmp_path, "roberta")  # 2 layers, hidden 32
    capsys.readouterr()  # transformers' progress bars
    base = ["train", "--config", "tiny", "--workdir", str(tmp_path / "w"), "--init", str(hf), "--steps", "2"]
    sets = ["--set", "model.num_hidden_layers=6", "--set", "model.hidden_size=32"]
    with monkeypatch.context() as patch:
        patch.setattr(convert, "read_hf_weights", lambda _: pytest.fail("the refusal read the weights"))
        line = _refused(capsys, base + ["--data", corpus, *sets])
    assert "--set model.num_hidden_layers=6 (init's 2) conflicts with the model of init" in line
    assert "hidden_size" not in line and "drop the --set, or train from scratch without --init" in line
    assert not (tmp_path / "w").exists()
    line = _refused(capsys, base + ["--data", str(tmp_path / "missing.txt"), "--set", "model.hidden_size=32"])
    assert "missing.txt" in line


@pytest.mark.parametrize(
    "bad, said",
    [
        ("seq_len=128", "seq_len 128 exceeds the model's 64 positions; lower seq_len or raise"),
        ("model.max_position_embeddings=32", "seq_len 64 exceeds the model's 32 positions"),
        ("mesh.fsdp=3", "mesh.fsdp=3 does not divide the 8 devices; set mesh.fsdp to one of 1, 2, 4, 8"),
        ("batch_size=12", "12 rows per microbatch does not split over 8 devices"),
    ],
)
def test_shape_mistakes_are_refused_before_the_tokenizer_is_trained(tmp_path, corpus, capsys, bad, said):
    """No tokenizer named: the run would train a BPE first; a mistake in the config alone is
    said before that."""
    line = _refused(
        capsys, ["train", "--config", "tiny", "--workdir", str(tmp_path / "w"), "--data", corpus, "--set", bad]
    )
    assert said in line
    assert not (tmp_path / "w").exists()


def test_resuming_from_a_damaged_step_is_one_line(tmp_path, corpus, tokenizer_dir, capsys):
    """A checkpoint cut short (a full disk) stops the resumed run with the step's name and the fix."""
    from test_checkpoint import truncate_params

    workdir = tmp_path / "w"
    base = ["train", "--config", "tiny", "--workdir", str(workdir), "--data", corpus]
    assert main(base + ["--steps", "1", "--set", f"tokenizer={tokenizer_dir}"]) == 0
    truncate_params(workdir / "checkpoints" / "1")
    capsys.readouterr()
    rc = main(base + ["--steps", "2", "--set", f"tokenizer={tokenizer_dir}", "--allow-changes"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and last.startswith(f"dlm-jax train: error: checkpoint {workdir / 'checkpoints' / '1'} is damaged")
    assert "delete it to resume from the step saved before it" in last
