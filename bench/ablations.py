"""
SCOPE against the paper's baselines and ablations, over several seeds, on a toy world (issue 11).

  python bench/ablations.py                                         # demo world, every variant, seeds 0,1,2
  python bench/ablations.py --world premises --seeds 0,1,2,3,4      # the world where the premises hold
  python bench/ablations.py --variants scope,no_dpaw --seeds 0 --steps 20 --eval-steps 0,10,20

Each (variant, seed) trains with `scope.main` on the world's config (configs/toy.yaml for the demo,
configs/toy_<world>.yaml otherwise) plus the variant's flags (VARIANTS), saving a checkpoint at
each evaluation step. Each checkpoint, and the untrained student at step 0, is then measured on the
world's held-out problems: 8 samples per problem at temperature 0.6 (the rollout temperature;
top-p and top-k off), graded strictly by verify.grade as the training reward is (fallback=False:
the demo's unboxed "sum 843" answers count as wrong), giving Avg@8 and Pass@k for k = 1..8
(eval.pass_at_k). Evaluation sampling is seeded by (seed, step) alone, so all variants of one
seed are measured with the same random numbers, and step 0 is measured once per seed.

Rollout budget: every variant samples 128 rollouts per step on the demo (16 prompts x 8). OPD as
in the paper (G = 1) keeps that budget with group_size times more prompts per step (128 x 1).

--out (default runs/ablations/<world>) holds
  results.jsonl     one line per (variant, seed, step): avg@8 and pass@1..8, overall and per class
                    where the world flags problems teacher-unreliable; the places-route share of samples
  table.md          mean +- standard deviation over seeds (also printed), and the weights' diagnostics
  accuracy.png      held-out Avg@8 over steps per variant;  pass_at_k.png  Pass@k against k at the last step
  <variant>/seed<s>/  the training run (metrics.jsonl, checkpoints)
--report prints the tables of the finished results and trains nothing (beside a run in progress).
--probe [MODEL] prints, instead, where SCOPE's weights fall on one batch of MODEL's rollouts by kind
of rollout (demo: unboxed or boxed wrong answers; premises: the teacher's wrong answer on its
unreliable problems, and the place-value route among correct answers).
A rerun resumes: finished results are read back, unfinished runs continue with --resume auto
(rerun with the same --steps, --eval-steps and --eval-problems). Run it from the repository root:
the worlds' configs name their files relative to it.
"""
import argparse
import json
import math
import signal
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import scope  # noqa: E402
import toy  # noqa: E402
from eval import pass_at_k, pyplot, read_jsonl, sample_and_grade  # noqa: E402
from sample import (generate, load_model, load_rows, micro_batches, quiet_libraries, score, stop_ids,  # noqa: E402
                    with_prompts)
from verify import extract_answer, grade  # noqa: E402

SAMPLES, EVAL_TEMPERATURE = 8, 0.6


def preset_flags(path: Path) -> list[str]:
    """A preset's fields as flags, output_dir left out (scope.py takes one --config: the world's)."""
    fields = yaml.safe_load(path.read_text())
    return [a for key, value in fields.items() if key != "output_dir" for a in (f"--{key}", str(value))]


UNIFORM_OPD = ["--route-by-correctness", "false", "--teacher-weight", "uniform"]
VARIANTS = {  # name: scope.py flags on top of the world's config
    "scope": [],
    "opd_g1": [*UNIFORM_OPD, "--group-size", "1"],          # the paper's OPD; batch_size x G prompts (variant_flags)
    "opd_g8": UNIFORM_OPD,
    "no_teacher_weight": ["--teacher-weight", "uniform"],
    "no_student_weight": ["--student-weight", "uniform"],
    "no_dpaw": ["--student-weight", "uniform", "--teacher-weight", "uniform"],
    "reversed_teacher": ["--teacher-weight", "reversed"],
    "reversed_student": ["--student-weight", "reversed"],
    "tau_0.5": ["--tau", "0.5"],
    "tau_2": ["--tau", "2"],
    "released": preset_flags(ROOT / "configs" / "released.yaml"),  # the authors' code's conventions
}


