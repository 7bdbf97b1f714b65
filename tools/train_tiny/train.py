#!/usr/bin/env python3
"""Train cvllm's shipped sample model: a small LlamaForCausalLM and its
byte-level BPE tokenizer, both on the King James Bible text that
prepare_corpus.sh writes.

    python3 tools/train_tiny/train.py --corpus kjv.txt --out MODEL_DIR \
        --fixture sample_model_greedy.json --metrics metrics.json

Needs PyTorch, transformers 5.x and tokenizers (the GPU machine has them);
trains on the GPU, then measures on the saved files. Fixed seeds; GPU
training is not bit-for-bit reproducible, so a rerun gives a model of the
same quality, not the same bytes.

Split, by chapter (1,189 chapters): chapter i is held out for the test if
i % 20 == 7 (5%), for validation (choosing the checkpoint) if i % 50 == 13,
and trains otherwise. The tokenizer is trained on the training chapters.
Each chapter is one document: <s> verse\\nverse\\n... </s>.
"""

import argparse
import json
import math
import os
import time

import torch
import torch.nn.functional as F
import transformers
from tokenizers import (Tokenizer, decoders, models, pre_tokenizers,
                        processors, trainers)
from transformers import (AutoTokenizer, GenerationConfig, LlamaConfig,
                          LlamaForCausalLM, PreTrainedTokenizerFast)

SEED = 20261127
VOCAB = 4096
UNK, BOS, EOS = 0, 1, 2
SEQ = 256            # training context, tokens
BATCH = 64           # sequences per step
LR = 2e-3
WARMUP = 100         # steps
MAX_STEPS = 1200     # about 17 passes over the training tokens
EVAL_EVERY = 100     # steps
TRAIN_SECONDS = 240  # wall-clock cap for the training loop
PROMPTS = ["In the beginning", "And the LORD said unto Moses,",
           "Blessed are the"]
GREEDY_NEW_TOKENS = 32


def log(*a):
    print(*a, flush=True)


def split_chapters(path):
    text = open(path, encoding="utf-8").read()
    chapters = [c.strip("\n") for c in text.split("\n\n") if c.strip()]
    test = [c for i, c in enumerate(chapters) if i % 20 == 7]
    val = [c for i, c in enumerate(chapters)
           if i % 20 != 7 and i % 50 == 13]
    train = [c for i, c in enumerate(chapters)
             if i % 20 != 7 and i % 50 != 13]
    return train, val, test


def train_tokenizer(chapters, out_dir):
    tok = Tokenizer(models.BPE())
    # GPT-2 style: bytes mapped to printable characters, GPT-2's split
    # regex, no added prefix space, so decode(encode(s)) == s for any s.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False)
    tok.train_from_iterator(chapters, trainer)
    assert tok.token_to_id("<s>") == BOS and tok.token_to_id("</s>") == EOS
    # Like Llama's tokenizers: encode(text) with special tokens adds BOS.
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
        unk_token="<unk>", clean_up_tokenization_spaces=False,
        model_max_length=512)
    fast.save_pretrained(out_dir)
    # Fail now, not after training, if the saved files do not behave like
    # a Llama tokenizer: BOS once in front, exact round trip.
    back = AutoTokenizer.from_pretrained(out_dir)
    for prompt in PROMPTS + ["Blessed  are\n\tthe ünïcode ✝ "]:
        ids = back(prompt, add_special_tokens=True)["input_ids"]
        assert ids[0] == BOS and ids.count(BOS) == 1, (prompt, ids)
        assert back.decode(ids, skip_special_tokens=True) == prompt, prompt
    return tok


def encode_stream(tok, chapters):
    ids = []
    for enc in tok.encode_batch(chapters, add_special_tokens=False):
        ids += [BOS] + enc.ids + [EOS]
    return torch.tensor(ids, dtype=torch.long)


