"""
SCOPE: on-policy distillation with rollouts routed by correctness and weighted by perplexity.

Each step the student samples G answers to each of B math problems; a verifier grades them.
  - a correct answer is reinforced by maximum likelihood, weighted by the STUDENT's perplexity
    (answers the student was unsure of count more);
  - a wrong answer is corrected by the teacher through a sampled-token reverse KL, weighted by
    the TEACHER's perplexity (failures the teacher finds plausible count more);
  - both weights are a softmax with temperature tau inside each prompt's correct / wrong subset.
The specification, with the equations cited below, is METHOD.md (SCOPE, arXiv 2604.10688).

Simplifications, stated up front: one optimizer step per rollout batch, so the policy that
sampled is the policy being updated; the importance ratio rho is exactly 1 in value and only its
gradient matters, so there is no clipping. The teacher never generates; it scores the student's
tokens in one forward pass.

Run:
  python scope.py --student Qwen2.5-0.5B --teacher Qwen2.5-7B          # one GPU
  python toy.py && python scope.py --config configs/toy.yaml           # offline CPU demo, minutes
  python scope.py --config configs/r1-distill-1.5b_skywork-7b.yaml --plan   # memory per GPU, no weights loaded
  torchrun --nproc_per_node=8 scope.py --config configs/qwen2.5.yaml   # FSDP2 over 8 GPUs
"""
import argparse
import importlib
import json
import math
import os
import shutil
import signal
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Literal

import datasets
import torch
import torch.distributed as dist
import yaml
from tqdm import tqdm
from transformers import AutoConfig, HfArgumentParser
from transformers.utils import logging as hf_logging

import plan
from eval import plot_run, read_jsonl, sample_and_grade
from sample import (PROMPT_SUFFIX, all_max, all_sum, barrier, build_prompt, check_same_tokenizer, fail, gathered,
                    generate, kv_bytes_per_token, load_model, load_rows, resolve, rows_per_call, setup_distributed,
                    shard, stop_ids, token_logprobs)
from verify import grade


# -----------------------------------------------------------------------------
# The method: weights and loss (METHOD.md)

def group_softmax(scores: torch.Tensor, group: torch.Tensor, member: torch.Tensor, mean_one: bool) -> torch.Tensor:
    """Softmax of scores (N,) over the members of each prompt's group; 0 for non-members.

    This is the denominator of Eqs. 4-5: weights are comparable only within one prompt's subset.
    mean_one scales each subset's weights to average 1 instead of summing to 1.
    """
    w = torch.zeros_like(scores)
    for g in group[member].unique():
        m = member & (group == g)
        w[m] = torch.softmax(scores[m], 0) * (m.sum() if mean_one else 1)
    return w


def scope_loss(logp, teacher_logp, mask, correct, group, cfg: "Config", norm: float):
    """The SCOPE objective (Eq. 6) for whole groups of rollouts.

    logp:         (N, T) student log-probs of the sampled tokens, with grad
    teacher_logp: (N, T) teacher log-probs of the same tokens
    mask:         (N, T) bool, response tokens
    correct:      (N,) bool, verifier's verdict
    group:        (N,) int, which prompt each rollout answers (every rollout of a prompt is here)
    norm:         what the summed loss is divided by: all response tokens of the step (token_mean),
                  or its number of prompts (sum); over all micro-batches and ranks
    Returns the loss and a dict of detached numbers worth logging.
    """
    if correct.dtype != torch.bool:  # `~` on integers would route every rollout wrong
        raise TypeError(f"scope_loss: correct must be a bool tensor, got {correct.dtype}")
    mask = mask.float()
    old = logp.detach()                                  # pi_old: the policy that sampled
    rho = torch.exp(logp - old)                          # Eq. 1: value 1, gradient = grad log pi_theta
    n_tok = mask.sum(1).clamp(min=1)
    nll_s = -(old * mask).sum(1) / n_tok                 # log PPL_S(y_i)
    nll_t = -(teacher_logp * mask).sum(1) / n_tok        # log PPL_T(y_i)

    mle = correct if cfg.route_by_correctness else torch.zeros_like(correct)  # OPD: no routing
    sign = {"ppl": 1.0, "uniform": 0.0, "reversed": -1.0}
    mean_one = cfg.weight_scale == "mean"
    w_stu = group_softmax(sign[cfg.student_weight] * nll_s / cfg.tau, group, mle, mean_one)    # Eq. 4
    w_tea = group_softmax(-sign[cfg.teacher_weight] * nll_t / cfg.tau, group, ~mle, mean_one)  # Eq. 5

    advantage = old - teacher_logp                       # Eq. 3: k1 reverse KL per token, detached
    loss_mle = (w_stu[:, None] * -rho * mask).sum() / norm              # Eq. 2, on C
    loss_opd = (w_tea[:, None] * rho * advantage * mask).sum() / norm   # Eq. 3, on W
    info = {"loss_mle": loss_mle.detach(), "loss_opd": loss_opd.detach(), "weight": w_stu + w_tea,
            "mle": mle, "nll_student": nll_s, "nll_teacher": nll_t.detach(),
            "kl_sum": (advantage * mask).sum(1), "n_tokens": mask.sum(1)}
    return loss_mle + loss_opd, info                     # Eq. 6: the two paths added 1:1


