"""One SCOPE training step at the paper's model sizes, random weights: seconds, peak memory and MFU per phase.

    python bench/bench_step.py                          # one H100: Qwen2.5-0.5B student, Qwen2.5-7B teacher
    python bench/bench_step.py --peak-tflops 989 --batch-prompts 16 --response-len 2048
    python bench/bench_step.py --tiny --device cpu      # smoke test of the script, seconds

The step is scope.py's on one GPU: the student's weights fp32 under bf16 autocast, the teacher in
bf16, sampling with HF `generate` (temperature 0.6, no top-p/top-k, KV cache, model in eval mode),
teacher log-probs with `sample.score`, then `scope.accumulate_gradients` over
micro-batches of whole groups (`sample.micro_batches`) with gradient checkpointing, gradient
clipping and one AdamW step. What is not real:
  - the weights are random (built from the models' configurations, written below; no hub access);
  - prompts are random token ids, all --prompt-len long (no padding);
  - end-of-sequence is disabled (min_new_tokens = max_new_tokens), so every response is exactly
    --response-len tokens: the longest step these sizes allow;
  - the verifier is replaced by random correctness flags, half of them true.
--steps steps run (default 2) and the table is the last one's: the first pays one-time costs
(CUDA kernel loading, AdamW's state allocation, compiling the static path's decode step).

Both rollout paths run in every step, side by side, on the same prompts (--rollouts picks one):
"plain" samples with the student itself (fp32 weights under bf16 autocast, a growing cache), "static"
with scope.py's fast path, `sample.RolloutCopy` (a bf16 copy, a static cache, compiled decoding on GPU,
packed grouped-query attention), refreshed from the student after the update as scope.py does.

MFU counts matmul FLOPs: 2 x body weights per token, causal attention (QK^T and AV: 2 x hidden
x length per token per layer), and the head only at the scored (response) positions, over the
tokenizer's 151,665 ids. The update is 3 forwards (forward + backward; the recomputation of
gradient checkpointing is not counted), teacher scoring is 1 forward; divided by --peak-tflops.
"""
import argparse
import resource
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, CompileConfig, GenerationConfig, Qwen2Config

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sample import RolloutCopy, Rollouts, micro_batches, score  # noqa: E402
from scope import Config, accumulate_gradients  # noqa: E402
from teacher import Given  # noqa: E402

VOCAB = 151_665        # the shared tokenizer's ids: prompts are drawn from them, log-probs are over them
EOS = 151_643          # <|endoftext|>
QWEN = dict(rope_theta=1e6, rms_norm_eps=1e-6, bos_token_id=EOS, eos_token_id=EOS)
STUDENT = dict(QWEN, vocab_size=151_936, hidden_size=896, intermediate_size=4_864, num_hidden_layers=24,
               num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True,
               max_position_embeddings=32_768)                  # Qwen2.5-0.5B, 494M parameters
TEACHER = dict(QWEN, vocab_size=152_064, hidden_size=3_584, intermediate_size=18_944, num_hidden_layers=28,
               num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False,
               max_position_embeddings=131_072)                 # Qwen2.5-7B, 7.62B parameters
TINY_STUDENT = dict(STUDENT, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2)
TINY_TEACHER = dict(TEACHER, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2)
TINY_SHAPES = dict(batch_prompts=2, group_size=4, prompt_len=8, response_len=16, micro_batch_tokens=96)


def forward_flops(cfg: Qwen2Config, rows: int, length: int, scored: int) -> float:
    """Matmul FLOPs of one forward over (rows, length) tokens, `scored` of them projected onto the vocabulary."""
    h, layers = cfg.hidden_size, cfg.num_hidden_layers
    kv = cfg.num_key_value_heads * h // cfg.num_attention_heads
    weights = layers * (2 * h * h + 2 * h * kv + 3 * h * cfg.intermediate_size)   # q, o; k, v; gate, up, down
    attention = layers * 2 * h * length      # causal: length / 2 keys on average, 2 products, 2 FLOPs each
    return (2 * weights + attention) * rows * length + 2 * h * VOCAB * scored


