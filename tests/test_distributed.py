"""FSDP2 through torchrun on CPU (gloo): the same update as one process, and generation that never hangs."""
import json
import os
import signal
import subprocess
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import scope
from conftest import ROOT, tiny_args

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def torchrun(args: list[str], timeout: int = 240) -> str:
    """Run under 2 ranks; a hang becomes a failure through the timeout, and no rank outlives it."""
    proc = subprocess.Popen(TORCHRUN + args, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"torchrun {' '.join(args)} hung for {timeout} s")
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    return out


def test_two_ranks_make_the_same_update_as_one_process(tiny_pair, tmp_path):
    """Same global batch (4 prompts: 2 per rank): same losses and weights after 2 steps.
    top_k = 1 makes the rollouts independent of how the batch is split across ranks."""
    student, teacher, data = tiny_pair
    args = tiny_args(student, teacher, data, tmp_path / "one", "--top-k", "1")
    scope.main(args)
    torchrun(["scope.py", *tiny_args(student, teacher, data, tmp_path / "two", "--top-k", "1")])
    one = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    two = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert len(one) == len(two) == 2
    for a, b in zip(one, two):
        assert abs(a["loss"] - b["loss"]) < 1e-5 and a["response_len"] == b["response_len"]
    start = load_file(student / "model.safetensors")
    w1, w2 = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert w1.keys() == w2.keys()
    moved = max((w1[k] - start[k]).abs().max().item() for k in w1)
    gap = max((w1[k] - w2[k]).abs().max().item() for k in w1)
    assert moved > 1e-5 and gap < 1e-6, (moved, gap)


def test_ranks_that_stop_at_different_lengths_do_not_hang_and_gather_once(toy_world):
    out = torchrun(["tests/dist_generate.py", str(toy_world / "student")])
    ranks = next(json.loads(line) for line in out.splitlines() if line.startswith("[{"))
    assert len(ranks) == 2
    lengths = [r["lengths"][0] for r in ranks]
    assert lengths[0] != lengths[1], lengths  # rank 0 finished while rank 1 was still decoding
    for r in ranks:
        assert r["gathered_all_gathers"] == r["units"]  # one all-gather per FSDP unit for the whole generate
        assert r["plain_all_gathers"] > 5 * r["units"]   # versus one per unit per decoded token


def test_toy_config_trains_under_torchrun_and_its_checkpoint_reloads(toy_world, tmp_path):
    torchrun(["scope.py", "--config", "configs/toy.yaml", "--max-steps", "2", "--output-dir", str(tmp_path / "run"),
              "--student", str(toy_world / "student"),
              "--teacher", str(toy_world / "teacher"), "--train-data", str(toy_world / "train.jsonl"),
              "--eval-data", str(toy_world / "test.jsonl"), "--eval-every", "1", "--eval-limit", "8"])
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2] and all("eval_accuracy" in m for m in metrics)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run")
    assert all(torch.isfinite(p).all() for p in model.parameters())