# -----------------------------------------------------------------------------
# Configuration: one dataclass; each field's help is its documentation (`--help`)

def arg(default, help: str):
    return field(default=default, metadata={"help": help})


Weighting = Literal["ppl", "uniform", "reversed"]


@dataclass
class Config:
    # --- models and data
    student: str = arg("Qwen2.5-0.5B", "student model: a local directory, a hub name, or a bare name meaning Qwen/<name>")
    teacher: str = arg("Qwen2.5-7B", "teacher model (same forms); must share the student's tokenizer")
    train_data: str = arg("data/math_train.jsonl", "training problems: a .jsonl/.json/.parquet file or a hub dataset")
    data_split: str = arg("train", "split to read when train_data is a hub dataset")
    problem_field: str = arg("problem", "field holding the problem statement")
    answer_field: str = arg("answer", "field holding the reference final answer (a string)")
    skip_bad_rows: bool = arg(False, "skip (and count) rows with a missing, empty or non-string problem or answer")
    prompt_suffix: str = arg(PROMPT_SUFFIX, "instruction appended to every problem (paper: this sentence)")
    chat_template: bool = arg(True, "wrap the prompt in the tokenizer's chat template when it has one; its "
                                    "turn-closing token then also ends a rollout")
    # --- SCOPE
    group_size: int = arg(8, "G: rollouts sampled per problem (paper: 8)")
    tau: float = arg(1.0, "temperature of both perplexity softmaxes, Eqs. 4-5 (paper: 1.0)")
    route_by_correctness: bool = arg(True, "SCOPE routing; false sends every rollout to the reverse-KL path (OPD)")
    student_weight: Weighting = arg("ppl", "weights of correct rollouts: ppl (Eq. 4), uniform, or reversed "
                                           "(the authors' released code)")
    teacher_weight: Weighting = arg("ppl", "weights of incorrect rollouts: ppl (Eq. 5), uniform, or reversed")
    weight_scale: Literal["mean", "sum"] = arg("mean", "mean: weights average 1 in each subset (uniform = plain "
                                                       "OPD+MLE); sum: they sum to 1 (paper)")
    loss_agg: Literal["token_mean", "sum"] = arg("token_mean", "token_mean: mean over all response tokens of the "
                                                               "step; sum: token sums per rollout, mean over prompts")
    # --- rollouts
    batch_size: int = arg(32, "B: problems per optimizer step, over all ranks (paper: 256)")
    temperature: float = arg(0.6, "rollout temperature; student and teacher log-probs use the same (paper: 0.6)")
    top_p: float = arg(1.0, "rollout nucleus sampling threshold (1 = off)")
    top_k: int = arg(0, "rollout top-k (0 = off)")
    max_prompt_tokens: int = arg(1024, "problems whose prompt is longer are dropped at load time (counted)")
    max_new_tokens: int = arg(2048, "longest response; one without a stop token by then is graded as it stands")
    rollout_kv_gb: float = arg(20.0, "KV-cache budget of one generate call, GB: rows per call = budget / (KV bytes "
                                     "per token, from the student's config, x (max_prompt_tokens + max_new_tokens))")
    # --- optimisation
    max_steps: int = arg(200, "optimizer steps")
    lr: float = arg(5e-5, "AdamW learning rate, constant (paper: 5e-5)")
    weight_decay: float = arg(0.01, "AdamW weight decay (paper: 0.01)")
    grad_clip: float = arg(1.0, "clip the global gradient norm to this (0 = off)")
    micro_batch_tokens: int = arg(32768, "padded tokens of one forward/backward micro-batch (whole groups)")
    logprob_chunk_tokens: int = arg(1024, "response tokens projected onto the vocabulary at a time")
    gradient_checkpointing: bool = arg(True, "recompute the student's activations in backward (never while generating)")
    dtype: Literal["bfloat16", "float32"] = arg("bfloat16", "compute dtype on GPU (student master weights stay "
                                                            "float32; CPU runs float32)")
    shard_teacher: bool = arg(True, "under torchrun, shard the teacher with FSDP2; false replicates it on every rank")
    # --- evaluation, logging, saving
    eval_data: str = arg("data/math500.jsonl", "held-out problems for the quick eval")
    eval_problem_field: str = arg("problem", "field holding the problem statement in eval_data")
    eval_answer_field: str = arg("answer", "field holding the reference answer in eval_data")
    eval_every: int = arg(50, "run the quick eval before training and every this many steps (0 = never)")
    eval_limit: int = arg(128, "the quick eval uses the first this many problems")
    eval_samples: int = arg(1, "samples per problem in the quick eval")
    eval_temperature: float = arg(0.0, "quick-eval sampling temperature (0 = greedy)")
    output_dir: str = arg("runs/scope", "metrics.jsonl, eval.jsonl, curves.png, checkpoints and the final student")
    report_to: Literal["none", "wandb", "tensorboard", "trackio"] = arg("none", "also send each step's numbers here")
    save_every: int = arg(50, "write a resumable checkpoint every this many steps, and at the end")
    keep_checkpoints: int = arg(2, "keep the newest this many checkpoints")
    resume: str = arg("", "'' = a fresh run (refused if output_dir holds one); auto = continue from the newest "
                          "checkpoint there; or a checkpoint directory")
    max_bad_steps: int = arg(3, "tolerate this many optimizer steps in a row skipped for a non-finite gradient; "
                                "one more stops the run")
    seed: int = arg(0, "seeds the data order and, per step, the sampling")
    # --- memory plan
    plan: bool = arg(False, "print the estimated memory per GPU of each phase and exit; loads no weights")
    gpus: int = arg(1, "GPUs the plan is for (torchrun decides the real number)")
    gpu_memory_gb: float = arg(80.0, "memory of one GPU, GB, for the plan")


