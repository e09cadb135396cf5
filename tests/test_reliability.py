"""Resume exactly, survive kills and signals, skip non-finite steps, refuse to overwrite a run."""
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import reliability
import scope
from conftest import ROOT, tiny_args

VOLATILE = ("time_sample", "time_grade", "time_teacher", "time_update", "tokens_per_s")


def metrics(run) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k not in VOLATILE}
            for x in (run / "metrics.jsonl").read_text().splitlines()]


def weights(run) -> dict:
    return load_file(run / "model.safetensors")


def start_run(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "scope.py", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_steps(run, n: int, proc: subprocess.Popen, timeout: float = 120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        path = run / "metrics.jsonl"
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError(f"no {n} steps within {timeout} s")


@pytest.fixture(scope="module")
def uninterrupted(tiny_pair, tmp_path_factory):
    student, teacher, data = tiny_pair
    run = tmp_path_factory.mktemp("whole") / "run"
    scope.main(tiny_args(student, teacher, data, run, "--max-steps", "4", "--save-every", "1",
                         "--temperature", "1.0"))
    return run


def test_a_run_killed_and_resumed_matches_an_uninterrupted_one(tiny_pair, uninterrupted, tmp_path):
    student, teacher, data = tiny_pair
    run = tmp_path / "run"
    args = tiny_args(student, teacher, data, run, "--max-steps", "4", "--save-every", "1", "--temperature", "1.0")
    proc = start_run(args)
    wait_for_steps(run, 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(metrics(run)) < 4, "the run finished before it was killed"
    scope.main([*args, "--resume", "auto"])
    assert metrics(run) == metrics(uninterrupted)  # same losses, fractions correct, weights... no duplicate steps
    a, b = weights(run), weights(uninterrupted)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_kill_during_a_save_leaves_the_previous_checkpoint_loadable(tiny_pair, tmp_path, monkeypatch):
    student, teacher, data = tiny_pair
    run = tmp_path / "run"
    args = tiny_args(student, teacher, data, run, "--max-steps", "3", "--save-every", "1")
    real_save = reliability.save_model

    def dies_while_saving_step_2(model, tokenizer, path, rank, world):
        real_save(model, tokenizer, path, rank, world)
        if path.name == ".tmp_step_000002":  # the weights are half way to disk when the process dies
            raise KeyboardInterrupt

    monkeypatch.setattr(reliability, "save_model", dies_while_saving_step_2)
    with pytest.raises(KeyboardInterrupt):
        scope.main(args)
    monkeypatch.undo()
    assert [p.name for p in reliability.checkpoints(run)] == ["step_000001"]
    assert (run / ".tmp_step_000002").exists()  # the half-written one is never taken for a checkpoint
    AutoModelForCausalLM.from_pretrained(run / "step_000001")
    scope.main([*args, "--resume", "auto"])
    assert [m["step"] for m in metrics(run)] == [1, 2, 3]


def test_only_the_newest_checkpoints_are_kept(uninterrupted):
    assert [p.name for p in reliability.checkpoints(uninterrupted)] == ["step_000003", "step_000004"]


def test_sigterm_stops_at_a_step_boundary_saves_and_says_how_to_resume(tiny_pair, tmp_path):
    student, teacher, data = tiny_pair
    run = tmp_path / "run"
    args = tiny_args(student, teacher, data, run, "--max-steps", "50", "--save-every", "100")
    proc = start_run(args)
    wait_for_steps(run, 1, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "--resume auto" in err
    done = len(metrics(run))
    assert done < 50 and [p.name for p in reliability.checkpoints(run)] == [f"step_{done:06d}"]


def test_non_finite_steps_are_skipped_counted_and_stop_the_run(tiny_pair, tmp_path, monkeypatch, capsys):
    student, teacher, data = tiny_pair
    run = tmp_path / "run"
    real_loss = scope.scope_loss

    def nan_loss(*args, **kwargs):
        loss, info = real_loss(*args, **kwargs)
        return loss * float("nan"), info

    monkeypatch.setattr(scope, "scope_loss", nan_loss)
    with pytest.raises(SystemExit):
        scope.main(tiny_args(student, teacher, data, run, "--max-steps", "5", "--max-bad-steps", "2",
                             "--save-every", "1"))
    assert "3 steps in a row had a non-finite gradient" in capsys.readouterr().err
    assert [m["skipped"] for m in metrics(run)] == [True, True, True]
    saved = AutoModelForCausalLM.from_pretrained(run / "step_000002")
    start = AutoModelForCausalLM.from_pretrained(student)
    for a, b in zip(saved.parameters(), start.parameters()):
        assert torch.isfinite(a).all() and torch.equal(a, b)  # no step was taken, no NaN written


def test_a_step_with_no_correct_rollout_anywhere_is_logged_without_nan(uninterrupted):
    for m in metrics(uninterrupted):
        assert m["frac_correct"] == 0 and m["loss_mle"] == 0  # the random student never answers right
        assert m["w_mle_min"] is None and m["w_mle_entropy"] is None
        assert all(not (isinstance(v, float) and math.isnan(v)) for v in m.values())


def test_an_output_dir_holding_a_run_is_not_overwritten(tiny_pair, uninterrupted, capsys):
    student, teacher, data = tiny_pair
    before = (uninterrupted / "metrics.jsonl").read_text()
    with pytest.raises(SystemExit):
        scope.main(tiny_args(student, teacher, data, uninterrupted))
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume auto" in err
    assert (uninterrupted / "metrics.jsonl").read_text() == before


def test_resume_from_a_directory_that_is_not_a_checkpoint_is_refused(tiny_pair, tmp_path, capsys):
    student, teacher, data = tiny_pair
    with pytest.raises(SystemExit):
        scope.main(tiny_args(student, teacher, data, tmp_path / "run", "--resume", str(tmp_path)))
    assert "not a checkpoint" in capsys.readouterr().err


def test_lengths_beyond_the_students_context_are_refused_before_loading(tiny_pair, tmp_path, capsys, monkeypatch):
    student, teacher, data = tiny_pair
    monkeypatch.setattr(scope, "load_model", lambda *a: pytest.fail("weights were loaded"))
    with pytest.raises(SystemExit):
        scope.main(tiny_args(student, teacher, data, tmp_path / "run", "--max-new-tokens", "4096"))
    err = capsys.readouterr().err
    assert f"exceeds the context of {student} (256 tokens)" in err and "max_new_tokens" in err


def test_a_torn_last_log_line_does_not_stop_a_resume(tiny_pair, uninterrupted, tmp_path):
    student, teacher, data = tiny_pair
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    for name in ("metrics.jsonl", "eval.jsonl"):
        with open(run / name, "a") as f:
            f.write('{"step": 5, "loss": 0.1')                # the write a kill cut in half
    scope.main(tiny_args(student, teacher, data, run, "--max-steps", "5", "--save-every", "1",
                         "--temperature", "1.0", "--resume", "auto"))
    assert [m["step"] for m in metrics(run)] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("field, value", [("--seed", "1"), ("--batch-size", "2"), ("--group-size", "2")])
def test_resuming_with_other_sampling_fields_is_refused_naming_the_field(tiny_pair, uninterrupted, tmp_path,
                                                                         capsys, field, value):
    student, teacher, data = tiny_pair
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    with pytest.raises(SystemExit):
        scope.main(tiny_args(student, teacher, data, run, "--max-steps", "5", "--temperature", "1.0",
                             "--resume", "auto", field, value))
    err = capsys.readouterr().err
    assert field[2:].replace("-", "_") in err and "step_000004" in err
    assert len(metrics(run)) == 4                             # nothing was trained


def test_the_runs_settings_survive_the_student_saved_beside_them(tiny_pair, tmp_path):
    """The final student's config.json lands in output_dir; the run's own fields are kept in run_config.json."""
    student, teacher, data = tiny_pair
    scope.main(tiny_args(student, teacher, data, tmp_path / "run", "--lr", "0.000123"))
    assert json.loads((tmp_path / "run" / "run_config.json").read_text())["lr"] == 0.000123
    assert "model_type" in json.loads((tmp_path / "run" / "config.json").read_text())