def variant_flags(name: str, world: scope.Config) -> list[str]:
    """scope.py flags of a variant on a world whose config is `world`."""
    flags = VARIANTS[name]
    if "--group-size" in flags:  # the same rollouts per step: G times more prompts, one rollout each
        return [*flags, "--batch-size", str(world.batch_size * world.group_size)]
    return list(flags)


def world_config(world: str) -> Path:
    return ROOT / "configs" / ("toy.yaml" if world == "demo" else f"toy_{world}.yaml")


# -----------------------------------------------------------------------------
# Train, then measure each checkpoint

def train(config: Path, out: Path, flags: list[str], seed: int, steps: int, every: int):
    """One scope.py run in `out`, checkpointed every `every` steps and kept; continues one that stopped."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:  # Ctrl-C in training: scope.py saves and exits; a rerun continues
        scope.main(["--config", str(config), *flags, "--seed", str(seed), "--max-steps", str(steps),
                    "--save-every", str(every), "--keep-checkpoints", "1000", "--eval-every", "0",
                    "--output-dir", str(out), "--resume", "auto"])
    finally:  # scope.py's handlers would otherwise outlive it and swallow a Ctrl-C during evaluation
        for s, handler in handlers.items():
            signal.signal(s, handler)


def held_out(cfg: scope.Config, tok, limit: int) -> list[dict]:
    """The world's held-out problems with their prompts (and teacher-unreliable flags, where it has them)."""
    rows = load_rows(cfg.eval_data, "test", cfg.eval_problem_field, cfg.eval_answer_field, False,
                     cfg.unreliable_field)
    return with_prompts(rows, tok, cfg.prompt_suffix, cfg.chat_template, cfg.max_prompt_tokens, cfg.eval_data)[:limit]


def evaluate(model_dir: str, rows: list[dict], cfg: scope.Config, seed: int, step: int) -> dict:
    """Avg@8, Pass@1..8 (overall, and per class when rows are flagged) and the places-route share."""
    model, tok = load_model(model_dir, torch.float32, torch.device("cpu"))
    model.eval()
    torch.manual_seed(seed * 1_000_003 + step)
    results = sample_and_grade(model, tok, [r["prompt"] for r in rows], [r["answer"] for r in rows], n=SAMPLES,
                               stop=stop_ids(model, tok, cfg.chat_template), temperature=EVAL_TEMPERATURE,
                               max_new_tokens=cfg.max_new_tokens, max_rows=512, fallback=False)
    right = [sum(s["correct"] for s in samples) for samples in results]        # correct samples per problem
    classes = {"": range(len(rows))}
    if "unreliable" in rows[0]:
        classes.update({" unreliable": [i for i, r in enumerate(rows) if r["unreliable"]],
                        " reliable": [i for i, r in enumerate(rows) if not r["unreliable"]]})
    record = {}
    for suffix, members in classes.items():
        record[f"avg@{SAMPLES}{suffix}"] = sum(right[i] for i in members) / (SAMPLES * len(members))
        for k in range(1, SAMPLES + 1):
            record[f"pass@{k}{suffix}"] = sum(pass_at_k(SAMPLES, right[i], k) for i in members) / len(members)
    record["places"] = sum(toy.route(r["problem"], s["response"]) == "places"
                           for r, samples in zip(rows, results) for s in samples) / (SAMPLES * len(rows))
    return record


