"""
The offline demo world: a task, a tokenizer, a weak student and a strong teacher, built in a few
minutes on two CPU cores (211 s when they are idle; world.json records each build's time) and cached on disk.

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

`python toy.py --world W --build-seed S [DIR]` builds world W from build seed S: its problems,
tokenizer, initial weights and training order drawn anew (seed 0, the default, is the world the
configs name). A world's weights depend on the number of threads that trained it (the order of its
float sums), so every build runs on one thread with deterministic algorithms, whatever the machine,
and writes world.json beside the models: the world, its build seed, those pins, the sha256 of both
models' weights (`weights_hash`) and what the build measured. Rebuilt on the same machine, a world
comes back bit for bit; another machine or library version may give other weights, which the hash
shows.

The premises world (`python toy.py --world premises [DIR]`, default .toy_premises, for
configs/toy_premises.yaml) is built so that the paper's two premises hold by construction; they are
stated here before any result was measured:

  (a) The teacher is unreliable on an identifiable part of the task. Problems are additions and
      subtractions. The teacher learned subtraction with a wrong rule, "take the smaller digit from
      the larger" (it never borrows), so on every subtraction that needs a borrow its answer is
      wrong, its guidance is towards a wrong answer, and its perplexity on correct solutions there is
      high. Those problems, and only those, carry `teacher_unreliable: true` (the field
      `premises_labels` reads); everywhere else its rule is the right one.
  (b) More than one valid route leads to a correct answer. Every problem can be worked by columns
      (right to left, with carries or borrows: `6+7=13 8+5+1=14 4+3+1=8`) or by place values
      (`400+300=700 80+50=130 6+7=13 700+130+13=843`); both end in the same \\boxed{} answer.
      The student saw the place-value route in a quarter of its training solutions (the teacher in
      half), so it finds that route unlikely, and reinforcing only its confident route narrows what
      it samples.

Unlike the demo, every solution of both models is boxed: the format is not what is learned here.
Its teacher's unreliability is flagged per problem, so it never differs inside one prompt's group.

The routes world (`python toy.py --world routes [DIR]`, default .toy_routes, for configs/toy_routes.yaml)
is built so that both premises act inside one prompt's group of rollouts, as the paper's weights need
them to (Eqs. 4 and 5 compare the rollouts of one prompt); they are stated here before any result was
measured:

  (a) Among one problem's wrong rollouts, the teacher knows the route of some and not of others. The
      problems are the demo's additions, each workable by columns or by place values (as above). The
      teacher learned columns only and never saw a place-value solution. On a wrong column rollout its
      perplexity is low and, from the rollout's last right token (where it first left every right
      worked solution), it goes on to the right answer; on a place-value rollout its perplexity is high
      and its continuation no better than chance.
  (b) Among one problem's correct rollouts, some take a route the student finds unlikely yet finishes.
      The student saw place values in 35% of its training solutions (the rest by columns), so it
      rarely takes that route and is less sure on it, yet completes it. Its columns drop the carry out
      of the top column (486+657: "6+7=13 8+5+1=14 4+6+1=11 \\boxed{143}"), so on every problem whose
      sum is longer than both numbers only place values reach the answer: Pass@k there rests on that route.

`routes_labels(row, response)` labels a rollout for the trainer's metrics (config field `rollout_labels`;
`premises_labels` for the premises world): `teacher_unreliable`, on a route or problem where the teacher's
guidance is not useful, and `unlikely_route`, on the place-value route. The routes and premises builds
check the premises on the untrained student's rollouts (`measure_premises`: 8 rollouts of each of 64
training problems at the rollout temperature), print them and keep them in world.json (the numbers) and
premises.jsonl (each rollout, its labels and perplexities). (a) holds when, among one prompt's wrong
rollouts, a higher teacher perplexity goes with guidance that is less often useful (a negative Spearman
correlation within groups, averaged over the groups that hold both kinds) and the teacher continues right
more often on the rollouts labelled reliable; (b) holds when at least one correct rollout in ten takes the
unlikely route, the student's perplexity is higher on it within groups, and Pass@8 falls without it.
"""
import argparse
import hashlib
import json
import math
import random
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer

