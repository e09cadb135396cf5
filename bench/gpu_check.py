"""Every question about the GPU paths that a CPU cannot answer, in one call of at most 8 minutes on one H100/H200.

    python bench/gpu_check.py              # one GPU: random-init models of the real configurations
    python bench/gpu_check.py --tiny       # the same checks on CPU with tiny models, seconds (the tests run this)

Models are built from the published configurations (written in bench/bench_step.py and bench/plans.py; the GPU
machine has no hub access), with random weights. It prints one table and exits non-zero if any check failed:
  1. static against plain on Qwen2.5-0.5B: greedy agreement of 16 rows, and the per-token |log-prob| gap of the
     bf16 copy against the student under autocast on 4,096-token sequences, by position bucket (it must not grow);
  2. decoding, both paths in the same run: milliseconds per step and tokens/s for 256 rows at 512 and 2,048 new
     tokens (end-of-sequence off, 64-token prompts);
  3. CUDA graphs of the compiled decode step over four calls (two calls, a refresh, two more): recordings must
     happen in the first call only, and no graph may be skipped;
  4. the memory plan (plan.py) against torch.cuda.max_memory_allocated at the r1-distill config's per-GPU share
     (32 prompts x 8, a 4,096-token padded prompt): static generation (its prefill, the cache allocated whole),
     teacher scoring and the update at one micro-batch; the plan must not be below the measurement;
  5. three steps of scope.py on Qwen2.5-0.5B / 7B-architecture local directories, on both rollout paths and
     with --algorithm grpo, a save, and a resume of one more step;
  6. the teacher's cost (bench/bench_cost.py's question at the real sizes): Qwen2.5-7B scoring 64 rollouts of
     1,024 response tokens, all of them against the half a 50% pass rate leaves wrong (sample.score_rows); the
     wrong half must take at most 0.6 of the time.
On CPU (--tiny) nothing is compiled, no graph is recorded and memory is not measured: those rows say so.
"""
import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import AutoModelForCausalLM, CompileConfig, Qwen2Config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
import plan  # noqa: E402
import toy  # noqa: E402
from bench_step import STUDENT, TEACHER, TINY_STUDENT, TINY_TEACHER  # noqa: E402
from plans import MODELS, shipped_plan_config  # noqa: E402
from sample import RolloutCopy, Rollouts, generate, score, score_rows, token_logprobs  # noqa: E402
from scope import Config, accumulate_gradients  # noqa: E402
from teacher import Given  # noqa: E402

R1 = "configs/r1-distill-1.5b_skywork-7b.yaml"


def shapes(tiny: bool) -> tuple[dict, dict]:
    """(student, teacher) configurations: Qwen2.5-0.5B and 7B, or tiny ones with a small vocabulary (--tiny)."""
    if tiny:
        return dict(TINY_STUDENT, vocab_size=1024), dict(TINY_TEACHER, vocab_size=1088)
    return STUDENT, TEACHER


def build(config: dict | Qwen2Config, dtype, device) -> torch.nn.Module:
    """A random-init causal LM of `config`, made on the device directly (no fp32 CPU copy of a 7B model)."""
    config = config if not isinstance(config, dict) else Qwen2Config(**config)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


class Tokens:
    """The little of a tokenizer `generate` needs when prompts are token ids already: every row `length` ids."""

    def __init__(self, vocab: int, length: int, rows: int, device):
        self.ids = torch.randint(0, vocab, (rows, length), device=device)
        self.pad_token_id = self.eos_token_id = vocab - 1
        self.chat_template, self.vocab = None, vocab

    def __len__(self):
        return self.vocab

    def __call__(self, prompts, **kwargs):
        ids = self.ids[:len(prompts)]
        return SimpleNamespace(input_ids=ids, attention_mask=torch.ones_like(ids), to=lambda device: self(prompts))

    def batch_decode(self, rows, **kwargs):
        return ["" for _ in rows]


def sample_both(student, fast, tok, rows: int, new: int, greedy: bool, amp) -> dict:
    """Both paths on the same prompts, end-of-sequence off: {path: (Rollouts, seconds)}."""
    out = {}
    prompts = [""] * rows
    kw = dict(stop=[tok.vocab], temperature=0.0 if greedy else 0.6, top_p=1.0, top_k=0, max_new_tokens=new)
    for path in ("plain", "static"):
        sync(student)
        t = time.perf_counter()
        with amp if path == "plain" else torch.no_grad():
            ro = generate(student, tok, prompts, 1, **kw, static=fast if path == "static" else None)
        sync(student)
        out[path] = (ro, time.perf_counter() - t)
    return out


