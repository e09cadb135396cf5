"""
One training step of a toy world followed through scope.py with its real numbers: writes docs/walkthrough.md.

  python docs/walkthrough.py                   # the page, from the recorded steps and today's scope.py (seconds)
  python docs/walkthrough.py --record demo     # record the demo world's step again (needs `python toy.py`)

A toy world's weights, and so its rollouts, depend on the machine's thread count; so each world's step inputs
(one prompt's rollouts: their tokens, verdicts and both models' log-probs) are recorded once, in a file beside
the page, and everything the page shows is computed from them by today's `scope_loss`. The page is then the
same on any machine, and tests/test_walkthrough.py demands it byte for byte.
"""
import argparse
import ast
import inspect
import json
import math
import sys
import textwrap
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import scope  # noqa: E402
import toy  # noqa: E402
from sample import (batch_indices, fail, generate, kv_bytes_per_token, micro_batches, rows_per_call,  # noqa: E402
                    score, stop_ids)
from verify import grade  # noqa: E402

# Each toy world the page can show: its config, and what it is for a reader who has not opened toy.py. The page
# shows those whose group is recorded, in docs/walkthrough_WORLD.json.
WORLDS = {
    "demo": ("configs/toy.yaml",
             "multi-digit addition. The student mostly ends its answer `sum N` instead of the `\\boxed{}` the "
             "prompt asks for, so a right sum is often graded wrong; the teacher always boxes."),
    "premises": ("configs/toy_premises.yaml",
                 "additions and subtractions, each workable by columns or by place values; both models box every "
                 "answer, and the teacher never borrows, so it is wrong on the subtractions that need a borrow."),
}
PAGE = ROOT / "docs" / "walkthrough.md"
STEP = 0  # the first training step
# What decides the recorded tokens and log-probs: a config that differs in one of them needs a new recording.
SAMPLING_FIELDS = ("student", "teacher", "train_data", "seed", "batch_size", "group_size", "temperature", "top_p",
                   "top_k", "max_new_tokens", "teacher_temperature", "prompt_suffix", "chat_template")
# The loss fields the page shows in effect (the rest of Config does not enter scope_loss).
LOSS_FIELDS = ("route_by_correctness", "tau", "student_weight", "teacher_weight", "weight_scale", "loss_agg",
               "mle_tokens")


# -----------------------------------------------------------------------------
# Recording: the first step of a toy world's config, exactly as scope.main takes it

