"""
Memory plan: the estimated peak memory per GPU of each phase of one SCOPE step, before launch.

    python scope.py --config configs/r1-distill-1.5b_skywork-7b.yaml --gpus 8 --gpu-memory-gb 80 --plan

Reads only the two models' config.json (a local directory works offline) and counts parameters by
building each model on the meta device: no weights are loaded, nothing touches a GPU. Decimal GB.

What the estimate assumes (scope.py's step; P = parameters, n = gpus, T = tokens of a micro-batch):
- One GPU: the student keeps fp32 weights and AdamW's two fp32 states (12 B/P) and, during the
  update only, fp32 grads (4 B/P; `zero_grad(set_to_none=True)` frees them). It computes under bf16
  autocast, whose cache holds a bf16 copy of the weights (2 B/P) while generating and updating. The
  embedding output is fp32, so RoPE's cos/sin are fp32 and the KV cache is fp32 (K after RoPE is
  fp32 and the cache's first K fixes the dtype of both): 4 bytes per value, and scope.py sizes its
  generate calls with 4. The residual stream is fp32.
- n > 1 (FSDP2, per decoder layer, then the root): the student's 16 B/P are divided by n. Forward
  and backward hold two decoder layers (one prefetched) and the root (embeddings, head) gathered in
  bf16, plus one layer's unsharded fp32 grads in backward; generation holds the whole student
  gathered in bf16. Everything runs in bf16: KV cache and residual stream 2 bytes. The teacher (bf16,
  frozen) is sharded the same way when shard_teacher, otherwise replicated whole on every GPU.
- Each GPU holds B/n prompts x G rollouts. Generation runs `rows_per_call` rows per call, each row
  max_prompt_tokens + max_new_tokens wide; its peak is the larger of the prefill (prompt KV, one
  layer's activations over rows x prompt tokens, the padding mask) and the last decode step (the full
  KV, one layer's K and V expanded to all query heads by `repeat_kv`, and 4 fp32 copies of the
  (rows x vocab) logits while sampling).
- Micro-batches hold whole groups: max(G, micro_batch_tokens // width // G * G) rows x width tokens.
  Prompts are left-padded, so HF builds a (rows, 1, width, width) bool mask and SDPA a bf16 copy of it
  in every attention call (3 bytes per entry; sdpa's memory-efficient kernel, not the math one).
- Teacher scoring (no grad): the residual stream, one layer's live tensors (the MLP's or attention's,
  whichever is larger) and the mask; only the last hidden state reaches the head.
- Update: with gradient_checkpointing, every decoder layer's input (the residual stream) plus one
  layer's activations while it is recomputed, and the residual stream's gradients; without it, every
  layer's activations and mask copy. Per-layer activations, bytes per token, counted op by op:
  norms 2 (r + 4) H, casts to bf16 before the projections 2 a H (only when r != a), q/k/v a (q + 2 kv),
  RoPE r (q + kv), SDPA with K and V expanded 4 a q (plus a (q + kv) casts when r != a), o_proj a H,
  MLP 4 a I  (r residual bytes, a compute bytes, q and kv the query and KV widths). Counting autograd's
  saved tensors on CPU for small Qwen2 layers gives 0 to 9% less.
- The log-prob head: `logprob_chunk_tokens` response tokens at a time in fp32 over the full head,
  2 copies of (chunk x vocab x 4 bytes) without grad and 4 in backward, plus an fp32 copy of a bf16
  head's weight (and its grad for the FSDP student), while the last hidden state and the packed
  response positions (and for the student, every checkpointed layer input) are alive.
- The fast rollout path (`rollouts: static`; sample.RolloutCopy): an unsharded copy of the student in
  the compute dtype (a B/P) and the run's one static KV cache (rows x width, compute dtype) stay
  allocated through every phase; the student itself does not sample. Calls have one size: the fewest
  within rollout_kv_gb, rows spread evenly over them. Its prefill runs over the whole cache length:
  the padding mask is (rows, 1, prompt, width), and transformers' SDPA repeats one layer's K and V to
  every query head over the width (`static_prefill`); one decoded token reads K and V packed.
Not counted: the CUDA context and allocator fragmentation (keep about 10% free), the tokenizer's data,
activations of the quick eval (its generate calls are smaller than training's).
"""
import copy
import sys
from dataclasses import dataclass

import torch

from sample import fixed_rows, kv_bytes_per_token, resolve, rows_per_call

