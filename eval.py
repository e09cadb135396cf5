"""
Measure a model on math benchmarks: sample n answers per problem, grade them, report Avg@n and Pass@k.
"""
import torch

from sample import generate
from verify import extract_answer, grade


def sample_and_grade(model, tokenizer, prompts: list[str], golds: list[str], *, n: int, temperature: float,
                     top_p: float = 1.0, top_k: int = 0, max_new_tokens: int, batch_size: int = 32,
                     synced: bool = False) -> list[list[dict]]:
    """For each prompt, n samples as {response, extracted, correct}; prompts go `batch_size` at a time."""
    results = []
    for i in range(0, len(prompts), batch_size):
        ro = generate(model, tokenizer, prompts[i:i + batch_size], n, temperature=temperature, top_p=top_p,
                      top_k=top_k, max_new_tokens=max_new_tokens, synced=synced)
        for j, gold in enumerate(golds[i:i + batch_size]):
            texts = ro.texts[j * n:(j + 1) * n]
            results.append([{"response": t, "extracted": extract_answer(t), "correct": grade(t, gold)} for t in texts])
    return results


@torch.no_grad()
def quick_accuracy(model, tokenizer, rows: list[dict], prompts_of, *, n: int, temperature: float,
                   max_new_tokens: int, synced: bool = False) -> tuple[int, int]:
    """(correct samples, samples) on `rows`, for the eval scope.py runs during training."""
    results = sample_and_grade(model, tokenizer, prompts_of(rows), [r["answer"] for r in rows], n=n,
                               temperature=temperature, max_new_tokens=max_new_tokens, synced=synced)
    return sum(s["correct"] for samples in results for s in samples), len(rows) * n
