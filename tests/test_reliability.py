"""Resume exactly, survive kills and signals, skip non-finite steps, refuse to overwrite a run."""
import errno
import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, Qwen2Config
from transformers.models.qwen2.modeling_qwen2 import Qwen2Model

import plan
import reliability
import scope
from conftest import ROOT, tiny_args
from test_distributed import torchrun

VOLATILE = ("time_sample", "time_grade", "time_grade_exposed", "time_teacher", "time_teacher_exposed", "time_update", "tokens_per_s")


def metrics(run) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k not in VOLATILE}
            for x in (run / "metrics.jsonl").read_text().splitlines()]


def finished_steps(run) -> list[int]:
    return [m["step"] for m in metrics(run)]


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
    real_logprobs = scope.token_logprobs

    def nan_logprobs(*args, **kwargs):  # the update's log-probs, hence its loss and gradient
        return real_logprobs(*args, **kwargs) * float("nan")

    monkeypatch.setattr(scope, "token_logprobs", nan_logprobs)
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


# -----------------------------------------------------------------------------
# Damaged checkpoints

def test_a_checkpoint_lists_each_file_it_holds_with_its_size_and_sha256(uninterrupted):
    ckpt = uninterrupted / "step_000004"
    listed = json.loads((ckpt / "trainer.json").read_text())["files"]
    on_disk = {f.relative_to(ckpt).as_posix() for f in ckpt.rglob("*") if f.is_file()} - {"trainer.json"}
    assert set(listed) == on_disk and "state/__0_0.distcp" in on_disk and "model.safetensors" in on_disk
    for name, (size, digest) in listed.items():
        data = (ckpt / name).read_bytes()
        assert size == len(data) and digest == hashlib.sha256(data).hexdigest(), name


def cut_short(path):
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def grow(path):
    with open(path, "ab") as f:
        f.write(b"\n")


def empty_object(path):
    path.write_text("{}")


# (file of the newest checkpoint, what is done to it, what the run must say about it)
DAMAGES = [("state/__0_0.distcp", cut_short, "cut short"),
           ("state/.metadata", flip_a_byte, "has changed since it was written"),
           ("model.safetensors", flip_a_byte, "has changed since it was written"),
           ("tokenizer.json", os.remove, "is missing"),
           ("tokenizer_config.json", grow, "when written (grown)"),
           ("trainer.json", cut_short, "not valid JSON"),
           ("trainer.json", empty_object, "trainer.json holds no step number")]


def damaged_copy(run_dir, into, name, spoil):
    """A copy of a finished run whose newest checkpoint (step_000004) has `name` spoiled."""
    shutil.copytree(run_dir, into)
    spoil(into / "step_000004" / name)
    return into


@pytest.mark.parametrize("name, spoil, said", DAMAGES, ids=[f"{d[0]}-{d[1].__name__}" for d in DAMAGES])
def test_resume_auto_steps_over_a_damaged_checkpoint_and_retrains_the_same_steps(tiny_pair, uninterrupted, tmp_path,
                                                                                 capsys, name, spoil, said):
    student, teacher, data = tiny_pair
    run = damaged_copy(uninterrupted, tmp_path / "run", name, spoil)
    scope.main(tiny_args(student, teacher, data, run, "--max-steps", "4", "--save-every", "1", "--temperature", "1.0",
                         "--resume", "auto"))
    err = capsys.readouterr().err
    assert f"step_000004 is damaged: {name}" in err and said in err
    assert "resuming from" in err and "step_000003, the newest intact checkpoint" in err
    assert metrics(run) == metrics(uninterrupted)             # step 4 trained again, to the same numbers
    a, b = weights(run), weights(uninterrupted)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert reliability.damage(run / "step_000004") is None     # written anew


@pytest.mark.parametrize("name, spoil, said", DAMAGES, ids=[f"{d[0]}-{d[1].__name__}" for d in DAMAGES])
def test_resume_from_a_damaged_checkpoint_is_refused_naming_the_file_and_how(tiny_pair, uninterrupted, tmp_path,
                                                                             capsys, name, spoil, said):
    student, teacher, data = tiny_pair
    run = damaged_copy(uninterrupted, tmp_path / "run", name, spoil)
    with pytest.raises(SystemExit) as e:                        # a message, not a traceback
        scope.main(tiny_args(student, teacher, data, run, "--max-steps", "5", "--temperature", "1.0",
                             "--resume", str(run / "step_000004")))
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"step_000004 is damaged: {name}" in err and said in err and "--resume auto" in err
    assert len(metrics(run)) == 4                               # nothing was trained


