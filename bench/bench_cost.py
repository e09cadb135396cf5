"""What one training step costs, component by component, for SCOPE and the paper's baselines: its Table 8 in
miniature, on this machine's CPU cores.

    python bench/bench_cost.py                          # both worlds, every configuration, 5 steps each
    python bench/bench_cost.py --worlds paper --steps 4 --correct 0.3
    python bench/bench_cost.py --predict                # the paper's two pairs, predicted from its Table 8

Every configuration trains on the same problems and seeds, with the same --rollout-calls generate calls per step,
given the machine's cores: in this one process with all of torch's threads, or, with the teacher on a rank of its
own, under torchrun as two ranks of one thread each. --rounds rounds take the configurations in turn (so that a
machine whose load changes meets every configuration alike); each step's components come from its metrics.jsonl,
each run's first step dropped (one-time costs), the median over the rest of every round reported, with the load
average before and after:
  grpo         --algorithm grpo: no teacher
  opd_g1       OPD as the paper ran it: every rollout on the reverse-KL path, G = 1 at SCOPE's prompts
  scope_all    SCOPE with the teacher scoring every rollout (--teacher-rollouts all)
  scope        SCOPE with the teacher scoring only the rollouts the loss reads, the wrong ones (the default)
  scope_ranks  the same with the teacher on a rank of its own (--teacher-ranks 1), scoring while the student samples
  grpo_share   GRPO on the student's share of the machine when the teacher has a rank of its own: one thread
  *_1call      grpo, grpo_share and scope_ranks in one generate call a step (--rollout-calls 1): more calls let the
               teacher (and a slow grader) work beside sampling, but cost sampling more decoding steps
"sample" is the sampling with the grading that is left when it ends (time_sample), "grade" the grading's own time
(overlapped), "teacher" the teacher's own time (time_teacher), "exposed teacher" what the step waited for it
(time_teacher_exposed: all of it in one process), "update" the rest of the update. "step" is sample + exposed
teacher + update (logging and checkpoints left out), "/ grpo" its ratio to GRPO's fastest step (grpo or grpo_1call),
"/ grpo_share" to GRPO's fastest on the student's share (the paper's question: does the teacher, given hardware of
its own, still slow the step?).

Worlds:
  demo    the demo world (configs/toy.yaml: tiny student and teacher of one size, 3-digit addition), built
          into --demo-dir when missing; its own verifier, so the fraction correct is what the student gets
  paper   the paper's proportions: random-initialised Qwen2 models on a tokenizer trained here, the teacher
          --teacher-scale times the student's parameters (7.6B / 1.5B for Skywork-OR1-7B over
          R1-Distill-Qwen-1.5B: about 5), 8 problems x 8 rollouts a step, responses up to --response-len tokens
          (random models rarely stop early), and a stand-in verifier that passes a stated fraction --correct of
          the rollouts (a hash of the text), since random models solve nothing
"""
import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import eval as evaluate  # noqa: E402
import scope  # noqa: E402
import toy  # noqa: E402
from sample import leave_torchrun_worker, quiet_libraries  # noqa: E402

UNIFORM_OPD = ["--route-by-correctness", "false", "--teacher-weight", "uniform"]
CONFIGS = {"grpo": ["--algorithm", "grpo"], "opd_g1": [*UNIFORM_OPD, "--group-size", "1"],
           "scope_all": ["--teacher-rollouts", "all"], "scope": [], "scope_ranks": ["--teacher-ranks", "1"],
           "grpo_share": ["--algorithm", "grpo"]}
CONFIGS.update({f"{name}_1call": [*CONFIGS[name], "--rollout-calls", "1"] for name in ("grpo", "grpo_share",
                                                                                          "scope_ranks")})
ONE_THREAD = {"grpo_share", "grpo_share_1call"}  # run in this process on one of torch's threads
STEP = ("time_sample", "time_teacher_exposed", "time_update")
COMPONENTS = (*STEP, "time_grade", "time_teacher")