def sync(model):
    if next(model.parameters()).device.type == "cuda":
        torch.cuda.synchronize()


def check_agreement(student, fast, device, amp, tiny: bool) -> list:
    """Greedy agreement of the two paths, and the copy's log-prob gap by position bucket."""
    new = 128 if not tiny else 16
    tok = Tokens(student.config.vocab_size - 300, 64 if not tiny else 8, 16, device)
    runs = sample_both(student, fast, tok, 16, new, True, amp)
    plain, static = runs["plain"][0].tokens, runs["static"][0].tokens
    same = (plain == static).float().mean().item()
    rows_same = (plain == static).all(1).float().mean().item()
    n = 4096 if not tiny else 512
    tokens = torch.randint(0, tok.vocab, (2, n), device=device)
    attn = torch.ones_like(tokens, dtype=torch.bool)
    resp = attn.clone()
    resp[:, 0] = False
    with torch.no_grad(), amp:
        ref = token_logprobs(student, tokens, attn, resp, vocab=tok.vocab, temperature=1.0)
    with torch.no_grad():
        gap = (token_logprobs(fast.model, tokens, attn, resp, vocab=tok.vocab, temperature=1.0) - ref).abs()[:, 1:]
    edges = [0, 512, 1024, 2048, 4096] if not tiny else [0, 64, 128, 256, 512]
    buckets = [gap[:, a:b].mean().item() for a, b in zip(edges, edges[1:])]
    rows = [(f"greedy agreement, 16 rows x {new} tokens", f"{same:.1%} of tokens, {rows_same:.0%} of rows", True)]
    rows += [(f"|log-prob gap| copy vs student, positions {a}-{b}", f"{g:.4f}", g < 2 * buckets[0] + 1e-3)
             for a, b, g in zip(edges, edges[1:], buckets)]
    return rows


def check_speed(student, make_copy, device, amp, tiny: bool) -> list:
    """Decode milliseconds per step and tokens/s, both paths, 256 rows (tiny: 8)."""
    rows_n = 256 if not tiny else 8
    rows = []
    for new in ((512, 2048) if not tiny else (8, 16)):
        fast = make_copy(rows_n, 64 + new)
        tok = Tokens(student.config.vocab_size - 300, 64, rows_n, device)
        sample_both(student, fast, tok, rows_n, 4, False, amp)              # warm-up: compile, record graphs
        runs = sample_both(student, fast, tok, rows_n, new, False, amp)
        for path, (ro, seconds) in runs.items():
            rows.append((f"decode {path}, {rows_n} rows x {new} new tokens",
                         f"{1000 * seconds / new:.1f} ms/step, {rows_n * new / seconds:,.0f} tokens/s", True))
        del fast
    return rows


def check_graphs(student, fast, device, amp, tiny: bool) -> list:
    """CUDA-graph recordings and skips over four calls of one step and the next (a refresh between)."""
    if device.type != "cuda":
        return [("CUDA graphs over 4 calls", "not on CPU", True)]
    from torch._dynamo.utils import counters

    recorded, real = [], torch.cuda.graph

    class counting(real):
        def __init__(self, *args, **kwargs):
            recorded.append(call)
            super().__init__(*args, **kwargs)
    torch.cuda.graph = counting
    counters["inductor"]["cudagraph_skips"] = 0
    tok = Tokens(student.config.vocab_size - 300, 64, fast.rows, device)
    try:
        for call in range(4):
            if call == 2:
                fast.refresh(student)
            generate(None, tok, [""] * fast.rows, 1, stop=[tok.vocab], temperature=0.6, top_p=1.0, top_k=0,
                     max_new_tokens=32, static=fast)
    finally:
        torch.cuda.graph = real
    later = [c for c in recorded if c > 0]
    skips = counters["inductor"]["cudagraph_skips"]
    return [("CUDA graphs recorded in call 1 / calls 2-4", f"{recorded.count(0)} / {len(later)}", not later),
            ("CUDA graph skips", str(skips), skips == 0)]