def test_a_checkpoint_that_lists_no_files_is_loaded_unchecked(tiny_pair, uninterrupted, tmp_path):
    """As written before checkpoints listed their files."""
    student, teacher, data = tiny_pair
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    path = run / "step_000004" / "trainer.json"
    path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "files"}))
    scope.main(tiny_args(student, teacher, data, run, "--max-steps", "5", "--save-every", "1", "--temperature", "1.0",
                         "--resume", "auto"))
    assert finished_steps(run) == [1, 2, 3, 4, 5] and reliability.damage(run / "step_000005") is None


def test_with_every_checkpoint_damaged_resume_auto_refuses_naming_each(tiny_pair, uninterrupted, tmp_path, capsys):
    student, teacher, data = tiny_pair
    run = damaged_copy(uninterrupted, tmp_path / "run", "state/__0_0.distcp", cut_short)
    flip_a_byte(run / "step_000003" / "model.safetensors")
    with pytest.raises(SystemExit):
        scope.main(tiny_args(student, teacher, data, run, "--max-steps", "5", "--resume", "auto"))
    err = capsys.readouterr().err
    assert "step_000004 is damaged: state/__0_0.distcp" in err and "step_000003 is damaged: model.safetensors" in err
    assert "no intact checkpoint" in err and len(metrics(run)) == 4


def test_under_torchrun_every_rank_resumes_from_the_same_intact_checkpoint(tiny_pair, uninterrupted, tmp_path):
    """Rank 0 checks the files and broadcasts its choice; the single-process checkpoint is resharded to 2 ranks."""
    student, teacher, data = tiny_pair
    run = damaged_copy(uninterrupted, tmp_path / "run", "state/__0_0.distcp", cut_short)
    out = torchrun(["scope.py", *tiny_args(student, teacher, data, run, "--max-steps", "4", "--save-every", "1",
                                           "--temperature", "1.0", "--resume", "auto")])
    assert out.count("resumed from") == 2 and out.count(f"resumed from {run / 'step_000003'} (step 3)") == 2
    assert finished_steps(run) == [1, 2, 3, 4] and reliability.damage(run / "step_000004") is None


# -----------------------------------------------------------------------------
# A full disk

def test_a_disk_too_full_for_the_next_checkpoint_stops_the_run_naming_the_newest_and_the_space(
        tiny_pair, uninterrupted, tmp_path, monkeypatch, capsys):
    student, teacher, data = tiny_pair
    run = tmp_path / "run"
    args = tiny_args(student, teacher, data, run, "--max-steps", "3", "--save-every", "1", "--temperature", "1.0")
    # room for the first checkpoint only: 1 MB free once it is written
    monkeypatch.setattr(reliability, "disk_free", lambda path: 10**12 if not reliability.checkpoints(run) else 10**6)
    with pytest.raises(SystemExit) as e:
        scope.main(args)
    err = capsys.readouterr().err
    one = sum(f.stat().st_size for f in (run / "step_000001").rglob("*") if f.is_file() and f.name != "trainer.json")
    assert e.value.code == 1 and "is full" in err
    assert f"needs {one / 1e6:.1f} MB and 1.0 MB is free" in err  # the size the first checkpoint took
    assert "newest intact checkpoint is" in err and "step_000001" in err
    assert "keep_checkpoints" in err and "--resume auto" in err
    assert [p.name for p in run.iterdir() if p.name.startswith(".tmp")] == []
    assert finished_steps(run) == [1, 2] and reliability.damage(run / "step_000001") is None  # step 2 is lost
    monkeypatch.undo()
    scope.main([*args, "--resume", "auto"])
    assert metrics(run) == metrics(uninterrupted)[:3]


