"""The command line under misuse, and what it prints and writes.

Misuse: every option of every sub-command gets bad values from a table generated from the
parsers themselves (each typed option values of the wrong kind, each other option its own
misuses; a new option without rows fails the test). Every row must exit 2 with no traceback and
a last line naming the option, and, unless it needs the checkpoint loaded, before JAX compiles
anything. Runs in-process on a tiny random HF RoBERTa, a tiny trained workdir and real text; a
few real processes check the installed entry point.

Output: filled prompts, one block or JSON line per prompt, defaults taken from the checkpoint,
outputs checked before sampling, --force that never deletes a workdir or the source, the user's
umask, --version, no PyTorch notice.
"""

import argparse
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import jax
import pytest
from helpers_hf import make_hf_checkpoint

from dlm_jax.cli import _build_parser, main, options
from dlm_jax.sampling import cut_at_eos
from dlm_jax.train import resolve_config, train

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
COMMANDS = ("train", "generate", "convert", "export", "eval", "tokenizer")


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def paths(tmp_path_factory, shared_data):
    """Everything the rows name: real text, a tokenizer, a HF checkpoint, a trained workdir, and
    files that are wrong in the ways users get them wrong."""
    from dlm_jax.data import train_tokenizer

    root = tmp_path_factory.mktemp("cli")
    os.environ["DLM_JAX_CACHE"] = str(root / "cache")
    corpus = root / "corpus.txt"
    corpus.write_text((shared_data / "tinyshakespeare" / "input.txt").read_text()[:60_000])
    tokenizer = root / "tokenizer"
    train_tokenizer(str(corpus), tokenizer, vocab_size=512)
    workdir = root / "workdir"
    # Two steps, both saved: checkpoints/1 and checkpoints/2 (seq_len 64 of the model's 64 positions).
    train(
        resolve_config(
            "tiny", ["steps=2", "checkpoint_every=1", "log_every=1", f"tokenizer={tokenizer}"], data=str(corpus)
        ),
        workdir,
    )
    (root / "a_file").write_text("not a directory\n")
    (root / "binary").write_bytes(bytes(range(256)) * 8)
    (root / "empty.txt").write_text("")
    (root / "empty_dir").mkdir()
    (root / "bad.json").write_text("{not json")
    full = root / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    return dict(
        root=root,
        corpus=corpus,
        tokenizer=tokenizer,
        workdir=workdir,
        hf=make_hf_checkpoint(root, "roberta"),
        a_file=root / "a_file",
        binary=root / "binary",
        empty_txt=root / "empty.txt",
        empty_dir=root / "empty_dir",
        bad_json=root / "bad.json",
        full=full,
        missing=root / "missing",
        under_file=root / "a_file" / "sub",
    )


@pytest.fixture(scope="module")
def compiles():
    """Names of the XLA compilations since the list was last cleared."""
    seen = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, duration, **kw: seen.append(name) if name == COMPILE_EVENT else None
    )
    return seen


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------- the table of misuse

# The valid command each row spoils (placeholders {name} are `paths` entries; "#0", "#1" are
# positionals). A row replaces options with bad values; the rest stays valid.
BASE = {
    "train": {
        "#0": "train",
        "--config": "tiny",
        "--workdir": "{fresh}",
        "--data": "{corpus}",
        "--set": ["tokenizer={tokenizer}"],
        "--steps": "2",
    },
    "generate": {"#0": "generate", "--checkpoint": "{hf}", "--prompt": "Hello", "--gen-length": "8", "--steps": "4"},
    "convert": {"#0": "convert", "#1": "{hf}", "#2": "{fresh}"},
    "export": {"#0": "export", "#1": "{workdir}", "#2": "{fresh}"},
    "eval": {
        "#0": "eval",
        "--checkpoint": "{hf}",
        "--data": "{corpus}",
        "--samples": "0",
        "--max-sequences": "4",
        "--nelbo-samples": "1",
    },
    "tokenizer": {"#0": "tokenizer", "#1": "train", "--data": "{corpus}", "--out": "{fresh}"},
}

# Values of the wrong kind for each argument type.
BAD_BY_TYPE = {
    options.positive_int: ("0", "-3", "x", "1.5"),
    options.non_negative_int: ("-1", "x"),
    options.seed: ("-1", str(2**32), "x"),
    options.non_negative_float: ("-1", "nan", "inf", "x"),
    options.probability: ("0", "1.5", "nan", "x"),
    options.positive_float: ("0", "-1", "inf", "x"),
}