def check_memory(device, tiny: bool) -> list:
    """The plan against max_memory_allocated, at the r1-distill config's per-GPU share on one GPU."""
    if device.type != "cuda":
        return [("memory: plan vs measured", "not on CPU", True)]
    with tempfile.TemporaryDirectory() as tmp:
        names = {"student": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "teacher": "Skywork/Skywork-OR1-7B"}
        for name in names.values():
            MODELS[name].save_pretrained(Path(tmp) / name)
        cfg = shipped_plan_config(R1, 1, 80)
        cfg.student, cfg.teacher = (str(Path(tmp) / names[k]) for k in ("student", "teacher"))
        cfg.batch_size, cfg.rollouts = cfg.batch_size // 8, "static"     # one GPU's share of the 8-GPU run
        s, t = plan.read_shape("student", cfg.student), plan.read_shape("teacher", cfg.teacher)
        phases = {name: gb for name, gb, _, _ in plan.estimate(cfg, s, t)[0]}
        _, sizes = plan.estimate(cfg, s, t)
    student = build(MODELS[names["student"]], torch.float32, device)
    teacher = build(MODELS[names["teacher"]], torch.bfloat16, device).requires_grad_(False)
    optimizer = torch.optim.AdamW(student.parameters(), lr=0.0)
    for p in student.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()                                       # AdamW's two states exist, as in a run
    optimizer.zero_grad(set_to_none=True)
    student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    fast = RolloutCopy(student, torch.bfloat16, sizes["rows"], sizes["width"], CompileConfig())
    amp = torch.autocast("cuda", dtype=torch.bfloat16)
    measured = {}
    torch.cuda.reset_peak_memory_stats()
    tok = Tokens(151_665, cfg.max_prompt_tokens, sizes["rows"], device)
    generate(None, tok, [""] * sizes["rows"], 1, stop=[tok.vocab], temperature=0.6, top_p=1.0, top_k=0, max_new_tokens=2,
             static=fast)
    measured["generation"] = torch.cuda.max_memory_allocated() / 1e9
    width, rows = sizes["width"], sizes["mb_rows"]
    tokens = torch.randint(0, 151_665, (rows, width), device=device)
    attn = torch.ones_like(tokens, dtype=torch.bool)
    attn[:, :64] = False                                   # left padding: the mask HF builds is there
    resp = attn.clone()
    resp[:, :cfg.max_prompt_tokens] = False
    ro = Rollouts(tokens=tokens, attn=attn, resp=resp, texts=[""] * rows, truncated=torch.zeros(rows, dtype=torch.bool))
    batches = [(slice(0, rows), slice(0, width))]
    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad(), amp:
        teacher_logp = score(teacher, ro, batches, vocab=151_665, temperature=0.6, chunk_tokens=cfg.logprob_chunk_tokens)
    measured["teacher scoring"] = torch.cuda.max_memory_allocated() / 1e9
    torch.cuda.reset_peak_memory_stats()
    student.train()
    correct = torch.arange(rows, device=device) % 2 == 0
    group = torch.arange(rows, device=device) // cfg.group_size
    run_cfg = Config(**{k: v for k, v in vars(cfg).items() if k in Config.__dataclass_fields__})
    accumulate_gradients(student, ro, batches, Given(teacher_logp), None, correct, group, 151_665, run_cfg, amp, 1)
    measured["update"] = torch.cuda.max_memory_allocated() / 1e9
    return [(f"memory of {name}: plan vs measured", f"{phases[name]:.1f} vs {gb:.1f} GB", phases[name] >= gb)
            for name, gb in measured.items()]


