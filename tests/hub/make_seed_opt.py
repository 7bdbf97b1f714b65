#!/usr/bin/env python3
"""A tiny random OPT model in facebook/opt-125m's file layout, for
tests/hub/test_seed_sample.c (python3 standard library only).

    python3 tests/hub/make_seed_opt.py SHARED_DIR OUT_DIR

OUT_DIR gets what the hub's facebook/opt-125m holds, at toy sizes:
config.json (OPTForCausalLM, do_layer_norm_before true), generation_config.json,
pytorch_model.bin with random float16 weights under the real checkpoint's
key names ("decoder.*", saved from the base model; written with
tests/fixtures/torch_bin/make_torch_bin.py's torch.save-format writer), and
OPT's slow-tokenizer files: vocab.json + merges.txt from
SHARED_DIR/tokenizers/gpt2/tokenizer.json, with the tokenizer_config.json
(add_bos_token, bos "</s>") and special_tokens_map.json of
tests/fixtures/tokenizer_slow/opt/. Over GPT-2's 50257 tokens the slow
tokenizer adds "</s>" as id 50257 and "<pad>" as 50258; vocab_size is the
real 50272, and the embedding rows past the tokenizer are zero so that
(tied head) their logits are 0, below the random ones: a greedy step then
picks a token the tokenizer can decode. Deterministic (fixed seed).
"""
import collections
import json
import os
import random
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures", "torch_bin"))
import make_torch_bin as tb  # noqa: E402  (its main() runs only as a script)

HIDDEN, HEADS, LAYERS, FFN, MAX_POS = 32, 4, 2, 64, 2048
VOCAB, N_TOKENIZER = 50272, 50259
BOS = EOS = 50257  # "</s>"
PAD = 50258  # "<pad>"


def config():
    return {
        "_name_or_path": "facebook/opt-125m",
        "activation_dropout": 0.0,
        "activation_function": "relu",
        "architectures": ["OPTForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": BOS,
        "do_layer_norm_before": True,
        "dropout": 0.1,
        "eos_token_id": EOS,
        "ffn_dim": FFN,
        "hidden_size": HIDDEN,
        "init_std": 0.02,
        "layerdrop": 0.0,
        "max_position_embeddings": MAX_POS,
        "model_type": "opt",
        "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS,
        "pad_token_id": PAD,
        "prefix": "</s>",
        "torch_dtype": "float16",
        "transformers_version": "4.21.0.dev0",
        "use_cache": True,
        "vocab_size": VOCAB,
        "word_embed_proj_dim": HIDDEN,
    }


def state_dict():
    rng = random.Random(11)
    sd = collections.OrderedDict()
    keys = [0]

    def put(name, shape, scale, offset=0.0, zero_rows_from=None):
        n = 1
        for d in shape:
            n *= d
        vals = [offset + rng.gauss(0.0, scale) for _ in range(n)]
        if zero_rows_from is not None:
            row = shape[1]
            vals[zero_rows_from * row:] = [0.0] * ((shape[0] - zero_rows_from) * row)
        st = tb.Storage(str(keys[0]), "HalfStorage", vals)
        keys[0] += 1
        sd[name] = tb.Tensor(st, 0, list(shape))

    put("decoder.embed_tokens.weight", [VOCAB, HIDDEN], 0.05, zero_rows_from=N_TOKENIZER)
    put("decoder.embed_positions.weight", [MAX_POS + 2, HIDDEN], 0.1)
    put("decoder.final_layer_norm.weight", [HIDDEN], 0.1, 1.0)
    put("decoder.final_layer_norm.bias", [HIDDEN], 0.1)
    for l in range(LAYERS):
        p = "decoder.layers.%d." % l
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            put(p + "self_attn.%s.weight" % proj, [HIDDEN, HIDDEN], 0.2)
            put(p + "self_attn.%s.bias" % proj, [HIDDEN], 0.05)
        put(p + "self_attn_layer_norm.weight", [HIDDEN], 0.1, 1.0)
        put(p + "self_attn_layer_norm.bias", [HIDDEN], 0.1)
        put(p + "fc1.weight", [FFN, HIDDEN], 0.2)
        put(p + "fc1.bias", [FFN], 0.05)
        put(p + "fc2.weight", [HIDDEN, FFN], 0.2)
        put(p + "fc2.bias", [HIDDEN], 0.05)
        put(p + "final_layer_norm.weight", [HIDDEN], 0.1, 1.0)
        put(p + "final_layer_norm.bias", [HIDDEN], 0.1)
    return sd


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: make_seed_opt.py SHARED_DIR OUT_DIR")
    shared, out = sys.argv[1], sys.argv[2]
    with open(os.path.join(shared, "tokenizers", "gpt2", "tokenizer.json"), encoding="utf-8") as f:
        model = json.load(f)["model"]
    assert len(model["vocab"]) == BOS, "GPT-2's vocabulary has 50257 tokens"
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(model["vocab"], f, ensure_ascii=False)
    with open(os.path.join(out, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for m in model["merges"]:
            f.write((m if isinstance(m, str) else " ".join(m)) + "\n")
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(os.path.join(ROOT, "tests", "fixtures", "tokenizer_slow", "opt", name), out)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config(), f, indent=2)
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump({"_from_model_config": True, "bos_token_id": BOS, "eos_token_id": EOS,
                   "pad_token_id": PAD, "transformers_version": "4.27.0.dev0"}, f, indent=2)
    tb.save(os.path.join(out, "pytorch_model.bin"), state_dict())


if __name__ == "__main__":
    main()