def row(changes, named=None, model=False):
    """changes: {option: bad value, or None to drop it}; named: what the error line must name
    (default: the option); model: refused only once the checkpoint is loaded."""
    return dict(changes=changes, named=named, model=model)


# Misuses of options whose values are not typed (paths, names, flags); every option of every
# parser must appear here or have a type in BAD_BY_TYPE or choices.
MISUSE = {
    ("train", "--config"): [
        row({"--config": "no_such_preset"}),
        row({"--config": "{missing}.json"}),
        row({"--config": "{bad_json}"}),
    ],
    ("train", "--workdir"): [row({"--workdir": "{a_file}"}), row({"--workdir": "{under_file}"})],
    ("train", "--data"): [row({"--data": "{missing}"}), row({"--data": "{binary}"}), row({"--data": "{empty_txt}"})],
    ("train", "--init"): [row({"--init": "{missing}"}), row({"--init": "{empty_dir}"})],
    ("train", "--set"): [
        row({"--set": ["lr"]}),
        row({"--set": ["nokey=1"]}, named="nokey"),
        row({"--set": ["lr=fast"]}, named="lr"),
        row({"--set": ["learning_rate=3e-4"]}, named="learning_rate"),
        row({"--set": ["steps=0"], "--steps": None}, named="steps"),
        row({"--set": ["dtype=float16"]}, named="dtype"),
        row({"--set": ["seed=-1"]}, named="seed"),
        row({"--set": ["objective.name=bogus"]}, named="objective"),
        row({"--set": ["tokenizer={missing}"]}, named="tokenizer"),
    ],
    ("train", "--allow-changes"): [],  # a flag with no wrong use
    ("train", "--coordinator"): [row({"--coordinator": "nohost"}), row({"--coordinator": "127.0.0.1:1"})],
    ("train", "--process-id"): [row({"--process-id": "2", "--num-processes": "2", "--coordinator": "127.0.0.1:1"})],
    ("generate", "--checkpoint"): [
        row({"--checkpoint": "{missing}"}),
        row({"--checkpoint": "{a_file}"}),
        row({"--checkpoint": "{empty_dir}"}),
    ],
    ("generate", "--step"): [row({"--step": "1"}), row({"--step": "99", "--checkpoint": "{workdir}"})],
    ("generate", "--prompt"): [row({"--prompt": "x " * 200}, named="prompt", model=True)],
    ("generate", "--prompt-file"): [
        row({"--prompt": None, "--prompt-file": v}) for v in ("{missing}", "{binary}", "{empty_txt}", "{empty_dir}")
    ],
    ("generate", "--gen-length"): [row({"--gen-length": "100"}, model=True)],
    ("generate", "--steps"): [row({"--steps": "9"}, model=True)],
    ("generate", "--block-length"): [
        row({"--block-length": "3"}, model=True),
        row({"--block-length": "200", "--gen-length": None, "--steps": None}, model=True),  # past the positions
    ],
    ("generate", "--remasking"): [row({"--remasking": "bogus"})],
    ("generate", "--schedule"): [
        row({"--schedule": "bogus"}),
        row({"--schedule": "cosine", "--remasking": "threshold"}, model=True),  # a rule that sets its own counts
    ],
    ("generate", "--top-p"): [row({"--top-p": "0.9"}, model=True)],  # with greedy decoding
    ("generate", "--top-k"): [
        row({"--top-k": "5"}, model=True),
        row({"--top-k": "60000", "--temperature": "1"}, model=True),
    ],
    ("generate", "--confidence-threshold"): [row({"--confidence-threshold": "0.5"}, model=True)],
    ("generate", "--forbid-eos"): [],
    ("generate", "--factor"): [row({"--factor": "2"}, model=True)],  # without --remasking factor
    ("generate", "--alg-temp"): [row({"--alg-temp": "0.5", "--remasking": "random"}, model=True)],
    ("generate", "--stop-at-eos"): [row({"--stop-at-eos": True, "--forbid-eos": True}, model=True)],
    ("generate", "--refresh-every"): [row({"--refresh-every": "2"}, model=True)],  # without --cache
    ("generate", "--json"): [],
    ("generate", "--show"): [row({"--show": True})],  # the output is not a terminal
    ("generate", "--trajectory"): [
        row({"--trajectory": v}) for v in ("{root}/x.png", "{empty_dir}", "{under_file}.html")
    ],
    ("convert", "HF_DIR"): [row({"#1": v}) for v in ("{missing}", "{a_file}", "{empty_dir}")],
    ("convert", "OUT_DIR"): [row({"#2": v}) for v in ("{a_file}", "{under_file}", "{hf}", "{full}")],
    ("convert", "--force"): [
        row({"--force": True, "#2": "{workdir}"}),
        row({"--force": True, "#2": "{root}"}, named="OUT_DIR"),
    ],
    ("export", "CKPT_DIR"): [row({"#1": v}) for v in ("{missing}", "{a_file}", "{empty_dir}")],
    ("export", "HF_DIR"): [row({"#2": v}) for v in ("{a_file}", "{workdir}", "{root}", "{full}")]
    + [row({"--force": True, "#1": "{hf}", "#2": "{workdir}"})],  # another workdir, even with --force
    ("export", "--step"): [row({"--step": "99"})],
    ("export", "--force"): [
        row({"--force": True, "#2": "{workdir}"}, named="HF_DIR"),
        row({"--force": True, "#1": "{workdir}/checkpoints/2", "#2": "{workdir}"}, named="HF_DIR"),
        row({"--force": True, "#2": "{root}"}, named="HF_DIR"),
    ],
    ("eval", "--checkpoint"): [row({"--checkpoint": "{missing}"}), row({"--checkpoint": "{empty_dir}"})],
    ("eval", "--step"): [row({"--step": "1"}), row({"--step": "99", "--checkpoint": "{workdir}"})],
    ("eval", "--data"): [row({"--data": "{missing}"}, model=True), row({"--data": "{binary}"}, model=True)],
    ("eval", "--split"): [row({"--split": "bogus"}, model=True)],
    ("eval", "--json"): [],
    ("eval", "--seq-len"): [row({"--seq-len": "100"}, model=True)],
    ("eval", "--prompt-len"): [row({"--prompt-len": "64", "--samples": "2"}, model=True)],
    ("eval", "--gen-length"): [row({"--gen-length": "100", "--samples": "2"}, model=True)],
    ("eval", "--steps"): [row({"--steps": "100", "--gen-length": "8", "--samples": "2"}, model=True)],
    ("eval", "--judge"): [
        row({"--judge": "{missing}", "--samples": "2"}),
        row({"--judge": "{empty_dir}", "--samples": "2"}),
    ],
    ("eval", "--cache-dir"): [
        row({"--cache-dir": "{a_file}"}),
        row({"--cache-dir": "/proc/dlm_jax_cache"}),  # writable to os.access as root, yet nothing can be created
    ],
    ("tokenizer", "--data"): [row({"--data": v}) for v in ("{missing}", "{binary}", "{empty_txt}")],
    ("tokenizer", "--out"): [row({"--out": v}) for v in ("{a_file}", "{under_file}", "{tokenizer}")],
    ("tokenizer", "--vocab-size"): [row({"--vocab-size": "100"})],
}


