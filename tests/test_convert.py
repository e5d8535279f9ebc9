"""`dlm-jax convert` / `export`, checkpoints on disk and `dlm_jax.load`, against real HF models.

Tiny random BertForMaskedLM / RobertaForMaskedLM with the real tokenizers are saved with
`save_pretrained`, converted by the real CLI and compared with PyTorch on a ragged batch.
"""

import json
import shutil
import subprocess
import sys

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import torch
import transformers
from helpers_hf import hf_model, make_hf_checkpoint

import dlm_jax
from dlm_jax.api import _logits
from dlm_jax.checkpoint import load_model_dir, load_params_from_workdir, save_model
from dlm_jax.cli import main
from dlm_jax.errors import UserError

TOL = 1e-5
TEXTS = [
    "In the beginning God created the heaven and the earth.",
    "And the earth was without form, and void; and darkness was upon the face of the deep.",
    "Let there be light.",
]


def torch_logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()


def batch(tokenizer):
    enc = tokenizer(TEXTS, padding=True, return_tensors="np")
    assert enc["attention_mask"].min() == 0
    return enc["input_ids"], enc["attention_mask"]


def max_err(a, b, mask):
    return float(np.abs(a - b)[mask.astype(bool)].max())


def cli(capsys, *argv):
    """Run the real CLI in-process -> (exit code, stdout, stderr lines)."""
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err.splitlines()


@pytest.fixture(scope="module", params=["roberta", "bert", "modernbert"])
def converted(request, tmp_path_factory):
    """(HF dir, our model dir, convert stdout) for one model type, via the CLI."""
    tmp = tmp_path_factory.mktemp(request.param)
    hf_dir = make_hf_checkpoint(tmp, request.param)
    out_dir = tmp / "ours"
    code = main(["convert", str(hf_dir), str(out_dir)])
    assert code == 0
    return hf_dir, out_dir


def test_converted_logits_match_pytorch(converted):
    hf_dir, out_dir = converted
    model = dlm_jax.load(out_dir)
    ids, mask = batch(model.tokenizer)
    ref = torch_logits(transformers.AutoModelForMaskedLM.from_pretrained(hf_dir).eval(), ids, mask)
    ours = model.logits(ids, mask)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    assert max_err(ours, ref, mask) <= TOL
    # the HF directory itself loads too (converted in memory) and gives the same numbers
    assert np.array_equal(dlm_jax.load(hf_dir).logits(ids, mask), ours)


def test_config_and_tokenizer_carried_over(converted):
    hf_dir, out_dir = converted
    config, params, tokenizer = load_model_dir(out_dir)
    hf_config = json.loads((hf_dir / "config.json").read_text())
    assert config.vocab_size == hf_config["vocab_size"] == len(tokenizer)
    assert config.layer_norm_eps == hf_config.get("layer_norm_eps", hf_config.get("norm_eps"))
    assert config.mask_token_id == tokenizer.mask_token_id
    assert config.pad_token_id == tokenizer.pad_token_id
    assert sorted(params["layers"]) == list(range(hf_config["num_hidden_layers"]))
    if config.model_type == "modernbert":
        assert list(config.attention_layer_types) == hf_config["layer_types"]
        assert config.local_attention == hf_config["local_attention"]
        rope = hf_config["rope_parameters"]
        assert (config.global_rope_theta, config.local_rope_theta) == (
            rope["full_attention"]["rope_theta"],
            rope["sliding_attention"]["rope_theta"],
        )
    assert tokenizer(TEXTS[0])["input_ids"] == transformers.AutoTokenizer.from_pretrained(hf_dir)(TEXTS[0])["input_ids"]


def test_export_reloads_in_transformers(converted, tmp_path, capsys):
    hf_dir, out_dir = converted
    code, _, err = cli(capsys, "export", out_dir, tmp_path / "exported")
    assert code == 0, err
    exported = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "exported").eval()
    original = transformers.AutoModelForMaskedLM.from_pretrained(hf_dir).eval()
    assert type(exported) is type(original)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "exported")
    ids, mask = batch(tokenizer)
    assert max_err(torch_logits(exported, ids, mask), torch_logits(original, ids, mask), mask) <= TOL


