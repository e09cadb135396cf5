"""
SCOPE against the paper's baselines and ablations on a toy world, over world builds x training seeds.

  python bench/ablations.py --world demo                                 # every variant, builds 0,1,2 x seeds 0,1,2
  python bench/ablations.py --world premises --variants scope,no_dpaw --builds 0,1 --seeds 0
  python bench/ablations.py --world demo --report                        # the tables of what finished; trains nothing
  python bench/ablations.py --claims                                     # the paper's claims, every world measured
  python bench/ablations.py --pages                                      # the docs' numbers, rewritten from the results

One run is trained on a world with one training seed and measured on the world's held-out problems. A
toy world is chaotic: any change of thread count, world build or code path that touches a sampled
token gives another trajectory. So the harness pins what it can and measures what it cannot:
  - the thread count: torch runs on one thread here (recorded in every result);
  - the world: each build seed k is a world of its own, built once by toy.py (on one thread) in the
    config's world directory + "_build<k>" (.toy_build0, .toy_premises_build1, ...), identified by the
    hash of its models' weights, recorded in every result and printed with the tables (a result whose
    build has another hash on this machine is refused: the world was built differently);
  - the spread: every table is over builds x seeds, and every comparison is a paired difference against
    SCOPE (same build, same seed, same step) with a 95% t-interval over the pairs.

Protocol (unchanged from the single-build tables): each (variant, build, seed) trains with `scope.main`
for 40 steps on the world's config (configs/toy.yaml for the demo, configs/toy_<world>.yaml otherwise)
plus the variant's flags (VARIANTS), checkpointing at each evaluation step (0, 10, 20, 40). Each
checkpoint, and the untrained student at step 0, is measured on the first 200 held-out problems: 8
samples per problem at temperature 0.6 (the rollout temperature; top-p and top-k off), graded strictly
by verify.grade as the training reward is (strict: the demo's unboxed "sum 843" answers count as
wrong), giving Avg@8 and Pass@k for k = 1..8 (eval.pass_at_k). Evaluation sampling is seeded by (seed,
step) alone, so all variants of one (build, seed) meet the same random numbers, and step 0 is measured
once per (build, seed). Every variant samples SCOPE's 128 rollouts per step (16 prompts x 8), except
opd_g1_paper, the paper's own OPD protocol: one rollout for each of SCOPE's 16 prompts, 1/8 of the rollouts.
kd trains on the build's teacher's solutions instead of rollouts (as many per step): G for each training
problem, sampled once per build (seed 0, the world's rollout settings) into the build's kd_solutions.jsonl.

Files:
  bench/results/<world>.jsonl  one line per (variant, build, seed, step): avg@8, pass@1..8 (and per class
                               where the data flag teacher_unreliable per problem), the held-out share of the
                               unlikely route (worlds with a rollout labeller), the weights' per-step
                               diagnostics averaged over the run's steps so far, the weights' hash, threads.
                               Kept in the repository: a later session reports and resumes from it.
  bench/results/<world>.md     the report (also printed): tables, paired differences, claims
  README.md, docs/weights.md, bench/README_ablations.md: their regions between <!-- generated: NAME --> and
                               <!-- end -->, rewritten by --pages (tests/test_docs.py checks they are current)
  runs/ablations/<world>/build<k>/<variant>/seed<s>/   the training runs (metrics.jsonl, checkpoints)
  runs/ablations/<world>/accuracy.png, pass_at_k.png
A rerun resumes: finished results are read back, unfinished runs continue with --resume auto (rerun with
the same --steps, --eval-steps and --eval-problems; results of other --steps or --eval-problems are
refused). --probe [MODEL] prints instead where SCOPE's weights fall on one batch of MODEL's rollouts by
kind of rollout. Run it from the
repository root: the worlds' configs name their files relative to it.
"""
import argparse
import json
import math
import re
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import scope  # noqa: E402
import toy  # noqa: E402
from eval import grader, pass_at_k, pyplot, read_jsonl, rollout_labeller, sample_and_grade  # noqa: E402
from sample import (fail, generate, load_model, load_rows, micro_batches, quiet_libraries, score,  # noqa: E402
                    stop_ids, with_prompts)
from verify import grade  # noqa: E402

SAMPLES, EVAL_TEMPERATURE, THREADS = 8, 0.6, 1
RESULTS = ROOT / "bench" / "results"


def preset_flags(path: Path) -> list[str]:
    """A preset's fields as flags, output_dir left out (scope.py takes one --config: the world's)."""
    fields = yaml.safe_load(path.read_text())
    return [a for key, value in fields.items() if key != "output_dir" for a in (f"--{key}", str(value))]


UNIFORM_OPD = ["--route-by-correctness", "false", "--teacher-weight", "uniform"]
VARIANTS = {  # name: scope.py flags on top of the world's config
    "scope": [],
    "opd_g1": [*UNIFORM_OPD, "--group-size", "1"],          # OPD, G = 1, at SCOPE's rollouts: G x the prompts
    "opd_g1_paper": [*UNIFORM_OPD, "--group-size", "1"],    # the paper's OPD: G = 1 at SCOPE's prompts
    "opd_g8": UNIFORM_OPD,
    "no_teacher_weight": ["--teacher-weight", "uniform"],
    "no_student_weight": ["--student-weight", "uniform"],
    "no_dpaw": ["--student-weight", "uniform", "--teacher-weight", "uniform"],
    "reversed_teacher": ["--teacher-weight", "reversed"],
    "reversed_student": ["--student-weight", "reversed"],
    "tau_0.5": ["--tau", "0.5"],
    "tau_2": ["--tau", "2"],
    "released": preset_flags(ROOT / "configs" / "released.yaml"),  # the authors' code's conventions
    "grpo": ["--algorithm", "grpo"],                        # the paper's RL baseline: no teacher, SCOPE's rollouts
    "kd": ["--algorithm", "kd"],                            # the paper's offline baseline: SFT on the teacher's samples
}
KD_FILE = "kd_solutions.jsonl"  # in each build's directory: the teacher's G solutions to every training problem