def command_parser(command) -> argparse.ArgumentParser:
    parser = _build_parser([command])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    if command == "tokenizer":
        sub = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]
    return sub


def option_key(action) -> str:
    return action.option_strings[-1] if action.option_strings else action.metavar


def generated_rows():
    rows = []
    for command in COMMANDS:
        for action in command_parser(command)._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            key = option_key(action)
            typed = (
                [row({key: "bogus"})]
                if action.choices
                else [row({key: value}) for value in BAD_BY_TYPE.get(action.type, ())]
            )
            misuse = MISUSE.get((command, key))
            assert typed or misuse is not None, f"dlm-jax {command} {key} has no bad values in the table"
            rows += [(command, key, r) for r in typed + (misuse or [])]
    return rows


ROWS = generated_rows()


def argv_of(command, changes, paths, fresh) -> list[str]:
    args = dict(BASE[command], **changes)
    fill = lambda v: v.format(**{k: str(p) for k, p in paths.items()}, fresh=fresh)
    argv = [fill(args.pop(k)) for k in sorted(k for k in args if k.startswith("#"))]
    for option, value in args.items():
        if value is None or value is False:
            continue
        if value is True:
            argv.append(option)
        else:
            for v in value if isinstance(value, list) else [value]:
                argv += [option, fill(v)]
    return argv


