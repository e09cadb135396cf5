"""
Everything that touches a model: loading, prompts, rollouts, log-probs, and the process group.

- `load_model`, `load_rows`: models and problems from a local path or the hub; a user's mistake
  stops with a message naming the file, row or field.
- `build_prompt` turns a math problem into the text the model sees; `stop_ids` lists the ids that
  end a response (the model's EOS, and the token that closes a turn of its chat template).
- `generate` samples G responses for each of B prompts with HF `generate`, in calls whose KV cache
  fits a budget, and returns them with a response mask that ends at the first stop token.
- `RolloutCopy` is the fast rollout path: the same `generate` on a bf16 copy of the student that is
  refreshed after each update, with a static KV cache, compiled decoding and packed GQA attention.
- `token_logprobs` scores given tokens under any model (student with gradients, teacher without),
  over the shared tokenizer's ids only, in chunks so that (tokens x vocab) logits never exist in full.
- `setup_distributed`, `shard`, `gathered`: FSDP2 under torchrun; without torchrun none of it runs.

Nothing here knows about the loss.
"""
import atexit
import hashlib
import json
import os
import sys
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from copy import deepcopy
from datetime import timedelta
from functools import lru_cache
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.utils.checkpoint import checkpoint
from transformers import (AttentionInterface, AutoConfig, AutoModelForCausalLM, AutoTokenizer, CompileConfig,
                          GenerationConfig, StaticCache)
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.utils import logging as hf_logging

PROMPT_SUFFIX = "Put your final answer within \\boxed{}."  # the paper's instruction after every problem


def fail(message: str):
    """Stop with a message for the user (no traceback: it is their input, not our bug)."""
    print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)
    sys.exit(2)


def say(message: str):
    """Print once per job: on rank 0 under torchrun."""
    if os.environ.get("RANK", "0") == "0":
        print(message)


def quiet_libraries():
    """The console shows the run's own lines and its progress bar, not the libraries' bars and notices."""
    import datasets

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message="torch.distributed is disabled")  # dcp in a single process


# -----------------------------------------------------------------------------
# Models and data

def resolve(name: str) -> str:
    """A local directory as it is; a bare name (no '/') as a Qwen hub model; a hub name as it is."""
    if Path(name).is_dir() or "/" in name:
        return name
    return f"Qwen/{name}"


def load_model(name: str, dtype: torch.dtype, device: torch.device):
    """(model, tokenizer) from a local directory or the hub; the tokenizer always has a pad id."""
    with named_model(name) as path:
        tokenizer, model = load_tokenizer(name), AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model.to(device), tokenizer


def load_tokenizer(name: str):
    """A model's tokenizer (`load_model`'s forms), always with a pad id."""
    with named_model(name) as path:
        tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@contextmanager
def named_model(name: str):
    """The path or hub name `name` stands for; a model that cannot be loaded stops the run, saying what to pass."""
    path = resolve(name)
    try:
        yield path
    except (OSError, ValueError) as e:
        where = "is not a local directory and could not be loaded from the Hugging Face Hub"
        fail(f"model {name!r} (as {path!r}) {where}: {e}\n"
             f"Pass a local directory holding config.json, the weights and the tokenizer, e.g. --student /models/qwen")


def check_context(name: str, tokens: int):
    """A prompt plus a response (`tokens`) must fit the model's context: checked before any weights load."""
    try:
        limit = AutoConfig.from_pretrained(resolve(name)).get_text_config().max_position_embeddings
    except (OSError, ValueError):
        return  # load_model reports a missing model with the full message
    if tokens > limit:
        fail(f"max_prompt_tokens + max_new_tokens = {tokens} exceeds the context of {name} ({limit} tokens); "
             f"lower max_new_tokens or max_prompt_tokens")


def check_same_tokenizer(student_tok, teacher_tok, student: str, teacher: str):
    """Teacher scores must be over the student's token ids: refuse two different tokenizers."""
    s, t = student_tok.get_vocab(), teacher_tok.get_vocab()
    if s != t:
        only_s, only_t = sorted(set(s) - set(t))[:3], sorted(set(t) - set(s))[:3]
        fail(f"student {student!r} ({len(s)} tokens) and teacher {teacher!r} ({len(t)} tokens) have different "
             f"tokenizers (e.g. only the student has {only_s}, only the teacher {only_t}, or ids differ); "
             f"SCOPE needs one shared tokenizer")


