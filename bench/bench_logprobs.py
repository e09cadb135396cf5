"""Peak memory and time of the chunked log-probs against the full-logits reference, forward + backward.

    python bench/bench_logprobs.py                                   # CPU: 4k, 16k and 64k tokens
    python bench/bench_logprobs.py --device cuda                     # one GPU
    python bench/bench_logprobs.py --tokens 4096 --chunk-tokens 2048 --repeats 1

`sample.token_logprobs` projects the response positions onto the vocabulary `--chunk-tokens` at a
time and recomputes each chunk in backward; `sample.naive_token_logprobs` forms the (N, L, V)
logits at once. Both run on a 1-layer Qwen2 with Qwen2.5-0.5B's head (151,936 rows, scored over the
tokenizer's 151,665 ids, as scope.py does) and hidden size (896), so the head dominates. Rows are
1 prompt token followed by 1,024 response tokens, every response token scored, temperature 0.6;
the backward pass is that of the sum of the log-probs. On CUDA the weights are fp32 under bf16
autocast, as scope.py runs the student; on CPU everything is fp32.

Each (method, size) runs in a fresh process, because ru_maxrss never goes down. Peak memory is
what the pass adds to the process once the model and inputs exist: on CPU ru_maxrss minus the
resident set at that point, on CUDA max_memory_allocated minus memory_allocated. Time is the best
of --repeats passes (after one warm-up pass on CUDA). The naive method is skipped, with a line
saying so, where its estimated need exceeds the free memory.
"""
import argparse
import json
import resource
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sample import naive_token_logprobs, token_logprobs  # noqa: E402

HEAD_ROWS = 151_936    # Qwen2.5's LM head
VOCAB = 151_665        # the shared tokenizer's ids: the rows that are scored
HIDDEN = 896           # Qwen2.5-0.5B
ROW = 1024             # response tokens per row
# The naive pass holds about three (tokens x vocab) fp32 tensors at once (the scaled logits, their
# log-softmax, its gradient): 12.4 to 12.8 bytes per logit measured on CPU and CUDA. 16 leaves a margin.
NAIVE_BYTES_PER_LOGIT = 16


def one_layer_qwen(device: torch.device) -> Qwen2ForCausalLM:
    """Qwen2.5-0.5B's embedding, head and attention shape, one layer and a small MLP: a trivial body."""
    config = Qwen2Config(vocab_size=HEAD_ROWS, hidden_size=HIDDEN, intermediate_size=256, num_hidden_layers=1,
                         num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True,
                         rope_theta=1e6, max_position_embeddings=32768)
    with torch.device(device):
        return Qwen2ForCausalLM(config)


def resident_bytes() -> int:
    """This process's resident set now (Linux)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize()


def measure(method: str, tokens: int, device: torch.device, chunk_tokens: int, repeats: int) -> dict:
    """One (method, size) in this process: {'peak_bytes': added by a pass, 'seconds': best pass}."""
    torch.manual_seed(0)
    model = one_layer_qwen(device)
    ids = torch.randint(VOCAB, (tokens // ROW, ROW + 1), device=device)   # (N, 1 + ROW)
    attn = torch.ones_like(ids, dtype=torch.bool)
    resp = attn.clone()
    resp[:, 0] = False                                                     # the prompt token
    kw = dict(vocab=VOCAB, temperature=0.6)
    if method == "chunked":
        kw["chunk_tokens"] = chunk_tokens
    fn = token_logprobs if method == "chunked" else naive_token_logprobs
    cuda = device.type == "cuda"
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    if cuda:
        torch.set_float32_matmul_precision("high")  # as scope.py: TF32 for the fp32 log-prob head

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resident_bytes()
    times = []
    for _ in range(int(cuda) + repeats):                                  # a warm-up pass on CUDA
        t0 = time.perf_counter()
        with amp:
            logp = fn(model, ids, attn, resp, **kw)                        # (N, 1 + ROW)
        logp.sum().backward()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        del logp
        model.zero_grad(set_to_none=True)                                  # every pass allocates its gradients
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak_bytes": peak - base, "seconds": min(times[int(cuda):])}


def free_bytes(device: torch.device) -> int:
    """Memory a fresh worker process could take: free GPU memory, or MemAvailable on CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    meminfo = dict(line.split(":") for line in Path("/proc/meminfo").read_text().splitlines())
    return int(meminfo["MemAvailable"].split()[0]) * 1024


def run_worker(args, method: str, tokens: int) -> dict:
    """`measure` in a fresh process, so that its peak is its own."""
    cmd = [sys.executable, __file__, "--worker", method, "--device", args.device, "--tokens", str(tokens),
           "--chunk-tokens", str(args.chunk_tokens), "--repeats", str(args.repeats)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        return {"error": (done.stderr.strip().splitlines() or ["exit code %d" % done.returncode])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--tokens", default="4096,16384,65536", help="comma-separated scored tokens per pass "
                        f"(multiples of {ROW})")
    parser.add_argument("--chunk-tokens", type=int, default=1024, help="chunk size of token_logprobs "
                        "(scope.py's logprob_chunk_tokens)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per measurement; the best counts")
    parser.add_argument("--worker", choices=("chunked", "naive"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = [int(t) for t in args.tokens.split(",")]
    if any(t % ROW or t < ROW for t in sizes):
        parser.error(f"--tokens must be multiples of {ROW}")
    device = torch.device(args.device)
    if args.worker:
        print(json.dumps(measure(args.worker, sizes[0], device, args.chunk_tokens, args.repeats)))
        return

    print(f"{args.device}: vocab {VOCAB:,} of {HEAD_ROWS:,} head rows, hidden {HIDDEN}, rows of {ROW} tokens, "
          f"chunks of {args.chunk_tokens} tokens, best of {args.repeats}", flush=True)
    rows = []
    for tokens in sizes:
        result = {}
        for method in ("chunked", "naive"):
            need, free = tokens * VOCAB * NAIVE_BYTES_PER_LOGIT, free_bytes(device)
            if method == "naive" and need > 0.9 * free:
                print(f"{tokens:>6} tokens, naive: skipped: would need ~{need / 1e9:.0f} GB "
                      f"({free / 1e9:.0f} GB free)", flush=True)
                continue
            result[method] = r = run_worker(args, method, tokens)
            line = r.get("error") or f"{r['peak_bytes'] / 1e9:.2f} GB, {r['seconds']:.2f} s"
            print(f"{tokens:>6} tokens, {method}: {line}", flush=True)
        rows.append((tokens, result))

    def cell(r, key, fmt):
        return fmt.format(r[key] / (1e9 if key == "peak_bytes" else 1)) if r and key in r else "-"

    def ratio(result, key):
        ok = all(key in result.get(m, {}) for m in ("chunked", "naive"))
        return f"{result['naive'][key] / result['chunked'][key]:.1f}x" if ok else "-"

    print("\n| scored tokens | fp32 logits | peak chunked | peak naive | naive/chunked | "
          "time chunked | time naive | naive/chunked |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for tokens, result in rows:
        c, n = result.get("chunked"), result.get("naive")
        print(f"| {tokens:,} | {tokens * VOCAB * 4 / 1e9:.1f} GB | {cell(c, 'peak_bytes', '{:.2f} GB')} | "
              f"{cell(n, 'peak_bytes', '{:.2f} GB')} | {ratio(result, 'peak_bytes')} | "
              f"{cell(c, 'seconds', '{:.2f} s')} | {cell(n, 'seconds', '{:.2f} s')} | {ratio(result, 'seconds')} |")


if __name__ == "__main__":
    main()
