"""What the benchmark scripts share: the CPU they ran on, interleaved timing, and a random HF
model of either family with the same weights converted to ours."""

import os
import platform
import statistics
import time

# CPU flags that decide the speed of matrix products, in the order we report them.
MATRIX_ISA = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512_fp16", "avx512_vnni", "avx512f", "avx2")


def cpu_description() -> str:
    """'Intel(R) Xeon(R) Platinum 8480+, 2 cores, amx_bf16 amx_tile avx512_bf16 ...' (Linux), or
    what the platform module knows elsewhere."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    isa = " ".join(f for f in MATRIX_ISA if f in flags) or "no AVX-512/AMX"
    return f"{model}, {os.cpu_count()} cores, {isa}"


def interleaved_medians(fns: dict, repeats: int, warmup: int = 2) -> dict:
    """Median (wall seconds, CPU seconds) per function, timing them in turn so that load from
    other processes on a shared machine falls on all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start, cpu = time.perf_counter(), time.process_time()
            fn()
            times[name].append((time.perf_counter() - start, time.process_time() - cpu))
    return {name: [statistics.median(column) for column in zip(*t)] for name, t in times.items()}


def hf_masked_lm(family: str, *, vocab: int, hidden: int, layers: int, length: int, seed: int = 0):
    """A random transformers MLM of `family` (roberta | modernbert) in eval mode, with heads of
    64 and each family's own proportions: intermediate 4x hidden for RoBERTa, 1.5x (GeGLU, as in
    ModernBERT-base) for ModernBERT, whose window is 128 tokens with every third layer global."""
    import torch
    import transformers

    shape = dict(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64)
    )
    if family == "roberta":
        config = transformers.RobertaConfig(
            **shape, intermediate_size=4 * hidden, max_position_embeddings=max(514, length + 2)
        )
        cls = transformers.RobertaForMaskedLM
    else:
        config = transformers.ModernBertConfig(
            **shape,
            intermediate_size=3 * hidden // 2,
            max_position_embeddings=max(512, length),
            local_attention=min(128, length),
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
            cls_token_id=0,
            sep_token_id=2,
        )
        cls = transformers.ModernBertForMaskedLM
    torch.manual_seed(seed)
    return cls(config).eval()


def converted(torch_model):
    """(our EncoderConfig, params) holding the same weights as a transformers MLM."""
    from dlm_jax.convert import encoder_config_from_hf, params_from_hf

    config = encoder_config_from_hf(torch_model.config.to_dict())
    params, _ = params_from_hf({k: v.detach().numpy() for k, v in torch_model.state_dict().items()}, config)
    return config, params