def qwen2(vocab: int, hidden: int, layers: int, seed: int) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=3 * hidden,
                                        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=512, tie_word_embeddings=False, eos_token_id=0,
                                        pad_token_id=0))


def paper_world(root: Path, teacher_scale: float) -> tuple[Path, Path, Path, str]:
    """(student, teacher, train data, what it is): random models whose parameter ratio is about teacher_scale."""
    rng = random.Random(0)
    rows = [toy.make_problem(rng) for _ in range(400)]
    tok = toy.train_tokenizer([f"{r['problem']}\n{toy.SUFFIX}" for r in rows] + [r["solution"] for r in rows])
    student = qwen2(len(tok), 256, 4, seed=1)
    size = sum(p.numel() for p in student.parameters())
    hidden, layers = min(((h, n) for h in (256, 320, 384, 448, 512) for n in range(4, 17)),
                         key=lambda hn: abs(sum(p.numel() for p in qwen2(len(tok), *hn, 0).parameters()) / size
                                            - teacher_scale))
    teacher = qwen2(len(tok), hidden, layers, seed=2)
    for name, model in (("student", student), ("teacher", teacher)):
        model.generation_config.eos_token_id = tok.eos_token_id
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ratio = sum(p.numel() for p in teacher.parameters()) / size
    return root / "student", root / "teacher", root / "train.jsonl", (
        f"student {size / 1e6:.1f}M params (hidden 256, 4 layers), teacher {ratio:.2f}x ({hidden}, {layers} layers)")


def run(flags: list[str], out: Path, steps: int, correct: float | None, threads: int = 0) -> list[dict]:
    """metrics.jsonl of one run, its first step dropped: in this process, or under torchrun with teacher ranks
    (through `worker`, which grades as this process does: the stand-in verifier when `correct` is given)."""
    flags = [*flags, "--max-steps", str(steps), "--output-dir", str(out), "--eval-every", "0", "--save-every",
             str(steps)]
    if "--teacher-ranks" in flags:
        stand_in = [] if correct is None else ["--correct", str(correct)]
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        __file__, "--worker", *stand_in, "--", *flags], check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    else:
        every = torch.get_num_threads()
        torch.set_num_threads(threads or every)
        try:
            scope.main(flags)
        finally:
            torch.set_num_threads(every)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]


def stand_in_grade(correct: float):
    """A verifier that passes a fraction `correct` of responses, chosen by a hash of the text."""
    return lambda text, *_: zlib.crc32(text.encode()) % 1000 < 1000 * correct


def worker(argv: list[str]):
    """A torchrun rank of `run`: scope.py's main with the stand-in verifier when --correct is given."""
    if argv[0] == "--correct":
        evaluate.grade, argv = stand_in_grade(float(argv[1])), argv[2:]
    scope.main(argv[1:])  # after "--"
    leave_torchrun_worker()


def summary(rows: list[dict]) -> dict[str, float]:
    """Median seconds of each component over the measured steps, the fraction correct, the teacher's tokens."""
    found = {k: statistics.median(r.get(k, 0.0) for r in rows) for k in COMPONENTS}
    found["frac_correct"] = statistics.mean(r["frac_correct"] for r in rows)
    found["teacher_share_of_tokens"] = statistics.mean(r["teacher_tokens"] / r["response_tokens"] for r in rows)
    return found