def variant_flags(name: str, world: scope.Config) -> list[str]:
    """scope.py flags of a variant on a world whose config is `world`."""
    if name == "opd_g1":  # the same rollouts per step: G times more prompts, one rollout each
        return [*VARIANTS[name], "--batch-size", str(world.batch_size * world.group_size)]
    if name == "kd":  # the build's teacher's solutions, sampled once per build (kd_solutions)
        return [*VARIANTS[name], "--kd-data", str(Path(world.student).parent / KD_FILE)]
    return list(VARIANTS[name])


def kd_solutions(config: Path, flags: list[str]):
    """The build's teacher's solutions for kd, sampled once per build with seed 0 and the world's rollout settings
    (`--kd-generate` continues a file a stopped run left, and samples nothing once it is whole)."""
    scope.main(["--config", str(config), *flags, "--seed", "0", "--kd-generate"])


def world_config(world: str) -> Path:
    return ROOT / "configs" / ("toy.yaml" if world == "demo" else f"toy_{world}.yaml")


def build_dir(world: str, build: int) -> Path:
    """Where build `build` of a world lives: its config's world directory + _build<build> (.toy_build0, ...)."""
    base = scope.parse_config(["--config", str(world_config(world))])
    return Path(f"{Path(base.student).parent}_build{build}")


def build_config(world: str, build: int) -> tuple[scope.Config, list[str]]:
    """The world's config with its files in build `build`'s directory, and the flags that say so."""
    config, root = str(world_config(world)), build_dir(world, build)
    base = scope.parse_config(["--config", config])
    flags = [a for key in ("student", "teacher", "train_data", "eval_data")
             for a in (f"--{key}", str(root / Path(getattr(base, key)).name))]
    return scope.parse_config(["--config", config, *flags]), flags


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
    """The world's first `limit` held-out problems with their prompts and every field of their rows."""
    rows = load_rows(cfg.eval_data, "test", cfg.eval_problem_field, cfg.eval_answer_field, False, all_fields=True)
    return with_prompts(rows, tok, cfg.prompt_suffix, cfg.chat_template, cfg.max_prompt_tokens, cfg.eval_data)[:limit]


def evaluate(model_dir: str, rows: list[dict], cfg: scope.Config, seed: int, step: int) -> dict:
    """Avg@8 and Pass@1..8, overall and per class where the rows flag teacher_unreliable; with a rollout
    labeller, the share of samples on the unlikely route."""
    model, tok = load_model(model_dir, torch.float32, torch.device("cpu"))
    model.eval()
    torch.manual_seed(seed * 1_000_003 + step)
    results = sample_and_grade(model, tok, [r["prompt"] for r in rows], [r["answer"] for r in rows], n=SAMPLES,
                               stop=stop_ids(model, tok, cfg.chat_template), temperature=EVAL_TEMPERATURE,
                               max_new_tokens=cfg.max_new_tokens, max_rows=512, judge=grader("verify", strict=True))
    right = [sum(s["correct"] for s in samples) for samples in results]        # correct samples per problem
    classes = {"": range(len(rows))}
    if isinstance(rows[0].get("teacher_unreliable"), bool):
        classes.update({" unreliable": [i for i, r in enumerate(rows) if r["teacher_unreliable"]],
                        " reliable": [i for i, r in enumerate(rows) if not r["teacher_unreliable"]]})
    record = {}
    for suffix, members in classes.items():
        record[f"avg@{SAMPLES}{suffix}"] = sum(right[i] for i in members) / (SAMPLES * len(members))
        for k in range(1, SAMPLES + 1):
            record[f"pass@{k}{suffix}"] = sum(pass_at_k(SAMPLES, right[i], k) for i in members) / len(members)
    labels = rollout_labeller(cfg.rollout_labels)(rows, [s["response"] for samples in results for s in samples])
    if labels:
        record["unlikely_route"] = labels["unlikely_route"].float().mean().item()
    return record


# Per-step numbers of metrics.jsonl kept with each result, averaged over the run's steps so far.
DIAGNOSTICS = ("frac_correct", "ess_mle", "ess_opd", "opd_unreliable_weight", "opd_unreliable_count",
               "opd_unreliable_prompts", "mle_unlikely_weight", "mle_unlikely_count", "mle_unlikely_prompts", "kl")


def training_summary(run_dir: Path, step: int) -> dict:
    """Each diagnostic's mean over the run's steps up to `step` (steps where it had no value left out)."""
    metrics = [m for m in read_jsonl(run_dir / "metrics.jsonl") if m["step"] <= step]
    return {key: statistics.mean(values) for key in DIAGNOSTICS
            if (values := [m[key] for m in metrics if m.get(key) is not None])}


def prepare_build(world: str, build: int, results: list[dict], path: Path) -> str:
    """Build `build` of the world unless it is there; its weights' hash, checked against the results'."""
    root = build_dir(world, build)
    toy.WORLDS[world](root, build_seed=build)
    digest = toy.weights_hash(root)
    recorded = {r["weights_hash"] for r in results if r["build"] == build} - {digest}
    if recorded:
        fail(f"{path} holds results of build {build} made on weights {', '.join(sorted(recorded))}, but {root} has "
             f"weights {digest}: this machine built the world differently. Move {path} aside (or measure into "
             f"another --results file) to start over on this build.")
    return digest