POSITIVE = ("group_size", "batch_size", "max_new_tokens", "max_prompt_tokens", "max_steps", "micro_batch_tokens",
            "logprob_chunk_tokens", "save_every", "eval_limit", "eval_samples", "keep_checkpoints", "gpus",
            "tau", "temperature", "rollout_kv_gb", "gpu_memory_gb")
INTEGERS = {f.name for f in fields(Config) if f.type is int}
NON_NEGATIVE = ("lr", "weight_decay", "grad_clip", "eval_every", "eval_temperature", "top_k", "max_bad_steps")


def parse_config(argv: list[str]) -> Config:
    """Defaults, then --config FILE.yaml, then flags: the YAML's fields become flags placed first."""
    parser = HfArgumentParser(Config, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file of config fields, applied before the flags")
    path = argparse.ArgumentParser(add_help=False)
    path.add_argument("--config")
    path = path.parse_known_args(argv)[0].config
    names = [f.name for f in fields(Config)]
    from_file = []
    if path:
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            fail(f"--config {path}: {e}")
        if not isinstance(values, dict):
            fail(f"{path}: expected a mapping of config fields, found {type(values).__name__}")
        for key, value in values.items():
            if key not in names:
                fail(f"{path}: unknown key {key!r}; config fields are: {', '.join(names)}")
            from_file += [f"--{key}", "" if value is None else str(value)]
    try:
        cfg, _ = parser.parse_args_into_dataclasses(from_file + argv, look_for_args_file=False)
    except ValueError as e:  # arguments no field takes
        fail(f"{e}; config fields are: {', '.join(names)}")
    for name in POSITIVE:
        if getattr(cfg, name) <= 0:
            fail(f"field {name!r} is {getattr(cfg, name)}; it must be {'>= 1' if name in INTEGERS else '> 0'}")
    for name in NON_NEGATIVE:
        if getattr(cfg, name) < 0:
            fail(f"field {name!r} is {getattr(cfg, name)}; it must be >= 0")
    if not 0 < cfg.top_p <= 1:
        fail(f"field 'top_p' is {cfg.top_p}; it must be in (0, 1]")
    return cfg


# -----------------------------------------------------------------------------
# One training step's parts: micro-batches, teacher scoring, the update

def micro_batches(ro, group_size: int, budget: int, world: int) -> list[tuple[slice, slice]]:
    """(rows, columns) of micro-batches of whole groups, as many on every rank.

    Under FSDP2 every forward and backward is a collective, so the count must not depend on a
    rank's own data: each micro-batch takes as many groups as fit `budget` padded tokens at the
    widest rank's width. Columns that are padding in every row of a micro-batch are dropped.
    """
    width = int(all_max(ro.attn.shape[1], world))
    rows_each = max(1, budget // (group_size * width)) * group_size
    out = []
    for start in range(0, ro.tokens.shape[0], rows_each):
        rows = slice(start, start + rows_each)
        cols = ro.attn[rows].any(0).nonzero()
        out.append((rows, slice(int(cols.min()), int(cols.max()) + 1)))
    return out


def score_with_teacher(teacher, ro, batches, vocab: int, cfg: Config, amp) -> torch.Tensor:
    """(N, L) teacher log-probs of the sampled tokens, micro-batch by micro-batch, without gradients."""
    logp = torch.zeros(ro.tokens.shape, device=ro.tokens.device)
    with torch.no_grad(), amp:
        for r, c in batches:
            logp[r, c] = token_logprobs(teacher, ro.tokens[r, c], ro.attn[r, c], ro.resp[r, c], vocab=vocab,
                                        temperature=cfg.temperature, chunk_tokens=cfg.logprob_chunk_tokens)
    return logp


def accumulate_gradients(student, ro, batches, teacher_logp, correct, group, vocab: int, cfg: Config, amp,
                         norm: float, world: int) -> list[dict]:
    """Backward of `scope_loss` over micro-batches of whole groups; returns each micro-batch's info."""
    infos = []
    for r, c in batches:
        with amp:
            logp = token_logprobs(student, ro.tokens[r, c], ro.attn[r, c], ro.resp[r, c], vocab=vocab,
                                  temperature=cfg.temperature, chunk_tokens=cfg.logprob_chunk_tokens)
        loss, info = scope_loss(logp, teacher_logp[r, c], ro.resp[r, c], correct[r], group[r], cfg, norm)
        (loss * world).backward()  # the loss is a global mean already: undo FSDP's average over ranks
        infos.append(info)
    return infos


def optimizer_step(student, optimizer, cfg: Config) -> float:
    """Clip and step; a non-finite global norm (the same on every rank) skips the step. Returns the norm."""
    norm = torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.grad_clip or float("inf"))
    norm = (norm.full_tensor() if hasattr(norm, "full_tensor") else norm).item()
    if math.isfinite(norm):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


# -----------------------------------------------------------------------------
# The loop

def main(argv: list[str]):
    cfg = parse_config(argv)
    if cfg.plan:
        sys.exit(0 if plan.print_plan(cfg) else 1)
    quiet_libraries()
    rank, world, device = setup_distributed()
    if cfg.batch_size % world:
        fail(f"batch_size {cfg.batch_size} must be divisible by the number of ranks ({world})")
    out_dir = Path(cfg.output_dir)
    resume_from = find_checkpoint(cfg, out_dir)
    check_context(cfg)
    gpu = device.type == "cuda"
    if gpu:
        torch.set_float32_matmul_precision("high")  # TF32 for the fp32 log-prob head; the bodies run in bf16 anyway
    compute = torch.bfloat16 if gpu and cfg.dtype == "bfloat16" else torch.float32

    # ---- models: the student in float32 (its master weights), the teacher frozen in the compute dtype
    student, tok = load_model(cfg.student, torch.float32, device)
    teacher, teacher_tok = load_model(cfg.teacher, compute, device)
    check_same_tokenizer(tok, teacher_tok, cfg.student, cfg.teacher)
    teacher.requires_grad_(False).eval()
    vocab = len(tok)  # log-probs over the shared tokenizer's ids only (heads may have padding rows)
    if cfg.gradient_checkpointing:
        student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if world > 1:
        shard(student, compute)
        if cfg.shard_teacher:
            shard(teacher, compute)
    amp = torch.autocast("cuda", dtype=compute) if gpu and world == 1 else nullcontext()  # FSDP2 casts itself
    optimizer = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = load_checkpoint(resume_from, student, optimizer, cfg) if resume_from else 0
    kv = kv_bytes_per_token(student.config, compute.itemsize)
    sampling = dict(stop=stop_ids(student, tok, cfg.chat_template), top_p=cfg.top_p, top_k=cfg.top_k,
                    max_new_tokens=cfg.max_new_tokens, synced=world > 1,
                    max_rows=rows_per_call(cfg.rollout_kv_gb, kv, cfg.max_prompt_tokens + cfg.max_new_tokens))
    train = load_problems(cfg, tok, rank)
    held_out = load_held_out(cfg, tok, world)
    write_metrics = open_logs(cfg, out_dir, rank, start)
    if held_out and start == 0:
        quick_eval(student, tok, held_out, 0, cfg, amp, sampling, out_dir, rank, world)
    stop = catch_stop_signals()
    bad_in_a_row, per_rank = 0, cfg.batch_size // world

    bar = tqdm(range(start, cfg.max_steps), desc="scope", disable=rank != 0, dynamic_ncols=True,
               initial=start, total=cfg.max_steps)
    for step in bar:
        t0 = time.perf_counter()
        # Sampling is seeded from (seed, step, rank): a resumed run draws exactly what it would have.
        torch.manual_seed(cfg.seed * 1_000_003 + step * 1_009 + rank)
        rows = [train[i] for i in batch_indices(len(train), cfg.batch_size, step, cfg.seed)]
        rows = rows[rank * per_rank:(rank + 1) * per_rank]

        # ---- sample G answers per problem from the current student
        student.eval()
        with amp, gathered(student) if world > 1 else nullcontext():
            ro = generate(student, tok, [r["prompt"] for r in rows], cfg.group_size, temperature=cfg.temperature,
                          **sampling)
        t1 = time.perf_counter()

        # ---- grade them
        golds = [r["answer"] for r in rows for _ in range(cfg.group_size)]
        correct = torch.tensor([grade(text, gold) for text, gold in zip(ro.texts, golds)], device=device)  # (N,)
        group = torch.arange(len(rows), device=device).repeat_interleave(cfg.group_size)                  # (N,)
        t2 = time.perf_counter()

        # ---- the teacher scores the student's tokens: one forward, no generation
        batches = micro_batches(ro, cfg.group_size, cfg.micro_batch_tokens, world)
        teacher_logp = score_with_teacher(teacher, ro, batches, vocab, cfg, amp)                          # (N, L)
        t3 = time.perf_counter()

        # ---- one optimizer step (on-policy: rho = 1, no clip), gradients accumulated over micro-batches
        student.train()
        n_tokens = all_sum(ro.resp.sum().item(), world)
        norm = n_tokens if cfg.loss_agg == "token_mean" else cfg.batch_size
        infos = accumulate_gradients(student, ro, batches, teacher_logp, correct, group, vocab, cfg, amp, norm, world)
        grad_norm = optimizer_step(student, optimizer, cfg)
        bad_in_a_row = 0 if math.isfinite(grad_norm) else bad_in_a_row + 1
        t4 = time.perf_counter()

        # ---- log the step's numbers, gathered from every rank; the quick eval when due
        roll = gather_rollouts(infos, ro, correct, group + rank * per_rank, world)
        record = {"step": step + 1, **summarize(roll, cfg.group_size), "grad_norm": grad_norm,
                  "skipped": not math.isfinite(grad_norm), "tokens_per_s": n_tokens / (t4 - t0),
                  "time_sample": t1 - t0, "time_grade": t2 - t1, "time_teacher": t3 - t2, "time_update": t4 - t3}
        if held_out and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.max_steps):
            record["eval_accuracy"] = quick_eval(student, tok, held_out, step + 1, cfg, amp, sampling, out_dir,
                                                 rank, world)
        write_metrics(record)
        bar.set_postfix(loss=f"{record['loss']:.3f}", correct=f"{record['frac_correct']:.2f}", kl=f"{record['kl']:.3f}")
        if bad_in_a_row > cfg.max_bad_steps:
            fail(f"{bad_in_a_row} steps in a row had a non-finite gradient; the last good checkpoint is in "
                 f"{out_dir} (lower lr, or check the data)")

        # ---- checkpoint; stop at this step boundary when a signal asked for it
        stopping = all_max(stop["signal"] is not None, world) > 0
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.max_steps or stopping:
            save_checkpoint(student, optimizer, tok, out_dir, step + 1, cfg, rank, world)
        if stopping:
            stop_now(argv, step + 1, stop["signal"], rank)
    save(student, tok, out_dir, rank, world)
    if rank == 0:
        plot_run(out_dir)
        print(f"done: the student is in {out_dir} (AutoModelForCausalLM.from_pretrained('{out_dir}'))")
    if world > 1:
        dist.destroy_process_group()


