"""Grade the project's labelled cases with verify.py, in both modes, and with Math-Verify.

    python bench/bench_verify.py

The cases, split by where they came from:
- Math-Verify's tests: `MATH_VERIFY_CASES` of tests/verify_conventions.py, read from Math-Verify's
  own test suite case by case;
- benchmark golds: the cases of tests/verify_cases.py whose gold is a gold answer of a file in
  data/ (responses written in the shapes model outputs take);
- hand-made: the other cases of tests/verify_cases.py and the conventions set `CASES` of
  tests/verify_conventions.py.
A case is (response, gold, expected, marked). The strict mode, `grade(r, g)`, is held to
"expected and marked" (it must refuse an answer that nothing marks); the evaluation mode,
`grade(r, g, fallback=True)`, and Math-Verify to "expected". A false positive is a case accepted
whose `expected` is False. Then every gold of the 7 benchmark files, boxed, against itself.

Math-Verify (`pip install math-verify`) is a bench-only dependency, called as its README shows:
`verify(parse("$" + gold + "$"), parse(response))`; a bare answer (no box, `$`, "answer", `####`,
`</think>` or line break) is wrapped in `$...$` too, as verify.grade reads a bare answer as its own
response. Its own tests call it with options some cases need (a precision, a set comparison); the
default call is what an evaluation uses.

Timing: verify.py's caches are cleared before every pass, so each call pays for normalising and
parsing both answers (in training the gold's share is cached); Math-Verify keeps its own caches,
which can only flatter it. Each checker's best of three passes over all cases is reported.
"""

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import verify  # noqa: E402
from verify_cases import CASES as TABLE  # noqa: E402
from verify_conventions import CASES as CONVENTIONS, MATH_VERIFY_CASES  # noqa: E402

PASSES = 3
BENCHMARKS = ("aime24", "aime25", "amc23", "math500", "minerva", "olympiadbench", "gsm8k_test")
SOURCES = ("Math-Verify's tests", "benchmark golds", "hand-made")


def benchmark_golds():
    """Every gold answer of the benchmark files in data/, as written there."""
    return [str(json.loads(line)["answer"]) for name in BENCHMARKS
            for line in (ROOT / "data" / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]


def cases():
    """(source, response, gold, expected, marked) for every labelled case."""
    golds = set(benchmark_golds())
    out = [(SOURCES[0], *case[1:]) for case in MATH_VERIFY_CASES]
    out += [(SOURCES[1] if gold in golds else SOURCES[2], response, gold, expected, True)
            for _, response, gold, expected in TABLE]
    return out + [(SOURCES[2], *case[1:]) for case in CONVENTIONS]


def is_bare(response):
    """An answer with none of the marks a model response carries."""
    marks = ("\\boxed", "\\fbox", "$", "####", "</think>", "answer", "Answer", "\n")
    return not any(m in response for m in marks)


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


def run(checkers, pairs):
    """(verdicts, seconds per call) of each checker: the best of PASSES passes over the (response,
    gold) pairs, the checkers taking turns in each pass so that they share the machine's load."""
    verdicts, seconds = {}, dict.fromkeys(checkers, float("inf"))
    for _ in range(PASSES):
        for name, checker in checkers.items():
            for cached in (verify._readings, verify._structure, verify._values):
                cached.cache_clear()
            start = time.perf_counter()
            verdicts[name] = [checker(response, gold) for response, gold in pairs]
            seconds[name] = min(seconds[name], (time.perf_counter() - start) / len(pairs))
    return verdicts, seconds


def main():
    rows = cases()
    pairs = [(r[1], r[2]) for r in rows]
    checkers = {"strict": lambda r, g: verify.grade(r, g),
                "evaluation": lambda r, g: verify.grade(r, g, fallback=True)}
    mv = math_verify_checker()
    if mv is None:
        print("Math-Verify is not installed: pip install math-verify  (bench-only dependency)\n")
    else:
        checkers["Math-Verify"] = mv
    verdicts, seconds = run(checkers, pairs)

    def label(name, row):
        return row[3] and (row[4] or name != "strict")

    print(f"{len(rows)} labelled cases; right / cases (false positives)\n")
    print(f"| source | cases | {' | '.join(checkers)} |")
    print("|---|---:|" + "---:|" * len(checkers))
    for source in SOURCES + ("all",):
        picked = [k for k, row in enumerate(rows) if source in ("all", row[0])]
        cells = []
        for name in checkers:
            right = sum(verdicts[name][k] == label(name, rows[k]) for k in picked)
            false_pos = sum(verdicts[name][k] and not rows[k][3] for k in picked)
            cells.append(f"{right} / {len(picked)} ({false_pos})")
        print(f"| {source} | {len(picked)} | {' | '.join(cells)} |")

    for name in checkers:
        missed = [row for k, row in enumerate(rows) if verdicts[name][k] != label(name, row)]
        print(f"\n{name}: {len(missed)} cases graded against their label (label | response | gold)")
        for row in missed:
            print(f"  {label(name, row)!s:5s} | {row[1][-90:]!r} | {row[2]!r}")

    print()
    for name in checkers:
        print(f"{name:12s} {seconds[name] * 1e6:9.1f} us per call")
    if mv is not None:
        for name in ("strict", "evaluation"):
            print(f"verify.py {name} is {seconds['Math-Verify'] / seconds[name]:.0f}x faster")

    golds = benchmark_golds()
    boxed = [("Reasoning ... so \\boxed{" + gold + "}", gold) for gold in golds]
    print(f"\n\\boxed{{gold}} against gold, {len(golds)} golds of the benchmark files:")
    for name, checker in checkers.items():
        print(f"{name:12s} {sum(checker(r, g) for r, g in boxed)} / {len(golds)}")


if __name__ == "__main__":
    main()