from sample import PROMPT_SUFFIX, build_prompt, fail, generate, micro_batches, score
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


def build(root: str | Path, build_seed: int = 0) -> Path:
    """Build the demo world from `build_seed` in `root` unless it is already there; returns `root`."""
    root = Path(root)
    if built(root, "demo", build_seed):
        return root
    start = time.time()
    data_seed, student_seed, teacher_seed = build_seeds(build_seed)
    with pinned():
        train, test = problem_sets(make_problem, random.Random(data_seed), 4000, 200)
        tokenizer = train_tokenizer([f"{r['problem']}\n{SUFFIX}" for r in train] + [r["solution"] for r in train]
                                    + [unboxed(r["solution"]) for r in train[:100]])

        student, teacher = untrained_pair(tokenizer, student_seed, teacher_seed)
        sft(student, tokenizer, train, STUDENT_SFT_STEPS, seed=student_seed, boxed=STUDENT_BOXED)
        sft(teacher, tokenizer, train, TEACHER_SFT_STEPS, seed=teacher_seed)
        save_world(root, tokenizer, student, teacher, train, test)  # first: generating sets the tokenizer's padding
        held_out = {"student": accuracy(student, tokenizer, test), "teacher": accuracy(teacher, tokenizer, test)}

    record_world(root, "demo", build_seed, start, held_out)
    print(f"toy world built in {root} in {time.time() - start:.0f} s: held-out greedy accuracy "
          f"student {held_out['student']:.1%}, teacher {held_out['teacher']:.1%}")
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
# Every build: its seeds, its pins, and its record (world.json)

BUILD_THREADS = 1  # a world's weights depend on the thread count (the order of float sums): every build uses one
PREMISE_PROBLEMS, PREMISE_GROUP = 64, 8  # the premises are measured on 8 rollouts of each of 64 training problems
ROLLOUT_TEMPERATURE = 0.6  # scope.Config.temperature, which the worlds' configs keep; its log-probs use it too


def build_seeds(build_seed: int) -> tuple[int, int, int]:
    """The (data, student, teacher) seeds of a build; build seed 0's are the original worlds' 0, 1, 2."""
    return 3 * build_seed, 3 * build_seed + 1, 3 * build_seed + 2