def held_gb(device: torch.device) -> float:
    """Memory held now: allocated GPU memory, or this process's resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated() / 1e9
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 1e9


def peak_gb(device: torch.device) -> float:
    """Peak memory since the last reset: allocated GPU memory, or this process's peak resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def run_phase(name: str, fn, device: torch.device, size: str):
    """(fn(), seconds, GB held before, peak GB); an out-of-memory error names the phase and the size and stops."""
    print(f"  {name}: {size} ...", flush=True)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    held = held_gb(device)
    t0 = time.perf_counter()
    try:
        out = fn()
        if cuda:
            torch.cuda.synchronize()
    except torch.cuda.OutOfMemoryError:
        print(f"OUT OF MEMORY in {name} ({size}): {held:.1f} GB held before it, peak {peak_gb(device):.1f} GB "
              f"of {torch.cuda.get_device_properties(device).total_memory / 1e9:.0f} GB", flush=True)
        sys.exit(1)
    seconds = time.perf_counter() - t0
    print(f"  {name}: {seconds:.2f} s, held {held:.2f} GB before, peak {peak_gb(device):.2f} GB", flush=True)
    return out, seconds, held, peak_gb(device)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-prompts", type=int, default=32, help="B: prompts per step")
    parser.add_argument("--group-size", type=int, default=8, help="G: rollouts per prompt")
    parser.add_argument("--prompt-len", type=int, default=256, help="tokens per prompt")
    parser.add_argument("--response-len", type=int, default=1024, help="tokens per response (EOS disabled)")
    parser.add_argument("--micro-batch-tokens", type=int, default=32768, help="padded tokens per micro-batch, "
                        "teacher and update (scope.py's micro_batch_tokens)")
    parser.add_argument("--steps", type=int, default=2, help="steps to run; the last one is reported")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="peak dense bf16 TFLOP/s of the "
                        "device, for MFU (H100 SXM: 989)")
    parser.add_argument("--tiny", action="store_true", help="tiny models and shapes (a CPU smoke test); "
                        "shape flags still override")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rollouts", choices=["both", "plain", "static"], default="both",
                        help="rollout paths to time in each step (both: side by side)")
    if parser.parse_known_args()[0].tiny:
        parser.set_defaults(**TINY_SHAPES)
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    cfg = Config()                       # scope.py's defaults: temperature 0.6, lr, chunking, routing
    n, length = args.batch_prompts * args.group_size, args.prompt_len + args.response_len

    # ---- models: random weights from the real configurations; dtypes as scope.py on one GPU
    t0 = time.perf_counter()
    student_cfg = Qwen2Config(**(TINY_STUDENT if args.tiny else STUDENT))
    teacher_cfg = Qwen2Config(**(TINY_TEACHER if args.tiny else TEACHER))
    with torch.device(device):
        student = AutoModelForCausalLM.from_config(student_cfg, dtype=torch.float32)
        teacher = AutoModelForCausalLM.from_config(teacher_cfg, dtype=torch.bfloat16 if cuda else torch.float32)
    teacher.requires_grad_(False).eval()
    paths = ["plain", "static"] if args.rollouts == "both" else [args.rollouts]
    fast = None
    if "static" in paths:              # before checkpointing is switched on, as scope.load_models
        fast = RolloutCopy(student, torch.bfloat16 if cuda else torch.float32, rows=n, max_len=length,
                           compile=CompileConfig() if cuda else None)
    student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    if cuda:
        torch.set_float32_matmul_precision("high")  # as scope.py: TF32 for the fp32 log-prob head
    params = {m: sum(p.numel() for p in model.parameters()) for m, model in (("student", student), ("teacher", teacher))}
    print(f"{device} ({torch.cuda.get_device_name(device) if cuda else 'CPU, fp32, no autocast'}): "
          f"student {params['student'] / 1e6:,.0f}M params fp32, teacher {params['teacher'] / 1e6:,.0f}M params "
          f"{'bf16' if cuda else 'fp32'}, built in {time.perf_counter() - t0:.1f} s", flush=True)
    print(f"step: {args.batch_prompts} prompts x {args.group_size} = {n} rows of {args.prompt_len} prompt + "
          f"{args.response_len} response tokens, micro-batches of {args.micro_batch_tokens} tokens, "
          f"log-prob chunks of {cfg.logprob_chunk_tokens}; EOS disabled (min_new_tokens = max_new_tokens)", flush=True)

    gen_config = GenerationConfig(         # as sample.generate, plus min_new_tokens: no row ends early
        do_sample=True, temperature=cfg.temperature, top_p=1.0, top_k=0, max_new_tokens=args.response_len,
        min_new_tokens=args.response_len, eos_token_id=EOS, pad_token_id=EOS, use_cache=True,
        suppress_tokens=list(range(VOCAB, student_cfg.vocab_size)))

    def sample(prompts, path):
        if path == "static":               # as sample.generate with `static`
            config = GenerationConfig(**{**gen_config.to_dict(), "cache_implementation": "static",
                                         "max_cache_len": length, "compile_config": fast.compile,
                                         "disable_compile": fast.compile is None})
            return fast.model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts),
                                       generation_config=config)
        student.eval()                     # no gradient checkpointing while generating
        with amp:
            return student.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts),
                                    generation_config=gen_config)

    def update(ro, batches, teacher_logp, correct, group):
        student.train()
        accumulate_gradients(student, ro, batches, Given(teacher_logp), None, correct, group, VOCAB, cfg, amp,
                             world=1)
        torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for step in range(args.steps):
        print(f"step {step + 1}/{args.steps}", flush=True)
        torch.manual_seed(step)
        prompts = torch.randint(VOCAB, (args.batch_prompts, args.prompt_len), device=device)
        prompts = prompts.repeat_interleave(args.group_size, 0)                   # (N, P)
        gen = {}
        for path in paths:
            gen[path] = run_phase(f"generate ({path})", lambda: sample(prompts, path), device,
                                  f"{n} rows x {args.response_len} new tokens")
        tokens = gen[paths[0]][0]
        attn = torch.ones_like(tokens, dtype=torch.bool)                          # (N, L)
        resp = attn.clone()
        resp[:, :args.prompt_len] = False
        ro = Rollouts(tokens=tokens, attn=attn, resp=resp, texts=[], truncated=torch.zeros(n, dtype=torch.bool))
        correct = torch.rand(n, device=device) < 0.5                              # stands in for the verifier
        group = torch.arange(args.batch_prompts, device=device).repeat_interleave(args.group_size)
        batches = micro_batches(ro, args.group_size, args.micro_batch_tokens, world=1)
        size = f"{len(batches)} micro-batches of <= {max(r.stop - r.start for r, _ in batches)} rows x {length} tokens"
        def teacher_scores():
            with torch.no_grad(), amp:
                return score(teacher, ro, batches, vocab=VOCAB, temperature=cfg.temperature,
                             chunk_tokens=cfg.logprob_chunk_tokens)
        teacher_logp, t_tea, h_tea, m_tea = run_phase("teacher", teacher_scores, device, size)
        _, t_upd, h_upd, m_upd = run_phase("update", lambda: update(ro, batches, teacher_logp, correct, group), device, size)
        if fast is not None:
            _, t_ref, h_ref, m_ref = run_phase("refresh", lambda: fast.refresh(student), device, "the rollout copy")

    # ---- report the last step
    new, total = n * args.response_len, n * length
    peak = args.peak_tflops * 1e12
    mfu_tea = forward_flops(teacher_cfg, n, length, new) / t_tea / peak
    mfu_upd = 3 * forward_flops(student_cfg, n, length, new) / t_upd / peak
    memory = "GPU memory allocated" if cuda else "resident memory (CPU: the peak is the process's so far)"
    print(f"\nstep {args.steps}, {device}; {memory}; MFU against {args.peak_tflops:g} TFLOP/s")
    print("| phase | seconds | tokens | tokens/s | held before | peak | MFU |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for path in paths:
        _, t_gen, h_gen, m_gen = gen[path]
        who = "the student" if path == "plain" else "its rollout copy"
        print(f"| generate, {path} ({who}) | {t_gen:.2f} | {new:,} new | {new / t_gen:,.0f} | {h_gen:.2f} GB | "
              f"{m_gen:.2f} GB | - |")
    if fast is not None:
        print(f"| refresh the rollout copy | {t_ref:.2f} | | | {h_ref:.2f} GB | {m_ref:.2f} GB | - |")
    print(f"| teacher scoring | {t_tea:.2f} | {total:,} | {total / t_tea:,.0f} | {h_tea:.2f} GB | {m_tea:.2f} GB | "
          f"{mfu_tea:.1%} |")
    print(f"| update (student) | {t_upd:.2f} | {total:,} | {total / t_upd:,.0f} | {h_upd:.2f} GB | {m_upd:.2f} GB | "
          f"{mfu_upd:.1%} |")
    steps = {}
    for path in paths:
        t_gen, m_gen = gen[path][1], gen[path][3]
        steps[path] = t_gen + t_tea + t_upd + (t_ref if path == "static" else 0.0)
        print(f"| step, {path} | {steps[path]:.2f} | {new:,} response | {new / steps[path]:,.0f} | | "
              f"{max(m_gen, m_tea, m_upd):.2f} GB | - |")
    if len(paths) == 2:
        print(f"\nstatic against plain: generation {gen['plain'][1] / gen['static'][1]:.2f}x faster, step "
              f"{steps['plain'] / steps['static']:.2f}x faster; generation peak {gen['static'][3]:.2f} GB against "
              f"{gen['plain'][3]:.2f} GB")

if __name__ == "__main__":
    main()