# -----------------------------------------------------------------------------
# Data and the quick eval

def load_problems(cfg: Config, tok, rank: int) -> list[dict]:
    """Training rows with their prompt built once; prompts longer than max_prompt_tokens are dropped (counted)."""
    rows = load_rows(cfg.train_data, cfg.data_split, cfg.problem_field, cfg.answer_field, cfg.skip_bad_rows)
    for r in rows:
        r["prompt"] = build_prompt(tok, r["problem"], cfg.prompt_suffix, cfg.chat_template)
    lengths = [len(ids) for ids in tok([r["prompt"] for r in rows], add_special_tokens=False).input_ids]
    kept = [r for r, n in zip(rows, lengths) if n <= cfg.max_prompt_tokens]
    if len(kept) < len(rows) and rank == 0:
        print(f"{cfg.train_data}: dropped {len(rows) - len(kept)} problems longer than {cfg.max_prompt_tokens} tokens")
    return kept or fail(f"{cfg.train_data}: every prompt is longer than max_prompt_tokens={cfg.max_prompt_tokens}")


def load_held_out(cfg: Config, tok, world: int) -> list[dict]:
    """The quick eval's problems, cut to equal shares per rank (generate is a collective under FSDP2)."""
    if not cfg.eval_every:
        return []
    rows = load_rows(cfg.eval_data, "test", cfg.eval_problem_field, cfg.eval_answer_field, cfg.skip_bad_rows)
    rows = rows[:cfg.eval_limit]
    rows = rows[:len(rows) - len(rows) % world] or fail(f"{cfg.eval_data}: the quick eval needs at least one "
                                                        f"problem per rank ({world} ranks)")
    for r in rows:
        r["prompt"] = build_prompt(tok, r["problem"], cfg.prompt_suffix, cfg.chat_template)
    return rows


