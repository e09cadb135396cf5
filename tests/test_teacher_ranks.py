"""The teacher on ranks of its own (`--teacher-ranks K`, teacher.py): the synchronous run's numbers, the update's
correct rollouts before the teacher's answer, generate calls handed on as they return, and a teacher rank that
dies named instead of waited for."""
import json
import os
import signal
import subprocess
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

import scope
import teacher
from conftest import ENV, ROOT, TORCHRUN, tiny_args, torchrun
from eval import Grading
from reliability import checkpoints, damage
from sample import generate, load_model, micro_batches, stop_ids

TOY = ["scope.py", "--config", "configs/toy.yaml", "--max-steps", "2", "--eval-every", "0", "--rollout-calls", "3"]
SAME = ("loss", "loss_mle", "loss_opd", "kl", "grad_norm", "ppl_teacher")       # equal to float tolerance
EXACT = ("frac_correct", "teacher_tokens", "response_tokens")                     # equal


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(a: Path, b: Path):
    one, two = metrics(a), metrics(b)
    assert len(one) == len(two) == 2
    for x, y in zip(one, two):
        for k in SAME:
            assert y[k] == pytest.approx(x[k], rel=1e-4, abs=1e-6), (k, x[k], y[k])
        for k in EXACT:
            assert x[k] == y[k], k
        assert 0 < x["teacher_tokens"] < x["response_tokens"]  # some rollouts right, some wrong: both paths ran


def test_a_teacher_on_a_rank_of_its_own_gives_the_synchronous_runs_losses(toy_world, tmp_path):
    """One student rank beside one teacher rank: the numbers of the one-process run, step after step."""
    scope.main([*TOY[1:], "--output-dir", str(tmp_path / "one")])
    torchrun([*TOY, "--output-dir", str(tmp_path / "apart"), "--teacher-ranks", "1"])
    assert_same_run(tmp_path / "one", tmp_path / "apart")
    for m in metrics(tmp_path / "apart"):
        assert m["time_teacher"] > 0 and m["time_teacher_exposed"] >= 0


def test_two_student_ranks_beside_a_teacher_sharded_over_two_ranks_equal_two_ranks_that_hold_both(toy_world,
                                                                                                 tmp_path):
    """FSDP over two student ranks, whose numbers of wrong rollouts differ, and the teacher sharded over two ranks
    of its own, which share them out: no hang, and the numbers of the same two ranks holding the teacher too."""
    torchrun([*TOY, "--output-dir", str(tmp_path / "together")])
    torchrun([*TOY, "--output-dir", str(tmp_path / "apart"), "--teacher-ranks", "2"], ranks=4)
    assert_same_run(tmp_path / "together", tmp_path / "apart")


def rank_pid(rank: int, marker: str) -> int | None:
    """The pid of the torchrun worker of `rank` whose command line holds `marker`."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and marker in cmdline and "scope.py" in cmdline:
            return int(pid)
    return None


def test_a_killed_teacher_rank_stops_the_run_naming_it_and_leaves_its_checkpoints_intact(toy_world, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([*TORCHRUN, "--nproc_per_node=2", *TOY, "--max-steps", "40", "--save-every", "1",
                             "--output-dir", str(run), "--teacher-ranks", "1"], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not (run / "step_000002" / "trainer.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its second checkpoint"
            time.sleep(0.2)
        os.kill(rank_pid(1, str(run)), signal.SIGKILL)
        killed = time.monotonic()
        _, err = proc.communicate(timeout=60)  # bounded: the student notices at its next message to the teacher
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert time.monotonic() - killed < 60 and proc.returncode != 0
    assert "the teacher (rank 1 of this torchrun job) stopped answering" in err, err[-2000:]
    assert "--resume auto" in err and 'scope.py", line' not in err  # a message, not a traceback of the trainer
    kept = checkpoints(run)
    assert kept and all(damage(c) is None for c in kept), [(c.name, damage(c)) for c in kept]


def test_teacher_ranks_refuse_what_cannot_work(monkeypatch, capsys, tiny_pair, tmp_path):
    student, teacher_dir, data = tiny_pair
    with pytest.raises(SystemExit):
        scope.main(tiny_args(student, teacher_dir, data, tmp_path / "one", "--teacher-ranks", "1"))
    assert "teacher ranks are ranks of a torchrun job" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        scope.parse_config(["--algorithm", "grpo", "--teacher-ranks", "1"])
    assert "grpo has no teacher to score" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit):
        teacher.split_world(2)
    assert "no student rank is left" in capsys.readouterr().err


class FarTeacher(teacher.Colocated):
    """A teacher on ranks of its own as the update sees it: it answers when asked, and notes how many of the
    student's forwards had run by then."""
    remote = True

    def __init__(self, *args, forwards: list):
        super().__init__(*args)
        self.forwards, self.asked_after = forwards, None

    def receive(self, ro, scored):
        self.asked_after = len(self.forwards)
        return super().receive(ro, scored)


