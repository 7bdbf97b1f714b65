"""What hf_serving.py and ../gpu_small/hf_small.py share: the model loaded
as both run it (bf16 on the GPU, transformers' default attention, sdpa) and
one timed greedy `generate`, and how a result is reported."""
import json
import time

import torch
from transformers import AutoModelForCausalLM


def load_model(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16,
                                                device_map="cuda").eval()


def timed_generate(model, gen, batch, n_in, n_out):
    """Seconds a greedy `generate` of exactly n_out new tokens takes for
    batch random prompts of n_in tokens drawn with gen: host wall clock
    around a synchronized GPU."""
    ids = torch.randint(0, model.config.vocab_size, (batch, n_in), generator=gen).cuda()
    torch.cuda.synchronize()
    t = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_out,
                             min_new_tokens=n_out, do_sample=False, pad_token_id=0)
    torch.cuda.synchronize()
    assert out.shape == (batch, n_in + n_out)
    return time.perf_counter() - t


def report(res, path):
    """Prints res on the line the run scripts grep ("HF {...}") and writes
    it to path when given."""
    print("HF", json.dumps(res))
    if path:
        with open(path, "w") as f:
            json.dump(res, f, indent=1)