def check_runs(tiny: bool) -> list:
    """Three steps of scope.py on both paths, a save, and a resume of one more step (subprocesses)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rng = random.Random(0)
        problems = [toy.make_problem(rng) for _ in range(200)]
        tok = toy.train_tokenizer([f"{p['problem']}\n{toy.SUFFIX}" for p in problems] + [p["solution"] for p in problems])
        for role, config in zip(("student", "teacher"), shapes(tiny)):
            model = build(config, torch.bfloat16 if role == "teacher" and not tiny else torch.float32, "cpu" if tiny else "cuda")
            model.generation_config.eos_token_id = tok.eos_token_id
            model.save_pretrained(tmp / role)
            tok.save_pretrained(tmp / role)
            del model
        (tmp / "train.jsonl").write_text("".join(json.dumps(p) + "\n" for p in problems))
        for path, extra in (("plain", []), ("static", ["--rollouts", "static"]), ("grpo", ["--algorithm", "grpo"])):
            args = [sys.executable, str(ROOT / "scope.py"), "--student", str(tmp / "student"), "--teacher",
                    str(tmp / "teacher"), "--train-data", str(tmp / "train.jsonl"), "--eval-data",
                    str(tmp / "train.jsonl"), "--eval-limit", "8", "--eval-every", "3", "--batch-size", "4",
                    "--group-size", "4", "--max-prompt-tokens", "64", "--max-new-tokens", "32", "--save-every", "3",
                    *extra, "--output-dir", str(tmp / path)]
            first = subprocess.run(args + ["--max-steps", "3"], capture_output=True, text=True)
            again = subprocess.run(args + ["--max-steps", "4", "--resume", "auto"], capture_output=True, text=True)
            steps = [json.loads(x)["step"] for x in (tmp / path / "metrics.jsonl").read_text().splitlines()] \
                if (tmp / path / "metrics.jsonl").exists() else []
            ok = first.returncode == again.returncode == 0 and steps == [1, 2, 3, 4]
            why = "" if ok else (first.stderr + again.stderr)[-300:].replace("\n", " ")
            rows.append((f"scope.py {path}: 3 steps, save, resume 1", f"steps {steps} {why}", ok))
    return rows


def check_teacher_cost(device, tiny: bool) -> list:
    """Seconds of teacher scoring for every rollout and for the wrong half only, the best of two passes each."""
    teacher = build(shapes(tiny)[1], torch.bfloat16 if not tiny else torch.float32, device).eval()
    rows, length = (8, 32) if tiny else (64, 1024)
    vocab = shapes(tiny)[1]["vocab_size"]
    tokens = torch.randint(0, vocab, (rows, 64 + length), device=device)
    attn = torch.ones_like(tokens, dtype=torch.bool)
    resp = attn.clone()
    resp[:, :64] = False
    ro = Rollouts(tokens, attn, resp, [""] * rows, torch.zeros(rows, dtype=torch.bool, device=device))
    seconds = {}
    for name, picked in (("all", torch.ones(rows, dtype=torch.bool)), ("wrong", torch.arange(rows) % 2 == 1)):
        best = float("inf")
        for _ in range(2):
            sync(teacher)
            t = time.perf_counter()
            with torch.no_grad():
                score_rows(teacher, ro, picked.to(device), 32768, 1, vocab=vocab, temperature=0.6)
            sync(teacher)
            best = min(best, time.perf_counter() - t)
        seconds[name] = best
    ratio = seconds["wrong"] / seconds["all"]
    return [(f"teacher scoring, {rows} rollouts x {length} tokens: all vs the wrong half",
             f"{seconds['all']:.2f} s vs {seconds['wrong']:.2f} s ({ratio:.2f}x)", tiny or ratio <= 0.6)]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny models on CPU: checks that the script runs")
    args = p.parse_args(argv)
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")          # as scope.py sets it
    torch.manual_seed(0)
    student = build(shapes(args.tiny)[0], torch.float32, device)
    compute = torch.bfloat16
    compile_config = CompileConfig() if device.type == "cuda" else None

    def make_copy(rows: int, length: int) -> RolloutCopy:
        return RolloutCopy(student, compute, rows, length, compile_config)
    amp = torch.autocast(device.type, dtype=compute)
    table = []
    for name, check in (("agreement", lambda: check_agreement(student, make_copy(16, 64 + 4096), device, amp, args.tiny)),
                        ("speed", lambda: check_speed(student, make_copy, device, amp, args.tiny)),
                        ("graphs", lambda: check_graphs(student, make_copy(16, 64 + 32), device, amp, args.tiny)),
                        ("memory", lambda: check_memory(device, args.tiny)),
                        ("runs", lambda: check_runs(args.tiny)),
                        ("teacher cost", lambda: check_teacher_cost(device, args.tiny))):
        t = time.perf_counter()
        try:
            found = check()
        except Exception as e:  # one failed check must not hide the others' answers
            found = [(name, f"raised {type(e).__name__}: {str(e)[:200]}", False)]
        table += [(what, value, ok, time.perf_counter() - t) for what, value, ok in found]
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"gpu_check on {torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU (--tiny)'}, "
          f"torch {torch.__version__}\n")
    print("| check | result | ok | seconds |\n|---|---|---|---:|")
    for what, value, ok, seconds in table:
        print(f"| {what} | {value} | {'yes' if ok else 'NO'} | {seconds:.0f} |")
    failed = [what for what, _, ok, _ in table if not ok]
    print(f"\n{len(table) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