@contextmanager
def pinned():
    """Run a build on BUILD_THREADS threads with deterministic algorithms; the caller's settings come back after."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(BUILD_THREADS)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def built(root: Path, world: str, build_seed: int) -> bool:
    """Whether `root` holds a built world; one whose world.json names another world or build seed stops the build."""
    if not (root / "teacher" / "config.json").exists():
        return False
    record = root / "world.json"
    if record.exists():
        made = json.loads(record.read_text())
        if (made["world"], made["build_seed"]) != (world, build_seed):
            fail(f"{record}: {root} holds the {made['world']} world from build seed {made['build_seed']}, not the "
                 f"{world} world from build seed {build_seed}; build that into another directory")
    return True


def weights_hash(root: str | Path) -> str:
    """sha256 over both models' saved tensors, student then teacher, each tensor by name: its name, dtype,
    shape and bytes (not the files, whose headers a library may write differently)."""
    digest = hashlib.sha256()
    for model in ("student", "teacher"):
        for path in sorted((Path(root) / model).glob("*.safetensors")):
            tensors = load_file(path)
            for name in sorted(tensors):
                t = tensors[name].contiguous()
                digest.update(f"{model}/{name} {t.dtype} {tuple(t.shape)}\n".encode())
                digest.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def problem_sets(make, rng: random.Random, n_train: int, n_test: int) -> tuple[list[dict], list[dict]]:
    """n_train training problems make(rng), then n_test held-out ones that are not among them."""
    train = [make(rng) for _ in range(n_train)]
    seen = {r["problem"] for r in train}
    return train, [r for r in (make(rng) for _ in range(2 * n_test)) if r["problem"] not in seen][:n_test]


def untrained_pair(tokenizer, student_seed: int, teacher_seed: int):
    """(student, teacher) before training: the student's head tied to its embeddings (as Qwen2.5-0.5B's), the
    teacher's untied and padded past the tokenizer (as Qwen2.5-7B's)."""
    return (tiny_qwen2(len(tokenizer), tied=True, seed=student_seed),
            tiny_qwen2(len(tokenizer) + 64, tied=False, seed=teacher_seed))


def record_world(root: Path, world: str, build_seed: int, start: float, held_out: dict,
                 rollouts: list[dict] | None = None) -> dict | None:
    """world.json: what was built, with which pins, the weights' hash, the held-out accuracy, and the premises
    measured on `rollouts` (returned; each rollout goes to premises.jsonl)."""
    record = {"world": world, "build_seed": build_seed, "threads": BUILD_THREADS, "deterministic_algorithms": True,
              "torch": torch.__version__, "weights_sha256": weights_hash(root),
              "build_seconds": round(time.time() - start), "held_out_accuracy": held_out}
    if rollouts is not None:
        record["premises"] = premise_numbers(rollouts)
        with open(root / "premises.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rollouts)
    (root / "world.json").write_text(json.dumps(record, indent=2) + "\n")
    return record.get("premises")


# -----------------------------------------------------------------------------
# The premises world: an unreliable teacher on borrows, and two routes to every answer

PREMISES_SFT_STEPS = {"student": 500, "teacher": 600}
PLACES_SHARE = {"student": 0.25, "teacher": 0.5}  # how often each model's training solutions use place values


def digits(n: int, width: int) -> list[int]:
    """The `width` lowest digits of n, units first."""
    return [n // 10 ** i % 10 for i in range(width)]


def worked(a: int, op: str, b: int, route: str, borrows: bool = True, carries_out: bool = True) -> tuple[str, int]:
    """(worked solution, its answer) of a + b or a - b (a > b) by `route`: "columns" or "places".

    borrows=False is the premises teacher's wrong subtraction rule: each column takes the smaller digit
    from the larger, so nothing is ever borrowed. carries_out=False is the routes student's flaw: columns
    drop the carry out of the top column (486+657 -> 143).
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
    if op == "+" and carry and carries_out:
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
    """"places" when a response to `problem` starts with a step on its leading place values, right or wrong
    ("400+300=", "800+300="), else "columns" (a first step on digits: "6+7=", "12-8=", "0+0="; a problem of
    one-digit numbers has only one route)."""
    a, op, b = split_problem(problem)
    lead = 10 ** (len(str(max(a, b))) - 1)
    terms = response.lstrip().partition("=")[0].split(op)
    if lead == 1 or len(terms) != 2 or not all(t.isdigit() for t in terms):
        return "columns"
    x, y = int(terms[0]), int(terms[1])
    return "places" if x % lead == 0 and y % lead == 0 and x + y > 0 else "columns"


def routes_tokenizer(train: list[dict], solutions) -> Qwen2Tokenizer:
    """The tokenizer of a world with two routes: trained on its prompts and on solutions(a, op, b), the texts
    of every kind its models learn, for its first 1000 problems."""
    texts = [f"{r['problem']}\n{SUFFIX}" for r in train]
    for r in train[:1000]:
        texts += solutions(*split_problem(r["problem"]))
    return train_tokenizer(texts)


def split_problem(problem: str) -> tuple[int, str, int]:
    """"486-357" -> (486, "-", 357)."""
    op = "-" if "-" in problem else "+"
    a, b = problem.split(op)
    return int(a), op, int(b)