def run_all(args) -> list[dict]:
    """Every (variant, seed) trained and measured at every eval step; finished results are read back."""
    config = world_config(args.world)
    cfg = scope.parse_config(["--config", str(config)])
    builder, _ = toy.WORLDS[args.world]
    builder(Path(cfg.student).parent)
    out = Path(args.out or f"runs/ablations/{args.world}")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.jsonl"
    done = {(r["variant"], r["seed"], r["step"]): r for r in read_jsonl(path)}
    eval_steps = sorted(set(args.eval_steps) | {args.steps})
    every = math.gcd(*eval_steps)  # a checkpoint at every eval step
    rows = None

    def record(variant: str, seed: int, step: int, numbers: dict):
        done[variant, seed, step] = {"variant": variant, "seed": seed, "step": step, **numbers}
        with open(path, "a") as f:
            f.write(json.dumps(done[variant, seed, step]) + "\n")

    for variant in args.variants:
        for seed in args.seeds:
            todo = [s for s in eval_steps if (variant, seed, s) not in done]
            if not todo or args.report:
                continue
            start, run_dir = time.time(), out / variant / f"seed{seed}"
            if rows is None:
                rows = held_out(cfg, load_model(cfg.student, torch.float32, torch.device("cpu"))[1], args.eval_problems)
            if todo != [0]:
                train(config, run_dir, variant_flags(variant, cfg), seed, args.steps, every)
            for step in todo:
                first = next((r for (v, s, t), r in done.items() if s == seed and t == 0), None) if step == 0 else None
                numbers = ({k: v for k, v in first.items() if k not in ("variant", "seed", "step")} if first else
                           evaluate(cfg.student if step == 0 else str(run_dir / f"step_{step:06d}"), rows, cfg, seed,
                                    step))
                record(variant, seed, step, numbers)
            print(f"{variant} seed {seed}: {time.time() - start:.0f} s; Avg@{SAMPLES} by step "
                  + ", ".join(f"{s}: {done[variant, seed, s][f'avg@{SAMPLES}']:.3f}" for s in eval_steps), flush=True)
    return [done[v, s, t] for v in args.variants for s in args.seeds for t in eval_steps if (v, s, t) in done]


# -----------------------------------------------------------------------------
# Report: the table, the weights' diagnostics, the plots

def mean_std(values: list[float]) -> str:
    """'0.552 +- 0.026': mean and sample standard deviation (n - 1); a single value has no spread ('+- -')."""
    if not values:
        return "-"
    spread = f"{statistics.stdev(values):.3f}" if len(values) > 1 else "-"
    return f"{statistics.mean(values):.3f} +- {spread}"


