"""modernbert_base: the ModernBERT-base shape (149M with its 50368-token vocabulary; here a
32768-token BPE) trained from scratch as a masked diffusion model on accelerators.

22 pre-norm blocks of hidden 768 (12 heads, GeGLU intermediate 1152), every third block global
and the others attending within a 128-token window, rotary bases 160000 / 10000, no biases:
HF's ModernBertConfig defaults, so `dlm-jax export` gives a ModernBertForMaskedLM that
transformers 5 loads. ModernBERT's own recipe where it applies (lr 8e-4, weight decay 1e-5), the
elbo objective (MDLM/LLaDA), global batch 256 x 1024, FSDP over 8 devices per data replica,
bf16, remat.
"""

from dlm_jax.diffusion import ObjectiveConfig
from dlm_jax.models.config import EncoderConfig
from dlm_jax.train.config import MeshConfig, TrainConfig

CONFIG = TrainConfig(
    model=EncoderConfig(
        model_type="modernbert",
        hidden_size=768,
        num_hidden_layers=22,
        num_attention_heads=12,
        intermediate_size=1152,
        max_position_embeddings=8192,
        local_attention=128,
        layer_norm_eps=1e-5,
        initializer_range=0.02,
    ),
    tokenizer_vocab_size=32768,
    objective=ObjectiveConfig(name="elbo"),
    seq_len=1024,
    batch_size=256,
    steps=100000,
    lr=8e-4,
    warmup_steps=2000,
    weight_decay=1e-5,
    dtype="bfloat16",
    remat=True,
    mesh=MeshConfig(data=-1, fsdp=8),
    checkpoint_every=2000,
    log_every=100,
)
