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
  python scope.py --config configs/toy.yaml                            # offline CPU demo, minutes
  torchrun --nproc_per_node=8 scope.py --config configs/qwen2.5.yaml   # FSDP2 over 8 GPUs
"""
import ast
import inspect
import json
import math
import os
import shutil
import signal
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from sample import build_prompt, generate, token_logprobs
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
# Configuration: one dataclass, each field documented where declared (the --help text)

@dataclass
class Config:
    # --- models and data
    student: str = "Qwen2.5-0.5B"
    """student model: a local directory, a hub name, or a bare name that resolves to Qwen/<name>"""
    teacher: str = "Qwen2.5-7B"
    """teacher model (same forms); must share the student's tokenizer"""
    train_data: str = "data/math_train.jsonl"
    """training problems: a local .jsonl/.json/.parquet file or a hub dataset name"""
    data_split: str = "train"
    """split to read when train_data is a hub dataset"""
    problem_field: str = "problem"
    """field holding the problem statement"""
    answer_field: str = "answer"
    """field holding the reference final answer (a string)"""
    skip_bad_rows: bool = False
    """skip (and count) rows with a missing, empty or non-string problem or answer instead of stopping"""
    prompt_suffix: str = "Put your final answer within \\boxed{}."
    """instruction appended to every problem (paper: this sentence)"""
    chat_template: bool = True
    """wrap the prompt in the tokenizer's chat template when it has one (raw text otherwise)"""
    toy_dir: str = ""
    """if set, build the offline demo world (toy.py) here on first use; the demo config points at it"""
    # --- SCOPE
    group_size: int = 8
    """G: rollouts sampled per problem (paper: 8)"""
    tau: float = 1.0
    """temperature of both perplexity softmaxes, Eqs. 4-5 (paper: 1.0)"""
    route_by_correctness: bool = True
    """SCOPE routing; false sends every rollout to the reverse-KL path (plain OPD)"""
    student_weight: str = "ppl"
    """weights of correct rollouts: ppl (Eq. 4), uniform, or reversed (the authors' released code)"""
    teacher_weight: str = "ppl"
    """weights of incorrect rollouts: ppl (Eq. 5), uniform, or reversed"""
    weight_scale: str = "mean"
    """mean: weights average 1 in each subset (uniform = plain OPD+MLE); sum: they sum to 1 (paper)"""
    loss_agg: str = "token_mean"
    """token_mean: mean over all response tokens of the step; sum: token sums per rollout, mean over prompts (paper)"""
    # --- rollouts
    batch_size: int = 32
    """B: problems per optimizer step, over all ranks (paper: 256)"""
    temperature: float = 0.6
    """rollout sampling temperature; log-probs of student and teacher use the same (paper: 0.6)"""
    top_p: float = 1.0
    """rollout nucleus sampling threshold (1 = off)"""
    top_k: int = 0
    """rollout top-k (0 = off)"""
    max_prompt_tokens: int = 1024
    """problems whose prompt is longer are dropped at load time (counted)"""
    max_new_tokens: int = 2048
    """longest response; one without EOS by then is graded as it stands and counted as truncated"""
    # --- optimisation
    max_steps: int = 200
    """optimizer steps"""
    lr: float = 5e-5
    """AdamW learning rate, constant (paper: 5e-5)"""
    weight_decay: float = 0.01
    """AdamW weight decay (paper: 0.01)"""
    grad_clip: float = 1.0
    """clip the global gradient norm to this (0 = off)"""
    micro_batch_tokens: int = 32768
    """token budget of one forward/backward micro-batch (whole groups; rows x padded length)"""
    logprob_chunk_tokens: int = 1024
    """response tokens projected onto the vocabulary at a time when computing log-probs"""
    gradient_checkpointing: bool = True
    """recompute the student's activations in backward during the update (never while generating)"""
    dtype: str = "bfloat16"
    """compute dtype on GPU: bfloat16 or float32 (student master weights stay float32; CPU runs float32)"""
    shard_teacher: bool = True
    """under torchrun, shard the teacher with FSDP2 like the student; false replicates it on every rank"""
    # --- evaluation, logging, saving
    eval_data: str = "data/math500.jsonl"
    """held-out problems for the quick eval"""
    eval_every: int = 50
    """run the quick eval before training and every this many steps (0 = never)"""
    eval_problem_field: str = "problem"
    """field holding the problem statement in eval_data"""
    eval_answer_field: str = "answer"
    """field holding the reference answer in eval_data"""
    eval_limit: int = 128
    """quick eval uses the first this many problems"""
    eval_samples: int = 1
    """samples per problem in the quick eval"""
    eval_temperature: float = 0.0
    """quick-eval sampling temperature (0 = greedy)"""
    output_dir: str = "runs/scope"
    """metrics.jsonl, eval.jsonl, checkpoints and the final student go here"""
    save_every: int = 50
    """write a resumable checkpoint (with the student as a plain HF model) every this many steps, and at the end"""
    keep_checkpoints: int = 2
    """keep the newest this many checkpoints"""
    resume: str = ""
    """'' = a fresh run (refused if output_dir holds one); auto = continue from the newest checkpoint there; or a checkpoint dir"""
    max_bad_steps: int = 3
    """stop after this many optimizer steps in a row skipped for a non-finite gradient"""
    seed: int = 0
    """seeds the data order and, per step, the sampling"""