# Run under torchrun: rank 1's flush of its state shard in checkpoint 2 meets a full disk, as a network filesystem
# reports it. Each rank prints its messages and exit status to stdout, then leaves with status 0 for torchrun.
RANK_1_DISK_FULL = """
import errno, os, sys
sys.path.insert(0, sys.argv[1])
import scope
real_fsync = os.fsync

def fsync(fd):
    if os.environ["RANK"] == "1" and ".tmp_step_000002" in os.readlink(f"/proc/self/fd/{fd}"):
        raise OSError(errno.ENOSPC, "No space left on device")
    real_fsync(fd)

os.fsync, sys.stderr = fsync, sys.stdout
try:
    scope.main(sys.argv[2:])
except SystemExit as e:
    print(f"rank {os.environ['RANK']} exit status {e.code}", flush=True)
os._exit(0)
"""


def test_under_torchrun_a_full_disk_on_one_rank_stops_every_rank(tiny_pair, tmp_path):
    student, teacher, data = tiny_pair
    run, script = tmp_path / "run", tmp_path / "rank_1_disk_full.py"
    script.write_text(RANK_1_DISK_FULL)
    out = torchrun([str(script), str(ROOT), *tiny_args(student, teacher, data, run, "--max-steps", "3",
                                                         "--save-every", "1")])
    assert "rank 0 exit status 1" in out and "rank 1 exit status 1" in out    # neither waits for the other
    assert out.count("is full: a write failed (OSError: [Errno 28] No space left on device)") == 1  # said by rank 0
    assert [p.name for p in run.iterdir() if p.name.startswith((".tmp", "step_"))] == ["step_000001"]
    assert finished_steps(run) == [1, 2]


def test_the_first_checkpoint_is_estimated_no_smaller_than_it_turns_out(uninterrupted):
    saved = json.loads((uninterrupted / "step_000004" / "trainer.json").read_text())["files"]
    actual = sum(size for size, _ in saved.values())
    params = sum(t.numel() for t in weights(uninterrupted).values())
    assert actual <= plan.checkpoint_bytes(params) <= 1.1 * actual


def spoils_the_write(monkeypatch, error, at: str, free_after: int = 10**12):
    """reliability.save_state writes the state, then fails with `error` while saving checkpoint `at`; the disk has
    free_after bytes free from then on (plenty before)."""
    real, disk = reliability.save_state, {"free": 10**12}

    def failing(model, optimizer, path):
        real(model, optimizer, path)
        if path.parent.name == f".tmp_{at}":
            disk["free"] = free_after
            raise error
    monkeypatch.setattr(reliability, "save_state", failing)
    monkeypatch.setattr(reliability, "disk_free", lambda path: disk["free"])


def test_a_write_that_finds_the_disk_full_stops_the_run_and_removes_the_partial_checkpoint(tiny_pair, tmp_path,
                                                                                          monkeypatch, capsys):
    student, teacher, data = tiny_pair
    run = tmp_path / "run"
    spoils_the_write(monkeypatch, OSError(errno.ENOSPC, "No space left on device"), at="step_000002")
    with pytest.raises(SystemExit) as e:
        scope.main(tiny_args(student, teacher, data, run, "--max-steps", "3", "--save-every", "1"))
    err = capsys.readouterr().err
    assert e.value.code == 1 and "is full: a write failed (OSError: [Errno 28] No space left on device)" in err
    assert "step_000001" in err and "--resume auto" in err
    assert [p.name for p in run.iterdir() if p.name.startswith((".tmp", "step_"))] == ["step_000001"]
    assert reliability.damage(run / "step_000001") is None


@pytest.mark.parametrize("free, full", [(10**6, True), (10**12, False)])
def test_a_write_error_without_an_errno_is_called_a_full_disk_only_when_space_is_short(tiny_pair, tmp_path,
                                                                                      monkeypatch, capsys, free, full):
    """torch's zip writer meets a full disk as 'unexpected pos'; with space to spare, the error is not ours to name."""
    student, teacher, data = tiny_pair
    error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    spoils_the_write(monkeypatch, error, at="step_000002", free_after=free)
    with pytest.raises(SystemExit if full else RuntimeError) as e:
        scope.main(tiny_args(student, teacher, data, tmp_path / "run", "--max-steps", "3", "--save-every", "1"))
    if full:
        assert e.value.code == 1 and "is full: a write failed (RuntimeError: [enforce fail" in capsys.readouterr().err
    else:
        assert e.value is error


