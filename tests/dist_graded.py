"""Run by tests/test_distributed.py under torchrun: scope.py with a verifier that passes every rollout of rank 0
and none of rank 1's, so the ranks hold different numbers of wrong rollouts for the teacher to score."""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import eval as evaluate  # noqa: E402
import scope  # noqa: E402
from sample import leave_torchrun_worker  # noqa: E402

evaluate.grade = lambda text, gold, fallback=False: os.environ["RANK"] == "0"  # what the trainer's judge calls
scope.main(sys.argv[1:])
leave_torchrun_worker()