def record(world: str):
    """Sample, grade and score step STEP of the world's config as scope.main does (one process, CPU), and save one
    prompt's group: of those with both verdicts, the one whose correct and wrong subsets both hold the most
    different responses (so that both softmaxes have something to weigh), then the most evenly split."""
    config, path = WORLDS[world][0], recording(world)
    cfg = scope.parse_config(["--config", str(ROOT / config)])
    if not Path(cfg.student).exists():
        fail(f"{cfg.student} does not exist; build the world first: python toy.py --world {world}")
    device, rank = torch.device("cpu"), 0
    student, teacher, tok, _ = scope.load_models(cfg, device, torch.float32, world=1)
    vocab = len(tok)
    kv = kv_bytes_per_token(student.config, 4)
    sampling = dict(stop=stop_ids(student, tok, cfg.chat_template), top_p=cfg.top_p, top_k=cfg.top_k,
                    max_new_tokens=cfg.max_new_tokens,
                    max_rows=rows_per_call(cfg.rollout_kv_gb, kv, cfg.max_prompt_tokens + cfg.max_new_tokens))
    train = scope.problems(cfg, tok, world=1)

    torch.manual_seed(cfg.seed * 1_000_003 + STEP * 1_009 + rank)  # scope.main's sampling seed for this step
    rows = [train[i] for i in batch_indices(len(train), cfg.batch_size, STEP, cfg.seed)]
    student.eval()
    ro = generate(student, tok, [r["prompt"] for r in rows], cfg.group_size, temperature=cfg.temperature, **sampling)
    golds = [r["answer"] for r in rows for _ in range(cfg.group_size)]
    correct = torch.tensor([grade(text, gold) for text, gold in zip(ro.texts, golds)])                    # (N,)
    batches = micro_batches(ro, cfg.group_size, cfg.micro_batch_tokens, 1)
    student.train()  # scope.main takes the student's log-probs in train mode, inside the update
    with torch.no_grad():
        teacher_logp = score(teacher, ro, batches, vocab=vocab, temperature=cfg.teacher_temperature or
                             cfg.temperature, chunk_tokens=cfg.logprob_chunk_tokens)                       # (N, L)
        student_logp = score(student, ro, batches, vocab=vocab, temperature=cfg.temperature,
                             chunk_tokens=cfg.logprob_chunk_tokens)                                         # (N, L)

    G, verdicts = cfg.group_size, correct.tolist()
    split = [sum(verdicts[g * G:(g + 1) * G]) for g in range(len(rows))]             # (B,) correct per group

    def variety(g: int) -> tuple[int, int, int]:
        texts = [{t for t, c in zip(ro.texts[g * G:(g + 1) * G], verdicts[g * G:(g + 1) * G]) if c == v}
                 for v in (True, False)]
        return min(map(len, texts)), sum(map(len, texts)), min(split[g], G - split[g])

    both = [g for g in range(len(rows)) if 0 < split[g] < G]
    if not both:
        fail(f"{config}, step {STEP + 1}: no group has both correct and wrong rollouts; nothing to show")
    g = max(both, key=variety)  # the first of the best
    rollouts = []
    for i in range(g * G, (g + 1) * G):
        m = ro.resp[i]
        ids = ro.tokens[i][m].tolist()
        rollouts.append({"text": ro.texts[i], "correct": bool(correct[i]), "truncated": bool(ro.truncated[i]),
                         "token_ids": ids, "tokens": [tok.decode([t]) for t in ids],
                         "logp_student": student_logp[i][m].tolist(), "logp_teacher": teacher_logp[i][m].tolist()})
    data = {"about": f"One prompt's rollouts from the first training step of {config}, recorded by "
                     f"`python docs/walkthrough.py --record {world}`; docs/walkthrough.md is computed from it.",
            "world": world, "config": config, "weights_sha256": toy.weights_hash(Path(cfg.student).parent),
            "step": STEP + 1, "fields": {k: getattr(cfg, k) for k in SAMPLING_FIELDS},
            "row": g, "problem": rows[g]["problem"], "answer": rows[g]["answer"], "prompt": rows[g]["prompt"],
            "step_tokens": ro.resp.sum(1).tolist(), "step_correct": verdicts, "rollouts": rollouts}
    path.write_text(json.dumps(data, indent=1) + "\n")
    print(f"recorded group {g} ({split[g]} of {G} correct) of step {STEP + 1} of {config} in {path}")


# -----------------------------------------------------------------------------
# The step, computed from the recording with today's scope.py

def load(path: Path) -> dict:
    """The recording, with its group as scope_loss's tensors: logp, teacher_logp (G, T) float32, mask (G, T) bool,
    correct (G,) bool, group (G,) all 0 (one prompt)."""
    data = json.loads(path.read_text())
    ros = data["rollouts"]
    width = max(len(r["token_ids"]) for r in ros)

    def padded(key):
        return torch.tensor([r[key] + [0.0] * (width - len(r[key])) for r in ros], dtype=torch.float32)

    data["logp"], data["teacher_logp"] = padded("logp_student"), padded("logp_teacher")
    data["mask"] = torch.arange(width)[None, :] < torch.tensor([len(r["token_ids"]) for r in ros])[:, None]
    data["correct"] = torch.tensor([r["correct"] for r in ros])
    data["group"] = torch.zeros(len(ros), dtype=torch.long)
    return data


def config_for(data: dict) -> scope.Config:
    """Today's config of the recorded world, refused when it no longer samples what was recorded, or weights
    otherwise than the page explains (Eqs. 4-5 with routing)."""
    cfg = scope.parse_config(["--config", str(ROOT / data["config"])])
    for k, v in data["fields"].items():
        if getattr(cfg, k) != v:
            fail(f"{data['config']}: {k} is {getattr(cfg, k)!r}, the recorded step used {v!r}; "
                 f"record it again: python docs/walkthrough.py --record {data['world']}")
    if not cfg.route_by_correctness or cfg.student_weight != "ppl" or cfg.teacher_weight != "ppl":
        fail(f"{data['config']}: the walkthrough explains routing with Eqs. 4-5 (route_by_correctness true, "
             f"student_weight and teacher_weight ppl)")
    return cfg