def test_a_lowered_keep_checkpoints_frees_its_space_before_the_next_write(tiny_pair, uninterrupted, tmp_path):
    student, teacher, data = tiny_pair
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    written = []
    real = reliability.save_model

    def save_model(model, tokenizer, path, rank, world):
        written.append((path.name, [p.name for p in reliability.checkpoints(run)]))
        real(model, tokenizer, path, rank, world)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(reliability, "save_model", save_model)
        scope.main(tiny_args(student, teacher, data, run, "--max-steps", "5", "--save-every", "1",
                             "--temperature", "1.0", "--resume", "auto", "--keep-checkpoints", "1"))
    assert written[0] == (".tmp_step_000005", ["step_000004"])   # step 3 went first: one old one beside the new
    assert [p.name for p in reliability.checkpoints(run)] == ["step_000005"]


def test_the_plan_says_the_disk_of_keep_checkpoints_plus_one(tiny_pair, tmp_path, capsys):
    student, teacher, data = tiny_pair
    model = tmp_path / "model"
    Qwen2Config(hidden_size=1024, intermediate_size=2816, num_hidden_layers=24, num_attention_heads=16,
                num_key_value_heads=2, vocab_size=32000).save_pretrained(model)
    cfg = scope.parse_config(tiny_args(model, model, data, tmp_path / "run", "--plan", "--keep-checkpoints", "3"))
    plan.print_plan(cfg)
    params = plan.read_shape("student", str(model)).params
    each = plan.checkpoint_bytes(params)
    assert 16 * params < each and f"disk: {4 * each / 1e9:.3g} GB in output_dir for checkpoints of {each / 1e9:.3g} GB " \
                                  f"(keep_checkpoints 3, and one more" in capsys.readouterr().out


# -----------------------------------------------------------------------------
# Out of memory

def in_sampling(body) -> bool:
    return not torch.is_grad_enabled() and body.embed_tokens.num_embeddings == STUDENT_ROWS


def in_teacher_scoring(body) -> bool:
    return body.embed_tokens.num_embeddings != STUDENT_ROWS   # the teacher's head has 64 rows more


def in_update(body) -> bool:
    return torch.is_grad_enabled()


STUDENT_ROWS = None  # the tiny student's vocabulary, set by the test


@pytest.mark.parametrize("phase, inside, sizes, field", [
    ("sampling", in_sampling, ("rows_per_call", "max_new_tokens 12"), "rollout_kv_gb (the plan's generation phase)"),
    ("teacher scoring", in_teacher_scoring, ("micro_batch_tokens 32768", "tokens_per_row "),
     "micro_batch_tokens or shard_teacher (the plan's teacher scoring phase)"),
    ("update", in_update, ("micro_batch_tokens 32768", "tokens_per_row "),
     "micro_batch_tokens or gradient_checkpointing (the plan's update phase)")])
def test_out_of_memory_in_a_phase_names_it_its_sizes_and_the_field_to_lower(tiny_pair, tmp_path, monkeypatch, capsys,
                                                                           phase, inside, sizes, field):
    """The decoder body runs out of memory in step 2, in the phase's own forward passes."""
    student, teacher, data = tiny_pair
    run = tmp_path / "run"
    monkeypatch.setattr(sys.modules[__name__], "STUDENT_ROWS", AutoModelForCausalLM.from_pretrained(student)
                        .get_input_embeddings().num_embeddings)
    real = Qwen2Model.forward

    def runs_out_in_step_2(body, *args, **kwargs):
        if reliability.checkpoints(run) and inside(body):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(body, *args, **kwargs)
    monkeypatch.setattr(Qwen2Model, "forward", runs_out_in_step_2)
    with pytest.raises(SystemExit) as e:
        scope.main(tiny_args(student, teacher, data, run, "--max-steps", "3", "--save-every", "1"))
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"out of memory in {phase} (" in err and all(s in err for s in sizes), err
    assert f"Lower {field}" in err and "--plan" in err and "Tried to allocate 2.00 GiB" in err
    if phase != "sampling":                                     # both run the log-prob head in chunks
        assert "logprob_chunk_tokens (the plan's log-prob chunk phase)" in err
        width = int(re.search(r"tokens_per_row (\d+)", err).group(1))
        assert 12 < width <= 64 + 12                            # a prompt and its response, padded
    assert [p.name for p in reliability.checkpoints(run)] == ["step_000001"]
    assert reliability.damage(run / "step_000001") is None and "--resume auto" in err
