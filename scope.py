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
tokens in one forward pass, and only those of the wrong answers, the only ones the loss reads.
The paper's baselines GRPO and KD are objectives beside SCOPE's (`algorithm`), in the same loop.

Run:
  python scope.py --student Qwen2.5-0.5B --teacher Qwen2.5-7B          # one GPU
  python scope.py --config configs/toy.yaml                            # offline CPU demo (builds its world once)
  python scope.py --config configs/r1-distill-1.5b_skywork-7b.yaml --gpus 8 --plan   # memory per GPU
  torchrun --nproc_per_node=8 scope.py --config configs/qwen2.5.yaml   # FSDP2 over 8 GPUs
  torchrun --nproc_per_node=2 scope.py --config configs/toy.yaml --teacher-ranks 1   # the teacher on a rank of its own
  python scope.py --config configs/toy_grpo.yaml                       # the demo under GRPO (KD: toy_kd.yaml)
"""
import argparse
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

import torch
import yaml
from tqdm import tqdm
from transformers import HfArgumentParser

import plan
import toy
from eval import (Grading, append_eval, gather_rollouts, held_out_accuracy, merged, open_run_logs, rollout_labeller,
                  sampler_gap, step_metrics, training_judge)
from reliability import (catch_stop_signals, find_checkpoint, finish, load_checkpoint, out_of_memory, save_checkpoint,
                         stop_now)
from sample import (PROMPT_SUFFIX, all_max, all_sum, batch_indices, check_context, check_same_tokenizer,
                    compute_dtype, fail, generate, given_rollouts, kv_bytes_per_token, leave_torchrun_worker,
                    load_model, load_rows, load_tokenizer, micro_batches, quiet_libraries, resolve, rollout_copy,
                    rows_per_call, sampling_with, score, setup_distributed, shard, stop_ids, token_logprobs,
                    with_prompts, with_solutions, write_solutions)
from teacher import Colocated, OnRanks, scored_rollouts, serve, split_world
from verify_code import training_problems


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


def scope_loss(logp, teacher_logp, mask, correct, group, cfg: "Config", norm: float, norm_mle: float | None = None):
    """The SCOPE objective (Eq. 6) for whole groups of rollouts.

    logp:         (N, T) student log-probs of the sampled tokens, with grad
    teacher_logp: (N, T) teacher log-probs of the same tokens
    mask:         (N, T) bool, response tokens
    correct:      (N,) bool, verifier's verdict
    group:        (N,) int, which prompt each rollout answers (every rollout of a prompt is here)
    norm:         what the summed loss is divided by (`loss_norms`): the step's response tokens over all
                  micro-batches and ranks (token_mean), its prompts (sum), or this micro-batch's tokens over
                  its share of the step's rollouts (micro_token_mean)
    norm_mle:     the MLE path's own divisor, when it differs (released code: the correct rollouts' tokens)
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
    loss_mle = (w_stu[:, None] * -rho * mask).sum() / (norm_mle or norm)  # Eq. 2, on C
    loss_opd = (w_tea[:, None] * rho * advantage * mask).sum() / norm   # Eq. 3, on W
    info = {"loss_mle": loss_mle.detach(), "loss_opd": loss_opd.detach(), "weight": w_stu + w_tea,
            "mle": mle, "nll_student": nll_s, "nll_teacher": nll_t.detach(),
            "kl_sum": (advantage * mask).sum(1), "n_tokens": mask.sum(1)}
    return loss_mle + loss_opd, info                     # Eq. 6: the two paths added 1:1