def load_rows(source: str, split: str, problem_field: str, answer_field: str, skip_bad: bool,
              all_fields: bool = False) -> list[dict]:
    """Problems and answers from a local .jsonl/.json/.parquet file or a hub dataset, checked row by row;
    with all_fields, each row's other fields too, as they are (what a rollout labeller reads)."""
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
        rows.append({**(row if all_fields else {}), "problem": problem, "answer": answer})
    if skipped:
        say(f"{source}: skipped {skipped} bad rows of {len(data)}")
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
# Prompts and the tokens that end a response

def build_prompt(tokenizer, problem: str, suffix: str, chat_template: bool) -> str:
    """The problem plus the instruction, wrapped in the chat template when asked and the tokenizer has one.

    The text carries every special token the model expects at its start (a template writes its own
    BOS; for raw text the tokenizer's BOS is written out), so it is always encoded with
    add_special_tokens=False: a template that writes BOS never gets a second one.
    """
    text = f"{problem}\n{suffix}" if suffix else problem
    if chat_template and tokenizer.chat_template:
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    adds_bos = tokenizer.bos_token_id is not None and tokenizer("x").input_ids[:1] == [tokenizer.bos_token_id]
    return (tokenizer.bos_token if adds_bos else "") + text


def turn_end_id(tokenizer) -> int | None:
    """The special token that closes an assistant turn in the chat template, found by rendering one.

    Base models often declare only <|endoftext|> as EOS while their template closes turns with
    <|im_end|>: without this, a rollout runs on into a new turn the model invents.
    """
    marker = "ANSWER-ENDS-HERE"
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "1+1"},
                                              {"role": "assistant", "content": marker}], tokenize=False)
    except Exception:  # a template may refuse this conversation; then it declares no turn end
        return None
    ids = tokenizer(text[text.rfind(marker) + len(marker):], add_special_tokens=False).input_ids
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    for i, t in enumerate(ids):  # the first special token, with at most white space before it
        if t in special:
            return t if not tokenizer.decode(ids[:i]).strip() else None
    return None


def thinking_opened(tokenizer) -> str:
    """The thinking block the chat template's generation prompt opens and leaves open, or "".

    DeepSeek-R1-Distill's current template ends the prompt with "<think>\\n": its responses hold the closing
    </think> but never the opening. `generate` puts this text back in front of such responses, so that the
    grader sees an unfinished thought as unfinished (no answer) and grades a finished one on what follows it.
    """
    marker = "PROBLEM-ENDS-HERE"
    if not tokenizer.chat_template:
        return ""
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": marker}], tokenize=False,
                                             add_generation_prompt=True)
    except Exception:  # a template may refuse this conversation; then it opens nothing we can see
        return ""
    tail = text[text.rfind(marker) + len(marker):]
    start = tail.rfind("<think>")
    return tail[start:] if start >= 0 and "</think>" not in tail[start:] else ""


def stop_ids(model, tokenizer, chat_template: bool) -> list[int]:
    """Every id that ends a response: the model's declared EOS ids, the tokenizer's, and the turn end
    of the chat template when prompts go through it."""
    declared = model.generation_config.eos_token_id
    ids = (declared if isinstance(declared, list) else [declared]) + [tokenizer.eos_token_id]
    if chat_template and tokenizer.chat_template:
        ids.append(turn_end_id(tokenizer))
    return sorted({i for i in ids if i is not None})


def response_mask(response: torch.Tensor, stop: list[int]) -> torch.Tensor:
    """(N, R) sampled ids -> (N, R) bool: tokens up to and including the first stop id, nothing after.

    Built from stop positions, never from `token != pad`: Qwen base models use one id for both,
    so a pad test would drop the EOS the model must learn to emit.
    """
    is_stop = torch.isin(response, torch.tensor(stop, device=response.device))
    stops_before = is_stop.long().cumsum(-1) - is_stop.long()  # how many stop ids strictly before each token
    return stops_before == 0