GB = 1e9
SAMPLING_LOGIT_COPIES = 4     # fp32 logits, tempered, top-k/top-p filtered, probabilities
HEAD_COPIES_NO_GRAD = 2       # logits, log_softmax
HEAD_COPIES_GRAD = 4          # the same recomputed in backward, and their gradients
# The fields that lower each phase's peak; reliability.out_of_memory names them when a phase runs out.
PHASE_FIELDS = {"weights + optimizer state": "gpus", "generation": "rollout_kv_gb",
                "teacher scoring": "micro_batch_tokens or shard_teacher",
                "update": "micro_batch_tokens or gradient_checkpointing", "log-prob chunk": "logprob_chunk_tokens",
                "teacher ranks": "teacher_ranks, micro_batch_tokens or shard_teacher"}
CHECKPOINT_BYTES_PER_PARAM = 16   # fp32: the HF weights, and in state/ the weights and AdamW's two moments
CHECKPOINT_OVERHEAD = 1.05        # tokenizer, configs and the state's metadata: 4% on the tests' tiny models


def checkpoint_bytes(params: int) -> int:
    """Disk one checkpoint of a student of `params` parameters takes (reliability.save_checkpoint writes it)."""
    return int(params * CHECKPOINT_BYTES_PER_PARAM * CHECKPOINT_OVERHEAD)


@dataclass
class Shape:
    """What the plan needs from one model: parameter counts (from the meta model) and widths."""
    name: str
    config: object            # the transformers config
    params: int               # every parameter once (a tied head counted once)
    layer_params: int         # one decoder layer
    root_params: int          # embeddings, final norm, head: FSDP's root unit
    hidden: int               # H
    intermediate: int         # I
    q_width: int              # query heads x head dim
    kv_width: int             # KV heads x head dim
    layers: int
    head_rows: int            # rows of the LM head (the vocabulary it projects onto)