def make_model():
    kw = dict(vocab_size=VOCAB, hidden_size=256, intermediate_size=688,
              num_hidden_layers=4, num_attention_heads=8,
              num_key_value_heads=4, max_position_embeddings=512,
              rms_norm_eps=1e-5, hidden_act="silu", tie_word_embeddings=True,
              bos_token_id=BOS, eos_token_id=EOS, pad_token_id=None)
    kw["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0}
    return LlamaForCausalLM(LlamaConfig(**kw))


def val_loss(model, stream):
    """Mean next-token loss over non-overlapping SEQ windows (cheap; only
    for choosing the checkpoint)."""
    n = (stream.numel() - 1) // SEQ
    x = stream[: n * SEQ + 1]
    inp = x[:-1].view(n, SEQ)
    tgt = x[1:].view(n, SEQ)
    total = 0.0
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        for i in range(0, n, 64):
            logits = model(input_ids=inp[i:i + 64]).logits.float()
            total += F.cross_entropy(logits.reshape(-1, VOCAB),
                                     tgt[i:i + 64].reshape(-1),
                                     reduction="sum").item()
    return total / (n * SEQ)


def heldout_nll(model, stream, ctx=SEQ, stride=SEQ // 2):
    """Sum of -log p over targets stream[1:], each scored once with at
    least ctx - stride tokens of context (after the first window), in
    float32. Returns (nll, count)."""
    n = stream.numel()
    nll, count, prev_end = 0.0, 0, 1  # stream[0] (BOS) is never a target
    with torch.no_grad():
        for begin in range(0, n - 1, stride):
            end = min(begin + ctx, n)
            x = stream[begin:end]
            logits = model(input_ids=x[None]).logits[0].float()
            j0 = prev_end - 1 - begin  # logits[j] predicts x[j + 1]
            lp = F.log_softmax(logits[j0:end - 1 - begin], dim=-1)
            tgt = stream[prev_end:end]
            nll -= lp.gather(1, tgt[:, None]).sum().item()
            count += end - prev_end
            prev_end = end
            if end == n:
                break
    assert count == n - 1
    return nll, count


def unigram_nll(train, test):
    """Add-one unigram fitted on the training stream, over targets
    test[1:]."""
    counts = torch.bincount(train, minlength=VOCAB).double() + 1.0
    logp = torch.log(counts / counts.sum())
    return -logp[test[1:]].sum().item(), test.numel() - 1


def train(model, train_ids, val_ids):
    dev = "cuda"
    model.to(dev).train()
    train_ids, val_ids = train_ids.to(dev), val_ids.to(dev)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=LR, betas=(0.9, 0.95), fused=True)
    gen = torch.Generator(device=dev).manual_seed(SEED)
    offsets = torch.arange(SEQ + 1, device=dev)
    best = (float("inf"), None, 0)
    history = []
    t0 = time.time()
    for step in range(1, MAX_STEPS + 1):
        lr = LR * min(step / WARMUP, 0.1 + 0.45 * (1 + math.cos(
            math.pi * step / MAX_STEPS)))
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, train_ids.numel() - SEQ - 1, (BATCH, 1),
                               device=dev, generator=gen)
        x = train_ids[starts + offsets]  # [BATCH, SEQ + 1]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(input_ids=x[:, :-1]).logits
        loss = F.cross_entropy(logits.float().reshape(-1, VOCAB),
                               x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        out_of_time = time.time() - t0 > TRAIN_SECONDS
        if step % EVAL_EVERY == 0 or step == MAX_STEPS or out_of_time:
            model.eval()
            v = val_loss(model, val_ids)
            model.train()
            history.append({"step": step, "train_loss": round(loss.item(), 4),
                            "val_loss": round(v, 4),
                            "seconds": round(time.time() - t0, 1)})
            log(history[-1])
            if v < best[0]:
                best = (v, {k: t.detach().clone()
                            for k, t in model.state_dict().items()}, step)
            elif step - best[2] >= 3 * EVAL_EVERY:
                log("validation loss stopped improving")
                break
        if out_of_time:
            log("training time cap reached")
            break
    model.load_state_dict(best[1])
    return {"steps_run": step, "best_step": best[2],
            "best_val_loss": round(best[0], 4),
            "train_seconds": round(time.time() - t0, 1),
            "history": history}


def greedy_fixture(model_dir, path):
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = LlamaForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    cases = []
    for prompt in PROMPTS:
        ids = tok(prompt, add_special_tokens=True)["input_ids"]
        assert ids[0] == BOS and ids.count(BOS) == 1, ids
        assert tok.decode(ids, skip_special_tokens=True) == prompt
        with torch.no_grad():
            t = torch.tensor([ids])
            out = model.generate(input_ids=t,
                                 attention_mask=torch.ones_like(t),
                                 do_sample=False,
                                 max_new_tokens=GREEDY_NEW_TOKENS)
        out = out[0, len(ids):].tolist()
        full = tok.decode(ids + out, skip_special_tokens=True)
        head = tok.decode(ids, skip_special_tokens=True)
        assert full.startswith(head)
        cases.append({"prompt": prompt, "input_ids": ids,
                      "max_new_tokens": GREEDY_NEW_TOKENS,
                      "output_ids": out,
                      "text": tok.decode(out, skip_special_tokens=True),
                      "text_incremental": full[len(head):]})
        log(f"{prompt!r} -> {cases[-1]['text']!r}")
    with open(path, "w") as f:
        json.dump({"model": "samples/models/" + os.path.basename(
                       os.path.normpath(model_dir)),
                   "generated_with": {
                       "transformers": transformers.__version__,
                       "torch": torch.__version__, "dtype": "float32",
                       "do_sample": False, "attn_implementation": "eager",
                       "device": "cpu"},
                   "cases": cases}, f, indent=2, ensure_ascii=False)
        f.write("\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--fixture", required=True)
    ap.add_argument("--metrics", required=True)
    args = ap.parse_args()
    torch.manual_seed(SEED)
    log("transformers", transformers.__version__, "torch", torch.__version__,
        torch.cuda.get_device_name(0))
    t0 = time.time()
    train_ch, val_ch, test_ch = split_chapters(args.corpus)
    os.makedirs(args.out, exist_ok=True)
    tok = train_tokenizer(train_ch, args.out)
    train_ids, val_ids, test_ids = (encode_stream(tok, c)
                                    for c in (train_ch, val_ch, test_ch))
    log(f"chapters train/val/test {len(train_ch)}/{len(val_ch)}/"
        f"{len(test_ch)}, tokens {train_ids.numel()}/{val_ids.numel()}/"
        f"{test_ids.numel()}, tokenizer {time.time() - t0:.1f} s")

    model = make_model()
    params = sum(p.numel() for p in model.parameters())
    log(f"parameters {params}")
    report = train(model, train_ids, val_ids)
    model.to("cpu").float()
    model.generation_config = GenerationConfig(bos_token_id=BOS,
                                               eos_token_id=EOS)
    model.save_pretrained(args.out)

    # Measure the files as shipped: reload in float32, eager attention.
    saved = LlamaForCausalLM.from_pretrained(
        args.out, dtype=torch.float32, attn_implementation="eager")
    saved.to("cuda").eval()
    torch.backends.cuda.matmul.allow_tf32 = False
    nll, n = heldout_nll(saved, test_ids.to("cuda"))
    u_nll, u_n = unigram_nll(train_ids, test_ids)
    assert n == u_n
    report.update({
        "parameters": params, "vocab": VOCAB,
        "chapters": {"train": len(train_ch), "val": len(val_ch),
                     "test": len(test_ch)},
        "tokens": {"train": train_ids.numel(), "val": val_ids.numel(),
                   "test": test_ids.numel()},
        "test_targets": n,
        "test_perplexity": round(math.exp(nll / n), 3),
        "unigram_test_perplexity": round(math.exp(u_nll / n), 3),
        "device": torch.cuda.get_device_name(0),
        "transformers": transformers.__version__, "torch": torch.__version__,
    })
    report["unigram_over_model"] = round(
        report["unigram_test_perplexity"] / report["test_perplexity"], 2)
    log({k: v for k, v in report.items() if k != "history"})
    greedy_fixture(args.out, args.fixture)
    report["total_seconds"] = round(time.time() - t0, 1)
    with open(args.metrics, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    log(f"total {report['total_seconds']} s")


if __name__ == "__main__":
    main()