def test_the_update_runs_the_correct_rollouts_before_asking_a_far_teacher_with_the_same_gradients(tiny_pair):
    student_dir, teacher_dir, _ = tiny_pair
    cfg = scope.parse_config(["--group-size", "4", "--micro-batch-tokens", "64", "--temperature", "1.0"])
    student, tok = load_model(str(student_dir), torch.float32, torch.device("cpu"))
    frozen, _ = load_model(str(teacher_dir), torch.float32, torch.device("cpu"))
    ro = generate(student.eval(), tok, ["1+1=", "22+3=", "7+70="], 4, stop=stop_ids(student, tok, False),
                  temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=10)
    correct = torch.tensor([1, 0, 0, 1, 0, 0, 0, 0, 1, 1, 0, 1], dtype=torch.bool)  # prompt 1: all wrong
    group = torch.arange(3).repeat_interleave(4)
    batches = micro_batches(ro, 4, 64, 1)
    assert len(batches) > 1
    grads, infos = [], []
    for far in (False, True):
        forwards = []
        hook = student.register_forward_hook(lambda *args: forwards.append(1))
        handle = (FarTeacher(frozen, cfg, len(tok), nullcontext(), 1, forwards=forwards) if far else
                  teacher.Colocated(frozen, cfg, len(tok), nullcontext(), 1))
        student.train()
        infos.append(scope.accumulate_gradients(student, ro, batches, handle, ~correct, correct, group, len(tok), cfg,
                                                nullcontext(), 1))
        hook.remove()
        grads.append([p.grad.clone() for p in student.parameters()])
        student.zero_grad(set_to_none=True)
        if far:  # every micro-batch's correct rollouts ran before the teacher was asked, the wrong ones after
            with_correct = sum(bool(correct[r].any()) for r, _ in batches)
            assert handle.asked_after == with_correct and len(forwards) == with_correct + len(batches)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    for a, b in zip(*infos):  # each micro-batch's numbers back in row order
        for k in ("weight", "nll_student", "nll_teacher", "kl_sum", "logp"):
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7)
        assert torch.equal(a["mle"], b["mle"])


def test_generate_hands_on_each_call_as_it_returns_and_grading_keeps_their_order(tiny_pair):
    student_dir, _, _ = tiny_pair
    student, tok = load_model(str(student_dir), torch.float32, torch.device("cpu"))
    seen = []
    grading = Grading(lambda text, gold: {"correct": len(text) % 2 == 0}, list(range(15)),
                      then=lambda first, part, correct: seen.append((first, len(part.texts), correct.tolist())))

    def on_call(first, part):
        seen.append(("sampled", first))
        grading.submit(first, part)

    torch.manual_seed(0)
    ro = generate(student.eval(), tok, ["1+1=", "2+2=", "3+3=", "4+4=", "5+5="], 3, stop=stop_ids(student, tok, False),
                  temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=8, max_rows=6, on_call=on_call)
    verdicts = grading.verdicts()
    assert [s for s in seen if s[0] == "sampled"] == [("sampled", 0), ("sampled", 6), ("sampled", 12)]
    graded = [s for s in seen if s[0] != "sampled"]
    assert [(first, n) for first, n, _ in graded] == [(0, 6), (6, 6), (12, 3)]
    assert verdicts.tolist() == [len(t) % 2 == 0 for t in ro.texts] == [c for *_, cs in graded for c in cs]
    torch.manual_seed(0)
    whole = generate(student.eval(), tok, ["1+1=", "2+2=", "3+3=", "4+4=", "5+5="], 3,
                     stop=stop_ids(student, tok, False), temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=8,
                     max_rows=6)
    assert whole.texts == ro.texts and torch.equal(whole.tokens, ro.tokens) and torch.equal(whole.resp, ro.resp)


def test_a_call_is_graded_while_the_next_one_samples(tiny_pair):
    """Grading runs on its own thread: the judge of call 0 waits until call 1 has been sampled, which could never
    happen if the trainer graded a call before sampling the next."""
    student_dir, _, _ = tiny_pair
    student, tok = load_model(str(student_dir), torch.float32, torch.device("cpu"))
    second_sampled = threading.Event()
    waited = []

    def judge(text, gold):
        if gold == 0:  # the first rollout of call 0
            waited.append(second_sampled.wait(timeout=30))
        return {"correct": False}

    grading = Grading(judge, list(range(8)), then=lambda *a: None)

    def on_call(first, part):
        grading.submit(first, part)
        if first > 0:
            second_sampled.set()

    generate(student.eval(), tok, ["1+1=", "2+2="], 4, stop=stop_ids(student, tok, False), temperature=1.0,
             top_p=1.0, top_k=0, max_new_tokens=4, max_rows=4, on_call=on_call)
    assert grading.verdicts().tolist() == [False] * 8 and waited == [True]