def run_all(args, results: list[dict], path: Path):
    """Every (build, seed, variant) trained and measured at every eval step; finished results are skipped.
    Builds and seeds go outermost, so an interrupted run leaves whole (build, seed) pairs."""
    config = world_config(args.world)
    done = {(r["variant"], r["build"], r["seed"], r["step"]): r for r in results}
    eval_steps = sorted(set(args.eval_steps) | {args.steps})
    every = math.gcd(*eval_steps)  # a checkpoint at every eval step
    protocol = {"steps": args.steps, "eval_problems": args.eval_problems, "threads": torch.get_num_threads()}
    for build in args.builds:
        cfg, flags = build_config(args.world, build)
        digest, rows = prepare_build(args.world, build, results, path), None
        for seed in args.seeds:
            for variant in args.variants:
                todo = [s for s in eval_steps if (variant, build, seed, s) not in done]
                if not todo:
                    continue
                start, run_dir = time.time(), Path(args.out) / f"build{build}" / variant / f"seed{seed}"
                if rows is None:
                    rows = held_out(cfg, load_model(cfg.student, torch.float32, torch.device("cpu"))[1],
                                    args.eval_problems)
                if todo != [0] and variant == "kd":
                    kd_solutions(config, [*flags, *variant_flags(variant, cfg)])
                if todo != [0]:
                    train(config, run_dir, [*flags, *variant_flags(variant, cfg)], seed, args.steps, every)
                for step in todo:
                    first = next((r for (v, b, s, t), r in done.items() if (b, s, t) == (build, seed, 0)), None)
                    numbers = ({k: first[k] for k in first if k.startswith(("avg@", "pass@", "unlikely_route"))}
                               if step == 0 and first else
                               evaluate(cfg.student if step == 0 else str(run_dir / f"step_{step:06d}"), rows, cfg,
                                        seed, step))
                    line = {"variant": variant, "build": build, "seed": seed, "step": step, **numbers,
                            "training": training_summary(run_dir, step) if step else {}, "weights_hash": digest,
                            **protocol}
                    done[variant, build, seed, step] = line
                    with open(path, "a") as f:
                        f.write(json.dumps(line) + "\n")
                print(f"{variant} build {build} seed {seed}: {time.time() - start:.0f} s; Avg@{SAMPLES} by step "
                      + ", ".join(f"{s}: {done[variant, build, seed, s][f'avg@{SAMPLES}']:.3f}" for s in eval_steps),
                      flush=True)


def read_results(path: Path, args) -> list[dict]:
    """The results file's lines; lines of another protocol (steps, held-out problems, threads) are refused."""
    results = read_jsonl(path)
    wanted = {"steps": args.steps, "eval_problems": args.eval_problems, "threads": THREADS}
    other = next((r for r in results if any(r.get(k) != v for k, v in wanted.items())), None)
    if other:
        fail(f"{path} holds results of another protocol ({ {k: other.get(k) for k in wanted} }; this run: {wanted}); "
             f"rerun with the same --steps and --eval-problems, or use another --results file")
    return results


def check_rebuild(world: str, build: int, path: Path):
    """Build `build` of the world a second time in a temporary directory, say whether its weights are the same
    bits as the existing build's, and add the answer to `path` (the report prints it)."""
    toy.WORLDS[world](build_dir(world, build), build_seed=build)
    with tempfile.TemporaryDirectory() as tmp:
        toy.WORLDS[world](Path(tmp) / "world", build_seed=build)
        first, again = toy.weights_hash(build_dir(world, build)), toy.weights_hash(Path(tmp) / "world")
    with open(path, "a") as f:
        f.write(json.dumps({"build": build, "weights_hash": first, "rebuilt_hash": again,
                            "threads": torch.get_num_threads()}) + "\n")
    print(rebuilt(read_jsonl(path)))


def rebuilt(checks: list[dict]) -> str:
    """A sentence: which builds were built twice on one machine, and whether their weights came out the same bits."""
    if not checks:
        return "No build has been rebuilt to check that it comes out bit-identical (--check-rebuild)."
    return "Built twice on one machine, " + "; ".join(
        f"build {c['build']} ({c['threads']} thread): " + ("bit-identical" if c["weights_hash"] == c["rebuilt_hash"]
                                                           else f"NOT bit-identical ({c['rebuilt_hash']})")
        for c in checks) + "."


# -----------------------------------------------------------------------------
# Statistics: mean +- std over runs, paired differences with a 95% t-interval

def mean_std(values: list[float]) -> str:
    """'0.552 +- 0.026': mean and sample standard deviation (n - 1); a single value has no spread ('+- -')."""
    if not values:
        return "-"
    spread = f"{statistics.stdev(values):.3f}" if len(values) > 1 else "-"
    return f"{statistics.mean(values):.3f} +- {spread}"