def table(results: list[dict], variants: list[str]) -> str:
    """Markdown: per variant, Avg@8 at each eval step and Pass@2, Pass@8 at the last, mean +- std over seeds;
    with the Avg@8 of each class at the last step where the world flags one."""
    steps = sorted({r["step"] for r in results})
    last = steps[-1]
    columns = [(f"Avg@{SAMPLES} step {s}", s, f"avg@{SAMPLES}") for s in steps]
    columns += [(f"Pass@{k} step {last}", last, f"pass@{k}") for k in (2, SAMPLES)]  # Pass@1 is Avg@8
    if any(f"avg@{SAMPLES} unreliable" in r for r in results):
        columns += [(f"Avg@{SAMPLES} {c} step {last}", last, f"avg@{SAMPLES} {c}") for c in ("unreliable", "reliable")]
        columns += [(f"places share step {last}", last, "places")]
    lines = ["| variant | seeds | " + " | ".join(c[0] for c in columns) + " |",
             "|---|---:|" + "---:|" * len(columns)]
    for v in variants:
        finished = {r["seed"] for r in results if r["variant"] == v and r["step"] == last}
        mine = [r for r in results if r["variant"] == v and r["seed"] in finished]
        if not mine:
            continue
        seeds = len(finished)
        cells = [mean_std([r[key] for r in mine if r["step"] == s and key in r]) for _, s, key in columns]
        lines.append(f"| {v} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


DIAGNOSTICS = ("frac_correct", "ess_mle", "ess_opd", "opd_unreliable", "w_opd_unreliable", "kl")


def diagnostics(out: Path, results: list[dict], variants: list[str]) -> str:
    """Markdown: per variant, each metrics.jsonl diagnostic averaged over the steps of a finished run, then
    mean +- std over seeds (a step where a path had no subset of two rollouts has no ESS and is left out)."""
    last = max(r["step"] for r in results)
    lines = ["| variant | seeds | " + " | ".join(DIAGNOSTICS) + " |", "|---|---:|" + "---:|" * len(DIAGNOSTICS)]
    for v in variants:
        seeds = sorted({r["seed"] for r in results if r["variant"] == v and r["step"] == last})
        runs = [read_jsonl(out / v / f"seed{s}" / "metrics.jsonl") for s in seeds]
        if not runs:
            continue
        cells = []
        for key in DIAGNOSTICS:
            per_run = [statistics.mean(vals) for m in runs if (vals := [x[key] for x in m if x.get(key) is not None])]
            cells.append(mean_std(per_run))
        lines.append(f"| {v} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plots(results: list[dict], variants: list[str], out: Path):
    """accuracy.png (Avg@8 over steps, mean and +- std band) and pass_at_k.png (Pass@k at the last step,
    and of the untrained student)."""
    plt = pyplot()
    if plt is None or not results:
        return
    last = max(r["step"] for r in results)
    fig_a, ax_a = plt.subplots(figsize=(6, 4))
    fig_p, ax_p = plt.subplots(figsize=(6, 4))
    for i, v in enumerate(variants):
        mine = [r for r in results if r["variant"] == v]
        if not mine:
            continue
        style = ("-", "--", ":")[i // 10 % 3]  # the colour cycle has 10 colours
        steps = sorted({r["step"] for r in mine})
        acc = [[r[f"avg@{SAMPLES}"] for r in mine if r["step"] == s] for s in steps]
        mean = [statistics.mean(a) for a in acc]
        std = [statistics.stdev(a) if len(a) > 1 else 0.0 for a in acc]
        (line,) = ax_a.plot(steps, mean, marker="o", linestyle=style, label=v)
        ax_a.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                          color=line.get_color(), alpha=0.12)
        ends = [r for r in mine if r["step"] == last]
        if ends:
            ks = range(1, SAMPLES + 1)
            ax_p.plot(ks, [statistics.mean(r[f"pass@{k}"] for r in ends) for k in ks], marker=".", linestyle=style,
                      label=v)
    start = [r for r in results if r["step"] == 0]
    if start and last:
        ks = range(1, SAMPLES + 1)
        ax_p.plot(ks, [statistics.mean(r[f"pass@{k}"] for r in start) for k in ks], color="0.5", linestyle="--",
                  label="step 0 (untrained)")
    ax_a.set(xlabel="step", ylabel=f"held-out Avg@{SAMPLES}", title="held-out accuracy (mean +- std over seeds)")
    ax_p.set(xlabel="k", ylabel="Pass@k", title=f"Pass@k at step {last} (mean over seeds)")
    for fig, ax, name in ((fig_a, ax_a, "accuracy.png"), (fig_p, ax_p, "pass_at_k.png")):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.savefig(out / name, dpi=120, bbox_inches="tight")
        plt.close(fig)


# -----------------------------------------------------------------------------
# Probe: where SCOPE's weights fall on one batch of rollouts, by kind of rollout

def kinds(world: str, rows: list[dict], texts: list[str], correct: torch.Tensor, group_size: int) -> dict:
    """{name: (N,) bool} the rollouts a world's premises are about, within the path whose weights act on them."""
    row = [rows[i // group_size] for i in range(len(texts))]
    if world == "demo":  # the format: an unboxed answer is wrong whatever its arithmetic
        unboxed = torch.tensor(["\\boxed" not in t for t in texts])
        return {"wrong, unboxed": ~correct & unboxed, "wrong, boxed": ~correct & ~unboxed}
    flagged = torch.tensor([r["unreliable"] for r in row])
    rule = torch.tensor([extract_answer(t, False) == str(toy.worked(*toy.split_problem(r["problem"]), "columns",
                                                                    borrows=False)[1]) for r, t in zip(row, texts)])
    places = torch.tensor([toy.route(r["problem"], t) == "places" for r, t in zip(row, texts)])
    return {"wrong, teacher-unreliable, the teacher's (wrong) answer": ~correct & flagged & rule,
            "wrong, teacher-unreliable, another answer": ~correct & flagged & ~rule,
            "wrong, reliable": ~correct & ~flagged,
            "correct, teacher-unreliable": correct & flagged, "correct, reliable": correct & ~flagged,
            "correct, place values": correct & places, "correct, columns": correct & ~places}


def probe(world: str, model_dir: str, problems: int) -> str:
    """Markdown: one training step's rollouts (the first `problems` training problems x G) of `model_dir`, scored
    as scope.py scores them; per kind of rollout, its share of its path's rollouts and of its path's SCOPE
    weight (tau 1), and its mean teacher NLL per token."""
    cfg = scope.parse_config(["--config", str(world_config(world))])
    toy.WORLDS[world][0](Path(cfg.student).parent)
    cpu, G = torch.device("cpu"), cfg.group_size
    student, tok = load_model(model_dir or cfg.student, torch.float32, cpu)
    teacher = load_model(cfg.teacher, torch.float32, cpu)[0]
    rows = load_rows(cfg.train_data, "train", cfg.problem_field, cfg.answer_field, False, cfg.unreliable_field)
    rows = with_prompts(rows, tok, cfg.prompt_suffix, cfg.chat_template, cfg.max_prompt_tokens, cfg.train_data)
    rows = rows[:problems]
    torch.manual_seed(0)
    ro = generate(student, tok, [r["prompt"] for r in rows], G, stop=stop_ids(student, tok, cfg.chat_template),
                  temperature=cfg.temperature, top_p=1.0, top_k=0, max_new_tokens=cfg.max_new_tokens)
    batches = micro_batches(ro, G, cfg.micro_batch_tokens, 1)
    logp = {name: score(model, ro, batches, vocab=len(tok), temperature=cfg.temperature, chunk_tokens=1024)
            for name, model in (("student", student), ("teacher", teacher))}                       # (N, L) each
    correct = torch.tensor([grade(t, r["answer"]) for i, t in enumerate(ro.texts) for r in [rows[i // G]]])
    group = torch.arange(len(rows)).repeat_interleave(G)
    _, info = scope.scope_loss(logp["student"], logp["teacher"], ro.resp, correct, group, cfg, 1.0)
    lines = [f"{model_dir or cfg.student}: {len(rows)} training problems x {G} rollouts at temperature "
             f"{cfg.temperature}, {correct.float().mean():.3f} correct", "",
             "| rollouts | count | share of its path's rollouts | share of its path's weight | teacher NLL per token |",
             "|---|---:|---:|---:|---:|"]
    for name, member in kinds(world, rows, ro.texts, correct, G).items():
        path = correct if name.startswith("correct") else ~correct
        lines.append(f"| {name} | {int(member.sum())} | {member.sum() / path.sum():.3f} | "
                     f"{info['weight'][member].sum() / info['weight'][path].sum():.3f} | "
                     f"{info['nll_teacher'][member].mean():.2f} |")
    return "\n".join(lines)


# -----------------------------------------------------------------------------

def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", default="demo", choices=toy.WORLDS, help="which toy world (toy.py)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--seeds", default="0,1,2", help="comma list of training seeds")
    p.add_argument("--steps", type=int, default=40, help="optimizer steps of each run")
    p.add_argument("--eval-steps", default="0,10,20,40", help="steps measured (the last step always is)")
    p.add_argument("--eval-problems", type=int, default=200, help="held-out problems measured (the first N)")
    p.add_argument("--out", default="", help="default: runs/ablations/<world>")
    p.add_argument("--report", action="store_true", help="only report the finished results: train and measure nothing")
    p.add_argument("--probe", metavar="MODEL", nargs="?", const="", default=None,
                   help="only print where SCOPE's weights fall on one batch of MODEL's rollouts (default: the "
                        "world's student), by kind of rollout, and exit")
    p.add_argument("--probe-problems", type=int, default=128, help="training problems of the probe's batch")
    args = p.parse_args(argv)
    args.variants = [v for v in args.variants.split(",") if v]
    for v in args.variants:
        if v not in VARIANTS:
            p.error(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.eval_steps = [int(s) for s in args.eval_steps.split(",") if 0 <= int(s) <= args.steps]
    return args


def main(argv: list[str]) -> list[dict]:
    args = parse_args(argv)
    quiet_libraries()
    if args.probe is not None:
        print(probe(args.world, args.probe, args.probe_problems))
        return []
    start = time.time()
    results = run_all(args)
    out = Path(args.out or f"runs/ablations/{args.world}")
    if not results:
        print(f"no finished results in {out}")
        return results
    report = (f"{args.world} world, {args.steps} steps, seeds {','.join(map(str, args.seeds))}; held-out Avg@{SAMPLES} "
              f"and Pass@k, {SAMPLES} samples per problem at temperature {EVAL_TEMPERATURE}, graded strictly; "
              f"mean +- std over seeds\n\n{table(results, args.variants)}\n\n"
              f"Weights, per step (metrics.jsonl), averaged over the run's steps, mean +- std over seeds:\n\n"
              f"{diagnostics(out, results, args.variants)}\n")
    (out / "table.md").write_text(report)
    plots(results, args.variants, out)
    print(f"\n{report}\n{time.time() - start:.0f} s; results in {out}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