def field_docs() -> dict[str, str]:
    """Each Config field's docstring (the string under it), read from the source: the --help text."""
    body = ast.parse(inspect.getsource(Config)).body[0].body
    return {a.target.id: b.value.value for a, b in zip(body, body[1:])
            if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr)}


CHOICES = {"student_weight": ("ppl", "uniform", "reversed"), "teacher_weight": ("ppl", "uniform", "reversed"),
           "weight_scale": ("mean", "sum"), "loss_agg": ("token_mean", "sum"), "dtype": ("bfloat16", "float32")}


def fail(message: str):
    """Stop with a message for the user (no traceback: it is their input, not our bug)."""
    print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_config(argv: list[str]) -> Config:
    """Defaults, then --config FILE.yaml, then --field-name VALUE flags; every value checked."""
    import argparse
    import yaml

    docs = field_docs()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file of config fields, applied before the flags")
    for f in fields(Config):
        kind = {bool: "true|false", int: "INT", float: "FLOAT", str: "STR"}[type(f.default)]
        extra = f" {{{', '.join(CHOICES[f.name])}}}" if f.name in CHOICES else ""
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, metavar=kind, default=argparse.SUPPRESS,
                            help=f"{docs[f.name]}{extra} (default: {f.default!r})")
    args, unknown = parser.parse_known_args(argv)
    valid = ", ".join(f.name for f in fields(Config))
    if unknown:
        fail(f"unknown argument {unknown[0]!r}; config fields are: {valid}")
    values = {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            fail(f"--config {path}: no such file")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            fail(f"{path}: not valid YAML: {e}")
        if not isinstance(values, dict):
            fail(f"{path}: expected a mapping of config fields, found {type(values).__name__}")
        for key in values:
            if key not in docs:
                fail(f"{path}: unknown key {key!r}; config fields are: {valid}")
    values.update({k: v for k, v in vars(args).items() if k != "config"})
    cfg = Config()
    for f in fields(Config):
        if f.name in values:
            setattr(cfg, f.name, coerce(f.name, values[f.name], type(f.default)))
    check_config(cfg)
    return cfg


def coerce(name: str, value, kind: type):
    """A YAML or command-line value as the field's type, or a message naming the field."""
    if isinstance(value, str) and kind is not str:
        text = value.strip().lower()
        if kind is bool and text in ("true", "false", "1", "0", "yes", "no"):
            return text in ("true", "1", "yes")
        try:
            value = kind(value) if kind is not bool else value
        except ValueError:
            pass
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if value is None and kind is str:
        value = ""
    if type(value) is not kind:
        fail(f"field {name!r} must be {kind.__name__}, got {value!r}")
    return value


def check_config(cfg: Config):
    """Impossible values stop the run before any model loads."""
    for name, allowed in CHOICES.items():
        if getattr(cfg, name) not in allowed:
            fail(f"field {name!r} is {getattr(cfg, name)!r}; allowed: {', '.join(allowed)}")
    positive = ["group_size", "batch_size", "max_new_tokens", "max_prompt_tokens", "max_steps",
                "micro_batch_tokens", "logprob_chunk_tokens", "save_every", "eval_limit", "eval_samples",
                "keep_checkpoints", "max_bad_steps"]
    for name in positive:
        if getattr(cfg, name) < 1:
            fail(f"field {name!r} is {getattr(cfg, name)}; it must be an integer >= 1")
    for name in ("tau", "temperature"):
        if not getattr(cfg, name) > 0:
            fail(f"field {name!r} is {getattr(cfg, name)}; it must be > 0")
    for name in ("lr", "weight_decay", "grad_clip", "eval_every", "eval_temperature"):
        if getattr(cfg, name) < 0:
            fail(f"field {name!r} is {getattr(cfg, name)}; it must be >= 0")
    if not 0 < cfg.top_p <= 1:
        fail(f"field 'top_p' is {cfg.top_p}; it must be in (0, 1]")
    if cfg.top_k < 0:
        fail(f"field 'top_k' is {cfg.top_k}; it must be >= 0 (0 = off)")


# -----------------------------------------------------------------------------
# Models, tokenizers and data

def resolve(name: str) -> str:
    """A local directory as it is; a bare name (no '/') as a Qwen hub model; a hub name as it is."""
    if Path(name).is_dir() or "/" in name:
        return name
    return f"Qwen/{name}"


def load_model(name: str, dtype: torch.dtype, device: torch.device):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError) as e:
        where = "is not a local directory and could not be loaded from the Hugging Face Hub"
        fail(f"model {name!r} (as {path!r}) {where}: {e}\n"
             f"Pass a local directory holding config.json, the weights and the tokenizer, e.g. --student /models/qwen")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device), tokenizer


