"""FSDP2 through torchrun on CPU (gloo): the same update as one process, and generation that never hangs."""
import json
import random
from unittest.mock import patch

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import scope
import toy
from conftest import tiny_args, torchrun
from sample import batch_indices, micro_batches

def test_two_ranks_make_the_same_update_as_one_process(tiny_pair, tmp_path):
    """Same global batch (4 prompts: 2 per rank): same losses and weights after 2 steps.
    top_k = 1 makes the rollouts independent of how the batch is split across ranks, and of the rollout path:
    the two ranks sample with the fast path's copy of the sharded student, the one process with the student."""
    student, teacher, data = tiny_pair
    args = tiny_args(student, teacher, data, tmp_path / "one", "--top-k", "1")
    scope.main(args)
    torchrun(["scope.py", *tiny_args(student, teacher, data, tmp_path / "two", "--top-k", "1", "--rollouts", "static")])
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


def test_the_rollout_copy_of_a_sharded_student_equals_it_bitwise_after_every_update(tiny_pair):
    out = torchrun(["tests/dist_refresh.py", str(tiny_pair[0])])
    ranks = next(json.loads(line) for line in out.splitlines() if line.startswith("[{"))
    assert len(ranks) == 2
    for r in ranks:
        assert r["checked"] > 10 and r["mismatches"] == [] and r["moved"] > 1e-3, r


def test_toy_config_trains_under_torchrun_and_its_checkpoint_reloads(toy_world, tmp_path):
    torchrun(["scope.py", "--config", "configs/toy.yaml", "--max-steps", "2", "--output-dir", str(tmp_path / "run"),
              "--student", str(toy_world / "student"),
              "--teacher", str(toy_world / "teacher"), "--train-data", str(toy_world / "train.jsonl"),
              "--eval-data", str(toy_world / "test.jsonl"), "--eval-every", "1", "--eval-limit", "8"])
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2] and all("eval_accuracy" in m for m in metrics)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_ranks_with_very_different_prompt_lengths_train_every_step_and_match_one_process(tiny_pair, tmp_path):
    """Half the problems carry 60 extra leading tokens. Micro-batches hold one group at the long width
    and up to five at the short one: a rank sized from its own width alone would run fewer FSDP
    collectives than the other and hang. The split is chosen so that one step gives rank 0 only short
    prompts and rank 1 a long one."""
    student, teacher, _ = tiny_pair
    rng = random.Random(3)
    rows = [toy.make_problem(rng) for _ in range(16)]
    for r in rows[::2]:
        r["problem"] = "1 " * 60 + r["problem"]
    data = tmp_path / "uneven.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    long = [r["problem"].startswith("1 ") for r in rows]
    seed = next(s for s in range(100) if any(
        not any(long[i] for i in idx[:2]) and any(long[i] for i in idx[2:])
        for idx in (batch_indices(len(rows), 4, step, s) for step in range(3))))
    extra = ["--top-k", "1", "--max-steps", "3", "--max-prompt-tokens", "200", "--micro-batch-tokens", "700",
             "--seed", str(seed), "--save-every", "3"]
    scope.main(tiny_args(student, teacher, data, tmp_path / "one", *extra))
    torchrun(["scope.py", *tiny_args(student, teacher, data, tmp_path / "two", *extra)])
    one = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    two = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in two] == [1, 2, 3]
    for a, b in zip(one, two):
        assert abs(a["loss"] - b["loss"]) < 1e-5 and a["response_len"] == b["response_len"]
    w1, w2 = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-6


def test_micro_batches_are_as_many_on_every_rank_whatever_its_own_width():
    from sample import Rollouts
    short = torch.ones(8, 30, dtype=torch.bool)              # 2 groups of 4 rows, 30 columns
    ro = Rollouts(tokens=short.long(), attn=short, resp=short, texts=[], truncated=torch.zeros(8, dtype=torch.bool))
    assert len(micro_batches(ro, 4, 700, world=1)) == 1       # alone: both groups fit 700 tokens at width 30
    with patch("sample.all_max", lambda x, world: 150):        # the other rank's batch is 150 wide
        assert len(micro_batches(ro, 4, 700, world=2)) == 2   # one group per micro-batch, as on that rank


def test_ranks_with_different_numbers_of_wrong_rollouts_agree_on_teacher_forwards_and_on_the_update(tiny_pair,
                                                                                                   tmp_path):
    """Rank 0's rollouts are all graded correct (the teacher scores none of them), rank 1's all wrong (several
    teacher micro-batches at this budget): the sharded teacher's forwards are collectives, so rank 0 must run as
    many. The run must not hang and must make the update that scoring every rollout makes."""
    student, teacher, data = tiny_pair
    extra = ["--top-k", "1", "--micro-batch-tokens", "160"]
    torchrun(["tests/dist_graded.py", *tiny_args(student, teacher, data, tmp_path / "wrong", *extra)])
    torchrun(["tests/dist_graded.py", *tiny_args(student, teacher, data, tmp_path / "all", *extra,
                                                 "--teacher-rollouts", "all")])
    wrong = [json.loads(x) for x in (tmp_path / "wrong" / "metrics.jsonl").read_text().splitlines()]
    every = [json.loads(x) for x in (tmp_path / "all" / "metrics.jsonl").read_text().splitlines()]
    assert [m["frac_correct"] for m in wrong] == [0.5, 0.5]
    for w, a in zip(wrong, every, strict=True):
        assert 0 < w["teacher_tokens"] < w["response_tokens"] == a["teacher_tokens"]  # rank 1's tokens alone
        assert abs(w["loss"] - a["loss"]) < 1e-5
    w1, w2 = load_file(tmp_path / "wrong" / "model.safetensors"), load_file(tmp_path / "all" / "model.safetensors")
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-6