def premises_labels(row: dict, response: str) -> dict[str, bool]:
    """A rollout's labels (config field `rollout_labels`): its problem's flag, and whether it takes place values."""
    if not isinstance(row.get("teacher_unreliable"), bool):
        fail(f"problem {row.get('problem')!r}: field 'teacher_unreliable' is {row.get('teacher_unreliable')!r}; "
             f"expected true or false (the premises world's train.jsonl has it)")
    return {"teacher_unreliable": row["teacher_unreliable"],
            "unlikely_route": route(row["problem"], response) == "places"}


def build_premises(root: str | Path, build_seed: int = 0, n_train: int = 4000, n_test: int = 200,
                   steps: dict = PREMISES_SFT_STEPS, premise_problems: int = PREMISE_PROBLEMS) -> Path:
    """Build the premises world from `build_seed` in `root` unless it is already there; returns `root`.
    n_train, n_test, steps and premise_problems make a small one quickly (the tests')."""
    def held_out(student, teacher, tokenizer, test: list[dict]) -> tuple[dict, str]:
        parts = {"all": test, "teacher-unreliable": [r for r in test if r["teacher_unreliable"]],
                 "the rest": [r for r in test if not r["teacher_unreliable"]]}
        acc = {name: {m: accuracy(model, tokenizer, rows, 64) for m, model in (("student", student),
                                                                               ("teacher", teacher))}
               for name, rows in parts.items()}
        return acc, "; ".join(f"{name} ({len(parts[name])}): student {a['student']:.1%}, teacher {a['teacher']:.1%}"
                              for name, a in acc.items())

    def solutions(a: int, op: str, b: int) -> list[str]:  # both routes, each with and without borrows
        return [worked(a, op, b, way, borrows)[0] for way in ("columns", "places") for borrows in (True, False)]

    writers = {"student": premises_writer("student"), "teacher": premises_writer("teacher")}
    return build_two_routes(root, "premises", build_seed, make_premises_problem, solutions, writers, premises_labels,
                            held_out, n_train, n_test, steps, premise_problems)


# -----------------------------------------------------------------------------
# The routes world: two routes inside every prompt's group; the teacher knows one, the student rarely takes the other

ROUTES_SFT_STEPS = {"student": 500, "teacher": 500}
ROUTES_PLACES_SHARE = 0.35  # of the student's training solutions; all of the teacher's are columns


def routes_student_solution(row: dict, rng: random.Random) -> str:
    """write(row, rng) for `sft`: the student's training solution, by place values at ROUTES_PLACES_SHARE,
    otherwise by columns that drop the carry out of the top column."""
    a, op, b = split_problem(row["problem"])
    if rng.random() < ROUTES_PLACES_SHARE:
        return worked(a, op, b, "places")[0]
    return worked(a, op, b, "columns", carries_out=False)[0]


def routes_labels(row: dict, response: str) -> dict[str, bool]:
    """A rollout's labels (config field `rollout_labels`): on the place-value route, the teacher never learned it
    (its guidance there is not useful) and the student finds it unlikely."""
    places = route(row["problem"], response) == "places"
    return {"teacher_unreliable": places, "unlikely_route": places}


def build_routes(root: str | Path, build_seed: int = 0, n_train: int = 4000, n_test: int = 200,
                 steps: dict = ROUTES_SFT_STEPS, premise_problems: int = PREMISE_PROBLEMS) -> Path:
    """Build the routes world from `build_seed` in `root` unless it is already there; returns `root`.
    n_train, n_test, steps and premise_problems make a small one quickly (the tests')."""
    def held_out(student, teacher, tokenizer, test: list[dict]) -> tuple[dict, str]:
        acc = {m: accuracy(model, tokenizer, test, 64) for m, model in (("student", student), ("teacher", teacher))}
        return acc, f"student {acc['student']:.1%}, teacher {acc['teacher']:.1%}"

    def solutions(a: int, op: str, b: int) -> list[str]:  # the teacher's columns, the student's, places
        return [worked(a, op, b, "columns")[0], worked(a, op, b, "columns", carries_out=False)[0],
                worked(a, op, b, "places")[0]]

    writers = {"student": routes_student_solution, "teacher": None}  # the teacher: the demo's solutions, columns
    return build_two_routes(root, "routes", build_seed, make_problem, solutions, writers, routes_labels, held_out,
                            n_train, n_test, steps, premise_problems)


