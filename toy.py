"""
The offline demo world: a task, a tokenizer, a weak student and a strong teacher, built in about
two minutes on two CPU cores and cached on disk.

The task is multi-digit addition with a short worked solution ending in \\boxed{}:

    problem: 486+357            solution: 6+7=13 8+5+1=14 4+3+1=8 \\boxed{843}

The tokenizer is a byte-level BPE trained on the task's text and saved as a `Qwen2Tokenizer`, with
one id for pad and end-of-text exactly as in Qwen base models. Both models are Qwen2-architecture
transformers trained by supervised fine-tuning on worked solutions. The teacher trains longer and
always ends with the \\boxed{} answer the prompt asks for. The student trains less, and 70% of
its training solutions end "sum 843" instead: like many base models, it mostly ignores the
instruction, so the verifier cannot grade it right. Greedy, it scores about 0% held out and the
teacher about 97%; SCOPE has to teach it both the format and better arithmetic. The teacher's LM
head has more rows than the tokenizer (as Qwen2.5-7B's has), the student's is tied to its
embeddings (as Qwen2.5-0.5B's is).

`python toy.py [DIR]` builds the world in DIR (default .toy, where configs/toy.yaml looks) once
and prints each model's held-out accuracy; a second call finds it built and returns at once.

The premises world (`python toy.py --world premises [DIR]`, default .toy_premises, for
configs/toy_premises.yaml) is built so that the paper's two premises hold by construction; they are
stated here before any result was measured:

  (a) The teacher is unreliable on an identifiable part of the task. Problems are additions and
      subtractions. The teacher learned subtraction with a wrong rule, "take the smaller digit from
      the larger" (it never borrows), so on every subtraction that needs a borrow its answer is
      wrong, its guidance is towards a wrong answer, and its perplexity on correct solutions there is
      high. Those problems, and only those, carry `teacher_unreliable: true` (the field
      `--unreliable-field` reads); everywhere else its rule is the right one.
  (b) More than one valid route leads to a correct answer. Every problem can be worked by columns
      (right to left, with carries or borrows: `6+7=13 8+5+1=14 4+3+1=8`) or by place values
      (`400+300=700 80+50=130 6+7=13 700+130+13=843`); both end in the same \\boxed{} answer.
      The student saw the place-value route in a quarter of its training solutions (the teacher in
      half), so it finds that route unlikely, and reinforcing only its confident route narrows what
      it samples.

Unlike the demo, every solution of both models is boxed: the format is not what is learned here.
"""
import argparse
import json
import random
import time
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer

from sample import PROMPT_SUFFIX, build_prompt, generate
from verify import grade

# The pre-tokenizer Qwen2Tokenizer itself uses: digits split one by one, so BPE never merges them.
QWEN2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
               r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
EOS = "<|endoftext|>"
SUFFIX = PROMPT_SUFFIX  # the prompt of training, as a Qwen run builds it
STUDENT_SFT_STEPS, TEACHER_SFT_STEPS = 400, 500
STUDENT_BOXED = 0.3  # fraction of the student's training answers that follow the instruction to box


def make_problem(rng: random.Random) -> dict:
    """One addition problem of two 1- to 3-digit numbers, with its worked solution."""
    a, b = rng.randint(1, 999), rng.randint(1, 999)
    steps, carry = [], 0
    da, db = str(a)[::-1], str(b)[::-1]
    for i in range(max(len(da), len(db))):
        terms = [d[i] for d in (da, db) if i < len(d)] + (["1"] if carry else [])
        total = sum(int(t) for t in terms)
        steps.append(f"{'+'.join(terms)}={total}")
        carry = total // 10
    if carry:
        steps.append("1=1")
    return {"problem": f"{a}+{b}", "answer": str(a + b),
            "solution": " ".join(steps) + f" \\boxed{{{a + b}}}"}