def with_prompts(rows: list[dict], tokenizer, suffix: str, chat_template: bool, max_tokens: int,
                 source: str) -> list[dict]:
    """Rows with their prompt built once; prompts longer than max_tokens are dropped (and counted)."""
    for r in rows:
        r["prompt"] = build_prompt(tokenizer, r["problem"], suffix, chat_template)
    lengths = [len(ids) for ids in tokenizer([r["prompt"] for r in rows], add_special_tokens=False).input_ids]
    kept = [r for r, n in zip(rows, lengths) if n <= max_tokens]
    if len(kept) < len(rows):
        say(f"{source}: dropped {len(rows) - len(kept)} problems longer than {max_tokens} tokens")
    return kept or fail(f"{source}: every prompt is longer than max_prompt_tokens={max_tokens}")


# -----------------------------------------------------------------------------
# Rollouts

def kv_bytes_per_token(config, bytes_per_value: int = 2) -> int:
    """KV cache one token holds in every layer: 2 (K and V) x layers x KV heads x head dim x bytes."""
    c = config.get_text_config()
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    return 2 * c.num_hidden_layers * kv_heads * head_dim * bytes_per_value


def rows_per_call(kv_budget_gb: float, kv_per_token: int, tokens_per_row: int) -> int:
    """Rows one `generate` call may hold so that their KV cache stays within the budget (at least 1)."""
    return max(1, int(kv_budget_gb * 1e9 // (kv_per_token * tokens_per_row)))


@dataclass
class Rollouts:
    """B prompts x G samples, flattened so that rows g*G .. g*G+G-1 are prompt g's group."""
    tokens: torch.Tensor     # (N, L) prompt (left-padded) followed by response
    attn: torch.Tensor       # (N, L) bool: real prompt tokens and response tokens up to the first stop
    resp: torch.Tensor       # (N, L) bool: response tokens only (the ones that are scored)
    texts: list[str]         # N decoded responses, up to the first stop (after a thought the prompt opened)
    truncated: torch.Tensor  # (N,) bool: no stop within max_new_tokens

    def select(self, rows: torch.Tensor) -> "Rollouts":
        """The rollouts picked by `rows`, (N,) bool, in their order (their groups need not be whole)."""
        return Rollouts(self.tokens[rows], self.attn[rows], self.resp[rows],
                        [t for t, keep in zip(self.texts, rows.tolist()) if keep], self.truncated[rows])


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], group_size: int, *, stop: list[int], temperature: float,
             top_p: float, top_k: int, max_new_tokens: int, repetition_penalty: float = 1.0, max_rows: int = 0,
             synced: bool = False, static: "RolloutCopy | None" = None, on_call=None) -> Rollouts:
    """Sample `group_size` responses per prompt with HF `generate`, at most `max_rows` rows per call.

    Call it with the model in eval mode: HF applies gradient checkpointing only in train mode,
    so generation then runs with the KV cache and without recomputation. `synced` keeps every
    rank stepping until all ranks are done (under FSDP each forward is a collective); the number
    of calls is a function of len(prompts) and max_rows alone, so ranks with equal shares agree.
    `static` (the fast path, below) samples with `static.model` in calls of exactly `static.rows` rows.
    `on_call(first, part)`, if given, sees each call's Rollouts as it returns (`first`: its first row's index), so
    that a caller can grade them, and send them on, while the next call samples.
    """
    if static is not None:
        model, max_rows = static.model, static.rows
    device = next(model.parameters()).device
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left",
                    add_special_tokens=False).to(device)
    prompt_ids = enc.input_ids.repeat_interleave(group_size, 0)              # (N, P)
    prompt_attn = enc.attention_mask.repeat_interleave(group_size, 0).bool()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    # Every sampling field is set here, so a checkpoint's own generation_config (repetition
    # penalty, top_k, ...) cannot leak into the rollouts; rows past the tokenizer are never sampled.
    config = GenerationConfig(
        do_sample=temperature > 0, temperature=temperature if temperature > 0 else 1.0,
        top_p=top_p, top_k=top_k, min_p=0.0, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0,
        repetition_penalty=repetition_penalty, no_repeat_ngram_size=0, num_beams=1, max_new_tokens=max_new_tokens,
        eos_token_id=stop, pad_token_id=pad, use_cache=True,
        suppress_tokens=list(range(len(tokenizer), model.config.get_text_config().vocab_size)) or None,
    )
    n, P = prompt_ids.shape
    if static is not None:  # the fast path: a static cache of one length, compiled decoding where compile is set
        if P + max_new_tokens > static.max_len:
            fail(f"a prompt of {P} tokens + max_new_tokens {max_new_tokens} exceeds the rollout cache "
                 f"({static.max_len} tokens: max_prompt_tokens + max_new_tokens)")
        config.compile_config, config.disable_compile = static.compile, static.compile is None
    heads = response_heads(tokenizer, prompts, group_size)
    parts = []
    for start in range(0, n, max_rows or n):  # the KV cache of one call stays within its budget
        rows = slice(start, start + (max_rows or n))
        ids, attn = prompt_ids[rows], prompt_attn[rows]
        if static is not None:  # every call the same shape: the last one repeats its last row to fill up
            ids, attn = static.fill(ids), static.fill(attn)
            static.cache.reset()  # zeroed in place: the same tensors, call after call
        first = int(attn.any(0).nonzero().min())  # skip columns that are padding in every row here
        out = model.generate(input_ids=ids[:, first:], attention_mask=attn[:, first:].long(),
                             generation_config=config, synced_gpus=synced,
                             **({"cache": static.cache} if static is not None else {}))
        parts.append(as_rollouts(tokenizer, heads[rows], prompt_ids[rows], prompt_attn[rows],
                                 out[:len(prompt_ids[rows]), P - first:], stop))
        if on_call is not None:
            on_call(start, parts[-1])
    return joined(parts, pad)