def test_convert_reports_matches(tmp_path, capsys):
    hf_dir = make_hf_checkpoint(tmp_path, "roberta")
    code, out, _ = cli(capsys, "convert", hf_dir, tmp_path / "ours")
    assert code == 0
    assert "matched 42 tensors" in out  # 5 embedding + 2 x 16 per layer + 5 head
    assert "MLM head converted from the checkpoint" in out
    assert "unmatched" not in out


def test_modernbert_reports_matches(tmp_path, capsys):
    hf_dir = make_hf_checkpoint(tmp_path, "modernbert")
    code, out, _ = cli(capsys, "convert", hf_dir, tmp_path / "ours")
    assert code == 0
    # embeddings 2 + 4 layers x 6 less layer 0's attention norm + final norm + head 2 + decoder bias
    assert "matched 29 tensors" in out, out
    assert "MLM head converted from the checkpoint" in out and "unmatched" not in out


def test_bare_modernbert_gets_initialised_head(tmp_path, capsys):
    hf_dir = make_hf_checkpoint(tmp_path, "modernbert", mlm=False)
    code, out, _ = cli(capsys, "convert", hf_dir, tmp_path / "ours")
    assert code == 0
    assert "MLM head initialised" in out and "head/dense/kernel" in out and "decoder/bias" in out
    model = dlm_jax.load(tmp_path / "ours")
    ids, mask = batch(model.tokenizer)
    bare = transformers.AutoModel.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        ref = bare(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    hidden = np.asarray(model.encoder.encode(jax.numpy.asarray(ids), jax.numpy.asarray(mask)))
    assert max_err(hidden, ref, mask) <= TOL


def test_bare_encoder_gets_initialised_head(tmp_path, capsys):
    hf_dir = make_hf_checkpoint(tmp_path, "bert", mlm=False)
    code, out, _ = cli(capsys, "convert", hf_dir, tmp_path / "ours")
    assert code == 0
    assert "ignored 2 (pooler / tied decoder): pooler.dense.bias, pooler.dense.weight" in out
    assert "MLM head initialised" in out and "mlm_head/dense/kernel" in out
    model = dlm_jax.load(tmp_path / "ours")
    ids, mask = batch(model.tokenizer)
    bare = transformers.AutoModel.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        ref = bare(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    hidden = np.asarray(model.encoder.encode(jax.numpy.asarray(ids), jax.numpy.asarray(mask)))
    assert max_err(hidden, ref, mask) <= TOL
    assert np.isfinite(model.logits(ids, mask)).all()


def test_sharded_safetensors(tmp_path, capsys):
    model, tokenizer = hf_model("roberta")
    hf_dir = tmp_path / "sharded"
    model.save_pretrained(hf_dir, max_shard_size="2MB")
    tokenizer.save_pretrained(hf_dir)
    assert (hf_dir / "model.safetensors.index.json").is_file() and len(list(hf_dir.glob("*.safetensors"))) > 1
    code, out, _ = cli(capsys, "convert", hf_dir, tmp_path / "ours")
    assert code == 0 and "matched 42 tensors" in out
    ids, mask = batch(tokenizer)
    assert max_err(dlm_jax.load(tmp_path / "ours").logits(ids, mask), torch_logits(model, ids, mask), mask) <= TOL


def test_pytorch_bin(tmp_path, capsys):
    model, tokenizer = hf_model("bert")
    hf_dir = tmp_path / "legacy"
    model.config.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    torch.save(model.state_dict(), hf_dir / "pytorch_model.bin")  # holds the tied decoder weight too
    code, out, _ = cli(capsys, "convert", hf_dir, tmp_path / "ours")
    assert (
        code == 0
        and "matched 43 tensors" in out
        and "ignored 1 (pooler / tied decoder): cls.predictions.decoder.weight" in out
    )
    ids, mask = batch(tokenizer)
    assert max_err(dlm_jax.load(tmp_path / "ours").logits(ids, mask), torch_logits(model, ids, mask), mask) <= TOL


# ----------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory):
    return make_hf_checkpoint(tmp_path_factory.mktemp("bad"), "roberta")


def assert_refused(capsys, tmp_path, source, *words):
    out_dir = tmp_path / "out"
    code, _, err = cli(capsys, "convert", source, out_dir)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("dlm-jax convert: error: "), err
    for word in words:
        assert word in err[0], err
    assert not out_dir.exists()  # refused before anything was written


def test_refuses_gpt2(tmp_path, capsys, shared_data):
    gpt2 = tmp_path / "gpt2"
    transformers.GPT2Config(n_layer=1, n_embd=32, n_head=4).save_pretrained(gpt2)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(shared_data / "tokenizers" / "gpt2" / name, gpt2)
    assert_refused(capsys, tmp_path, gpt2, "'gpt2' is not supported", "bert, roberta, modernbert")


def test_refuses_dir_without_weights(tmp_path, capsys, roberta_dir):
    empty = tmp_path / "no-weights"
    empty.mkdir()
    shutil.copy(roberta_dir / "config.json", empty)
    assert_refused(capsys, tmp_path, empty, "holds no weights", "model.safetensors")


def test_refuses_truncated_safetensors(tmp_path, capsys, roberta_dir):
    broken = shutil.copytree(roberta_dir, tmp_path / "truncated")
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert_refused(capsys, tmp_path, broken, "model.safetensors", "truncated")


def test_refuses_shapes_disagreeing_with_config(tmp_path, capsys, roberta_dir):
    broken = shutil.copytree(roberta_dir, tmp_path / "reshaped")
    config = json.loads((broken / "config.json").read_text())
    config["intermediate_size"] = 48
    (broken / "config.json").write_text(json.dumps(config))
    assert_refused(
        capsys,
        tmp_path,
        broken,
        "do not match config.json",
        "roberta.encoder.layer.0.intermediate.dense.bias",
        "(64,)",
        "(48,)",
    )


def test_refuses_more_layers_than_config(tmp_path, capsys, roberta_dir):
    broken = shutil.copytree(roberta_dir, tmp_path / "fewer-layers")
    config = json.loads((broken / "config.json").read_text())
    config["num_hidden_layers"] = 1
    (broken / "config.json").write_text(json.dumps(config))
    assert_refused(capsys, tmp_path, broken, "do not match config.json", "layer 1", "num_hidden_layers=1")


@pytest.fixture(scope="module")
def modernbert_dir(tmp_path_factory):
    return make_hf_checkpoint(tmp_path_factory.mktemp("bad-modernbert"), "modernbert")


def edited_copy(tmp_path, source, name, **changes):
    """A copy of a HF directory whose config.json has `changes` (None deletes a key)."""
    copy = shutil.copytree(source, tmp_path / name)
    config = json.loads((copy / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (copy / "config.json").write_text(json.dumps(config))
    return copy


@pytest.mark.parametrize(
    "changes, words",
    [
        (
            dict(layer_types=["full_attention", "chunked_attention", "sliding_attention", "full_attention"]),
            ["layer_types ['chunked_attention'] cannot be honoured", "full_attention, sliding_attention"],
        ),
        (dict(layer_types=["full_attention", "sliding_attention"]), ["names 2 layers", "num_hidden_layers is 4"]),
        (
            dict(
                rope_parameters={
                    "full_attention": {"rope_type": "yarn", "rope_theta": 160000.0, "factor": 2.0},
                    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                }
            ),
            ["rope_parameters.full_attention.rope_type 'yarn' cannot be honoured"],
        ),
        (dict(local_attention=7), ["local_attention 7 must be an even window"]),
        (dict(local_attention=256), ["local_attention 256", "max_position_embeddings 128"]),
    ],
)
def test_refuses_modernbert_configs_it_cannot_honour(tmp_path, capsys, modernbert_dir, changes, words):
    assert_refused(capsys, tmp_path, edited_copy(tmp_path, modernbert_dir, "edited", **changes), *words)


def test_refuses_weights_the_config_has_no_place_for(tmp_path, capsys, modernbert_dir):
    """Norm biases in the weights but norm_bias false in the config: not silently dropped."""
    model, tokenizer = hf_model("modernbert", norm_bias=True)
    biased = tmp_path / "biased"
    model.save_pretrained(biased)
    tokenizer.save_pretrained(biased)
    edited = edited_copy(tmp_path, biased, "flag-off", norm_bias=False)
    capsys.readouterr()  # save_pretrained's progress bar
    assert_refused(capsys, tmp_path, edited, "norm.bias", "no place for")


def test_refuses_a_tokenizer_larger_than_the_vocabulary(tmp_path, capsys, roberta_dir):
    edited = edited_copy(tmp_path, roberta_dir, "small-vocab", vocab_size=50000)
    # the weights are cut to match, so only the tokenizer disagrees
    from safetensors.numpy import load_file, save_file

    tensors = load_file(edited / "model.safetensors")
    for name in ("roberta.embeddings.word_embeddings.weight", "lm_head.bias"):
        tensors[name] = tensors[name][:50000]
    save_file(tensors, edited / "model.safetensors", metadata={"format": "pt"})
    assert_refused(capsys, tmp_path, edited, "the tokenizer has 50265 tokens", "vocab_size is 50000")


def test_sentence_transformers_root_is_followed_to_its_transformer_folder(tmp_path, capsys, roberta_dir):
    root = tmp_path / "st"
    shutil.copytree(roberta_dir, root / "0_Transformer")
    (root / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            ]
        )
    )
    code, out, err = cli(capsys, "convert", root, tmp_path / "ours")
    assert code == 0, err
    ids, mask = batch(dlm_jax.load(roberta_dir).tokenizer)
    assert np.array_equal(
        dlm_jax.load(tmp_path / "ours").logits(ids, mask), dlm_jax.load(roberta_dir).logits(ids, mask)
    )
    (root / "modules.json").write_text(json.dumps([{"idx": 0, "path": "missing", "type": "x.Transformer"}]))
    assert_refused(capsys, tmp_path, root, "sentence-transformers folder", "pass the subfolder")


def test_refuses_missing_path(tmp_path, capsys):
    assert_refused(capsys, tmp_path, tmp_path / "nowhere", "does not exist")


def test_cli_prints_one_line_without_traceback(tmp_path):
    """The installed entry point, as a user runs it."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from dlm_jax.cli import main; sys.exit(main())",
            "convert",
            str(tmp_path / "nowhere"),
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"dlm-jax convert: error: {tmp_path / 'nowhere'} does not exist; pass a HuggingFace model directory"
    ]


def test_force_replaces_only_an_earlier_output(tmp_path, capsys, roberta_dir):
    """--force replaces an earlier conversion / export, never a folder of the user's own files."""
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.md").write_text("mine")
    ours, exported = tmp_path / "ours", tmp_path / "exported"
    for command, source, option, looks in (
        ("convert", roberta_dir, "OUT_DIR", "no earlier conversion (dlm_config.json and params/)"),
        ("export", ours, "HF_DIR", "no earlier export (config.json and model.safetensors)"),
    ):
        code, _, err = cli(capsys, command, source, notes)
        assert code == 2 and len(err) == 1 and "--force" in err[0], err
        code, _, err = cli(capsys, command, source, notes, "--force")
        assert code == 2 and err == [
            f"dlm-jax {command}: error: {option} {notes} is not empty and holds {looks}; "
            "--force replaces only that, choose another directory or empty this one"
        ]
        assert [p.name for p in notes.iterdir()] == ["notes.md"] and (notes / "notes.md").read_text() == "mine"
        out = ours if command == "convert" else exported
        assert cli(capsys, command, source, out)[0] == 0
        (out / "stale.txt").write_text("from an earlier run")
        assert cli(capsys, command, source, out, "--force")[0] == 0  # an earlier output is replaced
        assert not (out / "stale.txt").exists()
    assert (ours / "params").is_dir() and (exported / "model.safetensors").is_file()


def test_convert_help_names_every_family(capsys):
    assert main(["--help"]) == 0
    convert_line = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("convert"))
    assert "BERT/RoBERTa/ModernBERT" in convert_line


def test_logits_refuses_ids_outside_vocab_and_long_inputs(roberta_dir):
    model = dlm_jax.load(roberta_dir)
    vocab = model.config.vocab_size
    for bad in (vocab, -1):
        with pytest.raises(UserError, match=rf"token id {bad} is outside the vocabulary \[0, {vocab}\)") as info:
            model.logits(np.array([[0, 5, bad, 2]]))
        assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="exceeds the model's maximum 64"):
        model.logits(np.zeros((1, 65), np.int32))
    assert model.logits(np.zeros((1, 64), np.int32)).shape == (1, 64, vocab)


