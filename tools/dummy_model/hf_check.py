#!/usr/bin/env python3
"""Cross-checks cvllm's model directories against HuggingFace transformers
(run where transformers 5.x and PyTorch are installed, e.g. the GPU machine).

    hf_check.py --write-hf OUTDIR  MODEL_DIR...

For each MODEL_DIR (written by cvllm-dummy-model): loads it with
AutoConfig / AutoModelForCausalLM / AutoTokenizer, reports missing or
unexpected weights, whether lm_head is tied, a short forward pass, and the
mean/std of the weights. Then prints the defaults of the config classes the
loader's arch.c relies on and the config.json that this transformers writes
for a llama3-rope Llama (to see where 5.x puts rope_theta), and with
--write-hf saves tiny random HF models (Llama tied, Llama sharded, Mistral,
Qwen2, Qwen3) into OUTDIR so cv_model_load can be run on files HF wrote.
"""
import argparse
import json
import os
import sys
import tempfile

import torch
import transformers
from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig,
                          MistralConfig, Qwen2Config, Qwen3Config)


def check_dir(path):
    print(f"== {path}")
    cfg = AutoConfig.from_pretrained(path)
    print("config:", type(cfg).__name__, "tie", cfg.tie_word_embeddings,
          "rope", getattr(cfg, "rope_parameters", None), "dtype", getattr(cfg, "dtype", None))
    model, info = AutoModelForCausalLM.from_pretrained(path, dtype="auto",
                                                       output_loading_info=True)
    print("loading info:", {k: sorted(v) if isinstance(v, (set, list)) else v
                            for k, v in info.items()})
    emb = model.get_input_embeddings().weight
    print("lm_head tied:", model.lm_head.weight.data_ptr() == emb.data_ptr(), "dtype", emb.dtype)
    for name, p in list(model.named_parameters())[:4]:
        print(f"  {name} {tuple(p.shape)} mean {p.float().mean():.5f} std {p.float().std():.5f}")
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        logits = model(ids).logits
    print("forward ok, logits", tuple(logits.shape), "finite", bool(torch.isfinite(logits).all()))
    if os.path.exists(os.path.join(path, "tokenizer.json")):
        tok = AutoTokenizer.from_pretrained(path)
        print("tokenizer:", type(tok).__name__, len(tok), tok("Hello world")["input_ids"])


def print_defaults():
    for cls in (LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config):
        c = cls()
        keys = ("tie_word_embeddings", "max_position_embeddings", "rms_norm_eps", "hidden_act",
                "bos_token_id", "eos_token_id", "attention_bias", "sliding_window",
                "use_sliding_window", "head_dim", "rope_parameters")
        print(cls.__name__, {k: getattr(c, k, "<none>") for k in keys})
    with tempfile.TemporaryDirectory() as d:
        LlamaConfig(rope_theta=500000.0, rope_scaling={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}).save_pretrained(d)
        print("LlamaConfig(llama3 rope).save_pretrained ->")
        print(open(os.path.join(d, "config.json")).read())


def write_hf(outdir):
    torch.manual_seed(0)
    small = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=64,
                 max_position_embeddings=64)
    models = {
        "hf-llama-tied": (LlamaConfig(tie_word_embeddings=True, **small), {}),
        "hf-llama-sharded": (LlamaConfig(tie_word_embeddings=False, **small),
                             {"max_shard_size": "10KB"}),
        "hf-mistral": (MistralConfig(**small), {}),
        "hf-qwen2": (Qwen2Config(tie_word_embeddings=True, **small), {}),
        "hf-qwen3": (Qwen3Config(head_dim=8, **small), {}),
    }
    for name, (cfg, kw) in models.items():
        model = AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16 if name == "hf-qwen3"
                                                         else torch.float32)
        d = os.path.join(outdir, name)
        model.save_pretrained(d, **kw)
        print(name, sorted(os.listdir(d)))
        print(json.dumps(json.load(open(os.path.join(d, "config.json")))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--write-hf")
    ap.add_argument("dirs", nargs="*")
    args = ap.parse_args()
    print("transformers", transformers.__version__, "torch", torch.__version__)
    for d in args.dirs:
        try:
            check_dir(d)
        except Exception as e:  # report every directory, not just the first failure
            print("FAILED:", d, repr(e))
    print_defaults()
    if args.write_hf:
        write_hf(args.write_hf)
    return 0


if __name__ == "__main__":
    sys.exit(main())