def train_tokenizer(texts: list[str]) -> Qwen2Tokenizer:
    """Byte-level BPE on the task text, returned as the Qwen2Tokenizer that AutoTokenizer reloads
    without changing any id (vocab and merges passed as they are, pad = EOS, left padding)."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(texts, trainer)
    spec = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in spec["merges"]]
    return Qwen2Tokenizer(vocab=spec["vocab"], merges=merges, padding_side="left")


def tiny_qwen2(vocab_rows: int, tied: bool, seed: int) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=vocab_rows, hidden_size=128, intermediate_size=384, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=tied, bos_token_id=None, eos_token_id=0, pad_token_id=0)
    return Qwen2ForCausalLM(config)


def unboxed(solution: str) -> str:
    """The same worked solution ending "sum 843" instead of "\\boxed{843}": an answer nobody can grade."""
    steps, _, answer = solution.rpartition(" \\boxed{")
    return f"{steps} sum {answer[:-1]}"


def sft(model, tokenizer, rows: list[dict], steps: int, seed: int, boxed: float = 1.0, batch: int = 64,
        lr: float = 3e-3, write=None):
    """Supervised fine-tuning on prompt -> worked solution + EOS (loss on the response only); a
    fraction 1 - boxed of the solutions end without the \\boxed{} the prompt asks for.
    write(row, rng) -> solution, when given, writes each solution instead (the premises world's)."""
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50) * (1 - s / steps))
    model.train()
    for _ in range(steps):
        chosen = rng.sample(rows, batch)
        prompts = [tokenizer(build_prompt(tokenizer, r["problem"], SUFFIX, True), add_special_tokens=False).input_ids
                   for r in chosen]
        solutions = [write(r, rng) if write else r["solution"] if rng.random() < boxed else unboxed(r["solution"])
                     for r in chosen]
        answers = [tokenizer(s).input_ids + [tokenizer.eos_token_id] for s in solutions]
        width = max(len(p) + len(a) for p, a in zip(prompts, answers))
        ids = torch.full((batch, width), tokenizer.pad_token_id)
        labels = torch.full((batch, width), -100)
        for i, (p, a) in enumerate(zip(prompts, answers)):
            ids[i, :len(p) + len(a)] = torch.tensor(p + a)
            labels[i, len(p):len(p) + len(a)] = torch.tensor(a)
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    model.eval()


def accuracy(model, tokenizer, rows: list[dict], max_new_tokens: int = 48) -> float:
    """Greedy held-out accuracy, graded by verify.grade."""
    prompts = [build_prompt(tokenizer, r["problem"], SUFFIX, True) for r in rows]
    model.eval()
    out = generate(model, tokenizer, prompts, 1, stop=[tokenizer.eos_token_id], temperature=0.0, top_p=1.0, top_k=0,
                   max_new_tokens=max_new_tokens)
    return sum(grade(t, r["answer"]) for t, r in zip(out.texts, rows)) / len(rows)


def build(root: str | Path) -> Path:
    """Build the world in `root` unless it is already there; returns `root`."""
    root = Path(root)
    if (root / "teacher" / "config.json").exists():
        return root
    start = time.time()
    rng = random.Random(0)
    train = [make_problem(rng) for _ in range(4000)]
    seen = {r["problem"] for r in train}
    test = [r for r in (make_problem(rng) for _ in range(400)) if r["problem"] not in seen][:200]
    tokenizer = train_tokenizer([f"{r['problem']}\n{SUFFIX}" for r in train] + [r["solution"] for r in train]
                                + [unboxed(r["solution"]) for r in train[:100]])

    student = tiny_qwen2(len(tokenizer), tied=True, seed=1)
    teacher = tiny_qwen2(len(tokenizer) + 64, tied=False, seed=2)    # padded head, like Qwen2.5-7B's
    sft(student, tokenizer, train, STUDENT_SFT_STEPS, seed=1, boxed=STUDENT_BOXED)
    sft(teacher, tokenizer, train, TEACHER_SFT_STEPS, seed=2)

    save_world(root, tokenizer, student, teacher, train, test)
    print(f"toy world built in {root} in {time.time() - start:.0f} s: held-out greedy accuracy "
          f"student {accuracy(student, tokenizer, test):.1%}, teacher {accuracy(teacher, tokenizer, test):.1%}")
    return root


def save_world(root: Path, tokenizer, student, teacher, train: list[dict], test: list[dict]):
    """train.jsonl, test.jsonl, and each model with the tokenizer in its own directory."""
    root.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("test", test)):
        with open(root / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    for name, model in (("student", student), ("teacher", teacher)):
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)


# -----------------------------------------------------------------------------
# The premises world: an unreliable teacher on borrows, and two routes to every answer

PREMISES_SFT_STEPS = {"student": 500, "teacher": 600}
PLACES_SHARE = {"student": 0.25, "teacher": 0.5}  # how often each model's training solutions use place values