# Student's t: the 0.975 quantile for 1..30 degrees of freedom (standard tables, to three decimals).
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t: the table up to 30 degrees of freedom, beyond it the first two terms
    of its expansion around the normal quantile z (Cornish-Fisher; within 1e-4 there)."""
    if df <= len(T975):
        return T975[df - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def paired(diffs: list[float]) -> tuple[float, float, float] | None:
    """(mean, low, high) of paired differences: mean +- t(0.975, n - 1) x sd / sqrt(n); None under two pairs."""
    if len(diffs) < 2:
        return None
    mean, half = statistics.mean(diffs), t975(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return mean, mean - half, mean + half


def differences(results: list[dict], a: str, b: str, step: int, key: str) -> list[float]:
    """a - b on `key` at `step`, one per (build, seed) where both finished."""
    of = {(r["variant"], r["build"], r["seed"]): r[key] for r in results if r["step"] == step and key in r}
    return [of[a, build, seed] - of[b, build, seed] for v, build, seed in sorted(of)
            if v == a and (b, build, seed) in of]


def interval_text(interval: tuple[float, float, float] | None, n: int) -> str:
    if interval is None:
        return f"{n} pair{'s' * (n != 1)}: no interval" if n else "no pairs"
    return f"{interval[0]:+.3f} [{interval[1]:+.3f}, {interval[2]:+.3f}]"


# -----------------------------------------------------------------------------
# Report: the tables over builds x seeds, the paired differences, the weights' diagnostics, the plots

def rollouts_per_step(world: str, variant: str) -> int:
    cfg = scope.parse_config(["--config", str(world_config(world))])
    cfg = scope.parse_config(["--config", str(world_config(world)), *variant_flags(variant, cfg)])
    return cfg.batch_size * cfg.group_size


def table(results: list[dict], variants: list[str], world: str) -> str:
    """Markdown: per variant, Avg@8 at each eval step and Pass@2, Pass@8 at the last, mean +- std over runs
    (builds x seeds); the last step's Avg@8 per build; per class and the unlikely route where the world has them."""
    steps = sorted({r["step"] for r in results})
    last, builds = steps[-1], sorted({r["build"] for r in results})
    columns = [(f"Avg@{SAMPLES} step {s}", s, f"avg@{SAMPLES}") for s in steps]
    columns += [(f"Pass@{k} step {last}", last, f"pass@{k}") for k in (2, SAMPLES)]  # Pass@1 is Avg@8
    if any(f"avg@{SAMPLES} unreliable" in r for r in results):
        columns += [(f"Avg@{SAMPLES} {c} step {last}", last, f"avg@{SAMPLES} {c}") for c in ("unreliable", "reliable")]
    if any("unlikely_route" in r for r in results):
        columns += [(f"unlikely route share step {last}", last, "unlikely_route")]
    lines = ["| variant | rollouts/step | runs | " + " | ".join(c[0] for c in columns)
             + f" | Avg@{SAMPLES} step {last} by build ({', '.join(map(str, builds))}) |",
             "|---|---:|---:|" + "---:|" * len(columns) + "---|"]
    for v in variants:
        finished = {(r["build"], r["seed"]) for r in results if r["variant"] == v and r["step"] == last}
        mine = [r for r in results if r["variant"] == v and (r["build"], r["seed"]) in finished]
        if not mine:
            continue
        cells = [mean_std([r[key] for r in mine if r["step"] == s and key in r]) for _, s, key in columns]
        by_build = [[r[f"avg@{SAMPLES}"] for r in mine if r["step"] == last and r["build"] == b] for b in builds]
        lines.append(f"| {v} | {rollouts_per_step(world, v)} | {len(finished)} | " + " | ".join(cells) + " | "
                     + " / ".join(f"{statistics.mean(x):.3f}" if x else "-" for x in by_build) + " |")
    return "\n".join(lines)


def paired_table(results: list[dict], variants: list[str]) -> str:
    """Markdown: per variant, its paired difference from SCOPE (variant - scope, same build, seed and step)."""
    return pairs_table(results, "variant - scope", [(v, v, "scope") for v in variants if v != "scope"])


def pairs_table(results: list[dict], head: str, comparisons: list[tuple[str, str, str]]) -> str:
    """Markdown: per (label, a, b) whose pairs finished, a - b paired by build and seed, mean [95% t-interval],
    on Avg@8 at each eval step after 0 and on Pass@8 at the last."""
    steps = sorted({r["step"] for r in results} - {0})
    if not steps:
        return "(no run has finished a step after 0)"
    columns = [(f"Avg@{SAMPLES} step {s}", s, f"avg@{SAMPLES}") for s in steps]
    columns += [(f"Pass@{SAMPLES} step {steps[-1]}", steps[-1], f"pass@{SAMPLES}")]
    lines = [f"| {head} | pairs | " + " | ".join(c[0] for c in columns) + " |", "|---|---:|" + "---:|" * len(columns)]
    for label, a, b in comparisons:
        if pairs := len(differences(results, a, b, steps[-1], f"avg@{SAMPLES}")):
            lines.append(f"| {label} | {pairs} | " + " | ".join(
                interval_text(paired(d), len(d)) for _, s, key in columns for d in [differences(results, a, b, s, key)])
                         + " |")
    return "\n".join(lines)


def diagnostics(results: list[dict], variants: list[str]) -> str:
    """Markdown: per variant, each diagnostic averaged over a finished run's steps, then mean +- std over runs
    (a diagnostic no run had is left out)."""
    last = max(r["step"] for r in results)
    ends = [r for r in results if r["step"] == last]
    keys = [k for k in DIAGNOSTICS if not k.endswith("_prompts") and any(k in r["training"] for r in ends)]
    lines = ["| variant | runs | " + " | ".join(keys) + " |", "|---|---:|" + "---:|" * len(keys)]
    for v in variants:
        mine = [r["training"] for r in ends if r["variant"] == v]
        if mine:
            lines.append(f"| {v} | {len(mine)} | " + " | ".join(mean_std([m[k] for m in mine if k in m]) for k in keys)
                         + " |")
    return "\n".join(lines)


