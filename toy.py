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
"""
import json
import random
import sys
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
        lr: float = 3e-3):
    """Supervised fine-tuning on prompt -> worked solution + EOS (loss on the response only); a
    fraction 1 - boxed of the solutions end without the \\boxed{} the prompt asks for."""
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50) * (1 - s / steps))
    model.train()
    for _ in range(steps):
        chosen = rng.sample(rows, batch)
        prompts = [tokenizer(build_prompt(tokenizer, r["problem"], SUFFIX, True), add_special_tokens=False).input_ids
                   for r in chosen]
        solutions = [r["solution"] if rng.random() < boxed else unboxed(r["solution"]) for r in chosen]
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


def accuracy(model, tokenizer, rows: list[dict]) -> float:
    """Greedy held-out accuracy, graded by verify.grade."""
    prompts = [build_prompt(tokenizer, r["problem"], SUFFIX, True) for r in rows]
    model.eval()
    out = generate(model, tokenizer, prompts, 1, stop=[tokenizer.eos_token_id], temperature=0.0, top_p=1.0, top_k=0,
                   max_new_tokens=48)
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

    root.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("test", test)):
        with open(root / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    for name, model in (("student", student), ("teacher", teacher)):
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    print(f"toy world built in {root} in {time.time() - start:.0f} s: held-out greedy accuracy "
          f"student {accuracy(student, tokenizer, test):.1%}, teacher {accuracy(teacher, tokenizer, test):.1%}")
    return root


if __name__ == "__main__":
    build(sys.argv[1] if len(sys.argv) > 1 else ".toy")