def digits(n: int, width: int) -> list[int]:
    """The `width` lowest digits of n, units first."""
    return [n // 10 ** i % 10 for i in range(width)]


def worked(a: int, op: str, b: int, route: str, borrows: bool = True) -> tuple[str, int]:
    """(worked solution, its answer) of a + b or a - b (a > b) by `route`: "columns" or "places".

    borrows=False is the teacher's wrong subtraction rule: each column takes the smaller digit from
    the larger, so nothing is ever borrowed.
    """
    width = len(str(max(a, b)))
    da, db = digits(a, width), digits(b, width)
    if route == "places":
        parts = []
        for i in reversed(range(width)):
            x, y = da[i] * 10 ** i, db[i] * 10 ** i
            part = x + y if op == "+" else x - y if borrows else abs(x - y)
            parts.append((f"{x}{op}{y}={part}", part))
        answer = sum(p for _, p in parts)
        total = str(parts[0][1]) + "".join(f"{p:+d}" for _, p in parts[1:])
        return " ".join(s for s, _ in parts) + f" {total}={answer} \\boxed{{{answer}}}", answer
    steps, carry, answer = [], 0, 0
    for i in range(width):
        if op == "+":
            terms = [str(d) for d, n in ((da[i], a), (db[i], b)) if i < len(str(n))] + (["1"] if carry else [])
            total = sum(int(t) for t in terms)
            steps.append(f"{'+'.join(terms)}={total}")
            carry, digit = total // 10, total % 10
        elif borrows:
            x = da[i] - carry
            carry = int(x < db[i])
            digit = x + 10 * carry - db[i]
            steps.append(f"{x + 10 * carry}-{db[i]}={digit}")
        else:
            digit = abs(da[i] - db[i])
            steps.append(f"{max(da[i], db[i])}-{min(da[i], db[i])}={digit}")
        answer += digit * 10 ** i
    if op == "+" and carry:
        steps.append("1=1")
        answer += 10 ** width
    return " ".join(steps) + f" \\boxed{{{answer}}}", answer


def make_premises_problem(rng: random.Random) -> dict:
    """An addition or a subtraction (a > b) of 1- to 3-digit numbers, flagged where the teacher's rule is wrong."""
    a, b, op = rng.randint(1, 999), rng.randint(1, 999), rng.choice("+-")
    if op == "-":
        a, b = max(a, b) + 1, min(a, b)
    answer = a + b if op == "+" else a - b
    return {"problem": f"{a}{op}{b}", "answer": str(answer), "solution": worked(a, op, b, "columns")[0],
            "teacher_unreliable": worked(a, op, b, "columns", borrows=False)[1] != answer}


def premises_writer(model: str):
    """write(row, rng) for `sft`: a random route at the model's share of place values; the teacher's
    subtractions never borrow."""
    def write(row: dict, rng: random.Random) -> str:
        route = "places" if rng.random() < PLACES_SHARE[model] else "columns"
        return worked(*split_problem(row["problem"]), route, borrows=model == "student")[0]
    return write


def route(problem: str, response: str) -> str:
    """"places" when a response to `problem` starts with its leading place values ("400+300="), else "columns"
    (a problem of one-digit numbers has only one route)."""
    a, op, b = split_problem(problem)
    width = len(str(max(a, b)))
    lead = 10 ** (width - 1)
    return "places" if width > 1 and response.lstrip().startswith(f"{a // lead * lead}{op}{b // lead * lead}=") \
        else "columns"


def split_problem(problem: str) -> tuple[int, str, int]:
    """"486-357" -> (486, "-", 357)."""
    op = "-" if "-" in problem else "+"
    a, b = problem.split(op)
    return int(a), op, int(b)


def build_premises(root: str | Path, n_train: int = 4000, n_test: int = 200, steps: dict = PREMISES_SFT_STEPS) -> Path:
    """Build the premises world in `root` unless it is already there; returns `root`.
    n_train, n_test and steps make a small one quickly (the tests')."""
    root = Path(root)
    if (root / "teacher" / "config.json").exists():
        return root
    start = time.time()
    rng = random.Random(0)
    train = [make_premises_problem(rng) for _ in range(n_train)]
    seen = {r["problem"] for r in train}
    test = [r for r in (make_premises_problem(rng) for _ in range(2 * n_test)) if r["problem"] not in seen][:n_test]
    texts = [f"{r['problem']}\n{SUFFIX}" for r in train]
    for r in train[:1000]:
        a, op, b = split_problem(r["problem"])
        texts += [worked(a, op, b, route, borrows)[0] for route in ("columns", "places") for borrows in (True, False)]
    tokenizer = train_tokenizer(texts)
    student = tiny_qwen2(len(tokenizer), tied=True, seed=1)
    teacher = tiny_qwen2(len(tokenizer) + 64, tied=False, seed=2)
    sft(student, tokenizer, train, steps["student"], seed=1, write=premises_writer("student"))
    sft(teacher, tokenizer, train, steps["teacher"], seed=2, write=premises_writer("teacher"))
    save_world(root, tokenizer, student, teacher, train, test)
    parts = {"all": test, "teacher-unreliable": [r for r in test if r["teacher_unreliable"]],
             "the rest": [r for r in test if not r["teacher_unreliable"]]}
    print(f"premises world built in {root} in {time.time() - start:.0f} s; held-out greedy accuracy, "
          + "; ".join(f"{name} ({len(rows)}): student {accuracy(student, tokenizer, rows, 64):.1%}, "
                      f"teacher {accuracy(teacher, tokenizer, rows, 64):.1%}" for name, rows in parts.items()))
    return root


WORLDS = {"demo": (build, ".toy"), "premises": (build_premises, ".toy_premises")}

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Build a toy world once (a second call returns at once).")
    parser.add_argument("--world", choices=WORLDS, default="demo", help="which world (see the module docstring)")
    parser.add_argument("dir", nargs="?", help="where to build it (default: .toy for demo, .toy_<world> otherwise)")
    args = parser.parse_args()
    builder, default_dir = WORLDS[args.world]
    builder(args.dir or default_dir)