@pytest.mark.parametrize("command, key, bad", ROWS, ids=[f"{c} {k} {i}" for i, (c, k, _) in enumerate(ROWS)])
def test_bad_value_is_one_line_naming_the_option(command, key, bad, paths, compiles, capsys, tmp_path):
    argv = argv_of(command, bad["changes"], paths, str(tmp_path / "fresh"))
    compiles.clear()
    code, _, err = cli(capsys, *argv)
    assert code == 2, (argv, err[-2000:])
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    last = lines[-1]
    assert last.startswith(f"dlm-jax {command}") and "error:" in last, last
    if not bad["model"]:  # nothing but the error (argparse's usage block is not printed)
        assert len(lines) == 1, err
    if bad["named"] is not None:
        names = [bad["named"]]
    elif key.startswith("--") and "-" in key[2:] and command in ("generate", "eval"):
        names = [key]  # their checks name flags, not Python's keywords (gen_length)
    elif key.startswith("--"):
        bare = key[2:]
        names = [key, bare.replace("-", "_"), bare.replace("-", " ")]
    else:  # a positional: its metavar or the path given
        names = [key] + [argv[int(k[1:])] for k in bad["changes"] if k.startswith("#")]
    assert any(name in last for name in names), (names, last)
    if not bad["model"]:
        assert compiles == [], f"{len(compiles)} XLA compilations before refusing {argv}"
    assert not (tmp_path / "fresh").exists() or not any((tmp_path / "fresh").iterdir()), "a refused run wrote"


def test_the_entry_point_exits_2_with_one_line(paths, tmp_path):
    """The installed command in real processes: a bad flag and a bad value found after parsing."""
    for argv in (
        [
            "generate",
            "--checkpoint",
            paths["hf"],
            "--prompt",
            "x",
            "--gen-length",
            "8",
            "--steps",
            "4",
            "--block-length",
            "0",
        ],
        ["train", "--workdir", paths["a_file"], "--set", "seed=-1"],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "dlm_jax", *map(str, argv)], capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith(f"dlm-jax {argv[0]}") and ("--block-length" in last or "seed" in last), last