def test_logits_compile_once_per_shape(roberta_dir):
    model = dlm_jax.load(roberta_dir)
    ids = np.array([[0, 100, 200, 2]])
    first = model.logits(ids)
    size = _logits._cache_size()
    second = model.logits(ids + 1)
    assert _logits._cache_size() == size
    assert not np.array_equal(first, second)


def test_load_missing_path_and_unknown_dir(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        dlm_jax.load(tmp_path / "nowhere")
    with pytest.raises(UserError, match="not a dlm-jax model directory"):
        dlm_jax.load(tmp_path)


# ----------------------------------------------------------------------------- checkpoints
def test_training_workdir_load_and_export(tmp_path, capsys):
    """A workdir written by a CheckpointManager with the contract's items loads its latest params."""
    out_dir = tmp_path / "ours"
    assert main(["convert", str(make_hf_checkpoint(tmp_path, "bert")), str(out_dir)]) == 0
    config, params, tokenizer = load_model_dir(out_dir)
    workdir = tmp_path / "workdir"
    (workdir / "model").mkdir(parents=True)
    (workdir / "config.json").write_text("{}")
    config.save(workdir / "model")
    tokenizer.save_pretrained(workdir / "model")
    later = jax.tree.map(lambda x: x * 1.5, params)
    manager = ocp.CheckpointManager(workdir / "checkpoints", options=ocp.CheckpointManagerOptions(create=True))
    for step, tree in ((10, params), (20, later)):
        manager.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(tree),
                opt_state=ocp.args.StandardSave(optax.adam(1e-3).init(tree)),
                data=ocp.args.JsonSave({"epoch": 0, "index": step}),
                meta=ocp.args.JsonSave({"step": step}),
            ),
        )
    manager.wait_until_finished()
    manager.close()

    capsys.readouterr()  # save_pretrained's progress bar
    # already ours: nothing to convert, whichever of its folders is given
    assert_refused(capsys, tmp_path, workdir, "is already a dlm-jax training workdir", f"dlm-jax export {workdir}")
    step_dir = workdir / "checkpoints" / "10"
    assert_refused(capsys, tmp_path, step_dir, "is already a dlm-jax training checkpoint", "dlm-jax export")
    assert_refused(capsys, tmp_path, out_dir, "is already a dlm-jax model directory", "dlm_jax.load")

    restored = load_params_from_workdir(workdir)
    assert jax.tree.all(jax.tree.map(np.array_equal, restored, later))
    assert jax.tree.all(jax.tree.map(np.array_equal, load_params_from_workdir(workdir, step=10), params))
    with pytest.raises(UserError, match="no step 15"):
        load_params_from_workdir(workdir, step=15)

    ids, mask = batch(tokenizer)
    from_workdir = dlm_jax.load(workdir).logits(ids, mask)
    assert not np.array_equal(from_workdir, dlm_jax.load(out_dir).logits(ids, mask))
    code, _, err = cli(capsys, "export", workdir, tmp_path / "hf", "--step", 10)
    assert code == 0, err
    hf = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    assert max_err(torch_logits(hf, ids, mask), dlm_jax.load(out_dir).logits(ids, mask), mask) <= TOL


def test_save_model_roundtrip_is_exact(converted, tmp_path):
    _, out_dir = converted
    config, params, tokenizer = load_model_dir(out_dir)
    save_model(tmp_path / "copy", config, params, tokenizer)
    config2, params2, tokenizer2 = load_model_dir(tmp_path / "copy")
    assert config2 == config and tokenizer2 is not None
    assert jax.tree.all(jax.tree.map(lambda a, b: a.dtype == np.float32 and np.array_equal(a, b), params, params2))