def quick_eval(student, tok, rows, step: int, cfg: Config, amp, sampling: dict, out_dir: Path, rank: int,
               world: int) -> float:
    """Held-out accuracy of the student (each rank takes its share), appended to eval.jsonl."""
    mine = rows[rank::world]
    student.eval()
    with amp, gathered(student) if world > 1 else nullcontext():
        results = sample_and_grade(student, tok, [r["prompt"] for r in mine], [r["answer"] for r in mine],
                                   n=cfg.eval_samples, temperature=cfg.eval_temperature, **sampling)
    right = all_sum(sum(s["correct"] for samples in results for s in samples), world)
    accuracy = right / (len(rows) * cfg.eval_samples)
    if rank == 0:
        with open(out_dir / "eval.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "eval_accuracy": accuracy}) + "\n")
        tqdm.write(f"step {step}: held-out accuracy {accuracy:.1%} ({cfg.eval_data}, {len(rows)} problems)")
        plot_run(out_dir)
    return accuracy


@lru_cache(maxsize=2)
def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()


def batch_indices(n: int, batch: int, step: int, seed: int) -> list[int]:
    """Rows of step `step`: a fresh shuffle each epoch, a function of the step alone (so resuming needs no sampler state)."""
    return [epoch_order(n, seed, k // n)[k % n] for k in range(step * batch, (step + 1) * batch)]


# -----------------------------------------------------------------------------
# Logging: per-step numbers, trackers, a quiet console

def gather_rollouts(infos: list[dict], ro, correct, group, world: int) -> dict:
    """One entry per rollout of the whole step (every rank): the `scope_loss` infos, verdicts, truncation."""
    roll = {k: torch.cat([i[k].reshape(-1) for i in infos]).cpu()
            for k in ("weight", "mle", "nll_student", "nll_teacher", "kl_sum", "n_tokens")}
    roll.update(correct=correct.cpu(), truncated=ro.truncated.cpu(), group=group.cpu(),
                loss_mle=sum(i["loss_mle"] for i in infos).reshape(1).cpu(),
                loss_opd=sum(i["loss_opd"] for i in infos).reshape(1).cpu())
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, roll)
        roll = {k: torch.cat([p[k] for p in parts]) for k in roll}
    return roll


def summarize(roll: dict, group_size: int) -> dict:
    """Per-step numbers that tell whether training does something (README, Metrics)."""
    per_group = roll["correct"].float().reshape(-1, group_size)      # (B, G)
    loss_mle, loss_opd = roll["loss_mle"].sum().item(), roll["loss_opd"].sum().item()
    out = {"loss": loss_mle + loss_opd, "loss_mle": loss_mle, "loss_opd": loss_opd,
           "frac_correct": per_group.mean().item(),
           "frac_all_correct": (per_group == 1).all(1).float().mean().item(),
           "frac_all_wrong": (per_group == 0).all(1).float().mean().item(),
           "frac_truncated": roll["truncated"].float().mean().item(),
           "response_len": roll["n_tokens"].mean().item(),
           "kl": (roll["kl_sum"].sum() / roll["n_tokens"].sum().clamp(min=1)).item(),
           "ppl_student": roll["nll_student"].exp().mean().item(),
           "ppl_teacher": roll["nll_teacher"].exp().mean().item()}
    group, weight = roll["group"], roll["weight"]
    for path, member in (("mle", roll["mle"]), ("opd", ~roll["mle"])):
        entropies = []
        for g in group[member].unique():
            p = weight[member & (group == g)]
            if len(p) > 1:  # normalised entropy of one subset's weights: 1 = uniform
                p = p / p.sum()
                entropies.append((-(p * p.clamp(min=1e-30).log()).sum() / math.log(len(p))).item())
        w = weight[member]
        out[f"w_{path}_min"] = w.min().item() if len(w) else None
        out[f"w_{path}_max"] = w.max().item() if len(w) else None
        out[f"w_{path}_entropy"] = sum(entropies) / len(entropies) if entropies else None
    return out


def open_logs(cfg: Config, out_dir: Path, rank: int, start: int):
    """Prepare output_dir; returns the function that records one step (metrics.jsonl and the tracker, rank 0)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if rank != 0:
        return lambda record: None
    (out_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    for name in ("metrics.jsonl", "eval.jsonl"):  # a resumed run rewrites the steps after its checkpoint
        keep_steps_up_to(out_dir / name, start)
    track = open_tracker(cfg, out_dir)

    def write(record: dict):
        with open(out_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        track({k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}, record["step"])
    return write


TRACKERS = {"wandb": ("wandb", "wandb"), "trackio": ("trackio", "trackio"),
            "tensorboard": ("torch.utils.tensorboard", "tensorboard")}


def open_tracker(cfg: Config, out_dir: Path):
    """log(numbers, step) for the tracker named by report_to, imported only when asked for."""
    if cfg.report_to == "none":
        return lambda numbers, step: None
    module, package = TRACKERS[cfg.report_to]
    try:
        tracker = importlib.import_module(module)
    except ImportError:
        fail(f"--report-to {cfg.report_to}: the package is not installed (pip install {package})")
    if cfg.report_to == "tensorboard":
        writer = tracker.SummaryWriter(str(out_dir / "tensorboard"))

        def add_scalars(numbers: dict, step: int):
            for k, v in numbers.items():
                writer.add_scalar(k, v, step)
            writer.flush()
        return add_scalars
    tracker.init(project="scope", name=out_dir.name, config=asdict(cfg))
    return lambda numbers, step: tracker.log(numbers, step=step)


def quiet_libraries():
    """The console shows the run's own lines and its progress bar, not the libraries' bars and notices."""
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message="torch.distributed is disabled")  # dcp in a single process


# -----------------------------------------------------------------------------
# Reliability: context check, atomic checkpoints, exact resume, stop on a signal

def check_context(cfg: Config):
    """A prompt plus a response must fit the student's context: checked before any weights load."""
    try:
        limit = AutoConfig.from_pretrained(resolve(cfg.student)).get_text_config().max_position_embeddings
    except (OSError, ValueError):
        return  # load_model reports a missing model with the full message
    if cfg.max_prompt_tokens + cfg.max_new_tokens > limit:
        fail(f"max_prompt_tokens + max_new_tokens = {cfg.max_prompt_tokens + cfg.max_new_tokens} exceeds the "
             f"student's context of {limit} tokens; lower max_new_tokens or max_prompt_tokens")


def checkpoints(out_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a save in progress lives in a .tmp_ dir until renamed)."""
    return sorted(p for p in out_dir.glob("step_*") if (p / "trainer.json").exists())


def find_checkpoint(cfg: Config, out_dir: Path) -> Path | None:
    """The checkpoint to resume from, or None for a fresh run; refuses to overwrite a previous run."""
    if cfg.resume == "":
        if checkpoints(out_dir) or (out_dir / "metrics.jsonl").exists():
            fail(f"output_dir {out_dir} already holds a run; continue it with --resume auto, "
                 f"or choose another --output-dir")
        return None
    if cfg.resume == "auto":
        found = checkpoints(out_dir)
        return found[-1] if found else None
    path = Path(cfg.resume)
    if not (path / "trainer.json").exists():
        fail(f"--resume {path}: not a checkpoint (expected a step_NNNNNN directory written by scope.py)")
    return path


# Fields that decide which rollouts each step draws: a resumed run must keep them.
RESUME_FIELDS = ("seed", "batch_size", "group_size")


def save_checkpoint(model, optimizer, tokenizer, out_dir: Path, step: int, cfg: Config, rank: int, world: int):
    """Atomically: write into a temporary directory, flush to disk, then rename; prune old ones.

    Holds the student as a plain HF model, and model + optimizer state (sharded under FSDP2) in
    torch.distributed.checkpoint format for an exact resume. Nothing else is needed: the data
    order and the sampling seeds are functions of the step.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    final, tmp = out_dir / f"step_{step:06d}", out_dir / f".tmp_step_{step:06d}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    barrier(world)
    save(model, tokenizer, tmp, rank, world)
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=tmp / "state")
    barrier(world)
    if rank == 0:
        (tmp / "trainer.json").write_text(json.dumps({"step": step, **{k: getattr(cfg, k) for k in RESUME_FIELDS}}))
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as handle:
                    os.fsync(handle.fileno())
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
        fd = os.open(out_dir, os.O_RDONLY)  # make the rename itself durable
        os.fsync(fd)
        os.close(fd)
        for old in checkpoints(out_dir)[:-cfg.keep_checkpoints]:
            shutil.rmtree(old)
    barrier(world)


def load_checkpoint(path: Path, model, optimizer, cfg: Config) -> int:
    """Restore model and optimizer from a checkpoint made with the same RESUME_FIELDS; returns its step."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    saved = json.loads((path / "trainer.json").read_text())
    for name in RESUME_FIELDS:
        if name in saved and saved[name] != getattr(cfg, name):
            fail(f"--resume {path}: the checkpoint was made with {name}={saved[name]!r}, this run has "
                 f"{getattr(cfg, name)!r}; it decides which rollouts each step draws, so resume with the same "
                 f"value or start a fresh run in another --output-dir")
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optim_state}
    dcp.load(state, checkpoint_id=path / "state")
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    print(f"resumed from {path} (step {saved['step']})")
    return saved["step"]


def keep_steps_up_to(path: Path, step: int):
    """Drop the lines of a jsonl log written after `step` (by a run that died before its next checkpoint),
    and a last line the death tore in half."""
    if path.exists():
        path.write_text("".join(json.dumps(r) + "\n" for r in read_jsonl(path) if r.get("step", step + 1) <= step))


def save(model, tokenizer, path: Path, rank: int, world: int):
    """The student as a plain HF checkpoint (gathered from all ranks under FSDP2)."""
    state = None
    if world > 1:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if model.config.tie_word_embeddings:  # a gathered copy no longer shares storage with the embeddings
            state.pop("lm_head.weight", None)
    if rank == 0:
        model.save_pretrained(path, state_dict=state)
        tokenizer.save_pretrained(path)


def catch_stop_signals() -> dict:
    """SIGTERM (preemption) and SIGINT set a flag the loop reads at the next step boundary; a second one kills."""
    stop = {"signal": None}

    def handler(signum, frame):
        stop["signal"] = signum
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def stop_now(argv: list[str], step: int, signum, rank: int):
    """Exit after a signal, once the checkpoint is saved, saying how to continue."""
    again = argv if any(a.startswith("--resume") for a in argv) else [*argv, "--resume", "auto"]
    if rank == 0:
        print(f"\nstopped by a signal after step {step}; checkpoint saved. Continue with:\n"
              f"  python scope.py {' '.join(again)}", file=sys.stderr)
    sys.exit(128 + (signum or signal.SIGTERM))


if __name__ == "__main__":
    main(sys.argv[1:])