def check_same_tokenizer(student_tok, teacher_tok, cfg: Config):
    """Teacher scores must be over the student's token ids: refuse two different tokenizers."""
    s, t = student_tok.get_vocab(), teacher_tok.get_vocab()
    if s != t:
        only_s = sorted(set(s) - set(t))[:3]
        only_t = sorted(set(t) - set(s))[:3]
        fail(f"student {cfg.student!r} ({len(s)} tokens) and teacher {cfg.teacher!r} ({len(t)} tokens) "
             f"have different tokenizers (e.g. only the student has {only_s}, only the teacher {only_t}, "
             f"or ids differ); SCOPE needs one shared tokenizer")


def load_rows(source: str, split: str, problem_field: str, answer_field: str, skip_bad: bool) -> list[dict]:
    """Problems and answers from a local .jsonl/.json/.parquet file or a hub dataset, checked row by row."""
    import datasets

    path = Path(source)
    kinds = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
    try:
        if path.is_file():
            if path.suffix not in kinds:
                fail(f"{source}: expected a .jsonl, .json or .parquet file")
            data = datasets.load_dataset(kinds[path.suffix], data_files=str(path), split="train")
        elif path.suffix in kinds:
            fail(f"{source}: no such file")
        else:
            data = datasets.load_dataset(source, split=split)
    except SystemExit:
        raise
    except Exception as e:  # datasets raises many types for unreadable files and unknown hub names
        fail(f"could not read {source!r}: {type(e).__name__}: {e}")
    rows, skipped = [], 0
    for i, row in enumerate(data):
        problem, answer = row.get(problem_field), row.get(answer_field)
        bad = next((f"field {name!r} is {'missing' if v is None else repr(v)}; expected a non-empty string"
                    for name, v in ((problem_field, problem), (answer_field, answer))
                    if not isinstance(v, str) or not v.strip()), None)
        if bad and not skip_bad:
            fail(f"{source}, row {i}: {bad} (set --skip-bad-rows true to skip such rows)")
        if bad:
            skipped += 1
            continue
        rows.append({"problem": problem, "answer": answer})
    if skipped:
        print(f"{source}: skipped {skipped} bad rows of {len(data)}")
    if not rows:
        fail(f"{source}: no usable rows")
    return rows


@lru_cache(maxsize=2)
def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()