def build_two_routes(root: str | Path, world: str, build_seed: int, make, solutions, writers: dict, labels, held_out,
                     n_train: int, n_test: int, steps: dict, premise_problems: int) -> Path:
    """The build the premises and routes worlds share, in `root` unless it is already there; returns `root`.
    Problems are make(rng); the tokenizer also learns solutions(a, op, b); each model trains steps[model] steps
    on the solutions writers[model](row, rng) writes (None: each row's own); held_out(student, teacher, tokenizer,
    test) gives the held-out numbers world.json keeps and the line printed; rollouts are labelled by labels."""
    root = Path(root)
    if built(root, world, build_seed):
        return root
    start = time.time()
    data_seed, student_seed, teacher_seed = build_seeds(build_seed)
    with pinned():
        train, test = problem_sets(make, random.Random(data_seed), n_train, n_test)
        tokenizer = routes_tokenizer(train, solutions)
        student, teacher = untrained_pair(tokenizer, student_seed, teacher_seed)
        sft(student, tokenizer, train, steps["student"], seed=student_seed, write=writers["student"])
        sft(teacher, tokenizer, train, steps["teacher"], seed=teacher_seed, write=writers["teacher"])
        save_world(root, tokenizer, student, teacher, train, test)  # first: generating sets the tokenizer's padding
        accuracies, line = held_out(student, teacher, tokenizer, test)
        rollouts = measure_premises(student, teacher, tokenizer, train[:premise_problems], labels, data_seed)

    premises = record_world(root, world, build_seed, start, accuracies, rollouts)
    print(f"{world} world built in {root} in {time.time() - start:.0f} s; held-out greedy accuracy {line}")
    print(premise_report(premises))
    return root


# -----------------------------------------------------------------------------
# The premises, measured on the untrained student's rollouts at build