def compute(data: dict) -> dict:
    """scope_loss on the recorded group, plus the page's own hand computations, asserted equal to it."""
    cfg = config_for(data)
    if cfg.loss_agg != "token_mean" or cfg.mle_tokens != "all":
        fail(f"{data['config']}: the walkthrough shows loss_agg token_mean with mle_tokens all")
    norm = float(sum(data["step_tokens"]))  # token_mean: every response token of the step divides both paths
    logp, teacher_logp, mask, correct, group = (data[k] for k in ("logp", "teacher_logp", "mask", "correct", "group"))
    loss, info = scope.scope_loss(logp, teacher_logp, mask, correct, group, cfg, norm)
    n = mask.sum(1)                                                              # (G,) |y_i|
    # Eqs. 4-5 as written: a softmax over each subset of the scores log PPL_S / tau (C) and -log PPL_T / tau (W)
    scores = torch.where(correct, info["nll_student"], -info["nll_teacher"]) / cfg.tau
    softmax = (scope.group_softmax(scores, group, correct, False) +
               scope.group_softmax(scores, group, ~correct, False))
    scale = (torch.where(correct, correct.sum(), (~correct).sum()) if cfg.weight_scale == "mean" else
             torch.ones(n.shape)).float()                                        # (G,) Eqs. 4-5's mean-one scaling
    advantage = (logp - teacher_logp) * mask                                     # (G, T) Eq. 3, 0 past |y_i|
    term = torch.where(correct, -n, advantage.sum(1)) * info["weight"]           # (G,) each rollout's sum_t
    step = {"cfg": cfg, "norm": norm, "loss": loss, "info": info, "n": n, "scores": scores, "softmax": softmax,
            "scale": scale, "advantage": advantage, "term": term}

    def close(a, b) -> bool:  # float32 sums against float64 ones
        return torch.allclose(torch.as_tensor(a).double(), torch.as_tensor(b).double(), rtol=1e-5, atol=1e-7)

    assert close(info["nll_student"], -(logp * mask).sum(1) / n), "log PPL_S is not the mean NLL over |y_i|"
    assert close(info["nll_teacher"], -(teacher_logp * mask).sum(1) / n), "log PPL_T is not the mean NLL"
    for subset in (correct, ~correct):
        expected = torch.softmax(scores[subset].double(), 0) * scale[subset]
        assert close(info["weight"][subset], expected), "weights are not the subset softmax of Eqs. 4-5"
    assert close(info["kl_sum"], advantage.sum(1)), "kl_sum is not the sum of the per-token advantages"
    assert close(info["loss_mle"], term[correct].sum() / norm), "loss_mle is not -sum_C w_i |y_i| / norm"
    assert close(info["loss_opd"], term[~correct].sum() / norm), "loss_opd is not sum_W w_i sum_t A / norm"
    assert close(loss, info["loss_mle"] + info["loss_opd"]), "the loss is not the sum of its two paths"
    return step


# -----------------------------------------------------------------------------
# Where each number comes from: lines of scope.py, found in today's source

def statement(func, name: str = "", calls: str = "") -> tuple[int, str]:
    """(line in scope.py, code) of the statement in `func` that assigns `name` (and calls `calls`, when given),
    or of its return statement when `name` is empty."""
    source, first = inspect.getsourcelines(func)

    def assigned(target):
        if isinstance(target, ast.Name):
            return {target.id}
        if isinstance(target, (ast.Subscript, ast.Attribute)):
            return assigned(target.value)
        return set().union(*map(assigned, getattr(target, "elts", [])))

    for node in ast.walk(ast.parse(textwrap.dedent("".join(source)))):
        found = (isinstance(node, ast.Return) if not name else
                 isinstance(node, ast.Assign) and name in set().union(*map(assigned, node.targets)))
        text = "".join(source[node.lineno - 1:node.end_lineno]) if found else ""
        if found and calls in text:
            return first + node.lineno - 1, " ".join(text.split())
    raise LookupError(f"scope.{func.__name__} has no statement assigning {name or 'its return value'!r}"
                      f"{f' with {calls}' if calls else ''}; update docs/walkthrough.py to today's scope.py")