def table(title: str, results: dict[str, dict]) -> str:
    base, share = (min(sum(results[n][k] for k in STEP) for n in (name, f"{name}_1call") if n in results)
                   for name in ("grpo", "grpo_share"))
    lines = [f"### {title}", "", "| configuration | sample | grade | teacher | exposed teacher | update | step | "
             "/ grpo | / grpo_share | exposed teacher's share of step | tokens the teacher scored | frac correct |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        step = sum(r[k] for k in STEP)
        lines.append(f"| {name} | {r['time_sample']:.2f} | {r['time_grade']:.3f} | {r['time_teacher']:.2f} | "
                     f"{r['time_teacher_exposed']:.2f} | {r['time_update']:.2f} | {step:.2f} | {step / base:.2f}x | "
                     f"{step / share:.2f}x | "
                     f"{r['time_teacher_exposed'] / step:.0%} | {r['teacher_share_of_tokens']:.0%} | "
                     f"{r['frac_correct']:.2f} |")
    return "\n".join(lines)


# The paper's Table 8 (App. C.3): seconds per step on its 20 A100s for R1-Distill-Qwen-1.5B from Skywork-OR1-7B,
# 8 rollouts for GRPO and SCOPE, 1 for OPD.
TABLE8 = {"grpo": dict(generation=264.5, old_logprob=34.0, reward=4.8, update=151.8, teacher=0.0),
          "opd_g1": dict(generation=164.5, old_logprob=5.2, reward=0.7, update=22.9, teacher=31.2),
          "scope_all": dict(generation=247.7, old_logprob=31.4, reward=4.6, update=154.1, teacher=200.0)}
# (student, teacher, fraction of rollouts correct): the base students' Avg@32 in the paper's Table 1, a stand-in
# for the fraction of their training rollouts graded correct, which the paper does not report
PAIRS = {"r1-distill-1.5b_skywork-7b": ("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "Skywork/Skywork-OR1-7B", 0.479),
         "qwen3-1.7b-base_qwen3-8b": ("Qwen/Qwen3-1.7B-Base", "Qwen/Qwen3-8B", 0.190)}


def exposed_teacher(generation: float, teacher: float, correct_update: float, calls: int) -> float:
    """Seconds a step waits for a teacher on GPUs of its own that gets each of `calls` generate calls' wrong rollouts
    as the call returns (`teacher` seconds in all, a share per call) and whose last answer the update waits for only
    after its correct rollouts' part (`correct_update` seconds): what the pipeline leaves past the sampling."""
    per_call, finished = teacher / calls, 0.0
    for k in range(1, calls + 1):
        finished = max(finished, generation * k / calls) + per_call
    return max(0.0, finished - generation - correct_update)


def predict(calls: int = 4) -> str:
    """Table 8 carried to both of the paper's pairs: the student's components scaled by its parameters (from the
    memory plan's shapes), the teacher's by the teacher's, and the teacher's work by the fraction of wrong rollouts
    when it scores only those; with the teacher on GPUs of its own (the paper's 4 of 20), what `exposed_teacher`
    leaves of it over `calls` generate calls. A prediction, not a measurement."""
    from plans import MODELS  # bench/plans.py: the published models' configurations, offline
    import plan

    with tempfile.TemporaryDirectory() as tmp:
        params = {}
        for name in {m for pair in PAIRS.values() for m in pair[:2]}:
            MODELS[name].save_pretrained(Path(tmp) / name)
            params[name] = plan.read_shape("model", str(Path(tmp) / name)).params
    s0, t0 = params[PAIRS["r1-distill-1.5b_skywork-7b"][0]], params[PAIRS["r1-distill-1.5b_skywork-7b"][1]]
    lines = ["| pair | fraction correct | GRPO | OPD (G = 1) | SCOPE, teacher scores all | SCOPE, teacher scores the "
             f"wrong ones | SCOPE, teacher on its own GPUs ({calls} calls) | their step / GRPO's |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for pair, (student, teacher, correct) in PAIRS.items():
        s, t = params[student] / s0, params[teacher] / t0
        step = {k: s * (v["generation"] + v["old_logprob"] + v["update"]) + v["reward"] + t * v["teacher"]
                for k, v in TABLE8.items()}
        wrong_teacher = t * TABLE8["scope_all"]["teacher"] * (1 - correct)
        step["scope"] = step["scope_all"] - t * TABLE8["scope_all"]["teacher"] * correct
        apart = TABLE8["scope_all"]
        step["scope_ranks"] = step["scope"] - wrong_teacher + exposed_teacher(
            s * apart["generation"], wrong_teacher, s * apart["update"] * correct, calls)
        lines.append(f"| {pair} | {correct:.3f} | {step['grpo']:.1f} s | {step['opd_g1']:.1f} s | "
                     f"{step['scope_all']:.1f} s | {step['scope']:.1f} s | {step['scope_ranks']:.1f} s | "
                     f"{step['scope_all'] / step['grpo']:.2f}x, {step['scope'] / step['grpo']:.2f}x, "
                     f"{step['scope_ranks'] / step['grpo']:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str]):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worlds", default="demo,paper", help="comma list of demo, paper")
    p.add_argument("--predict", action="store_true", help="print the prediction for the paper's pairs and exit")
    p.add_argument("--steps", type=int, default=3, help="steps per run; the first is dropped")
    p.add_argument("--rounds", type=int, default=2, help="runs of each configuration, taken in turn")
    p.add_argument("--demo-dir", default=".toy", help="the demo world's directory (built there when missing)")
    p.add_argument("--teacher-scale", type=float, default=5.0, help="paper world: teacher params / student's")
    p.add_argument("--correct", type=float, default=0.5, help="paper world: fraction of rollouts graded correct")
    p.add_argument("--response-len", type=int, default=64, help="paper world: max_new_tokens")
    p.add_argument("--rollout-calls", type=int, default=4, help="generate calls per step, every configuration")
    args = p.parse_args(argv)
    if args.steps < 2:
        p.error("--steps must be at least 2: the first step is dropped")
    if args.predict:
        print(predict(args.rollout_calls))
        return
    quiet_libraries()
    print(f"torch threads: {torch.get_num_threads()}; {time.strftime('%Y-%m-%d')}")
    for world in args.worlds.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            if world == "demo":
                demo = Path(args.demo_dir)
                base = ["--config", str(ROOT / "configs" / "toy.yaml"), "--student", str(demo / "student"),
                        "--teacher", str(demo / "teacher"), "--train-data", str(demo / "train.jsonl"),
                        "--eval-data", str(demo / "test.jsonl")]
                title, grade = "demo world (teacher the student's size, its own verifier)", evaluate.grade
                correct = None
            elif world == "paper":
                student, teacher, data, what = paper_world(tmp / "world", args.teacher_scale)
                base = ["--student", str(student), "--teacher", str(teacher), "--train-data", str(data),
                        "--group-size", "8", "--batch-size", "8", "--max-prompt-tokens", "64",
                        "--max-new-tokens", str(args.response_len), "--micro-batch-tokens", "8192",
                        "--gradient-checkpointing", "false", "--lr", "2e-4"]
                title = (f"paper's proportions: {what}; responses up to {args.response_len} tokens; "
                         f"{args.correct:.0%} of rollouts graded correct")
                grade = stand_in_grade(args.correct)
                correct = args.correct
            else:
                p.error(f"unknown world {world!r}; choose from demo, paper")
            steps, real, load = {name: [] for name in CONFIGS}, evaluate.grade, os.getloadavg()[0]
            evaluate.grade = grade  # what the trainer's judge calls
            try:
                for k in range(args.rounds):
                    for name, flags in CONFIGS.items():
                        steps[name] += run([*base, "--rollout-calls", str(args.rollout_calls), *flags],
                                           tmp / f"{name}_{k}", args.steps, correct, 1 if name in ONE_THREAD else 0)
            finally:
                evaluate.grade = real
            print(table(title, {name: summary(rows) for name, rows in steps.items()}) +
                  f"\n\nload average (1 min) before {load:.1f}, after {os.getloadavg()[0]:.1f}\n", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker(sys.argv[2:])
    else:
        main(sys.argv[1:])
