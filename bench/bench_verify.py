"""Grade the labelled table in tests/verify_cases.py with verify.py and with Math-Verify.

    python bench/bench_verify.py

Prints each checker's accuracy against the labels, overall and by category, the cases where the
two disagree, and the time per call of each with their ratio. Then the same for the conventions
set of tests/verify_conventions.py, graded by verify.py strict, verify.py with
`fallback=True` and Math-Verify, with each one's false positives (accepted, label False).

Math-Verify (`pip install math-verify`) is a bench-only dependency; without it the script still
reports verify.py's own numbers. It is called as its README shows, `verify(parse(gold),
parse(response))`, with the gold wrapped in `$...$`. A response goes to `parse` as it is; a bare
answer (no box, no `$`, no "answer" phrase, no `####`) is wrapped in `$...$` too, so that its
LaTeX extractor sees it, just as verify.grade treats a bare answer as its own response.

Timing: verify.py's caches are cleared before every pass, so each call pays for normalising and
parsing both answers (in training the gold's share is cached). Math-Verify keeps its own caches
across passes, which can only flatter it. Each checker's best of three passes is reported.
"""

import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import verify  # noqa: E402
from verify_cases import CASES  # noqa: E402
from verify_conventions import CASES as CONVENTIONS  # noqa: E402

PASSES = 3


def is_bare(response):
    """An answer with none of the marks a model response carries."""
    marks = ("\\boxed", "\\fbox", "$", "####", "</think>", "answer", "Answer", "\n")
    return not any(m in response for m in marks)


def ours(response, gold):
    return verify.grade(response, gold)


def math_verify_checker():
    """A grade(response, gold) function backed by Math-Verify, or None if it is not installed."""
    try:
        from math_verify import parse, verify as mv_verify
    except ImportError:
        return None

    def grade(response, gold):
        try:
            pred = "$" + response + "$" if is_bare(response) else response
            return bool(mv_verify(parse("$" + gold + "$"), parse(pred)))
        except Exception:  # Math-Verify can raise on odd input; count that as a wrong grade
            return False

    return grade


def run(checker, clear_caches, cases=CASES):
    """(verdicts, seconds per call) of the best of PASSES passes over the cases."""
    best = float("inf")
    for _ in range(PASSES):
        if clear_caches:
            for cached in (verify._readings, verify._structure, verify._values):
                cached.cache_clear()
        start = time.perf_counter()
        verdicts = [checker(case[1], case[2]) for case in cases]
        best = min(best, (time.perf_counter() - start) / len(cases))
    return verdicts, best


def conventions(mv):
    """The conventions set: right answers and false positives of each checker. The strict mode
    is right to refuse a true answer that nothing marks; the others are held to the truth."""
    print(f"\nconventions set, {len(CONVENTIONS)} cases, {sum(c[3] for c in CONVENTIONS)} "
          f"equivalent, {sum(c[3] and not c[4] for c in CONVENTIONS)} of them unmarked prose")
    checkers = [("verify.py strict", ours, [c[3] and c[4] for c in CONVENTIONS]),
                ("verify.py fallback", lambda r, g: verify.grade(r, g, fallback=True),
                 [c[3] for c in CONVENTIONS])]
    if mv is not None:
        checkers.append(("Math-Verify", mv, [c[3] for c in CONVENTIONS]))
    times = {}
    for name, checker, labels in checkers:
        verdicts, times[name] = run(checker, name != "Math-Verify", CONVENTIONS)
        right = sum(v == label for v, label in zip(verdicts, labels))
        false_pos = sum(v and not c[3] for v, c in zip(verdicts, CONVENTIONS))
        print(f"{name:20s} right {right}/{len(labels)}   false positives {false_pos}"
              f"   {times[name] * 1e6:8.1f} us per call")
        for v, label, case in zip(verdicts, labels, CONVENTIONS):
            if v != label:
                print(f"    {case[0]:12s} label {label!s:5s} | {case[1]!r} | {case[2]!r}")
    if mv is not None:
        ratio = times["Math-Verify"] / times["verify.py fallback"]
        print(f"verify.py (fallback) is {ratio:.0f}x faster on this set")


def report(name, verdicts):
    right = [v == case[3] for v, case in zip(verdicts, CASES)]
    print(f"{name:12s} accuracy {sum(right)}/{len(CASES)} = {sum(right) / len(CASES):.1%}")
    return right


def main():
    print(f"{len(CASES)} labelled cases, {sum(c[3] for c in CASES)} of them equivalent\n")
    our_verdicts, our_time = run(ours, clear_caches=True)
    our_right = report("verify.py", our_verdicts)
    mv = math_verify_checker()
    if mv is None:
        print("\nMath-Verify is not installed: pip install math-verify  (bench-only dependency)")
        print(f"verify.py    {our_time * 1e6:8.1f} us per call")
        conventions(None)
        return
    mv_verdicts, mv_time = run(mv, clear_caches=False)
    mv_right = report("Math-Verify", mv_verdicts)

    totals, ours_ok, mv_ok = Counter(), Counter(), Counter()
    for case, a, b in zip(CASES, our_right, mv_right):
        totals[case[0]] += 1
        ours_ok[case[0]] += a
        mv_ok[case[0]] += b
    print(f"\n{'category':12s} {'cases':>5s} {'verify.py':>10s} {'Math-Verify':>12s}")
    for category in totals:
        print(f"{category:12s} {totals[category]:5d} {ours_ok[category]:10d} {mv_ok[category]:12d}")

    print("\ndisagreements (label, verify.py, Math-Verify | response | gold):")
    for case, a, b in zip(CASES, our_verdicts, mv_verdicts):
        if a != b:
            print(f"  {case[3]!s:5s} {a!s:5s} {b!s:5s} | {case[1]!r} | {case[2]!r}")

    print(f"\nverify.py    {our_time * 1e6:8.1f} us per call")
    print(f"Math-Verify  {mv_time * 1e6:8.1f} us per call")
    print(f"verify.py is {mv_time / our_time:.0f}x faster")
    conventions(mv)


if __name__ == "__main__":
    main()