def test_bucket_workdir_without_its_filesystem_package(paths):
    """gs:// needs gcsfs (or TensorFlow), which a plain install lacks: one line, before any work."""
    code = (
        "import sys; sys.modules['gcsfs'] = sys.modules['tensorflow'] = None; from dlm_jax.cli import main; "
        f"sys.exit(main(['train', '--workdir', 'gs://bucket/run', '--data', {str(paths['corpus'])!r}]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "workdir gs://bucket/run needs a filesystem package" in proc.stderr.strip().splitlines()[-1]


# ------------------------------------------------------------------------ what it prints


def test_version(capsys):
    import dlm_jax

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"dlm-jax {dlm_jax.__version__}"
    assert dlm_jax.__version__[0].isdigit()


def test_no_pytorch_notice_without_pytorch(paths, tmp_path):
    """A plain install has no torch: transformers' notice about it must not reach the user."""
    code = (
        "import sys; sys.modules['torch'] = None; from dlm_jax.cli import main; "
        f"sys.exit(main(['tokenizer', 'train', '--data', {str(paths['corpus'])!r}, '--out', "
        f"{str(tmp_path / 'tok')!r}, '--vocab-size', '300']))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "PyTorch was not found" not in proc.stderr + proc.stdout


def _library_text(paths, prompt, gen_length, steps, **kw):
    """What the sampler itself gives for one prompt (greedy): (ids of the whole row, width)."""
    from dlm_jax.api import load
    from dlm_jax.sampling import encode_prompt, generate

    model = load(paths["hf"])
    ids = encode_prompt(model.tokenizer, prompt)
    return model, generate(model, [ids], gen_length=gen_length, steps=steps, **kw)[0], len(ids)


def test_generate_prints_the_filled_prompt(paths, capsys):
    prompt = "The quick <mask> fox jumps over the <mask> dog"
    model, row, width = _library_text(paths, prompt, 8, 4)
    tokenizer = model.tokenizer
    filled = tokenizer.decode(row[:width].tolist(), skip_special_tokens=True)
    assert "<mask>" not in filled and filled != prompt
    argv = ["generate", "--checkpoint", paths["hf"], "--prompt", prompt, "--gen-length", 8, "--steps", 4]
    code, out, _ = cli(capsys, *argv, "--json")
    record = json.loads(out)
    assert code == 0 and record["filled_prompt"] == filled and record["ids"] == row[width:].tolist()
    code, out, _ = cli(capsys, *argv)  # the filled prompt, then its continuation up to EOS
    whole = row[:width].tolist() + cut_at_eos(row[width:], model.config.eos_token_id)
    assert code == 0 and out == tokenizer.decode(whole, skip_special_tokens=True) + "\n"
    assert out.startswith(filled)


def test_generate_several_prompts_one_block_or_line_each(paths, tmp_path, capsys):
    prompts = ["It was the best of times", "Call me"]
    file = tmp_path / "prompts.txt"
    file.write_bytes(b"\xef\xbb\xbf" + ("\n".join(prompts) + "\n\n").encode())  # a BOM, as Windows editors write
    argv = ["generate", "--checkpoint", paths["hf"], "--prompt-file", file, "--gen-length", 8, "--steps", 4]
    code, out, _ = cli(capsys, *argv, "--json")
    records = [json.loads(line) for line in out.splitlines()]
    from dlm_jax.api import load
    from dlm_jax.sampling import encode_prompt

    tokenizer = load(paths["hf"]).tokenizer
    assert code == 0 and [r["prompt_ids"] for r in records] == [encode_prompt(tokenizer, p) for p in prompts]
    code, out, _ = cli(capsys, *argv)
    blocks = out.split("\n\n")
    assert code == 0 and len(blocks) == 2
    for i, (block, prompt, record) in enumerate(zip(blocks, prompts, records)):
        header, text = block.split("\n", 1)
        assert header == f"--- prompt {i + 1} of 2: {prompt}"
        assert text.rstrip("\n") == record["text"]


def test_a_failed_trajectory_write_keeps_the_text_and_says_one_line(paths, tmp_path, capsys, monkeypatch):
    """The replay is written after the text; a disk that fails then (full, here) costs one line."""
    import errno

    from dlm_jax import trajectory

    def disk_full(path, frames):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(trajectory, "write_html", disk_full)
    target = tmp_path / "run.html"
    argv = ["generate", "--checkpoint", paths["hf"], "--prompt", "Call me", "--gen-length", 8, "--steps", 4]
    code, out, err = cli(capsys, *argv, "--trajectory", target)
    assert code == 2 and out.strip(), (out, err)  # the text was printed
    assert err.strip().splitlines() == [
        f"dlm-jax generate: error: the text above was generated, but --trajectory {target} could not be "
        f"written: {os.strerror(errno.ENOSPC)}; choose another path"
    ]


def test_generate_and_eval_take_their_lengths_and_step_from_the_workdir(paths, capsys):
    workdir = paths["workdir"]
    argv = ["generate", "--prompt", "ROMEO:", "--json"]
    code, out, err = cli(capsys, *argv, "--checkpoint", workdir)
    record = json.loads(out)
    assert code == 0, err
    # trained at seq_len 64: the generated part fills what the prompt leaves of it
    assert len(record["prompt_ids"]) + len(record["ids"]) == 64
    by_step = cli(capsys, *argv, "--checkpoint", workdir, "--step", 1)[1]
    by_dir = cli(capsys, *argv, "--checkpoint", workdir / "checkpoints" / "1")[1]
    assert by_step == by_dir and json.loads(by_step)["ids"]
    assert cli(capsys, *argv, "--checkpoint", workdir / "checkpoints" / "1", "--step", 2)[0] == 2

    code, out, err = cli(
        capsys,
        "eval",
        "--checkpoint",
        workdir,
        "--data",
        paths["corpus"],
        "--max-sequences",
        4,
        "--nelbo-samples",
        1,
        "--samples",
        0,
        "--step",
        1,
        "--json",
    )
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["seq_len"] == 64  # not 128: the model has 64 positions


def test_generate_checks_its_outputs_before_loading(paths, tmp_path, capsys, monkeypatch):
    """A trajectory that could not be written is refused before the checkpoint is even read
    (here it does not exist), not after sampling."""
    base = ["generate", "--checkpoint", tmp_path / "no-checkpoint", "--prompt", "x", "--gen-length", 8]
    (tmp_path / "a_file").write_text("")
    code, _, err = cli(capsys, *base, "--trajectory", tmp_path / "a_file" / "steps.html")
    assert code == 2 and "--trajectory" in err and "no-checkpoint" not in err
    # a folder that does not exist yet is made, once the text is out
    page = tmp_path / "new" / "folder" / "steps.html"
    code, out, err = cli(
        capsys,
        "generate",
        "--checkpoint",
        paths["hf"],
        "--prompt",
        "x",
        "--gen-length",
        8,
        "--trajectory",
        page,
        "--json",
    )
    assert code == 0 and json.loads(out)["ids"] and "const frames" in page.read_text(), err
    monkeypatch.setitem(sys.modules, "PIL", None)  # Pillow is optional: a plain install lacks it
    code, _, err = cli(capsys, *base, "--trajectory", tmp_path / "steps.gif")
    assert code == 2 and "Pillow" in err.strip().splitlines()[-1]
    assert not (tmp_path / "steps.gif").exists()


# -------------------------------------------------------------------- what it writes


def _snapshot(directory: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_force_never_deletes_a_workdir_or_the_source(paths, tmp_path, capsys):
    workdir, hf = paths["workdir"], paths["hf"]
    before, hf_before = _snapshot(workdir), _snapshot(hf)
    for argv in (
        ["export", workdir, workdir, "--force"],
        ["export", workdir / "checkpoints" / "2", workdir, "--force"],
        ["export", workdir, workdir.parent, "--force"],
        ["convert", hf, hf, "--force"],
        ["convert", hf, workdir, "--force"],
    ):
        code, _, err = cli(capsys, *argv)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert _snapshot(workdir) == before and _snapshot(hf) == hf_before
    # --force replaces an earlier export of the same command
    out = tmp_path / "hf-export"
    assert cli(capsys, "export", workdir, out, "--step", 1)[0] == 0
    first = _snapshot(out)
    assert cli(capsys, "export", workdir, out)[0] == 2
    assert cli(capsys, "export", workdir, out, "--force")[0] == 0
    assert _snapshot(out).keys() == first.keys() and _snapshot(out) != first  # step 2's weights now


def test_outputs_follow_the_umask(paths, tmp_path, capsys):
    previous = os.umask(0o002)
    try:
        assert cli(capsys, "export", paths["workdir"], tmp_path / "hf")[0] == 0
        assert cli(capsys, "convert", paths["hf"], tmp_path / "ours")[0] == 0
    finally:
        os.umask(previous)
    for out in (tmp_path / "hf", tmp_path / "ours"):
        for path in [out, *out.rglob("*")]:
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode == (0o775 if path.is_dir() else 0o664), (path, oct(mode))


def test_generate_cache_flags_reach_the_sampler(tmp_path, capsys):
    """On a checkpoint whose predictions depend on their context (attention values and outputs
    scaled up, so stale keys and values change tokens): --cache dual gives the library's cached
    tokens, which differ from the uncached ones, and --refresh-every 1 gives the uncached ones."""
    import torch
    from helpers_hf import hf_model

    from dlm_jax.api import load
    from dlm_jax.sampling import encode_prompt, generate

    hf, tokenizer = hf_model("roberta")
    with torch.no_grad():
        for layer in hf.roberta.encoder.layer:
            layer.attention.self.value.weight.mul_(10)
            layer.attention.output.dense.weight.mul_(10)
    checkpoint = tmp_path / "context"
    hf.save_pretrained(str(checkpoint))
    tokenizer.save_pretrained(str(checkpoint))
    prompt = "The whale"
    argv = ["generate", "--checkpoint", checkpoint, "--prompt", prompt, "--json"]
    argv += ["--gen-length", 8, "--steps", 8, "--block-length", 4]
    ids = lambda *extra: json.loads(cli(capsys, *argv, *extra)[1])["ids"]
    model = load(checkpoint)
    prompt_ids = encode_prompt(model.tokenizer, prompt)
    cached = generate(model, [prompt_ids], gen_length=8, steps=8, block_length=4, cache="dual")[0]
    assert ids("--cache", "dual") == cached[len(prompt_ids) :].tolist() != ids()
    assert ids("--cache", "dual", "--refresh-every", 1) == ids()