def plots(results: list[dict], variants: list[str], out: Path):
    """accuracy.png (Avg@8 over steps, mean and +- std band over runs) and pass_at_k.png (Pass@k at the last
    step, and of the untrained student)."""
    plt = pyplot()
    if plt is None or not results:
        return
    out.mkdir(parents=True, exist_ok=True)
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
    ax_a.set(xlabel="step", ylabel=f"held-out Avg@{SAMPLES}", title="held-out accuracy (mean +- std over runs)")
    ax_p.set(xlabel="k", ylabel="Pass@k", title=f"Pass@k at step {last} (mean over runs)")
    for fig, ax, name in ((fig_a, ax_a, "accuracy.png"), (fig_p, ax_p, "pass_at_k.png")):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.savefig(out / name, dpi=120, bbox_inches="tight")
        plt.close(fig)


# -----------------------------------------------------------------------------
# The paper's claims, per world

ESS_ACTS = 0.99  # a weight whose ESS stays above this in SCOPE's runs is within about +-10% of uniform: it does not act
# (claim, what the paper reports, variant, [(other variant, metric)], the weight it is about): the claim holds
# where variant - other > 0 at the last step, for every comparison. The paper's ablation numbers are not in this
# repository: only its direction is given for them.
CLAIMS = [
    ("routing helps (SCOPE against OPD at G = 8: no routing, uniform weights)", "improves", "scope",
     [("opd_g8", "avg@8")], None),
    ("routing helps, weights equal (no DPAW against OPD at G = 8)", "improves", "no_dpaw", [("opd_g8", "avg@8")], None),
    ("the teacher weight helps", "improves", "scope", [("no_teacher_weight", "avg@8")], "teacher"),
    ("the student weight helps Pass@k", "improves Pass@k", "scope", [("no_student_weight", "pass@8")], "student"),
    ("reversing the teacher weight hurts", "hurts", "scope", [("reversed_teacher", "avg@8")], "teacher"),
    ("reversing the student weight hurts", "hurts", "scope", [("reversed_student", "pass@8")], "student"),
    ("tau = 1 is best of {0.5, 1, 2}", "1 best of 0.5, 1, 2", "scope", [("tau_0.5", "avg@8"), ("tau_2", "avg@8")],
     "either"),
    ("SCOPE beats OPD (the paper's protocol: G = 1 at SCOPE's prompts)",
     "Table 1, Avg@32 over six benchmarks: 55.2 vs 52.3 (R1-Distill-1.5B), 32.5 vs 30.6 (Qwen3-1.7B-Base)", "scope",
     [("opd_g1_paper", "avg@8")], None),
    ("SCOPE beats OPD at equal rollouts (G = 1, 8x the prompts)", "not run by the paper", "scope",
     [("opd_g1", "avg@8")], None),
    ("SCOPE beats GRPO (the same rollouts, no teacher)", "Table 1 compares them (its numbers are not in this "
     "repository)", "scope", [("grpo", "avg@8")], None),
    ("SCOPE beats KD (SFT on the teacher's own solutions, as many per step)", "Table 1 compares them (its numbers "
     "are not in this repository)", "scope", [("kd", "avg@8")], None),
]


def untestable(results: list[dict], about: str | None) -> str:
    """Why a claim about a weight cannot be tested in this world ('' when it can): in SCOPE's runs the weight
    stays uniform (ESS above ESS_ACTS), or the world labels its rollouts and no prompt ever held both kinds."""
    if about is None:
        return ""
    last = max(r["step"] for r in results)
    runs = [r["training"] for r in results if r["variant"] == "scope" and r["step"] == last]
    reasons = []
    for weight, path, premise in (("teacher", "opd", "opd_unreliable_prompts"),
                                  ("student", "mle", "mle_unlikely_prompts")):
        if about not in (weight, "either"):
            continue
        ess = [m[f"ess_{path}"] for m in runs if f"ess_{path}" in m]
        mixed = [m[premise] for m in runs if premise in m]
        if ess and statistics.mean(ess) > ESS_ACTS:
            reasons.append(f"the {weight} weight stays uniform (ess_{path} {statistics.mean(ess):.3f})")
        elif mixed and max(mixed) == 0:
            reasons.append(f"no prompt mixes the {weight} weight's two kinds of rollout ({premise} 0)")
    return "; ".join(reasons) if len(reasons) == (2 if about == "either" else 1) else ""


def claim_intervals(results: list[dict], claim: tuple) -> list[tuple]:
    """(other, metric, differences, interval) for each comparison of a claim: its variant minus the other, paired
    at the last step."""
    _, _, variant, comparisons, _ = claim
    last = max(r["step"] for r in results)
    return [(other, key, d, paired(d)) for other, key in comparisons
            for d in [differences(results, variant, other, last, key)]]


def verdict(results: list[dict], claim: tuple) -> tuple[str, str]:
    """(word, evidence) for one claim in one world's results: reproduced / not reproduced / inconclusive /
    not testable / not run, and the paired interval of the claim's variant minus each comparison at the last step."""
    variant, about, last = claim[2], claim[4], max(r["step"] for r in results)
    intervals = claim_intervals(results, claim)
    evidence = "; ".join(f"{variant} - {other}, {key.capitalize()} step {last}: {interval_text(i, len(d))}"
                         + (f" ({len(d)} pairs)" if i else "") for other, key, d, i in intervals)
    if reason := untestable(results, about):
        return "not testable", f"{reason}; {evidence}"
    if any(not d for *_, d, _ in intervals):
        return "not run", evidence
    if any(i is not None and i[2] < 0 for *_, i in intervals):
        return "not reproduced", evidence
    if all(i is not None and i[1] > 0 for *_, i in intervals):
        return "reproduced", evidence
    return "inconclusive (interval includes zero)", evidence