def read_shape(role: str, name: str) -> Shape:
    """config.json of `name` (a local directory or a hub name), counted on the meta device."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = resolve(name)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        sys.exit(f"plan: cannot read the {role}'s configuration {name!r} (as {path!r}): {e}\n"
                 f"The plan needs only config.json: pass a local directory holding it, e.g. --{role} /models/x")
    try:
        with torch.device("meta"):                  # shapes only: no memory, no weights
            model = AutoModelForCausalLM.from_config(config)
        layers = model.get_decoder().layers
    except (ValueError, AttributeError, KeyError) as e:
        sys.exit(f"plan: the {role} {name!r} is a {type(config).__name__}, not a decoder-only causal LM "
                 f"with .layers the plan can count: {e}")
    c = config.get_text_config()
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    params = sum(p.numel() for p in model.parameters())
    layer_params = sum(p.numel() for p in layers[0].parameters())
    return Shape(name=name, config=config, params=params, layer_params=layer_params,
                 root_params=params - len(layers) * layer_params, hidden=c.hidden_size,
                 intermediate=c.intermediate_size, q_width=c.num_attention_heads * head_dim,
                 kv_width=(getattr(c, "num_key_value_heads", None) or c.num_attention_heads) * head_dim,
                 layers=len(layers), head_rows=model.get_output_embeddings().weight.shape[0])


def layer_activations(m: Shape, r: int, a: int) -> int:
    """Bytes per token one decoder layer saves for backward (r: residual bytes, a: compute bytes)."""
    H, q, kv = m.hidden, m.q_width, m.kv_width
    casts = (2 * a * H + a * (q + kv)) if r != a else 0
    return 2 * (r + 4) * H + casts + a * (q + 2 * kv) + r * (q + kv) + 4 * a * q + a * H + 4 * a * m.intermediate


def layer_live(m: Shape, r: int, a: int) -> int:
    """Bytes per token alive at once inside one decoder layer without grad: the residual stream and
    the larger of attention (q, k, v, after RoPE, K and V expanded, output) and the MLP (3 of I)."""
    q, kv = m.q_width, m.kv_width
    return 3 * r * m.hidden + max(a * (q + 2 * kv) + r * (q + kv) + 3 * a * q, 3 * a * m.intermediate)


def static_prefill(m: Shape, rows: int, prompt: int, cache_len: int, a: int) -> dict[str, int]:
    """Bytes the fast path (a static cache) allocates at prefill besides one layer's activations, as transformers
    builds them: the cache itself (every layer, rows x cache_len, allocated at the first call and kept); the bool
    padding mask (rows, 1, prompt, cache_len), over the whole cache length (SDPA adds a copy in the compute dtype);
    and one layer's K and V repeated to every query head over the cache length (transformers' SDPA repeats them
    whenever there is a mask; sample.packed_gqa_attention avoids it for one decoded token only)."""
    return {"cache": rows * cache_len * kv_bytes_per_token(m.config, a),
            "mask": rows * prompt * cache_len,
            "kv_expanded": 2 * rows * cache_len * m.q_width * a if m.q_width > m.kv_width else 0}


def estimate(cfg, student: Shape, teacher: Shape) -> tuple[list[tuple], dict]:
    """Per-GPU GB of each phase: ([(phase, GB, field to change, what it counts)], sizes of the step). With
    teacher_ranks K, the student's phases are those of gpus - K GPUs without a teacher, and the teacher's GPUs have
    phases of their own (`teacher_rank_phases`)."""
    k = getattr(cfg, "teacher_ranks", 0)
    if k:
        students = copy.copy(cfg)
        students.gpus, students.teacher_ranks = cfg.gpus - k, 0
        phases, sizes = estimate(students, student, None)
        apart = [(name, b / GB, field, what) for name, b, field, what in teacher_rank_phases(cfg, teacher, k)]
        return phases + apart, sizes
    n = cfg.gpus
    sharded = n > 1
    a = 2 if cfg.dtype == "bfloat16" else 4            # compute bytes
    r = a if sharded else 4                            # student's residual stream: fp32 under autocast
    width = cfg.max_prompt_tokens + cfg.max_new_tokens
    rollouts = cfg.batch_size // n * cfg.group_size    # this GPU's rows
    S, Tt = student.params, teacher.params if teacher else 0  # no teacher: GRPO without its KL term, or KD
    shard_teacher = sharded and cfg.shard_teacher

    # ---- held all step: student weights + AdamW (grads only in the update), teacher weights
    student_held = 12 * S / n
    teacher_held = a * Tt / (n if shard_teacher else 1)
    held = student_held + teacher_held
    grads = 4 * S / n
    # bf16 student weights: gathered by FSDP, or autocast's cache of casts on one GPU
    student_copy = a * S if sharded else (2 * S if a == 2 else 0)

    # ---- generation: rows_per_call rows at a time, sized (as the trainer does) with the cache's real dtype
    fast = cfg.rollouts == "static"                    # the fast path: sample.RolloutCopy
    kv_value = a if sharded or fast else 4             # plain path on one GPU: fp32 K after RoPE, an fp32 cache
    kv_token = kv_bytes_per_token(student.config, kv_value)
    rows = min(rollouts, rows_per_call(cfg.rollout_kv_gb, kv_token, width))
    rows = fixed_rows(rollouts, rows) if fast else rows
    calls = -(-rollouts // rows)
    kv = rows * width * kv_token
    logits = SAMPLING_LOGIT_COPIES * rows * student.head_rows * 4
    P = cfg.max_prompt_tokens
    if fast:  # the copy and the run's one static cache stay allocated all step; the student itself does not sample
        held += a * S + kv
        static = static_prefill(student, rows, P, width, a)
        prefill = rows * P * layer_live(student, a, a) + static["mask"] * (1 + a) + static["kv_expanded"]
        generation = held + max(logits, prefill)
    else:     # the plain path repeats K and V for every query head (grouped-query attention) when decoding
        expanded = rows * width * 2 * student.q_width * kv_value if student.q_width > student.kv_width else 0
        prefill = rows * P * (kv_token + layer_live(student, r, a)) + rows * P * P * (1 + a)
        generation = held + student_copy + max(kv + expanded + logits, prefill)

    # ---- micro-batches of whole groups, as scope.micro_batches
    mb_rows = min(rollouts, max(cfg.group_size, cfg.micro_batch_tokens // width // cfg.group_size * cfg.group_size))
    T = mb_rows * width
    mask = mb_rows * width * width                     # entries of the (rows, 1, width, width) mask

    # ---- teacher scoring: no grad, only the last hidden state kept
    teacher_on = gathered(teacher, a) if shard_teacher and teacher else 0
    chunk = min(cfg.logprob_chunk_tokens, T)
    forward, teacher_head = teacher_scoring(teacher, T, mask, chunk, a) if teacher else (0, 0)
    scoring = held + teacher_on + forward if teacher else 0

    # ---- update: the student with grad
    student_on = (gathered(student, a) + 4 * student.layer_params) if sharded else student_copy
    base = held + grads + student_on
    if cfg.gradient_checkpointing:
        saved = student.layers * T * r * student.hidden
        body = saved + T * layer_activations(student, r, a) + mask * (1 + a)
    else:
        saved = student.layers * (T * layer_activations(student, r, a) + mask * a)
        body = saved + mask
    update = base + body + 2 * T * r * student.hidden  # + the residual stream's gradients

    # ---- the log-prob head: the last hidden state, the packed response positions, chunks of fp32 logits
    s_head = (2 * student.head_rows * student.hidden * 4) if sharded and a != 4 else 0  # fp32 head copy and its grad
    head_teacher = held + teacher_on + teacher_head if teacher else 0
    head_student = (base + saved + 2 * T * r * student.hidden + T * 4 * student.hidden + s_head
                    + HEAD_COPIES_GRAD * chunk * student.head_rows * 4)
    head = max(head_teacher, head_student)

    phases = [
        ("weights + optimizer state", (16 * S) / n + teacher_held + (a * S + kv if fast else 0),
         PHASE_FIELDS["weights + optimizer state"],
         f"student {16 / n:g} B/param{f' + its rollout copy {a} B/param and cache {kv / GB:.1f} GB' if fast else ''}, "
         + (f"teacher {a / (n if shard_teacher else 1):g} B/param" if teacher else "no teacher")),
        ("generation", generation, PHASE_FIELDS["generation"],
         f"{rows} rows/call x {calls} call{'s' * (calls > 1)}; KV {kv / GB:.1f} GB of one call"),
        ("teacher scoring", scoring, PHASE_FIELDS["teacher scoring"],
         f"{mb_rows} rows x {width} tokens; mask {mask * (1 + a) / GB:.1f} GB"),
        ("update", update, PHASE_FIELDS["update"],
         f"{mb_rows} rows x {width} tokens, checkpointing {'on' if cfg.gradient_checkpointing else 'off'}"),
        ("log-prob chunk", head, PHASE_FIELDS["log-prob chunk"],
         f"{chunk} tokens x {max(student.head_rows, teacher.head_rows if teacher else 0)} rows of fp32 logits"),
    ]
    phases = [phase for phase in phases if teacher or phase[0] != "teacher scoring"]
    sizes = dict(rows=rows, calls=calls, kv_gb=kv / GB, kv_token=kv_token, mb_rows=mb_rows, width=width,
                 rollouts=rollouts, kv_value=kv_value)
    return [(name, gb / GB, field, what) for name, gb, field, what in phases], sizes


def teacher_rank_phases(cfg, teacher: Shape, k: int) -> list[tuple]:
    """Bytes per GPU on each of the teacher's K ranks: its weights (sharded over them when shard_teacher), and scoring
    micro-batches of single rollouts (`sample.score_rows`: micro_batch_tokens // width rows), its log-prob head
    after. The rows that travel between ranks sit in CPU memory, not counted."""
    a = 2 if cfg.dtype == "bfloat16" else 4
    n = k if cfg.shard_teacher else 1
    width = cfg.max_prompt_tokens + cfg.max_new_tokens
    held = a * teacher.params / n + (gathered(teacher, a) if n > 1 else 0)
    rows = max(1, cfg.micro_batch_tokens // width)
    T, mask = rows * width, rows * width * width
    chunk = min(cfg.logprob_chunk_tokens, T)
    forward, head = teacher_scoring(teacher, T, mask, chunk, a)
    field = PHASE_FIELDS["teacher ranks"]
    return [
        ("teacher ranks: weights", a * teacher.params / n, field,
         f"teacher {a / n:g} B/param on each of {k} rank{'s' * (k > 1)}"),
        ("teacher ranks: scoring", held + forward, field,
         f"{rows} rows x {width} tokens; mask {mask * (1 + a) / GB:.1f} GB"),
        ("teacher ranks: log-prob chunk", held + head, PHASE_FIELDS["log-prob chunk"],
         f"{chunk} tokens x {teacher.head_rows} rows of fp32 logits"),
    ]


def gathered(m: Shape, a: int) -> int:
    """Bytes FSDP holds unsharded in forward: two layers (one prefetched) and the root, in compute bytes a."""
    return a * (2 * m.layer_params + m.root_params)


def teacher_scoring(teacher: Shape, T: int, mask: int, chunk: int, a: int) -> tuple[int, int]:
    """Bytes beyond its weights while the teacher scores a micro-batch of T tokens (no grad; `mask` entries of the
    padding mask): its forward (the residual stream, one layer's live tensors, the mask in bool and compute dtype),
    then its log-prob head (the last hidden state and packed positions, an fp32 copy of a bf16 head, `chunk`
    tokens of fp32 logits)."""
    forward = T * layer_live(teacher, a, a) + mask * (1 + a)
    head = (2 * T * a * teacher.hidden + (teacher.head_rows * teacher.hidden * 4 if a != 4 else 0)
            + HEAD_COPIES_NO_GRAD * chunk * teacher.head_rows * 4)
    return forward, head


def millions(count: int) -> str:
    return f"{count / 1e6:,.1f}M" if count < 1e8 else f"{count / 1e9:.2f}B"


def frozen_shape(cfg) -> "Shape | None":
    """The frozen model a run holds beside the student: SCOPE's teacher, GRPO's initial student when kl_beta > 0,
    or none (GRPO without the KL term, KD: its teacher wrote its solutions before training)."""
    algorithm = getattr(cfg, "algorithm", "scope")
    if algorithm == "scope":
        return read_shape("teacher", cfg.teacher)
    if algorithm == "grpo" and cfg.kl_beta > 0:
        return read_shape("student", cfg.student)
    return None


def print_plan(cfg) -> bool:
    """Print the plan as a markdown table; True when every phase fits in gpu_memory_gb."""
    for field in ("gpus", "gpu_memory_gb", "rollout_kv_gb", "batch_size", "group_size", "micro_batch_tokens",
                  "logprob_chunk_tokens"):
        if not getattr(cfg, field) > 0:
            sys.exit(f"plan: {field} must be positive, got {getattr(cfg, field)!r}")
    k = getattr(cfg, "teacher_ranks", 0)
    if k >= cfg.gpus:
        sys.exit(f"plan: teacher_ranks {k} of {cfg.gpus} gpus leaves no GPU to the student")
    n = cfg.gpus - k  # the student's GPUs
    if cfg.batch_size % n:
        sys.exit(f"plan: batch_size {cfg.batch_size} must be divisible by the student's gpus ({n})")
    student, teacher = read_shape("student", cfg.student), frozen_shape(cfg)
    phases, s = estimate(cfg, student, teacher)
    setup = ("one GPU, bf16 autocast" if n == 1 else "FSDP2") + (
        f"; the teacher on {k} GPU{'s' * (k > 1)} of its own{', sharded' if k > 1 and cfg.shard_teacher else ''}"
        if k else "" if n == 1 else f", teacher {'sharded' if cfg.shard_teacher else 'replicated'}")
    algorithm = getattr(cfg, "algorithm", "scope")
    frozen = (f"{'teacher' if algorithm == 'scope' else 'KL reference'} {teacher.name} ({millions(teacher.params)} "
              f"params)" if teacher else f"no teacher ({algorithm})")
    print(f"memory plan: {cfg.gpus} x {cfg.gpu_memory_gb:g} GB ({setup}); student {student.name} "
          f"({millions(student.params)} params), {frozen}")
    print(f"per {'student ' * bool(k)}GPU: {cfg.batch_size // n} prompts x {cfg.group_size} = {s['rollouts']} "
          f"rollouts of "
          f"{cfg.max_prompt_tokens} + {cfg.max_new_tokens} tokens; KV {s['kv_token'] / 1e3:.1f} KB/token "
          f"({s['kv_value']} bytes per value)\n")
    print(f"| phase | GB per GPU | of {cfg.gpu_memory_gb:g} GB | sized by | counts |")
    print("|---|---:|---:|---|---|")
    for name, gb, field, what in phases:
        print(f"| {name} | {gb:.1f} | {gb / cfg.gpu_memory_gb:.0%} | {field} | {what} |")
    peak_name, peak = max(((name, gb) for name, gb, _, _ in phases), key=lambda p: p[1])
    print(f"| peak | {peak:.1f} | {peak / cfg.gpu_memory_gb:.0%} | | {peak_name} |\n")
    over = [(name, gb, field) for name, gb, field, _ in phases if gb > cfg.gpu_memory_gb]
    for name, gb, field in over:
        print(f"DOES NOT FIT: {name} needs {gb:.1f} GB of {cfg.gpu_memory_gb:g}: change {field}")
    if not over:
        print(f"fits: peak {peak:.1f} GB ({peak_name}), {cfg.gpu_memory_gb - peak:.1f} GB free per GPU")
    checkpoint = checkpoint_bytes(student.params)
    print(f"disk: {(cfg.keep_checkpoints + 1) * checkpoint / GB:.3g} GB in output_dir for checkpoints of "
          f"{checkpoint / GB:.3g} GB (keep_checkpoints {cfg.keep_checkpoints}, and one more while a new one is written)")
    return not over