def lines() -> dict[str, tuple[int, str]]:
    """Each number's source: (line in scope.py, the statement there)."""
    f = scope.scope_loss
    norms, first = inspect.getsourcelines(scope.loss_norms)
    return {"nll_s": statement(f, "nll_s"), "nll_t": statement(f, "nll_t"), "w_stu": statement(f, "w_stu"),
            "w_tea": statement(f, "w_tea"), "softmax": statement(scope.group_softmax, "w", "softmax"),
            "rho": statement(f, "rho"), "advantage": statement(f, "advantage"),
            "loss_norms": (first, " ".join(norms[0].split())), "loss_mle": statement(f, "loss_mle"),
            "loss_opd": statement(f, "loss_opd"), "loss": statement(f)}


def cite(where: tuple[int, str]) -> str:
    """A table cell: the line, linked, and its code."""
    line, text = where
    return f"[{line}](../scope.py#L{line}) | `{text.replace('|', chr(92) + '|')}`"


# -----------------------------------------------------------------------------
# The page

def shortened(text: str, keep: int = 60) -> str:
    """A response on one line, its middle cut out when it is longer than `keep` characters."""
    text = " ".join(text.split())
    return text if len(text) <= keep else text[:keep // 2 - 1] + " … " + text[-(keep // 2 - 2):]


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table; columns whose header ends in ':' are right-aligned (numbers), the others left."""
    rule = ["---:" if h.endswith(":") else "---" for h in header]
    return "\n".join("| " + " | ".join(r) + " |" for r in [[h.rstrip(":") for h in header], rule, *rows])


def wrapped(markdown: str, width: int = 110) -> str:
    """Prose paragraphs and list items refilled to `width` columns (the template's lines break where the numbers
    fall); headings, tables and code are left as they are."""
    blocks = []
    for block in markdown.split("\n\n"):
        if block.startswith(("#", "|")):
            blocks.append(block)
        elif block.startswith("- "):
            items = ("\n" + block).split("\n- ")[1:]
            blocks.append("\n".join(textwrap.fill(" ".join(item.split()), width, initial_indent="- ",
                                                   subsequent_indent="  ", break_long_words=False,
                                                   break_on_hyphens=False) for item in items))
        else:
            blocks.append(textwrap.fill(" ".join(block.split()), width, break_long_words=False,
                                        break_on_hyphens=False))
    return "\n\n".join(blocks)


def token(text: str) -> str:
    """One token as a table cell: spaces made visible."""
    return "`" + text.replace(" ", "␣").replace("\n", "↵").replace("|", "\\|") + "`"


def extremes(s: dict, subset: torch.Tensor, model: str) -> str:
    """A sentence naming the rollouts of a subset that weigh most and least, and the perplexities that decided it:
    two weights of one subset stand in the ratio of their perplexities to the power 1/tau (Eq. 4; Eq. 5 inverts
    it)."""
    idx = subset.nonzero().flatten().tolist()
    if len(idx) == 1:
        return f"the subset is one rollout ({idx[0]}), so its weight is 1 whatever its perplexity."
    w, ppl = s["info"]["weight"], s["info"]["nll_student" if model == "S" else "nll_teacher"].exp()
    hi, lo = max(idx, key=lambda i: w[i]), min(idx, key=lambda i: w[i])
    a, b = (hi, lo) if model == "S" else (lo, hi)
    return (f"rollout {hi} weighs most ({w[hi]:.4f}, PPL_{model} {ppl[hi]:.4f}), rollout {lo} least "
            f"({w[lo]:.4f}, PPL_{model} {ppl[lo]:.4f}): w_{hi} / w_{lo} = {w[hi] / w[lo]:.4f} = "
            f"({ppl[a]:.4f} / {ppl[b]:.4f})^(1/tau).")


def section(data: dict, at: dict, first: bool) -> str:
    """One world's recorded group, followed through scope_loss."""
    s = compute(data)
    cfg, info, n, norm = s["cfg"], s["info"], s["n"], s["norm"]
    ros, correct, f = data["rollouts"], data["correct"], data["fields"]
    C, W = int(correct.sum()), int((~correct).sum())
    shown = int(torch.where(correct, -1.0, info["weight"]).argmax())  # the wrong rollout the teacher weighs most
    adv = s["advantage"][shown]

    def hardest(pick) -> str:
        t = pick(range(int(n[shown])), key=lambda t: adv[t])
        return f"{token(ros[shown]['tokens'][t])} at t = {t} (A_t {adv[t]:+.4f})"

    rollouts = table(["i", "response (shortened)", "verdict"],
                     [[str(i), f"`{shortened(r['text'])}`", ("correct" if r["correct"] else "wrong") +
                       (", truncated" if r["truncated"] else "")] for i, r in enumerate(ros)])
    numbers = table(["i:", "subset", "tokens:", "log PPL_S:", "PPL_S:", "log PPL_T:", "PPL_T:", "score:",
                     "softmax:", "× size:", "weight:", "w × sum:"],
                    [[str(i), "C" if correct[i] else "W", str(int(n[i])), f"{info['nll_student'][i]:.4f}",
                      f"{math.exp(info['nll_student'][i]):.4f}", f"{info['nll_teacher'][i]:.4f}",
                      f"{math.exp(info['nll_teacher'][i]):.4f}", f"{s['scores'][i]:+.4f}", f"{s['softmax'][i]:.4f}",
                      f"{s['scale'][i]:g}", f"{info['weight'][i]:.4f}", f"{s['term'][i]:+.4f}"]
                     for i in range(len(ros))])
    sources = table(["column", "what it is", "scope.py line:", "code"], [
        ["log PPL_S", "the student's mean negative log-prob over the rollout's tokens", cite(at["nll_s"])],
        ["log PPL_T", "the teacher's, over the same tokens", cite(at["nll_t"])],
        ["score (C)", "Eq. 4: log PPL_S / tau", cite(at["w_stu"])],
        ["score (W)", "Eq. 5: -log PPL_T / tau", cite(at["w_tea"])],
        ["softmax, × size, weight", "the softmax of the scores over one prompt's subset, times the subset's size "
                                    "(`weight_scale: mean`, weights average 1) or 1 (`sum`, weights sum to 1)",
         cite(at["softmax"])],
        ["w × sum (C)", "w × (-\\|y\\|), the value of w × (-sum_t rho_t): rho is 1 in value, and its gradient is "
                        "grad log pi_theta", cite(at["rho"])],
        ["w × sum (W)", "w × sum_t A_t, the per-token advantages below", cite(at["advantage"])]])
    tokens = table(["t:", "token", "log pi_S:", "log pi_T:", "A_t:"],
                   [[str(t), token(ros[shown]["tokens"][t]), f"{data['logp'][shown, t]:.4f}",
                     f"{data['teacher_logp'][shown, t]:.4f}", f"{adv[t]:+.4f}"] for t in range(int(n[shown]))] +
                   [["sum", "", f"{data['logp'][shown].sum():.4f}", f"{data['teacher_logp'][shown].sum():.4f}",
                     f"{info['kl_sum'][shown]:+.4f}"]])
    loss = table(["term", "value:", "scope.py line:", "code"], [
        [f"loss_mle, Eq. 2 on C: {s['term'][correct].sum():+.4f} / {int(norm)}", f"{info['loss_mle']:+.6f}",
         cite(at["loss_mle"])],
        [f"loss_opd, Eq. 3 on W: {s['term'][~correct].sum():+.4f} / {int(norm)}", f"{info['loss_opd']:+.6f}",
         cite(at["loss_opd"])],
        ["loss, Eq. 6: loss_mle + loss_opd", f"{s['loss']:+.6f}", cite(at["loss"])]])
    fields_in_effect = ", ".join(f"`{k}: {json.dumps(getattr(cfg, k))}`" for k in LOSS_FIELDS)
    if not first:
        sources = "The columns come from the same lines of `scope.py` as in the first world's table."
    return f"""## The {data['world']} world

The {data['world']} world (`toy.py`): {WORLDS[data['world']][1]}

### The step

Step {data['step']} of `{data['config']}`, recorded from the world whose weights hash to
`{data['weights_sha256'][:16]}…` (`toy.weights_hash`): {f['batch_size']} problems, {f['group_size']} rollouts
each, sampled by the student (`sample.generate`) at temperature {f['temperature']} with the seed `scope.main`
uses for that step, and graded by `verify.grade`. {sum(data['step_correct'])} of the step's {len(data['step_correct'])}
rollouts are correct; together they hold {int(norm)} response tokens. Both models' log-probs of the sampled
tokens are taken at temperature {f['teacher_temperature'] or f['temperature']} (`sample.token_logprobs`). Loss
fields in effect: {fields_in_effect}.

The problem followed here is the step's row {data['row']}, `{data['problem']}` (answer `{data['answer']}`):
of the groups with both verdicts, the one whose correct and wrong subsets hold the most different responses.

{rollouts}

### Perplexities, weights, and each rollout's part of the loss

C holds the prompt's correct rollouts ({C} of {len(ros)}, the MLE path), W its wrong ones ({W}, the
reverse-KL path). Each weight is a softmax of scores within one subset, at tau = {cfg.tau}: within C, the
higher the student's perplexity, the larger the weight (Eq. 4); within W, the lower the teacher's (Eq. 5).
The weights over C sum to {info['weight'][correct].sum():.4f}, those over W to
{info['weight'][~correct].sum():.4f}. **w × sum** is the rollout's summed loss before the step's normaliser.

- In C, {extremes(s, correct, 'S')}
- In W, {extremes(s, ~correct, 'T')}

{numbers}

{sources}

### Per-token advantages of wrong rollout {shown}

A_t = log pi_old(a_t) - log pi_T(a_t), the sampled-token estimate of the reverse KL (Eq. 3). A positive
A_t is a token the student likes more than the teacher does, and the loss pushes it down; a negative one
is pushed up. Rollout {shown} is the wrong rollout the teacher weighs most ({info['weight'][shown]:.4f}):
`{" ".join(ros[shown]['text'].split())}`. Pushed down hardest: {hardest(max)}; pushed up hardest: {hardest(min)}.

{tokens}

### The loss

Both paths are divided by the step's {int(norm)} response tokens, all {f['batch_size']} groups together
(`loss_agg: {cfg.loss_agg}`, `scope.loss_norms` at [line {at['loss_norms'][0]}](../scope.py#L{at['loss_norms'][0]})),
so the step's loss is the sum of its groups' parts. This group's part:

{loss}
"""


def page(recorded: dict[str, dict]) -> str:
    """The whole page: what it is, then each recorded world's section."""
    at = lines()
    sections = "\n".join(section(data, at, i == 0) for i, data in enumerate(recorded.values()))
    return wrapped(f"""# One step of SCOPE, with its numbers

This page follows one real training step of a toy world through `scope.py`: one problem's rollouts and
their verdicts, both models' perplexities, the two softmaxes of Eqs. 4 and 5, the weights they give, the
per-token advantages of one wrong rollout, and the loss, each number with the line of `scope.py` that
produced it. Read it beside [METHOD.md](../METHOD.md) and `scope_loss`.

The page is generated; do not edit it. `python docs/walkthrough.py` reads each world's recorded step
({", ".join(f"[{recording(w).name}]({recording(w).name})" for w in recorded)}: the sampled tokens, the
verdicts, both models' log-probs), computes everything below with today's `scope.py`, checking its own
arithmetic against what `scope_loss` returns, and writes this page; `tests/test_walkthrough.py` fails when
the page differs from what it writes. The inputs are recorded rather than sampled afresh because a toy
world's weights depend on the machine's thread count; `python docs/walkthrough.py --record WORLD` records
one again from the built world (`python toy.py --world WORLD`).

{sections}""")


def recording(world: str) -> Path:
    return ROOT / "docs" / f"walkthrough_{world}.json"


def load_all() -> dict[str, dict]:
    """Each recorded world's group, in WORLDS' order."""
    return {world: load(recording(world)) for world in WORLDS if recording(world).exists()}


def main(argv: list[str]):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--record", choices=list(WORLDS), action="append", default=[],
                        help="record this world's step again first (needs the built world: python toy.py --world W)")
    for world in parser.parse_args(argv).record:
        record(world)
    PAGE.write_text(page(load_all()))
    print(f"wrote {PAGE}")


if __name__ == "__main__":
    main(sys.argv[1:])