def response_heads(tokenizer, prompts: list[str], group_size: int) -> list[str]:
    """Per row (each prompt's G in turn), the text its response starts inside of: the thought the prompt opened and
    left open, or ""."""
    opened = thinking_opened(tokenizer)
    return [opened if opened and p.endswith(opened) else "" for p in prompts for _ in range(group_size)]


def as_rollouts(tokenizer, heads: list[str], prompt_ids, prompt_attn, response, stop: list[int]) -> Rollouts:
    """Rollouts from (N, P) left-padded prompt ids and mask, one per row, and (N, R) responses (anything after a
    response's first stop id is padding); heads: (N,) each row's `response_heads` text."""
    mask = response_mask(response, stop)
    truncated = ~torch.isin(response, torch.tensor(stop, device=response.device)).any(-1)
    texts = [h + t for h, t in
             zip(heads, tokenizer.batch_decode([r[m] for r, m in zip(response, mask)], skip_special_tokens=True))]
    return Rollouts(tokens=torch.cat([prompt_ids, response], 1), attn=torch.cat([prompt_attn, mask], 1),
                    resp=torch.cat([torch.zeros_like(prompt_attn), mask], 1), texts=texts, truncated=truncated)


def joined(parts: list[Rollouts], pad: int) -> Rollouts:
    """One Rollouts of parts sharing their prompt columns, the responses padded to the longest."""
    width = max(p.tokens.shape[1] for p in parts)

    def widen(t: torch.Tensor, value) -> torch.Tensor:
        return F.pad(t, (0, width - t.shape[1]), value=value)
    return Rollouts(tokens=torch.cat([widen(p.tokens, pad) for p in parts]),
                    attn=torch.cat([widen(p.attn, False) for p in parts]),
                    resp=torch.cat([widen(p.resp, False) for p in parts]),
                    texts=[t for p in parts for t in p.texts], truncated=torch.cat([p.truncated for p in parts]))


def given_rollouts(tokenizer, prompts: list[str], responses: list[list[list[int]]], stop: list[int],
                   device: torch.device) -> Rollouts:
    """Rollouts of responses written elsewhere (KD: the teacher's), G id lists for each of B prompts."""
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    group_size = len(responses[0])
    flat = [torch.tensor(ids) for each in responses for ids in each]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    response = torch.nn.utils.rnn.pad_sequence(flat, batch_first=True, padding_value=pad)          # (N, R)
    return as_rollouts(tokenizer, response_heads(tokenizer, prompts, group_size),
                       enc.input_ids.repeat_interleave(group_size, 0).to(device),
                       enc.attention_mask.repeat_interleave(group_size, 0).bool().to(device), response.to(device), stop)


# -----------------------------------------------------------------------------
# KD's data: the teacher's own solutions, sampled once before training

