"""Shared offline fixtures: a tokenizer trained here, tiny Qwen2 models, the demo world.

The suite runs offline on CPU: `make test`, or `python -m pytest -q tests` in an environment of your own;
`-k WORDS` picks tests by name and `--durations=25` lists the slowest. Its one build, the demo world
(`toy_world`), happens once per checkout, in the first session or demo that needs it. The slowest, on a fresh
clone on 2026-12-06 (2 CPU cores shared with other jobs, so the times are upper bounds): the world's build
(274 s, the set-up of the first test in test_distributed.py that takes it; 0 s once .toy holds it), the demo's
40 steps in test_scope.py (test_scope_raises_the_demo_students_held_out_accuracy), the teacher's KD data in
test_baselines.py, the GPU check on tiny models in test_fast_rollouts.py, and each torchrun test of
test_distributed.py and test_teacher_ranks.py.
"""
import fcntl
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import toy  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer():
    rng = random.Random(0)
    rows = [toy.make_problem(rng) for _ in range(300)]
    return toy.train_tokenizer([f"{r['problem']}\n{toy.SUFFIX}" for r in rows] + [r["solution"] for r in rows])


def save_tiny(path: Path, tokenizer, vocab_rows: int, seed: int = 0, tied: bool = True) -> Path:
    """A random tiny Qwen2 model with `vocab_rows` head rows and `tokenizer`, saved to `path`."""
    model = toy.tiny_qwen2(vocab_rows, tied=tied, seed=seed)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def next_token_model(tokenizer, directions: dict[int, int], logits: dict[tuple[int, int], float]):
    """A tiny Qwen2 whose next token depends on the current token alone: attention and MLP outputs are
    zeroed, token t's embedding is the unit vector of direction directions.get(t, 0), and the head row of
    token i reads direction d with weight logits[(i, d)] (x 11.3, sqrt(128), after the final RMSNorm)."""
    model = toy.tiny_qwen2(len(tokenizer), tied=False, seed=0).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb, head = model.model.embed_tokens.weight, model.lm_head.weight
        emb.zero_()
        emb[:, 0] = 1.0
        for token, d in directions.items():
            emb[token] = torch.eye(emb.shape[1])[d]
        head.zero_()
        for (token, d), weight in logits.items():
            head[token, d] = weight
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory, tokenizer):
    """(student dir, teacher dir, train jsonl): random models; the teacher's head has 64 extra rows."""
    root = tmp_path_factory.mktemp("pair")
    student = save_tiny(root / "student", tokenizer, len(tokenizer), seed=1)
    teacher = save_tiny(root / "teacher", tokenizer, len(tokenizer) + 64, seed=2, tied=False)
    rng = random.Random(1)
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(toy.make_problem(rng)) + "\n" for _ in range(64)))
    return student, teacher, data


@pytest.fixture(scope="session")
def toy_world():
    """The demo world of configs/toy.yaml: the checkout's .toy, which the demo uses too. Whichever runs first
    builds it (a few minutes, once per checkout); every later test run and demo finds it built. A lock keeps two
    test runs from building it at once. Delete .toy after changing how toy.py builds the demo."""
    root = ROOT / ".toy"
    root.mkdir(exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        return toy.build(root)


def tiny_args(student, teacher, data, out, *extra) -> list[str]:
    """scope.py arguments for a fast run on the tiny random models."""
    return ["--student", str(student), "--teacher", str(teacher), "--train-data", str(data),
            "--eval-every", "0", "--group-size", "4", "--batch-size", "4", "--max-new-tokens", "12", "--max-prompt-tokens", "64",
            "--max-steps", "2", "--save-every", "2", "--output-dir", str(out),
            "--gradient-checkpointing", "false", *extra]


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "SCOPE_COLLECTIVE_TIMEOUT_S": "90"}  # a hang fails, not waits 30 min


def torchrun(args: list[str], timeout: int = 240, ranks: int = 2) -> str:
    """Run under `ranks` ranks; a hang becomes a failure through the timeout, and no rank outlives it."""
    proc = subprocess.Popen([*TORCHRUN, f"--nproc_per_node={ranks}", *args], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # torchrun ends its workers, which run in sessions of their own
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"torchrun {' '.join(args)} hung for {timeout} s")
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    return out


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