def claims_table(by_world: dict[str, list[dict]], full: bool) -> str:
    """Markdown: per claim, what the paper reports and the verdict in each world; `full` adds the intervals."""
    worlds = [w for w, results in by_world.items() if results]
    lines = ["| claim | paper | " + " | ".join(worlds) + " |", "|---|---|" + "---|" * len(worlds)]
    for claim in CLAIMS:
        cells = []
        for w in worlds:
            word, evidence = verdict(by_world[w], claim)
            cells.append(f"{word}: {evidence}" if full else word)
        lines.append(f"| {claim[0]} | {claim[1]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def claims_brief(by_world: dict[str, list[dict]]) -> str:
    """Markdown: per claim, each world's word and the intervals it rests on (the claim's variant minus each
    comparison, Avg@8 unless said, at the last step) with their number of pairs: the front page's table."""
    worlds = [w for w, results in by_world.items() if results]
    lines = ["| claim | " + " | ".join(worlds) + " |", "|---|" + "---|" * len(worlds)]
    for claim in CLAIMS:
        cells = []
        for w in worlds:
            word = verdict(by_world[w], claim)[0].split(" (")[0]
            cells.append(f"{word}: " + "; ".join(
                f"{claim[2]} - {other} {interval_text(i, len(d))}" + ("" if key == f"avg@{SAMPLES}" else
                                                                      f" {key.capitalize()}")
                + (f" ({len(d)} pairs)" if i else "") for other, key, d, i in claim_intervals(by_world[w], claim)))
        lines.append(f"| {claim[0]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def span(values: list[int]) -> str:
    """'0-2' for consecutive integers, '0' for one, '0, 2' otherwise."""
    if len(values) > 2 and values == list(range(values[0], values[-1] + 1)):
        return f"{values[0]}-{values[-1]}"
    return ", ".join(map(str, values))


def coverage(results: list[dict]) -> str:
    """Which variants finished the last step over which builds x seeds, and how many runs each."""
    last = max(r["step"] for r in results)
    groups: dict[tuple, list[str]] = {}
    for v in VARIANTS:
        runs = sorted({(r["build"], r["seed"]) for r in results if r["variant"] == v and r["step"] == last})
        if runs:
            key = (tuple(sorted({b for b, _ in runs})), tuple(sorted({s for _, s in runs})), len(runs))
            groups.setdefault(key, []).append(v)
    return "; ".join(f"{', '.join(vs)} over builds {span(list(b))} x seeds {span(list(s))} ({n} runs each)"
                     for (b, s, n), vs in groups.items())


def by_seeds_table(results: list[dict]) -> str:
    """Markdown: each claim's intervals at the last step over the first seed, the first two, ...: what each
    further seed changed."""
    last, seeds = max(r["step"] for r in results), sorted({r["seed"] for r in results})
    firsts = [seeds[:n] for n in range(1, len(seeds) + 1)]
    lines = ["| comparison | " + " | ".join(f"seeds {span(s)}" if len(s) > 1 else f"seed {s[0]}" for s in firsts)
             + " |", "|---|" + "---:|" * len(firsts)]
    for _, _, variant, comparisons, _ in CLAIMS:
        for other, key in comparisons:
            cells, pairs = [], 0
            for first in firsts:
                d = differences([r for r in results if r["seed"] in first], variant, other, last, key)
                cells.append(f"{interval_text(paired(d), len(d))} ({len(d)})" if len(d) > pairs else "no further pairs")
                pairs = len(d)
            if pairs:
                lines.append(f"| {variant} - {other}, {key.capitalize()} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mean_at(results: list[dict], variant: str, step: int, key: str) -> float | None:
    values = [r[key] for r in results if r["variant"] == variant and r["step"] == step and key in r]
    return statistics.mean(values) if values else None


def findings(results: list[dict]) -> str:
    """Markdown: one world's results as docs/weights.md states them: what ran, SCOPE minus each variant, the
    intervals seed by seed, and SCOPE's accuracy, routes and weights (means over runs)."""
    last, avg = max(r["step"] for r in results), f"avg@{SAMPLES}"
    builds = sorted({r["build"] for r in results})
    ends = {v: m for v in VARIANTS if (m := mean_at(results, v, last, avg)) is not None}
    per_build = [statistics.mean(r[avg] for r in results if r["variant"] == "scope" and r["step"] == last
                                 and r["build"] == b) for b in builds]
    lines = [f"- Ran: {coverage(results)}.",
             f"- SCOPE's Avg@{SAMPLES}: {mean_at(results, 'scope', 0, avg):.3f} at step 0, {ends['scope']:.3f} at "
             f"step {last} (builds {', '.join(map(str, builds))}: {' / '.join(f'{x:.3f}' for x in per_build)}); at "
             f"step {last} the highest variant is {max(ends, key=ends.get)} ({max(ends.values()):.3f}), the lowest "
             f"{min(ends, key=ends.get)} ({min(ends.values()):.3f})."]
    if mean_at(results, "scope", last, f"{avg} unreliable") is not None:
        lines.append(f"- SCOPE's Avg@{SAMPLES} on the teacher-unreliable problems: " + ", then ".join(
            f"{mean_at(results, 'scope', s, avg + ' unreliable'):.3f} (the rest "
            f"{mean_at(results, 'scope', s, avg + ' reliable'):.3f}) at step {s}" for s in (0, last)) + ".")
    routes = {v: m for v in ends if (m := mean_at(results, v, last, "unlikely_route")) is not None}
    if routes:
        lines.append(f"- The unlikely route's share of the held-out samples: "
                     f"{mean_at(results, 'scope', 0, 'unlikely_route'):.3f} at step 0; at step {last}, "
                     f"{min(routes.values()):.3f} ({min(routes, key=routes.get)}) to {max(routes.values()):.3f} "
                     f"({max(routes, key=routes.get)}) over the variants.")
    runs = [r["training"] for r in results if r["variant"] == "scope" and r["step"] == last]
    weight = {k: statistics.mean(m[k] for m in runs) for k in DIAGNOSTICS if runs and all(k in m for m in runs)}
    uniform = [r["training"] for r in results if r["variant"] == "no_teacher_weight" and r["step"] == last]
    if "ess_mle" in weight:
        lines.append(f"- SCOPE's weights, averaged over each run's steps: ess_mle {weight['ess_mle']:.3f}, ess_opd "
                     f"{weight['ess_opd']:.3f}.")
    if weight.get("opd_unreliable_prompts"):
        lines.append(f"- In prompts whose wrong rollouts are of both kinds, the teacher-unreliable ones are "
                     f"{weight['opd_unreliable_count']:.3f} of the wrong rollouts and get "
                     f"{weight['opd_unreliable_weight']:.3f} of SCOPE's reverse-KL weight"
                     + (f" (no_teacher_weight: {statistics.mean(m['opd_unreliable_weight'] for m in uniform):.3f} of "
                        f"both)" if uniform else "") + ".")
    if weight.get("mle_unlikely_prompts"):
        lines.append(f"- In prompts whose correct rollouts take both routes, the unlikely route holds "
                     f"{weight['mle_unlikely_count']:.3f} of the correct rollouts and gets "
                     f"{weight['mle_unlikely_weight']:.3f} of SCOPE's MLE weight.")
    comparisons = [(f"scope - {v}", "scope", v) for v in VARIANTS if v != "scope"]
    comparisons.append(("no_dpaw - opd_g8", "no_dpaw", "opd_g8"))
    return ("\n".join(lines) + f"\n\nSCOPE minus each variant (> 0: SCOPE ahead), and routing alone, weights uniform "
            f"(no_dpaw - opd_g8); paired by build and seed, mean [95% t-interval over the pairs]:\n\n"
            f"{pairs_table(results, 'comparison', comparisons)}\n\nThe claims' intervals at step {last} over the "
            f"first seeds only (pairs in brackets), to show what each further seed changed:\n\n"
            f"{by_seeds_table(results)}")


# -----------------------------------------------------------------------------
# The pages: the regions of README.md, docs/weights.md and bench/README_ablations.md written from bench/results

PAGES = [ROOT / "README.md", ROOT / "docs" / "weights.md", ROOT / "bench" / "README_ablations.md"]
REGION = re.compile(r"<!-- generated: ([\w.-]+) -->\n.*?<!-- end -->", re.S)


def fragments(results_dir: Path) -> dict[str, str]:
    """Each region a page may hold, by name, rendered from the results files in `results_dir`."""
    by_world = {w: read_jsonl(results_dir / f"{w}.jsonl") for w in toy.WORLDS}
    done = {w: results for w, results in by_world.items() if results}
    return {"claims": claims_brief(done), "claims-full": claims_table(done, full=True),
            "coverage": "\n".join(f"- {w}: {coverage(results)}." for w, results in done.items()),
            **{f"findings-{w}": findings(results) for w, results in done.items()}}


def render_page(page: Path, parts: dict[str, str]) -> str:
    """The page's text with each generated region rewritten from `parts`; a region of no known name is refused."""
    def fill(match: re.Match) -> str:
        if match[1] not in parts:
            fail(f"{page}: a generated region is named {match[1]!r}; bench/ablations.py writes "
                 f"{', '.join(sorted(parts))}")
        return f"<!-- generated: {match[1]} -->\n\n{parts[match[1]]}\n\n<!-- end -->"
    return REGION.sub(fill, page.read_text())


# -----------------------------------------------------------------------------
# Probe: where SCOPE's weights fall on one batch of rollouts, by kind of rollout

def kinds(texts: list[str], correct: torch.Tensor, labels: dict) -> dict:
    """{name: (N,) bool} the rollouts a world's premises are about, within the path whose weights act on them:
    with a rollout labeller its labels, else (the demo) the format: an unboxed answer is wrong whatever its sum."""
    if not labels:
        unboxed = torch.tensor(["\\boxed" not in t for t in texts])
        return {"wrong, unboxed": ~correct & unboxed, "wrong, boxed": ~correct & ~unboxed}
    unreliable, unlikely = labels["teacher_unreliable"], labels["unlikely_route"]
    return {"wrong, teacher unreliable": ~correct & unreliable, "wrong, teacher reliable": ~correct & ~unreliable,
            "correct, unlikely route": correct & unlikely, "correct, likely route": correct & ~unlikely}


def probe(world: str, build: int, model_dir: str, problems: int) -> str:
    """Markdown: one training step's rollouts (the first `problems` training problems x G) of `model_dir`
    (default: the build's student), scored as scope.py scores them; per kind of rollout, its share of its path's
    rollouts and of its path's SCOPE weight (tau 1), and its mean teacher NLL per token."""
    cfg, _ = build_config(world, build)
    toy.WORLDS[world](build_dir(world, build), build_seed=build)
    cpu, G = torch.device("cpu"), cfg.group_size
    student, tok = load_model(model_dir or cfg.student, torch.float32, cpu)
    teacher = load_model(cfg.teacher, torch.float32, cpu)[0]
    rows = load_rows(cfg.train_data, "train", cfg.problem_field, cfg.answer_field, False, all_fields=True)
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
    labels = rollout_labeller(cfg.rollout_labels)(rows, ro.texts)
    lines = [f"{model_dir or cfg.student}: {len(rows)} training problems x {G} rollouts at temperature "
             f"{cfg.temperature}, {correct.float().mean():.3f} correct", "",
             "| rollouts | count | share of its path's rollouts | share of its path's weight | teacher NLL per token |",
             "|---|---:|---:|---:|---:|"]
    for name, member in kinds(ro.texts, correct, labels).items():
        path = correct if name.startswith("correct") else ~correct
        lines.append(f"| {name} | {int(member.sum())} | {member.sum() / path.sum():.3f} | "
                     f"{info['weight'][member].sum() / info['weight'][path].sum():.3f} | "
                     f"{info['nll_teacher'][member].mean():.2f} |")
    return "\n".join(lines)


# -----------------------------------------------------------------------------

def numbers(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", default="demo", choices=toy.WORLDS, help="which toy world (toy.py)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--builds", default="0,1,2", help="comma list of world build seeds (toy.py --build-seed)")
    p.add_argument("--seeds", default="0,1,2", help="comma list of training seeds")
    p.add_argument("--steps", type=int, default=40, help="optimizer steps of each run")
    p.add_argument("--eval-steps", default="0,10,20,40", help="steps measured (the last step always is)")
    p.add_argument("--eval-problems", type=int, default=200, help="held-out problems measured (the first N)")
    p.add_argument("--results", default="", help="the results file (default: bench/results/<world>.jsonl)")
    p.add_argument("--out", default="", help="training runs and plots (default: runs/ablations/<world>)")
    p.add_argument("--report", action="store_true", help="only report every finished result of the results file "
                                                         "(all builds and seeds in it): train and measure nothing")
    p.add_argument("--claims", action="store_true", help="only print the claims table over every world with results "
                                                         "beside --results (bench/results/<world>.jsonl), and exit")
    p.add_argument("--pages", action="store_true", help="only rewrite the generated regions of README.md, "
                                                        "docs/weights.md and bench/README_ablations.md from the "
                                                        "results beside --results, and exit")
    p.add_argument("--check-rebuild", action="store_true", help="only build the first of --builds again in a "
                                                                "temporary directory and say if its weights are the "
                                                                "same bits, and exit")
    p.add_argument("--probe", metavar="MODEL", nargs="?", const="", default=None,
                   help="only print where SCOPE's weights fall on one batch of MODEL's rollouts (default: the first "
                        "build's student), by kind of rollout, and exit")
    p.add_argument("--probe-problems", type=int, default=128, help="training problems of the probe's batch")
    args = p.parse_args(argv)
    args.variants = [v for v in args.variants.split(",") if v]
    for v in args.variants:
        if v not in VARIANTS:
            p.error(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    args.builds, args.seeds = numbers(args.builds), numbers(args.seeds)
    args.eval_steps = [s for s in numbers(args.eval_steps) if 0 <= s <= args.steps]
    args.results = Path(args.results or RESULTS / f"{args.world}.jsonl")
    args.rebuilds = args.results.with_suffix(".rebuilds.jsonl")
    args.out = args.out or f"runs/ablations/{args.world}"
    return args


def report(world: str, results: list[dict], variants: list[str], checks: list[dict]) -> str:
    builds = sorted({(r["build"], r["weights_hash"]) for r in results})
    seeds = sorted({r["seed"] for r in results})
    return (f"{world} world, {max(r['step'] for r in results)} steps, {results[0]['eval_problems']} held-out "
            f"problems x {SAMPLES} samples at temperature {EVAL_TEMPERATURE}, graded strictly; torch on "
            f"{results[0]['threads']} thread; builds (weights hash): "
            + ", ".join(f"{b} ({h[:12]})" for b, h in builds) + f"; seeds {', '.join(map(str, seeds))}. "
            f"{rebuilt(checks)} Mean +- std over runs (builds x seeds).\n\n{table(results, variants, world)}\n\n"
            f"Paired differences from SCOPE (same build, seed and step): mean [95% t-interval over the pairs]; "
            f"an interval that excludes zero is a difference this many runs can tell.\n\n"
            f"{paired_table(results, variants)}\n\n"
            f"The paper's claims in this world (SCOPE minus the comparison; > 0 is the paper's direction):\n\n"
            f"{claims_table({world: results}, full=True)}\n\n"
            f"Weights, per step (metrics.jsonl), averaged over each run's steps, mean +- std over runs:\n\n"
            f"{diagnostics(results, variants)}\n")


def main(argv: list[str]) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(THREADS)  # a world, a run and a measurement all change with the thread count
    quiet_libraries()
    args.results.parent.mkdir(parents=True, exist_ok=True)
    if args.claims:
        by_world = {w: read_jsonl(args.results.parent / f"{w}.jsonl") for w in toy.WORLDS}
        print(claims_table(by_world, full=False) + "\n\n" + claims_table(by_world, full=True) if any(by_world.values())
              else f"no results in {args.results.parent}")
        return []
    if args.pages:
        parts = fragments(args.results.parent)
        for page in PAGES:
            page.write_text(render_page(page, parts))
        return []
    if args.check_rebuild:
        check_rebuild(args.world, args.builds[0], args.rebuilds)
        return []
    if args.probe is not None:
        print(probe(args.world, args.builds[0], args.probe, args.probe_problems))
        return []
    start = time.time()
    if not args.report:
        run_all(args, read_results(args.results, args), args.results)
    steps = set(args.eval_steps) | {args.steps}
    results = [r for r in read_results(args.results, args) if r["variant"] in args.variants and r["step"] in steps
               and (args.report or (r["build"] in args.builds and r["seed"] in args.seeds))]
    if not results:
        print(f"no finished results in {args.results}")
        return results
    text = report(args.world, results, args.variants, read_jsonl(args.rebuilds))
    args.results.with_suffix(".md").write_text(text)
    plots(results, args.variants, Path(args.out))
    print(f"\n{text}\n{time.time() - start:.0f} s; results in {args.results}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