def group_advantage(reward: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """GRPO's outcome advantage (N,): each reward minus its prompt's mean, over its prompt's standard deviation
    (unbiased, + 1e-6, as verl computes it); 0 in a group whose rollouts all scored alike."""
    advantage = torch.zeros_like(reward)
    for g in group.unique():
        m = group == g
        advantage[m] = (reward[m] - reward[m].mean()) / (reward[m].std() + 1e-6)
    return advantage


def grpo_loss(logp, ref_logp, mask, correct, group, cfg: "Config", norm: float, norm_mle: float | None = None):
    """GRPO, the paper's RL baseline (its Table 3): every rollout's tokens share its group-normalised outcome
    advantage, in PPO's clipped surrogate; no teacher. With one update per batch rho is exactly 1, so the clip
    (clip_ratio, 0.2) never binds: it is written out to show where it would act with more updates per batch.

    ref_logp: (N, T) the initial student's log-probs, for the k3 KL penalty (kl_beta > 0), else None.
    The other arguments are scope_loss's (norm_mle unused). Returns the loss and numbers worth logging.
    """
    mask = mask.float()
    old = logp.detach()
    rho = torch.exp(logp - old)                                        # value 1, gradient = grad log pi_theta
    advantage = group_advantage(correct.float(), group)[:, None]       # (N, 1)
    clipped = rho.clamp(1 - cfg.clip_ratio, 1 + cfg.clip_ratio)
    loss_pg = -(torch.minimum(rho * advantage, clipped * advantage) * mask).sum() / norm
    info = {"loss_pg": loss_pg.detach(), "advantage": advantage[:, 0], "nll_student": -(old * mask).sum(1) /
            mask.sum(1).clamp(min=1), "n_tokens": mask.sum(1)}
    if ref_logp is None:
        return loss_pg, info
    log_ratio = ref_logp - logp                                        # k3: exp(d) - d - 1 >= 0, unbiased KL
    loss_kl = cfg.kl_beta * ((log_ratio.exp() - log_ratio - 1) * mask).sum() / norm
    return loss_pg + loss_kl, {**info, "loss_kl": loss_kl.detach()}


def kd_loss(logp, teacher_logp, mask, correct, group, cfg: "Config", norm: float, norm_mle: float | None = None):
    """Sequence-level KD (Kim & Rush, 2016), the paper's offline baseline: maximum likelihood of the teacher's
    own solutions (`kd_data`, sampled once before training), right or wrong alike. logp: (N, T) the student's
    log-probs of the teacher's tokens; the other arguments are scope_loss's (teacher_logp, correct, group unused)."""
    mask = mask.float()
    loss = -(logp * mask).sum() / norm
    return loss, {"loss_sft": loss.detach(), "nll_student": -(logp.detach() * mask).sum(1) / mask.sum(1).clamp(min=1),
                  "n_tokens": mask.sum(1)}


OBJECTIVES = {"scope": scope_loss, "grpo": grpo_loss, "kd": kd_loss}  # one signature; chosen once per run


# -----------------------------------------------------------------------------
# Configuration: one dataclass; each field's help is its documentation (`--help`)

def arg(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class Config:
    # --- models and data
    task: Literal["math", "code"] = arg("math", "math: the final answer graded by verify.py; code: the program run "
                                                "on the problem's tests in a sandbox (verify_code.py), data in TACO's "
                                                "form: question and input_output (docs/code.md)")
    code_sandbox: Literal["bwrap", "process"] = arg("bwrap", "code: bubblewrap (no network, a read-only machine), or "
                                                             "the weaker process-only mode, asked for by name")
    student: str = arg("Qwen2.5-0.5B", "student: a local directory, a hub name, or a bare name meaning Qwen/<name>")
    teacher: str = arg("Qwen2.5-7B", "teacher (same forms); must share the student's tokenizer")
    train_data: str = arg("data/math_train.jsonl", "training problems: a .jsonl/.json/.parquet file or a hub dataset")
    data_split: str = arg("train", "split to read when train_data is a hub dataset")
    problem_field: str = arg("problem", "field holding the problem statement")
    answer_field: str = arg("answer", "field holding the reference final answer (a string)")
    skip_bad_rows: bool = arg(False, "skip (and count) rows with a missing, empty or non-string problem or answer")
    prompt_suffix: str = arg(PROMPT_SUFFIX, "instruction appended to every problem (paper: this sentence)")
    chat_template: bool = arg(True, "use the tokenizer's chat template if any; its turn end also ends a rollout")
    rollout_labels: str = arg("", "a labeller 'module:function' called with (problem row, response text) returning "
                                  "{'teacher_unreliable': bool, 'unlikely_route': bool} (a toy world's); metrics.jsonl "
                                  "then logs where the weights fall within prompts")
    build_world: str = arg("", "a toy world (a name in toy.WORLDS, e.g. demo) to build into the student's parent "
                               "directory first when the student directory is missing; '' = never")
    # --- the objective
    algorithm: Literal["scope", "grpo", "kd"] = arg("scope", "scope (OPD and the ablations are its flags); grpo: the "
                                                             "group-normalised outcome advantage, no teacher; kd: SFT "
                                                             "on the teacher's solutions in kd_data (docs/method.md)")
    clip_ratio: float = arg(0.2, "grpo: PPO's clip on rho (paper: 0.2); inactive at one update per batch")
    kl_beta: float = arg(0.0, "grpo: weight of the k3 KL to the initial student (paper's table: 1e-4; its released "
                              "scripts: off); > 0 loads the initial student as the frozen model")
    kd_data: str = arg("", "kd: the teacher's solutions, a JSONL that --kd-generate writes (resumable)")
    kd_generate: bool = arg(False, "sample the teacher's solutions to train_data into kd_data with the rollout "
                                   "settings (G each), then exit; one process; run again to continue")
    # --- SCOPE
    group_size: int = arg(8, "G: rollouts sampled per problem (paper: 8)")
    tau: float = arg(1.0, "temperature of both perplexity softmaxes, Eqs. 4-5 (paper: 1.0)")
    route_by_correctness: bool = arg(True, "SCOPE routing; false sends every rollout to the reverse-KL path (OPD)")
    student_weight: Literal["ppl", "uniform", "reversed"] = arg("ppl", "weights of correct rollouts: Eq. 4, "
                                                                       "uniform, or reversed (released code)")
    teacher_weight: Literal["ppl", "uniform", "reversed"] = arg("ppl", "weights of wrong rollouts: Eq. 5, "
                                                                       "uniform, or reversed")
    weight_scale: Literal["mean", "sum"] = arg("mean", "each subset's weights average 1, or sum to 1 (paper)")
    loss_agg: Literal["token_mean", "sum", "micro_token_mean"] = arg(
        "token_mean", "token_mean: one mean over the step's response tokens (all micro-batches and ranks); sum: token "
                      "sums per rollout averaged over prompts (paper); micro_token_mean: each micro-batch's own token "
                      "means, weighted by its share of the step's rollouts (released code; token_mean when the step "
                      "is one micro-batch)")
    mle_tokens: Literal["all", "correct"] = arg("all", "the token means' divisor for the MLE path: every response "
                                                       "token, or those of correct rollouts only (released code)")
    teacher_temperature: float = arg(0.0, "temperature of the teacher's log-probs; 0 = the rollout temperature "
                                          "(released code: 1)")
    teacher_rollouts: Literal["wrong", "all"] = arg("wrong", "rollouts the teacher scores: those the loss reads (the "
                                                             "wrong ones when routed, all under OPD), or all (logs "
                                                             "its perplexity of correct ones too)")
    teacher_ranks: int = arg(0, "under torchrun, the last this many ranks hold the teacher alone (sharded among them) "
                                "and score each generate call's rollouts while the student samples the next "
                                "(teacher.py); 0 = the teacher beside the student, scoring after sampling")
    # --- rollouts
    batch_size: int = arg(32, "B: problems per optimizer step, over all ranks (paper: 256)")
    temperature: float = arg(0.6, "rollout temperature; student and teacher log-probs use the same (paper: 0.6)")
    top_p: float = arg(1.0, "rollout nucleus sampling threshold (1 = off)")
    top_k: int = arg(0, "rollout top-k (0 = off)")
    rollout_calls: int = arg(1, "split a rank's sampling into at least this many generate calls of whole prompts "
                                "(1 = as few as rollout_kv_gb allows): each call is graded, and sent to teacher "
                                "ranks, while the next one samples")
    max_prompt_tokens: int = arg(1024, "problems whose prompt is longer are dropped at load time (counted)")
    max_new_tokens: int = arg(2048, "longest response; one without a stop token by then is graded as it stands")
    rollout_kv_gb: float = arg(20.0, "KV-cache budget of one generate call, GB (rows per call follow from it)")
    rollouts: Literal["plain", "static"] = arg("plain", "plain: sample with the student itself; static: with "
                                                        "sample.RolloutCopy (a bf16 copy, one static KV cache, compiled "
                                                        "decoding on GPU), opt-in until bench/gpu_check.py has measured it")
    # --- optimisation
    max_steps: int = arg(200, "optimizer steps")
    lr: float = arg(5e-5, "AdamW learning rate, constant (paper: 5e-5)")
    weight_decay: float = arg(0.01, "AdamW weight decay (paper: 0.01)")
    grad_clip: float = arg(1.0, "clip the global gradient norm to this (0 = off)")
    micro_batch_tokens: int = arg(32768, "padded tokens of one forward/backward micro-batch (whole groups)")
    logprob_chunk_tokens: int = arg(1024, "response tokens projected onto the vocabulary at a time")
    gradient_checkpointing: bool = arg(True, "recompute the student's activations in backward")
    dtype: Literal["bfloat16", "float32"] = arg("bfloat16", "compute dtype on GPU (master weights stay float32)")
    shard_teacher: bool = arg(True, "under torchrun, shard the teacher with FSDP2; false replicates it")
    # --- evaluation, logging, saving
    eval_data: str = arg("data/math500.jsonl", "held-out problems for the quick eval")
    eval_problem_field: str = arg("problem", "field holding the problem statement in eval_data")
    eval_answer_field: str = arg("answer", "field holding the reference answer in eval_data")
    eval_every: int = arg(50, "quick eval before training, every this many steps and at the last (0 = never)")
    eval_limit: int = arg(128, "the quick eval uses the first this many problems")
    eval_samples: int = arg(1, "samples per problem in the quick eval")
    eval_temperature: float = arg(0.0, "quick-eval sampling temperature (0 = greedy)")
    output_dir: str = arg("runs/scope", "metrics.jsonl, eval.jsonl, curves.png, checkpoints and the final student")
    report_to: Literal["none", "wandb", "tensorboard", "trackio"] = arg("none", "also send each step's numbers here")
    save_every: int = arg(50, "write a resumable checkpoint every this many steps, and at the end")
    keep_checkpoints: int = arg(2, "keep the newest this many checkpoints")
    resume: str = arg("", "'' = a fresh run; auto = from the newest checkpoint in output_dir; or a checkpoint dir")
    max_bad_steps: int = arg(3, "tolerate this many steps in a row skipped for a non-finite gradient; one more stops")
    seed: int = arg(0, "seeds the data order and, per step, the sampling")
    # --- memory plan
    plan: bool = arg(False, "print the estimated memory per GPU of each phase and exit; loads no weights")
    gpus: int = arg(1, "GPUs the plan is for (torchrun decides the real number)")
    gpu_memory_gb: float = arg(80.0, "memory of one GPU, GB, for the plan")


NON_NEGATIVE = {"lr", "weight_decay", "grad_clip", "eval_every", "eval_temperature", "top_k", "max_bad_steps", "seed",
                "teacher_temperature", "kl_beta", "teacher_ranks"}


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help keeps the module docstring's lines and shows every field's default."""


def parse_config(argv: list[str]) -> Config:
    """Defaults, then --config FILE.yaml, then flags: the file's fields become flags placed first."""
    parser = HfArgumentParser(Config, description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--config", help="YAML file of config fields, applied before the flags")
    path, names, from_file = parser.parse_known_args(argv)[0].config, [f.name for f in fields(Config)], []
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
    except ValueError as e:  # arguments that no field takes
        fail(f"{e}; config fields are: {', '.join(names)}")
    for f in fields(Config):
        value = getattr(cfg, f.name)
        if f.type in (int, float) and (value < 0 if f.name in NON_NEGATIVE else value <= 0):
            fail(f"field {f.name!r} is {value}; it must be {'>= 0' if f.name in NON_NEGATIVE else '> 0'}")
    if cfg.top_p > 1:
        fail(f"field 'top_p' is {cfg.top_p}; it must be in (0, 1]")
    if cfg.algorithm == "grpo" and cfg.group_size < 2:
        fail(f"field 'group_size' is {cfg.group_size}; grpo normalises rewards inside each prompt's group: use >= 2")
    if cfg.teacher_ranks and (cfg.algorithm != "scope" or cfg.kd_generate):
        fail(f"field 'teacher_ranks' is {cfg.teacher_ranks}, but "
             f"{'--kd-generate runs in one process' if cfg.kd_generate else cfg.algorithm + ' has no teacher to score'}"
             f": leave it 0")
    if (cfg.algorithm == "kd" or cfg.kd_generate) and not cfg.kd_data:
        fail("field 'kd_data' is empty; kd trains on the teacher's solutions: name a JSONL file (--kd-generate "
             "writes it)")
    return cfg


# -----------------------------------------------------------------------------
# One training step's update: gradients over micro-batches, one optimizer step

def accumulate_gradients(student, ro, batches, teacher, scored, correct, group, vocab: int, cfg: Config, amp,
                         world: int) -> list[dict]:
    """Backward of the run's objective (`scope_loss`, or a baseline's) over micro-batches of whole groups, each
    divided as `loss_norms` says; returns each micro-batch's info. teacher (teacher.py, or None for a baseline
    without a frozen model) gives its (N, L) log-probs of the `scored` rollouts where the loss first reads them:
    before the first micro-batch, or, when it runs on ranks of its own and scores only the wrong rollouts, after
    every micro-batch's correct rollouts (whose loss reads none) have run their part, while it finishes."""
    infos, norms = [[] for _ in batches], loss_norms(ro, correct, batches, cfg, world)
    index = torch.arange(len(correct), device=correct.device)                                            # (N,)
    early = teacher is not None and teacher.remote and cfg.route_by_correctness and cfg.teacher_rollouts == "wrong"
    frozen = None if teacher is None else teacher.receive(ro, scored) if not early else \
        torch.zeros(ro.tokens.shape, device=ro.tokens.device)  # early: 0, as for every rollout the teacher skips
    with out_of_memory("update", micro_batch_tokens=cfg.micro_batch_tokens, tokens_per_row=ro.resp.shape[1]):
        for part in ([correct, ~correct] if early else [torch.ones_like(correct)]):
            if early and part is not correct:  # the correct rollouts' part is done: now the wrong ones' teacher
                frozen = teacher.receive(ro, scored)
            for info, (r, c), (norm, norm_mle) in zip(infos, batches, norms, strict=True):
                rows = index[r][part[r]]                                        # this part's rows of the batch
                if len(rows) == 0 and world == 1:
                    continue
                idle = len(rows) == 0  # under FSDP every rank runs each forward: this one on a row, counting nothing
                rows = rows if not idle else index[r.start:r.start + 1]
                with amp:
                    logp = token_logprobs(student, ro.tokens[rows, c], ro.attn[rows, c], ro.resp[rows, c], vocab=vocab,
                                          temperature=cfg.temperature, chunk_tokens=cfg.logprob_chunk_tokens)
                loss, part_info = OBJECTIVES[cfg.algorithm](logp, None if frozen is None else frozen[rows, c],
                                                            ro.resp[rows, c], correct[rows], group[rows], cfg, norm,
                                                            norm_mle)
                (loss * (0 if idle else world)).backward()  # the norms count the whole step: undo FSDP's average
                if not idle:
                    info.append((rows - r.start, {**part_info, "logp": logp.detach()}))
    return [merged(parts, len(correct[r])) for parts, (r, _) in zip(infos, batches)]


def optimizer_step(student, optimizer, cfg: Config, fast=None) -> float:
    """Clip and step; a non-finite global norm (the same on every rank) skips the step; then the rollout copy
    follows the student. Returns the norm."""
    norm = torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.grad_clip or float("inf"))
    norm = (norm.full_tensor() if hasattr(norm, "full_tensor") else norm).item()
    if math.isfinite(norm):
        optimizer.step()
        if fast is not None:
            fast.refresh(student)
    optimizer.zero_grad(set_to_none=True)
    return norm


def loss_norms(ro, correct, batches, cfg: Config, world: int) -> list[tuple[float, float | None]]:
    """(norm, norm_mle) of `scope_loss` for each micro-batch: METHOD.md's aggregation choice.

    token_mean and sum divide every micro-batch by one count of the whole step (every rank), so the step's loss
    does not depend on how it is cut. micro_token_mean divides each micro-batch by its own token count over its
    share of the step's rollouts: the released code's mean per micro-batch, scaled by its rows over the rank's,
    then averaged over ranks by FSDP.
    """
    if cfg.loss_agg == "sum":
        return [(cfg.batch_size, None)] * len(batches)
    tokens = ro.resp.sum(1)                                                      # (N,) response tokens
    mle_tokens = tokens * correct if cfg.mle_tokens == "correct" else None       # (N,) the MLE path's own count
    if cfg.loss_agg == "token_mean":
        norm_mle = None if mle_tokens is None else max(all_sum(mle_tokens.sum().item(), world), 1)
        return [(all_sum(tokens.sum().item(), world), norm_mle)] * len(batches)
    norms = []
    for r, _ in batches:
        share = len(tokens[r]) / (len(tokens) * world)  # every rank holds as many rollouts
        norm_mle = None if mle_tokens is None else max(mle_tokens[r].sum().item(), 1) / share
        norms.append((tokens[r].sum().item() / share, norm_mle))
    return norms


# -----------------------------------------------------------------------------
# The loop

def main(argv: list[str]):
    cfg = parse_config(argv)
    if cfg.plan:
        sys.exit(0 if plan.print_plan(cfg) else 1)
    quiet_libraries()
    link = split_world(cfg.teacher_ranks) if cfg.teacher_ranks else None  # the teacher's own ranks (teacher.py)
    rank, world, device = setup_distributed()
    if link is not None and link.rank >= link.students:
        return serve(cfg, link, device)
    if cfg.kd_generate:
        return write_kd_data(cfg, device, world)
    if cfg.batch_size % world:
        fail(f"batch_size {cfg.batch_size} must be divisible by the number of ranks ({world})")
    out_dir = Path(cfg.output_dir)
    resume_from = find_checkpoint(cfg, out_dir)
    toy.build_missing_world(cfg, world)
    check_context(cfg.student, cfg.max_prompt_tokens + cfg.max_new_tokens)
    compute = compute_dtype(cfg.dtype, device)
    amp = torch.autocast("cuda", dtype=compute) if device.type == "cuda" and world == 1 else nullcontext()
    student, teacher, tok, fast = load_models(cfg, device, compute, world, amp, link)
    vocab = len(tok)  # log-probs over the shared tokenizer's ids only (heads may have padding rows)
    optimizer = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = load_checkpoint(resume_from, student, optimizer, cfg, fast) if resume_from else 0
    sampling = sampling_settings(cfg, student, tok, fast, compute.itemsize if world > 1 else 4, world)  # fp32 cache
    judge = training_judge(cfg.task, cfg.code_sandbox)
    rollouts = rollout_source(cfg, student, tok, fast, amp, world, sampling, judge, teacher)
    train, held_out = problems(cfg, tok, world), problems(cfg, tok, world, held_out=True)
    label = rollout_labeller(cfg.rollout_labels)  # per-rollout labels for metrics.jsonl (a toy world's)
    write_metrics = open_run_logs(out_dir, asdict(cfg), cfg.report_to, start) if rank == 0 else lambda record: None

    def quick_eval(step: int) -> float:
        student.eval()
        with sampling_with(student, fast, amp, world):
            accuracy = held_out_accuracy(student, tok, held_out, n=cfg.eval_samples, rank=rank, world=world,
                                         judge=judge, **{**sampling, "temperature": cfg.eval_temperature})
        if rank == 0:
            append_eval(out_dir, step, accuracy, f"{cfg.eval_data}, {len(held_out)} problems")
        return accuracy

    if held_out and start == 0:
        quick_eval(0)
    stop = catch_stop_signals()
    bad_in_a_row, per_rank = 0, cfg.batch_size // world
    bar = tqdm(range(start, cfg.max_steps), "scope", initial=start, total=cfg.max_steps, disable=rank > 0,
               dynamic_ncols=True)
    for step in bar:
        t0 = time.perf_counter()
        # Sampling is seeded from (seed, step, rank): a resumed run draws exactly what it would have.
        torch.manual_seed(cfg.seed * 1_000_003 + step * 1_009 + rank)
        rows = [train[i] for i in batch_indices(len(train), cfg.batch_size, step, cfg.seed)]
        rows = rows[rank * per_rank:(rank + 1) * per_rank]

        # ---- sample G answers per problem from the current student (kd: read the teacher's); each generate call's
        #      are graded as it returns, and those the teacher reads go to it (on its own ranks it starts at once)
        ro, correct, grading = rollouts(rows)                                                             # (N,)
        group = torch.arange(len(rows), device=device).repeat_interleave(cfg.group_size)                  # (N,)
        scored = scored_rollouts(cfg, correct)                                                            # (N,)
        batches = micro_batches(ro, cfg.group_size, cfg.micro_batch_tokens, world)
        eval_due = bool(held_out) and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.max_steps)
        if fast is not None and eval_due:  # the sampler's own log-probs, to measure how far it is from the learner
            with torch.no_grad():
                sampler_logp = score(fast.model, ro, batches, vocab=vocab, temperature=cfg.temperature,
                                     chunk_tokens=cfg.logprob_chunk_tokens)                                # (N, L)
        t1 = time.perf_counter()

        # ---- one optimizer step (on-policy: rho = 1, no clip), gradients accumulated over micro-batches; the
        #      teacher's log-probs of the student's tokens (one forward, no generation) are waited for only where
        #      the loss first reads them
        student.train()
        infos = accumulate_gradients(student, ro, batches, teacher, scored, correct, group, vocab, cfg, amp, world)
        grad_norm = optimizer_step(student, optimizer, cfg, fast)
        bad_in_a_row = 0 if math.isfinite(grad_norm) else bad_in_a_row + 1
        t2 = time.perf_counter()

        # ---- log the step's numbers, gathered from every rank; the quick eval when due
        roll = gather_rollouts(infos, ro, correct, group + rank * per_rank, scored, world, label(rows, ro.texts))
        record = {"step": step + 1, **step_metrics(roll, cfg.group_size), "grad_norm": grad_norm,
                  "skipped": not math.isfinite(grad_norm), "tokens_per_s": roll["n_tokens"].sum().item() / (t2 - t0),
                  "time_sample": t1 - t0, "time_grade": grading.seconds, "time_grade_exposed": grading.waited,
                  "time_update": t2 - t1 - (teacher.waited if teacher else 0),
                  **({"time_teacher": teacher.busy, "time_teacher_exposed": teacher.waited} if teacher else {})}
        if fast is not None and eval_due:
            record.update(sampler_gap(infos, batches, sampler_logp, ro.resp, world))
        if eval_due:
            record["eval_accuracy"] = quick_eval(step + 1)
        write_metrics(record)
        bar.set_postfix(loss=f"{record['loss']:.3f}", correct=f"{record['frac_correct']:.2f}")
        if bad_in_a_row > cfg.max_bad_steps:
            fail(f"{bad_in_a_row} steps in a row had a non-finite gradient; the last good checkpoint is in "
                 f"{out_dir} (lower lr, or check the data)")

        # ---- checkpoint; stop at this step boundary when a signal asked for it
        stopping = all_max(stop["signal"] is not None, world) > 0
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.max_steps or stopping:
            save_checkpoint(student, optimizer, tok, out_dir, step + 1, cfg, rank, world)
        if stopping:
            stop_now(argv, step + 1, stop["signal"], rank)
    finish(student, tok, out_dir, rank, world)


def rollout_source(cfg: Config, student, tok, fast, amp, world: int, sampling: dict, judge, teacher):
    """The function that gives a step's rollouts for its rows, their verdicts (N,) bool and their eval.Grading: G
    samples per row from the current student, or for kd the teacher's solutions that `--kd-generate` wrote. Each
    generate call is graded on a thread while the next samples (eval.Grading), then its rollouts that the teacher
    reads are sent to it (`scored_rollouts`)."""
    def sample(rows: list[dict]):
        def send(first: int, part, correct: torch.Tensor):
            if teacher is not None:
                teacher.send(first, part, scored_rollouts(cfg, correct))
        grading = Grading(judge, [r["answer"] for r in rows for _ in range(cfg.group_size)], then=send)
        if cfg.algorithm == "kd":
            device = next(student.parameters()).device
            ro = given_rollouts(tok, [r["prompt"] for r in rows], [r["response_ids"] for r in rows], sampling["stop"],
                                device)
            grading.submit(0, ro)
            return ro, grading.verdicts(), grading
        student.eval()
        with sampling_with(student, fast, amp, world), out_of_memory("sampling", rows_per_call=sampling["max_rows"],
                                                                     max_new_tokens=cfg.max_new_tokens):
            ro = generate(student, tok, [r["prompt"] for r in rows], cfg.group_size, temperature=cfg.temperature,
                          on_call=grading.submit, **sampling)
        return ro, grading.verdicts(), grading
    return sample


def sampling_settings(cfg: Config, model, tok, fast, kv_bytes: int, world: int) -> dict:
    """`generate`'s keywords but the temperature: stop ids, top-p/k, length, and rows per call from the KV budget
    (`kv_bytes` a cached value) and rollout_calls."""
    kv = kv_bytes_per_token(model.config, kv_bytes)
    return dict(stop=stop_ids(model, tok, cfg.chat_template), top_p=cfg.top_p, top_k=cfg.top_k,
                max_new_tokens=cfg.max_new_tokens, synced=world > 1 and fast is None, static=fast,
                max_rows=min(rows_per_call(cfg.rollout_kv_gb, kv, cfg.max_prompt_tokens + cfg.max_new_tokens),
                             call_rows(cfg, world)))


def call_rows(cfg: Config, world: int) -> int:
    """Most rows one generate call may take for a rank's share of a step to be sampled in rollout_calls calls."""
    return -(-cfg.batch_size // world // cfg.rollout_calls) * cfg.group_size


# -----------------------------------------------------------------------------
# Models and data

def write_kd_data(cfg: Config, device: torch.device, world: int):
    """--kd-generate: G of the teacher's own solutions to each training problem, sampled with the rollout settings
    (temperature, top_p, top_k, max_new_tokens), into kd_data; resumable."""
    if world > 1:
        fail("--kd-generate runs in one process: start it with python, not torchrun")
    toy.build_missing_world(cfg, world)
    compute = compute_dtype(cfg.dtype, device)
    teacher, tok = load_model(cfg.teacher, compute, device)
    write_solutions(teacher.eval(), tok, problems(cfg, tok, world), Path(cfg.kd_data), resolve(cfg.teacher),
                    group_size=cfg.group_size, seed=cfg.seed, temperature=cfg.temperature,
                    **sampling_settings(cfg, teacher, tok, None, compute.itemsize, world))
    print(f"done: {cfg.kd_data} holds the teacher's solutions; train with the same flags without --kd-generate")


def load_models(cfg: Config, device: torch.device, compute: torch.dtype, world: int, amp, link):
    """(student, teacher, tokenizer, rollout copy): the student in float32 (its master weights); the teacher as
    teacher.py's handle: on its own ranks (`link`), or here, frozen in the compute dtype (GRPO: the initial student
    when kl_beta > 0, else None; KD: None); both sharded with FSDP2 under torchrun (the teacher unless shard_teacher
    is false); the student's RolloutCopy for the fast path, else None."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for the fp32 log-prob head; the bodies run in bf16
    student, tok = load_model(cfg.student, torch.float32, device)
    teacher = None
    if link is not None:  # the teacher's ranks load it: here only its tokenizer, which must be the student's
        check_same_tokenizer(tok, load_tokenizer(cfg.teacher), cfg.student, cfg.teacher)
    elif cfg.algorithm == "scope" or (cfg.algorithm == "grpo" and cfg.kl_beta > 0):
        name = cfg.teacher if cfg.algorithm == "scope" else cfg.student  # GRPO's KL reference: the initial student
        teacher, teacher_tok = load_model(name, compute, device)
        check_same_tokenizer(tok, teacher_tok, cfg.student, name)
        teacher.requires_grad_(False).eval()
    fast = rollout_copy(student, cfg.rollouts, compute, call_rows(cfg, world),
                        cfg.max_prompt_tokens + cfg.max_new_tokens, cfg.rollout_kv_gb)
    if cfg.gradient_checkpointing:
        student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if world > 1:
        shard(student, compute)
        if teacher is not None and cfg.shard_teacher:
            shard(teacher, compute)
    handle = OnRanks(link, cfg.output_dir) if link else None if teacher is None else Colocated(teacher, cfg, len(tok),
                                                                                                 amp, world)
    return student, handle, tok, fast


def problems(cfg: Config, tok, world: int, held_out: bool = False) -> list[dict]:
    """Training rows (or the quick eval's, cut to equal shares per rank) with their prompts built once."""
    if held_out and not cfg.eval_every:
        return []
    source, split, keys = ((cfg.eval_data, "test", (cfg.eval_problem_field, cfg.eval_answer_field)) if held_out else
                           (cfg.train_data, cfg.data_split, (cfg.problem_field, cfg.answer_field)))
    code = cfg.task == "code"
    if code:  # TACO's form; the tests are the answer, and each problem says how to answer (a function, or a program)
        try:
            rows = [{**r, "answer": r["tests"]} for r in training_problems(source, split, held_out)]
        except (OSError, ValueError) as e:  # a source it cannot read, or one without tests
            fail(f"{source}: {e}")
    else:
        rows = load_rows(source, split, *keys, cfg.skip_bad_rows, all_fields=bool(cfg.rollout_labels) and not held_out)
    rows = with_prompts(rows, tok, "" if code else cfg.prompt_suffix, cfg.chat_template, cfg.max_prompt_tokens, source)
    if cfg.algorithm == "kd" and not held_out and not cfg.kd_generate:
        rows = with_solutions(rows, Path(cfg.kd_data), resolve(cfg.teacher), tok, cfg.group_size,
                              again="python scope.py <this run's flags> --kd-generate")
    if held_out:  # generate is a collective under FSDP2: every rank gets as many problems
        rows = rows[:cfg.eval_limit]
        rows = rows[:len(rows) // world * world]
    return rows or fail(f"{source}: the quick eval needs at least one problem per rank ({world} ranks)")


if __name__ == "__main__":
    main(sys.argv[1:])
    leave_torchrun_worker()