@torch.no_grad()
def measure_premises(student, teacher, tokenizer, rows: list[dict], labels, seed: int,
                     max_new_tokens: int = 64) -> list[dict]:
    """One record per rollout: PREMISE_GROUP rollouts of each problem of `rows`, sampled and scored as scope.py
    does (the same temperature for both models' log-probs, over the shared tokenizer's ids). Each record holds
    the rollout's group, text and verdict, its `labels(row, text)`, both models' NLL per token (the log
    perplexities of Eqs. 4 and 5), and, on a wrong rollout, whether the teacher continuing greedily from its
    last right token (`right_so_far`) reaches the answer."""
    prompts = [build_prompt(tokenizer, r["problem"], SUFFIX, True) for r in rows]
    sampling = dict(stop=[tokenizer.eos_token_id], top_p=1.0, top_k=0, max_new_tokens=max_new_tokens)
    torch.manual_seed(seed)
    ro = generate(student, tokenizer, prompts, PREMISE_GROUP, temperature=ROLLOUT_TEMPERATURE, **sampling)
    batches = micro_batches(ro, PREMISE_GROUP, 8192, 1)
    tokens = ro.resp.sum(1).clamp(min=1)
    nll = {name: (-score(model, ro, batches, vocab=len(tokenizer), temperature=ROLLOUT_TEMPERATURE).sum(1)
                  / tokens).tolist() for name, model in (("student", student), ("teacher", teacher))}   # (N,) each
    records = []
    for i, text in enumerate(ro.texts):
        row = rows[i // PREMISE_GROUP]
        records.append({"group": i // PREMISE_GROUP, "response": text, "correct": grade(text, row["answer"]),
                        **labels(row, text), "nll_student": nll["student"][i], "nll_teacher": nll["teacher"][i]})
    wrong = [r for r in records if not r["correct"]]
    starts = [right_so_far(rows[r["group"]]["problem"], r["response"], tokenizer) for r in wrong]
    if wrong:
        greedy = generate(teacher, tokenizer, [prompts[r["group"]] + p for r, p in zip(wrong, starts)], 1,
                          temperature=0.0, **sampling)
        for r, start, rest in zip(wrong, starts, greedy.texts):
            r["teacher_continues_right"] = grade(start + rest, rows[r["group"]]["answer"])
    return records


def right_so_far(problem: str, response: str, tokenizer) -> str:
    """The longest start of `response` that agrees token for token with a right worked solution (by either
    route): where the rollout first went wrong, and the teacher's guidance would have to take over."""
    a, op, b = split_problem(problem)
    ids = tokenizer(response).input_ids
    agree = 0
    for way in ("columns", "places"):
        right = tokenizer(worked(a, op, b, way)[0]).input_ids
        agree = max(agree, next((i for i, (x, y) in enumerate(zip(ids, right)) if x != y), min(len(ids), len(right))))
    return tokenizer.decode(ids[:agree])


def ranks(values: list[float]) -> list[float]:
    """1-based ranks; tied values share their mean rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    out, first = [0.0] * len(values), 0
    for end in range(1, len(order) + 1):
        if end == len(order) or values[order[end]] != values[order[first]]:
            for i in order[first:end]:
                out[i] = (first + 1 + end) / 2
            first = end
    return out


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation (Pearson's on the ranks); None when either side is constant."""
    rx, ry = ranks(x), ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    spread = sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)
    return sum((a - mx) * (b - my) for a, b in zip(rx, ry)) / math.sqrt(spread) if spread else None


def within_groups(records: list[dict], field: str, kind) -> dict:
    """Spearman of `field` with kind(record) inside each group of records, averaged over the groups where the
    kind takes both values: {"mean": None when there is no such group, "groups": how many there are}."""
    values = []
    for g in sorted({r["group"] for r in records}):
        mine = [r for r in records if r["group"] == g]
        rho = spearman([r[field] for r in mine], [float(kind(r)) for r in mine])
        if rho is not None:
            values.append(rho)
    return {"mean": statistics.fmean(values) if values else None, "groups": len(values)}


def premise_numbers(records: list[dict]) -> dict:
    """The two premises in numbers, from `measure_premises`' records (module docstring: when each holds)."""
    wrong = [r for r in records if not r["correct"]]
    right = [r for r in records if r["correct"]]
    groups = {r["group"] for r in records}

    def share(rows: list[dict], kind) -> float | None:
        return sum(map(kind, rows)) / len(rows) if rows else None

    def solved(rows: list[dict]) -> float:  # Pass@G: the share of problems with a correct rollout among `rows`
        return len({r["group"] for r in rows if r["correct"]}) / len(groups)

    n = {"problems": len(groups), "rollouts": len(records), "correct": len(right),
         "correct, unlikely route": sum(r["unlikely_route"] for r in right),
         "wrong": len(wrong), "wrong, teacher unreliable": sum(r["teacher_unreliable"] for r in wrong)}
    a = {"teacher continues right, reliable": share([r for r in wrong if not r["teacher_unreliable"]],
                                                    lambda r: r["teacher_continues_right"]),
         "teacher continues right, unreliable": share([r for r in wrong if r["teacher_unreliable"]],
                                                      lambda r: r["teacher_continues_right"]),
         "spearman teacher nll, guidance useful": within_groups(wrong, "nll_teacher",
                                                                 lambda r: r["teacher_continues_right"]),
         "spearman teacher nll, labelled reliable": within_groups(wrong, "nll_teacher",
                                                                   lambda r: not r["teacher_unreliable"])}
    b = {"unlikely share of correct": share(right, lambda r: r["unlikely_route"]),
         "spearman student nll, unlikely route": within_groups(right, "nll_student", lambda r: r["unlikely_route"]),
         f"pass@{PREMISE_GROUP}": solved(records),
         f"pass@{PREMISE_GROUP} without the unlikely route": solved([r for r in records if not r["unlikely_route"]])}
    rho_a, rho_b = a["spearman teacher nll, guidance useful"]["mean"], b["spearman student nll, unlikely route"]["mean"]
    a["holds"] = (rho_a is not None and rho_a < 0 and None not in (a["teacher continues right, reliable"],
                  a["teacher continues right, unreliable"])
                  and a["teacher continues right, reliable"] > a["teacher continues right, unreliable"])
    b["holds"] = (b["unlikely share of correct"] is not None and b["unlikely share of correct"] >= 0.1
                  and rho_b is not None and rho_b > 0
                  and b[f"pass@{PREMISE_GROUP} without the unlikely route"] < b[f"pass@{PREMISE_GROUP}"])
    return {"counts": n, "a": a, "b": b}