def tokenizer_fingerprint(tokenizer) -> str:
    """16 hex digits naming a tokenizer's vocabulary: every string and its id, added tokens included."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


def read_solutions(path: Path) -> list[dict]:
    """The whole lines of a solutions file (a last line torn by a stopped run is left out)."""
    if not path.exists():
        return []
    text, lines = path.read_text(), []
    for n, line in enumerate(text[:text.rfind("\n") + 1].splitlines(), 1):
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError as e:
            fail(f"{path}, line {n}: not JSON ({e.msg}); remove the file and write it anew")
    return lines


def write_solutions(model, tokenizer, rows: list[dict], path: Path, teacher: str, *, group_size: int, seed: int,
                    **sampling):
    """Append G of the teacher's sampled solutions to each of `rows` to `path` (JSONL, a line per problem naming the
    teacher and its tokenizer), one generate call's problems at a time, flushed: run again, with the same flags, to
    continue. Each call's problems and seed are a function of its number, so a continued file equals an unbroken one."""
    done = {line["index"] for line in read_solutions(path)}
    if path.exists():  # a last line torn by a stopped run goes before the next lines are appended
        os.truncate(path, path.read_bytes().rfind(b"\n") + 1)
    per_call = max(1, sampling["max_rows"] // group_size)
    calls = sorted({i // per_call for i in range(len(rows)) if i not in done})
    print(f"{path}: {len(done)} of {len(rows)} problems already solved by the teacher; sampling the others")
    fingerprint = tokenizer_fingerprint(tokenizer)
    with open(path, "a") as f:
        for n, call in enumerate(calls, 1):
            chunk = range(call * per_call, min((call + 1) * per_call, len(rows)))
            torch.manual_seed(seed * 1_000_003 + call)
            ro = generate(model, tokenizer, [rows[i]["prompt"] for i in chunk], group_size, **sampling)
            for j, i in enumerate(chunk):
                if i in done:  # a call cut short: its lines that reached the file stay, the others follow
                    continue
                mine = slice(j * group_size, (j + 1) * group_size)
                ids = [r[m].tolist() for r, m in zip(ro.tokens[mine], ro.resp[mine])]
                f.write(json.dumps({"index": i, "problem": rows[i]["problem"], "prompt": rows[i]["prompt"],
                                    "teacher": teacher, "tokenizer": fingerprint, "responses": ro.texts[mine],
                                    "response_ids": ids}) + "\n")
            f.flush()
            os.fsync(f.fileno())
            say(f"{path}: call {n} of {len(calls)}")


def with_solutions(rows: list[dict], path: Path, teacher: str, tokenizer, group_size: int, again: str) -> list[dict]:
    """Training rows with the teacher's solutions from `path` attached (`response_ids`, G of them), each line
    checked: the same teacher, tokenizer and prompt as this run, and solutions to train on. `again`: the command
    that writes the file."""
    if not path.exists():
        fail(f"kd_data {path} does not exist; sample the teacher's solutions first: {again}")
    lines = {line.get("index"): (n, line) for n, line in enumerate(read_solutions(path), 1)}  # index: (number, line)
    fingerprint = tokenizer_fingerprint(tokenizer)
    for i, row in enumerate(rows):
        if i not in lines:
            fail(f"{path} holds no solutions for problem {i} ({len(lines)} of {len(rows)} problems); continue "
                 f"it with: {again}")
        n, line = lines[i]
        ids = line.get("response_ids")
        bad = (f"was sampled from teacher {line.get('teacher')!r}, this run's is {teacher!r}"
               if line.get("teacher") != teacher else
               f"was tokenized by another tokenizer ({line.get('tokenizer')} against this run's {fingerprint})"
               if line.get("tokenizer") != fingerprint else
               "holds another prompt than this run builds (prompt_suffix, chat_template or the data differ)"
               if line.get("prompt") != row["prompt"] else
               f"has no 'response_ids' with {group_size} non-empty responses (group_size)"
               if not isinstance(ids, list) or len(ids) < group_size or not all(ids[:group_size]) else None)
        if bad:
            fail(f"{path}, line {n}: problem {i} {bad}")
        row["response_ids"] = ids[:group_size]
    return rows


# -----------------------------------------------------------------------------
# The fast rollout path: the same `generate`, on a copy of the student kept for sampling

class RolloutCopy:
    """An unsharded copy of the student in the compute dtype that only samples; `refresh` it after each update.

    What each piece buys, for decoding that is bound by reading weights and KV cache from memory:
    - unsharded: FSDP does not gather weights for decoding, and each rank decodes on its own (no `synced`);
    - in the compute dtype (bf16 on GPU): half the bytes per token, for the weights and for the KV cache;
    - refreshed in place: the same tensors every step, so a compiled decode step (and its CUDA graph) stays valid;
    - one static KV cache of `rows` x (max prompt + max new tokens) for the run: decoding writes into it instead
      of growing it, and every call has the same shapes and the same cache tensors, so the decode step compiles
      (and records its CUDA graphs) once; the cache stays allocated through the update (plan.py counts it);
    - `compile` (GPU: transformers' CompileConfig, CUDA graphs) removes Python and kernel-launch time per token;
    - `packed_gqa_attention`: K and V are read once per KV head, not repeated for every query head.
    Buffers (RoPE's inverse frequencies) stay exactly as the student holds them. Sampling from bf16 weights while
    the update scores with fp32 master weights under autocast is the usual mismatch of RL samplers; the update does
    not correct for it (rho = 1, METHOD.md), and scope.py logs its size (sampler_logratio) at quick-eval steps.
    """

    def __init__(self, student, dtype: torch.dtype, rows: int, max_len: int, compile=None):
        self.model = deepcopy(student).eval().requires_grad_(False)
        for p in self.model.parameters():  # parameters only: `.to(dtype)` would round RoPE's fp32 frequencies too
            p.data = p.data.to(dtype)
        self.model.set_attn_implementation(PACKED_GQA)
        self.rows, self.max_len, self.compile = rows, max_len, compile
        self.params, self.buffers = dict(self.model.named_parameters()), dict(self.model.named_buffers())
        # One cache for the whole run, reset before each call: its tensors keep their addresses, so a compiled
        # decode step and its CUDA graphs are recorded once (`generate` would build a new cache every call).
        self.cache = StaticCache(config=self.model.config, max_cache_len=max_len)

    @torch.no_grad()
    def refresh(self, student):
        """Copy the student's weights and buffers in, in place (under FSDP2 a collective: every rank calls it)."""
        for name, p in student.named_parameters():
            p = p.detach().to(self.params[name].dtype)       # cast the shard before gathering: half the traffic
            self.params[name].copy_(p.full_tensor() if hasattr(p, "full_tensor") else p)
        for name, b in student.named_buffers():
            self.buffers[name].copy_(b)

    def fill(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x[-1:].expand(self.rows - len(x), *x.shape[1:])]) if len(x) < self.rows else x


def rollout_copy(student, mode: str, compute: torch.dtype, rollouts: int, width: int, kv_gb: float):
    """The fast path's RolloutCopy of the (still unsharded) student for `rollouts` rows of `width` tokens per step
    (`mode` static; compiled decoding on GPU only), or None for the plain path."""
    if mode == "plain":
        return None
    cuda = next(student.parameters()).device.type == "cuda"
    rows = fixed_rows(rollouts, rows_per_call(kv_gb, kv_bytes_per_token(student.config, compute.itemsize), width))
    return RolloutCopy(student, compute, rows, width, CompileConfig() if cuda else None)


@contextmanager
def sampling_with(student, fast, amp, world: int):
    """The plain path samples with the student itself, in autocast and gathered once under FSDP; the fast path
    with its own copy, as it is."""
    if fast is not None:
        yield
    else:
        with amp, gathered(student) if world > 1 else nullcontext():
            yield


def fixed_rows(n: int, max_rows: int) -> int:
    """Rows per call that split n rows into the fewest calls of one size (the last one filled up)."""
    calls = -(-n // max(1, min(max_rows, n)))
    return -(-n // calls)


def packed_gqa_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """SDPA for one decoded token that folds the query heads of each KV head into the query length, so that K and
    V are read once per KV head: exact, and unlike transformers' own SDPA (which folds only in eager mode) it
    also holds under compile. Anything else goes to transformers' SDPA."""
    groups = getattr(module, "num_key_value_groups", 1)
    if query.shape[2] != 1 or groups == 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    b, h, _, d = query.shape                                 # query head j*groups + i reads KV head j (repeat_kv)
    out = F.scaled_dot_product_attention(query.reshape(b, h // groups, groups, d), key, value,
                                         attn_mask=attention_mask, scale=scaling)
    return out.reshape(b, h, 1, d).transpose(1, 2), None     # (b, 1, h, d), as attention functions return


PACKED_GQA = "scope_packed_gqa"
AttentionInterface.register(PACKED_GQA, packed_gqa_attention)
AttentionMaskInterface.register(PACKED_GQA, sdpa_mask)


# -----------------------------------------------------------------------------
# Log-probs

def _chunk_logprobs(hidden, weight, targets, temperature, vocab):
    """(n, H) hidden states, (V, H) head, (n,) targets -> (n,) fp32 log-probs over the first `vocab` ids."""
    with torch.autocast(hidden.device.type, enabled=False):  # fp32 logits, even under bf16 autocast
        logits = hidden.float() @ weight.T / temperature        # (n, V): the full head keeps the GEMM aligned
    return logits[:, :vocab].log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)


def last_hidden_state(model, tokens: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """(N, L, H) output of the decoder body (after its final norm); no layer's output but the last is kept.

    The model is called whole, not its body alone, so that FSDP2's hooks on the root still run;
    a hook on the body catches its output, and logits_to_keep=1 keeps the head to one position.
    """
    position_ids = (attn.long().cumsum(-1) - 1).clamp(min=0)  # real tokens only, as `generate` numbered them
    caught = []
    hook = model.get_decoder().register_forward_hook(lambda module, args, out: caught.append(out.last_hidden_state))
    try:
        model(input_ids=tokens, attention_mask=attn.long(), position_ids=position_ids, logits_to_keep=1,
              use_cache=False)
    finally:
        hook.remove()
    return caught[0]


def token_logprobs(model, tokens: torch.Tensor, attn: torch.Tensor, resp: torch.Tensor, *,
                   vocab: int, temperature: float, chunk_tokens: int = 1024) -> torch.Tensor:
    """Log-prob of every response token under `model`, as (N, L) fp32 (0 where `resp` is False).

    tokens, attn, resp: (N, L) as in `Rollouts`. The logits are divided by `temperature` (the one
    the rollouts were sampled at) and restricted to the first `vocab` rows of the LM head: the
    shared tokenizer's ids, so heads of 151,936 and 152,064 rows give comparable distributions.
    Only response positions are projected onto the vocabulary, `chunk_tokens` at a time, each chunk
    recomputed in backward: peak memory is one (chunk_tokens x vocab) block, not (N x L x vocab).
    Runs with or without grad; call it under `torch.no_grad()` for the teacher.
    """
    hidden = last_hidden_state(model, tokens, attn)                  # (N, L, H)
    scored = resp[:, 1:]                                             # token t is predicted at t-1
    h = hidden[:, :-1][scored]                                       # (n, H) packed response positions
    targets = tokens[:, 1:][scored]                                  # (n,)
    weight = model.get_output_embeddings().weight.float()            # (V, H), cast once, not per chunk
    pieces = []
    for i in range(0, h.shape[0], chunk_tokens):
        args = (h[i:i + chunk_tokens], weight, targets[i:i + chunk_tokens], temperature, vocab)
        if torch.is_grad_enabled():
            pieces.append(checkpoint(_chunk_logprobs, *args, use_reentrant=False))
        else:
            pieces.append(_chunk_logprobs(*args))
    logp = torch.zeros(scored.shape, dtype=torch.float32, device=tokens.device)
    if pieces:
        logp = logp.masked_scatter(scored, torch.cat(pieces))
    return F.pad(logp, (1, 0))                                       # (N, L)


def score(model, ro: Rollouts, batches: list[tuple[slice, slice]], **kw) -> torch.Tensor:
    """(N, L) log-probs of the sampled tokens, micro-batch by micro-batch (`token_logprobs`' keywords);
    call it under torch.no_grad() (the teacher)."""
    logp = torch.zeros(ro.tokens.shape, device=ro.tokens.device)
    for r, c in batches:
        logp[r, c] = token_logprobs(model, ro.tokens[r, c], ro.attn[r, c], ro.resp[r, c], **kw)
    return logp


def score_rows(model, ro: Rollouts, rows: torch.Tensor, budget: int, world: int, **kw) -> torch.Tensor:
    """(N, L) log-probs of the sampled tokens of the rollouts picked by `rows`, (N,) bool, and 0 elsewhere: only
    those are forwarded, in micro-batches of `budget` padded tokens. Under FSDP every forward is a collective, so
    a rank with fewer micro-batches than another repeats a one-rollout forward, dropping its result, until all
    ranks have run as many."""
    picked = ro.select(rows)
    batches = micro_batches(picked, 1, budget, world)
    most = int(all_max(len(batches), world))  # agreed before any forward: collectives run in one order everywhere
    logp = torch.zeros(ro.tokens.shape, device=ro.tokens.device)
    logp[rows] = score(model, picked, batches, **kw)
    for _ in range(most - len(batches)):
        token_logprobs(model, ro.tokens[:1], ro.attn[:1], ro.resp[:1], **kw)
    return logp


def naive_token_logprobs(model, tokens, attn, resp, *, vocab: int, temperature: float) -> torch.Tensor:
    """Reference for `token_logprobs`: the full (N, L, V) logits at once. Tests and benches only."""
    position_ids = (attn.long().cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=tokens, attention_mask=attn.long(), position_ids=position_ids,
                   use_cache=False).logits[..., :vocab].float() / temperature
    lp = logits[:, :-1].log_softmax(-1).gather(-1, tokens[:, 1:, None]).squeeze(-1)
    return F.pad(lp * resp[:, 1:], (1, 0))


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


# -----------------------------------------------------------------------------
# Distributed (torchrun): FSDP2

def setup_distributed(backend: str | None = None, timeout=None):
    """(rank, world, device): a process group only under torchrun (nccl and gloo on GPU, gloo on CPU by default)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if dist.is_initialized():  # the job was split already (teacher.split_world): this side's group
        return dist.get_rank(), dist.get_world_size(), device
    if world > 1:
        dist.init_process_group(backend or default_backend(device), timeout=timeout or collective_timeout())
        return dist.get_rank(), world, device
    return 0, 1, device


def compute_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The dtype models compute in: bf16 on GPU when asked (`dtype` "bfloat16"), float32 otherwise."""
    return torch.bfloat16 if device.type == "cuda" and dtype == "bfloat16" else torch.float32


def default_backend(device: torch.device) -> str:
    """gloo on CPU; on GPU, gloo beside nccl: the few small numbers the trainer reduces live on the CPU."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def collective_timeout() -> timedelta:
    """How long a rank waits for the others: torch's 30 minutes unless SCOPE_COLLECTIVE_TIMEOUT_S says (tests)."""
    return timedelta(seconds=float(os.environ.get("SCOPE_COLLECTIVE_TIMEOUT_S", 1800)))


def shard(model, compute: torch.dtype):
    """FSDP2: each decoder layer, then the root (embeddings, final norm, head); compute in `compute`."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy()
    if compute == torch.bfloat16:
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in model.model.layers:
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


@contextmanager
def gathered(model):
    """Unshard an FSDP2 model once for all its generate calls instead of once per decoded token."""
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


def all_max(x: float, world: int) -> float:
    if world == 1:
        return x
    t = torch.tensor([float(x)], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


def barrier(world: int):
    if world > 1:
        dist.barrier()


def leave_torchrun_worker():
    """End a torchrun worker (no-op in one process) whose work is saved and whose process group is destroyed
    without running C++'s static destructors: there gloo's threads can abort a finished rank ("terminate called
    without an active exception", seen in CI). Python's exit handlers (a tracker's final upload) still run."""
    if int(os.environ.get("WORLD_SIZE", 1)) == 1:
        return
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def save_model(model, tokenizer, path: Path, rank: int, world: int):
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


def fsync(*paths: Path):
    """Flush files' data, or a directory's entries (a rename within it), to disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_state(model, optimizer, path: Path):
    """Model and optimizer state in torch.distributed.checkpoint format (each rank writes its shard under FSDP2)."""
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=path)


def load_state(model, optimizer, path: Path):
    """The state `save_state` wrote, back into model and optimizer (resharded to this run's ranks)."""
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optim_state}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