def batch_indices(n: int, batch: int, step: int, seed: int) -> list[int]:
    """Rows of step `step`: a fresh shuffle each epoch, a function of the step alone (so resuming needs no sampler state)."""
    return [epoch_order(n, seed, k // n)[k % n] for k in range(step * batch, (step + 1) * batch)]


# -----------------------------------------------------------------------------
# Distributed (torchrun): FSDP2; without torchrun none of this runs

def setup_distributed(backend: str | None = None, timeout=None):
    """(rank, world, device): a process group only under torchrun (nccl on GPU, gloo on CPU by default)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1:
        dist.init_process_group(backend or ("nccl" if device.type == "cuda" else "gloo"), timeout=timeout)
        return dist.get_rank(), world, device
    return 0, 1, device


def shard(model, cfg: Config, device: torch.device):
    """FSDP2: each decoder layer, then the root (embeddings, final norm, head)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy()
    if device.type == "cuda" and cfg.dtype == "bfloat16":
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in model.model.layers:
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


@contextmanager
def gathered(model):
    """Unshard an FSDP2 model once for a whole generate call instead of once per decoded token."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in units:
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for m in units:
            m.set_reshard_after_forward(m is not model, recurse=False)  # the root stays unsharded, as FSDP2 sets it
            m.reshard()


def all_sum(x: float, world: int) -> float:
    if world == 1:
        return x
    t = torch.tensor([float(x)], dtype=torch.float64)
    dist.all_reduce(t)
    return t.item()


def all_max(flag: bool, world: int) -> bool:
    return all_sum(float(flag), world) > 0


def barrier(world: int):
    if world > 1:
        dist.barrier()


# -----------------------------------------------------------------------------
# Training

def micro_batches(ro, group_size: int, budget: int):
    """Slices of whole groups whose padded size (rows x columns) stays within `budget` tokens."""
    n_groups = ro.tokens.shape[0] // group_size
    width = ro.attn.shape[1]
    start = 0
    while start < n_groups:
        end = start + 1
        while end < n_groups and (end + 1 - start) * group_size * width <= budget:
            end += 1
        rows = slice(start * group_size, end * group_size)
        cols = ro.attn[rows].any(0).nonzero()                        # drop columns that are padding everywhere
        yield rows, slice(cols.min().item(), cols.max().item() + 1)
        start = end


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


def summarize(roll: dict, group_size: int) -> dict:
    """Per-step numbers that tell whether training does something (README, Metrics).

    roll holds one entry per rollout of the whole step (all ranks): the `scope_loss` infos
    concatenated, plus correct, truncated and a global group id.
    """
    per_group = roll["correct"].float().reshape(-1, group_size)      # (B, G)
    out = {"frac_correct": per_group.mean().item(),
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


def main(argv: list[str]):
    cfg = parse_config(argv)
    from transformers.utils import logging as hf_logging

    import eval as evaluation  # eval.py imports this file: import it only once both exist

    hf_logging.set_verbosity_error()
    rank, world, device = setup_distributed()
    if cfg.batch_size % world:
        fail(f"batch_size {cfg.batch_size} must be divisible by the number of ranks ({world})")
    if cfg.toy_dir:
        import toy
        if rank == 0:
            toy.build(cfg.toy_dir)
        barrier(world)
    out_dir = Path(cfg.output_dir)
    resume_from = find_checkpoint(cfg, out_dir)
    check_context(cfg)
    gpu = device.type == "cuda"
    if gpu:
        torch.set_float32_matmul_precision("high")  # TF32 for the fp32 log-prob head; the bodies run in bf16 anyway
    compute = torch.bfloat16 if gpu and cfg.dtype == "bfloat16" else torch.float32

    # ---- models: student in float32 (its master weights), teacher in the compute dtype, frozen
    student, tokenizer = load_model(cfg.student, torch.float32, device)
    teacher, teacher_tok = load_model(cfg.teacher, compute, device)
    check_same_tokenizer(tokenizer, teacher_tok, cfg)
    teacher.requires_grad_(False).eval()
    vocab = len(tokenizer)  # log-probs over the shared tokenizer's ids only (heads may have padding rows)
    if cfg.gradient_checkpointing:
        student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if world > 1:
        shard(student, cfg, device)
        if cfg.shard_teacher:
            shard(teacher, cfg, device)
    # single GPU: autocast; under FSDP2 the mixed-precision policy casts instead
    amp = torch.autocast("cuda", dtype=compute) if gpu and world == 1 else nullcontext()
    optimizer = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = load_checkpoint(resume_from, student, optimizer) if resume_from else 0

    # ---- data: prompts built once; over-long prompts dropped
    def prompts_of(rows):
        return [build_prompt(tokenizer, r["problem"], cfg.prompt_suffix, cfg.chat_template) for r in rows]

    train = load_rows(cfg.train_data, cfg.data_split, cfg.problem_field, cfg.answer_field, cfg.skip_bad_rows)
    for r, p in zip(train, prompts_of(train)):
        r["prompt"] = p
    lengths = [len(ids) for ids in tokenizer([r["prompt"] for r in train]).input_ids]
    kept = [r for r, n in zip(train, lengths) if n <= cfg.max_prompt_tokens]
    if len(kept) < len(train) and rank == 0:
        print(f"{cfg.train_data}: dropped {len(train) - len(kept)} problems longer than {cfg.max_prompt_tokens} tokens")
    train = kept or fail(f"{cfg.train_data}: every prompt is longer than max_prompt_tokens={cfg.max_prompt_tokens}")
    eval_rows = []
    if cfg.eval_every:
        eval_rows = load_rows(cfg.eval_data, "test", cfg.eval_problem_field, cfg.eval_answer_field,
                              cfg.skip_bad_rows)
        eval_rows = eval_rows[:cfg.eval_limit]
        eval_rows = eval_rows[:len(eval_rows) - len(eval_rows) % world]  # equal shares: generate is synced
        if not eval_rows:
            fail(f"{cfg.eval_data}: the quick eval needs at least one problem per rank ({world} ranks)")

    def quick_eval(step: int):
        student.eval()
        with amp, gathered(student) if world > 1 else nullcontext():
            acc = evaluation.quick_accuracy(student, tokenizer, eval_rows[rank::world], prompts_of, n=cfg.eval_samples,
                                            temperature=cfg.eval_temperature, max_new_tokens=cfg.max_new_tokens,
                                            synced=world > 1)
        acc = all_sum(acc[0], world) / max(all_sum(acc[1], world), 1)
        if rank == 0:
            with open(out_dir / "eval.jsonl", "a") as f:
                f.write(json.dumps({"step": step, "eval_accuracy": acc}) + "\n")
            tqdm.write(f"step {step}: held-out accuracy {acc:.1%} ({cfg.eval_data}, {len(eval_rows)} problems)")
        return acc

    out_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        (out_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
        for name in ("metrics.jsonl", "eval.jsonl"):  # a resumed run rewrites the steps after its checkpoint
            keep_steps_up_to(out_dir / name, start)
    if cfg.eval_every and start == 0:
        quick_eval(0)
    stop = catch_stop_signals()
    bad_in_a_row = 0

    per_rank = cfg.batch_size // world
    bar = tqdm(range(start, cfg.max_steps), desc="scope", disable=rank != 0, dynamic_ncols=True,
               initial=start, total=cfg.max_steps)
    for step in bar:
        t0 = time.perf_counter()
        # Sampling is seeded from (seed, step, rank): a resumed run draws exactly what it would have.
        torch.manual_seed(cfg.seed * 1_000_003 + step * 1_009 + rank)
        rows = [train[i] for i in batch_indices(len(train), cfg.batch_size, step, cfg.seed)]
        rows = rows[rank * per_rank:(rank + 1) * per_rank]

        # ---- sample: G rollouts per prompt from the current student
        student.eval()
        with amp, gathered(student) if world > 1 else nullcontext():
            ro = generate(student, tokenizer, [r["prompt"] for r in rows], cfg.group_size,
                          temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                          max_new_tokens=cfg.max_new_tokens, synced=world > 1)
        t1 = time.perf_counter()

        # ---- grade
        answers = [r["answer"] for r in rows for _ in range(cfg.group_size)]
        correct = torch.tensor([grade(text, gold) for text, gold in zip(ro.texts, answers)], device=device)
        group = torch.arange(len(rows), device=device).repeat_interleave(cfg.group_size)
        t2 = time.perf_counter()

        # ---- teacher: log-probs of the sampled tokens (one forward, no generation)
        batches = list(micro_batches(ro, cfg.group_size, cfg.micro_batch_tokens))
        teacher_logp = score_with_teacher(teacher, ro, batches, vocab, cfg, amp)
        t3 = time.perf_counter()

        # ---- update: one optimizer step, gradients accumulated over micro-batches of whole groups
        student.train()
        n_tokens = all_sum(ro.resp.sum().item(), world)
        norm = n_tokens if cfg.loss_agg == "token_mean" else cfg.batch_size
        infos = accumulate_gradients(student, ro, batches, teacher_logp, correct, group, vocab, cfg, amp, norm, world)
        grad_norm = torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.grad_clip or float("inf"))
        grad_norm = (grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm).item()
        finite = math.isfinite(grad_norm)  # the global norm: every rank takes the same decision
        if finite:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        bad_in_a_row = 0 if finite else bad_in_a_row + 1
        t4 = time.perf_counter()

        # ---- log: per-rollout numbers of the whole step (gathered from every rank)
        roll = {k: torch.cat([i[k].reshape(-1) for i in infos]).cpu()
                for k in ("weight", "mle", "nll_student", "nll_teacher", "kl_sum", "n_tokens")}
        roll.update(correct=correct.cpu(), truncated=ro.truncated.cpu(), group=group.cpu() + rank * per_rank,
                    loss_mle=sum(i["loss_mle"] for i in infos).reshape(1).cpu(),
                    loss_opd=sum(i["loss_opd"] for i in infos).reshape(1).cpu())
        if world > 1:
            parts = [None] * world
            dist.all_gather_object(parts, roll)
            roll = {k: torch.cat([p[k] for p in parts]) for k in roll}
        stats = {"loss_mle": roll["loss_mle"].sum().item(), "loss_opd": roll["loss_opd"].sum().item(),
                 **summarize(roll, cfg.group_size)}
        record = {"step": step + 1, "loss": stats["loss_mle"] + stats["loss_opd"], **stats,
                  "grad_norm": grad_norm, "skipped": not finite, "tokens_per_s": n_tokens / (t4 - t0),
                  "time_sample": t1 - t0, "time_grade": t2 - t1, "time_teacher": t3 - t2, "time_update": t4 - t3}
        if cfg.eval_every and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.max_steps):
            record["eval_accuracy"] = quick_eval(step + 1)
        if rank == 0:
            with open(out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            bar.set_postfix(loss=f"{record['loss']:.3f}", correct=f"{record['frac_correct']:.2f}",
                            kl=f"{record['kl']:.3f}")
        if bad_in_a_row > cfg.max_bad_steps:
            fail(f"{bad_in_a_row} steps in a row had a non-finite gradient; the last good checkpoint is in "
                 f"{out_dir} (lower lr, or check the data)")
        stopping = all_max(stop["signal"] is not None, world)
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.max_steps or stopping:
            save_checkpoint(student, optimizer, tokenizer, out_dir, step + 1, cfg.keep_checkpoints, rank, world)
        if stopping:
            again = argv if any(a.startswith("--resume") for a in argv) else [*argv, "--resume", "auto"]
            if rank == 0:
                print(f"\nstopped by a signal after step {step + 1}; checkpoint saved. Continue with:\n"
                      f"  python scope.py {' '.join(again)}", file=sys.stderr)
            sys.exit(128 + (stop["signal"] or signal.SIGTERM))
    save(student, tokenizer, out_dir, rank, world)
    if rank == 0:
        print(f"done: the student is in {out_dir} (AutoModelForCausalLM.from_pretrained('{out_dir}'))")
    if world > 1:
        dist.destroy_process_group()


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


def check_context(cfg: Config):
    """A prompt plus a response must fit the student's context: checked before any weights load."""
    from transformers import AutoConfig

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


def save_checkpoint(model, optimizer, tokenizer, out_dir: Path, step: int, keep: int, rank: int, world: int):
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
        (tmp / "trainer.json").write_text(json.dumps({"step": step}))
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as handle:
                    os.fsync(handle.fileno())
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
        fd = os.open(out_dir, os.O_RDONLY)  # make the rename itself durable
        os.fsync(fd)
        os.close(fd)
        for old in checkpoints(out_dir)[:-keep]:
            shutil.rmtree(old)
    barrier(world)


def load_checkpoint(path: Path, model, optimizer) -> int:
    """Restore model and optimizer from a checkpoint; returns its step."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optim_state}
    dcp.load(state, checkpoint_id=path / "state")
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    step = json.loads((path / "trainer.json").read_text())["step"]
    print(f"resumed from {path} (step {step})")
    return step


def keep_steps_up_to(path: Path, step: int):
    """Drop the lines of a jsonl log written after `step` (by a run that died before its next checkpoint)."""
    if path.exists():
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        path.write_text("".join(line + "\n" for line in lines if json.loads(line)["step"] <= step))


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


if __name__ == "__main__":
    main(sys.argv[1:])