def premise_report(numbers: dict) -> str:
    """The premises' numbers as lines to print."""
    def show(x) -> str:
        if isinstance(x, dict):
            return "-" if x["mean"] is None else f"{x['mean']:+.3f} over {x['groups']} groups"
        return "-" if x is None else str(x) if isinstance(x, (bool, int)) else f"{x:.3f}"

    lines = [f"premises on the untrained student's rollouts (training problems x {PREMISE_GROUP} at temperature "
             f"{ROLLOUT_TEMPERATURE}): " + ", ".join(f"{k} {v}" for k, v in numbers["counts"].items())]
    for name in ("a", "b"):
        part = numbers[name]
        verdict = "holds" if part["holds"] else "DOES NOT HOLD"
        lines.append(f"  ({name}) {verdict}: " + "; ".join(f"{k} {show(v)}" for k, v in part.items() if k != "holds"))
    return "\n".join(lines)


WORLDS = {"demo": build, "premises": build_premises, "routes": build_routes}  # name -> builder(root, build_seed=0)


def build_missing_world(cfg, world: int):
    """The offline demo in one command: build the toy world `build_world` in the student's parent directory
    when the student is not there yet (a world already built returns at once). cfg: the trainer's Config."""
    if not cfg.build_world or Path(cfg.student).exists():
        return
    if cfg.build_world not in WORLDS:
        fail(f"field 'build_world' is {cfg.build_world!r}; toy worlds are: {', '.join(WORLDS)} ('' = never)")
    root = Path(cfg.student).parent
    if world > 1:  # every rank would build the same world at once
        fail(f"{cfg.student} does not exist; build the world with one process first: "
             f"python toy.py --world {cfg.build_world} {root}")
    print(f"{cfg.student} does not exist: building the {cfg.build_world} toy world in {root} first "
          f"(a few minutes, once)")
    WORLDS[cfg.build_world](root)


def main(argv: list[str]):
    parser = argparse.ArgumentParser(description="Build a toy world once (a second call returns at once).")
    parser.add_argument("--world", choices=WORLDS, default="demo", help="which world (see the module docstring)")
    parser.add_argument("--build-seed", type=int, default=0,
                        help="which build: 0 is the one the configs name; another draws the world's problems, "
                             "tokenizer, initial weights and training order anew")
    parser.add_argument("dir", nargs="?", help="where to build it (default: .toy for demo, .toy_<world> otherwise, "
                                               "with _build<S> added for a build seed S other than 0)")
    args = parser.parse_args(argv)
    if args.build_seed < 0:
        parser.error(f"--build-seed is {args.build_seed}; expected 0 or more")
    default = ".toy" if args.world == "demo" else f".toy_{args.world}"
    default += f"_build{args.build_seed}" if args.build_seed else ""
    WORLDS[args.world](args.dir or default, build_seed=args.build_seed)


if __name__ == "__main__":
    main(sys.argv[1:])
