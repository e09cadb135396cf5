"""The paper's baselines in the trainer's loop: GRPO and sequence-level KD, pinned on numbers checkable by hand,
and the teacher reading only the rollouts the loss reads."""
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import eval as evaluate
import plan
import sample
import scope
import teacher as teacher_module
from conftest import ROOT, tiny_args
from scope import Config, grpo_loss, kd_loss, parse_config

GRPO = Config(algorithm="grpo")


def per_token(values, tokens=2):
    """(N, T) leaf tensor: every token of rollout i has log-prob values[i]."""
    return torch.tensor(values, dtype=torch.float32)[:, None].repeat(1, tokens).requires_grad_()


def test_grpo_advantage_is_the_reward_minus_its_group_mean_over_the_groups_unbiased_std():
    # one prompt, rewards 1, 0, 0, 1: mean 1/2, unbiased std sqrt(4 x 1/4 / 3) = sqrt(1/3); A = +-(1/2) / sqrt(1/3)
    logp = per_token([-1.0, -2.0, -0.5, -3.0])
    correct, group, mask = torch.tensor([True, False, False, True]), torch.zeros(4, dtype=torch.long), torch.ones(4, 2)
    loss, info = grpo_loss(logp, None, mask.bool(), correct, group, GRPO, norm=8.0)
    a = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    assert torch.allclose(info["advantage"], torch.tensor([a, -a, -a, a]))
    loss.backward()  # d loss / d logp = -A / norm on every response token (rho = 1 and its gradient is grad logp)
    assert torch.allclose(logp.grad, torch.tensor([[-a / 8] * 2, [a / 8] * 2, [a / 8] * 2, [-a / 8] * 2]))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)  # the advantages sum to zero within the group


def test_grpo_gives_no_signal_to_a_group_whose_rollouts_all_scored_alike_and_groups_stay_apart():
    logp = per_token([-1.0, -2.0, -1.0, -2.0])
    correct, group = torch.tensor([True, True, True, False]), torch.tensor([0, 0, 1, 1])
    loss, info = grpo_loss(logp, None, torch.ones(4, 2, dtype=torch.bool), correct, group, GRPO, norm=8.0)
    loss.backward()
    a = 0.5 / (math.sqrt(0.5) + 1e-6)  # group 1: rewards 1, 0: mean 1/2, unbiased std sqrt(1/2)
    assert torch.equal(info["advantage"][:2], torch.zeros(2))
    assert torch.equal(logp.grad[:2], torch.zeros(2, 2))
    assert torch.allclose(info["advantage"][2:], torch.tensor([a, -a]))


def test_grpo_clip_never_binds_at_one_update_per_batch():
    logp, correct, group = per_token([-1.0, -2.0]), torch.tensor([True, False]), torch.zeros(2, dtype=torch.long)
    mask = torch.ones(2, 2, dtype=torch.bool)
    grads = []
    for clip in (0.2, 1e-6, 10.0):
        grpo_loss(logp, None, mask, correct, group, replace(GRPO, clip_ratio=clip), norm=4.0)[0].backward()
        grads.append(logp.grad.clone())
        logp.grad = None
    assert torch.equal(grads[0], grads[1]) and torch.equal(grads[0], grads[2])


def test_grpo_kl_to_the_initial_student_is_k3_weighted_by_beta():
    # the reference puts ln 2 more log-prob on every token: d = ln 2, k3 = e^d - d - 1 = 1 - ln 2 per token;
    # d k3 / d logp = 1 - e^d = -1, so beta / norm per token on top of the policy gradient
    logp, correct, group = per_token([-1.0, -1.0]), torch.tensor([True, True]), torch.zeros(2, dtype=torch.long)
    mask = torch.ones(2, 2, dtype=torch.bool)
    ref = logp.detach() + math.log(2)
    loss, info = grpo_loss(logp, ref, mask, correct, group, replace(GRPO, kl_beta=0.1), norm=4.0)
    assert info["loss_kl"].item() == pytest.approx(0.1 * 4 * (1 - math.log(2)) / 4)
    loss.backward()  # the group scored alike: no policy gradient, only the KL's
    assert torch.allclose(logp.grad, torch.full((2, 2), -0.1 / 4))


def test_kd_is_the_mean_negative_log_likelihood_of_the_teachers_tokens():
    logp = per_token([-1.0, -3.0], tokens=3)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    loss, info = kd_loss(logp, None, mask, torch.tensor([False, True]), torch.zeros(2, dtype=torch.long),
                         Config(algorithm="kd"), norm=5.0)
    assert loss.item() == pytest.approx((2 * 1.0 + 3 * 3.0) / 5)
    loss.backward()
    assert torch.allclose(logp.grad, -mask.float() / 5)  # right or wrong alike, padding untouched


# -----------------------------------------------------------------------------
# The teacher scores only what the loss reads

def graded_by_length(text: str, gold: str, fallback: bool = False) -> bool:
    """A stand-in for verify.grade (the trainer's judge calls it) that passes some rollouts of a random model:
    those of an even length."""
    return len(text) % 2 == 0


def run(tmp_path: Path, name: str, tiny_pair, *extra) -> list[dict]:
    student, teacher, data = tiny_pair
    scope.main(tiny_args(student, teacher, data, tmp_path / name, *extra))
    return [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]


def test_the_teacher_scoring_only_wrong_rollouts_changes_no_loss_weight_or_update(tiny_pair, tmp_path, monkeypatch):
    monkeypatch.setattr(evaluate, "grade", graded_by_length)
    seen = []
    real = teacher_module.score_rows
    monkeypatch.setattr(teacher_module, "score_rows", lambda model, ro, rows, *a, **kw: seen.append(rows.clone()) or
                        real(model, ro, rows, *a, **kw))
    wrong = run(tmp_path, "wrong", tiny_pair, "--micro-batch-tokens", "256")
    every = run(tmp_path, "all", tiny_pair, "--micro-batch-tokens", "256", "--teacher-rollouts", "all")
    assert 0 < wrong[0]["frac_correct"] < 1  # both paths act
    for w, a in zip(wrong, every, strict=True):
        assert w["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-7)
        assert w["kl"] == pytest.approx(a["kl"], rel=1e-5)
        assert w["w_opd_min"] == pytest.approx(a["w_opd_min"], rel=1e-5)
        assert w["w_mle_max"] == pytest.approx(a["w_mle_max"], rel=1e-5)
        assert w["response_tokens"] == a["response_tokens"] == a["teacher_tokens"] > w["teacher_tokens"]
    assert [int(rows.sum()) for rows in seen[:2]] == [round(16 * (1 - m["frac_correct"])) for m in wrong]
    one, two = load_file(tmp_path / "wrong" / "model.safetensors"), load_file(tmp_path / "all" / "model.safetensors")
    assert max((one[k] - two[k]).abs().max().item() for k in one) < 1e-6


def test_under_opd_every_rollout_is_on_the_reverse_kl_path_so_the_teacher_scores_all(tiny_pair, tmp_path,
                                                                                   monkeypatch):
    monkeypatch.setattr(evaluate, "grade", graded_by_length)
    m = run(tmp_path, "opd", tiny_pair, "--route-by-correctness", "false", "--teacher-weight", "uniform")
    assert all(step["teacher_tokens"] == step["response_tokens"] for step in m)


def test_score_rows_gives_each_picked_rollout_what_scoring_all_gives_and_zeros_elsewhere(tiny_pair):
    student, _, _ = tiny_pair
    model, tok = sample.load_model(str(student), torch.float32, torch.device("cpu"))
    ro = sample.generate(model.eval(), tok, ["1 + 2 =", "30 + 4 ="], 3, stop=[tok.eos_token_id], temperature=1.0,
                         top_p=1.0, top_k=0, max_new_tokens=6)
    kw = dict(vocab=len(tok), temperature=0.6)
    with torch.no_grad():
        full = sample.score(model, ro, sample.micro_batches(ro, 3, 10_000, 1), **kw)
        rows = torch.tensor([True, False, False, True, True, False])
        picked = sample.score_rows(model, ro, rows, 20, 1, **kw)   # a small budget: several micro-batches
        none = sample.score_rows(model, ro, torch.zeros(6, dtype=torch.bool), 20, 1, **kw)
    assert torch.allclose(picked[rows], full[rows], atol=1e-5) and picked[rows].abs().sum() > 0
    assert torch.equal(picked[~rows], torch.zeros_like(picked[~rows])) and torch.equal(none, torch.zeros_like(full))


# -----------------------------------------------------------------------------
# GRPO and KD runs

def test_grpo_loads_no_teacher_plans_none_and_logs_no_teacher_time(tiny_pair, tmp_path, monkeypatch, capsys):
    loaded, real = [], scope.load_model
    monkeypatch.setattr(scope, "load_model", lambda name, *a: loaded.append(name) or real(name, *a))
    monkeypatch.setattr(evaluate, "grade", graded_by_length)
    student, teacher, _ = tiny_pair
    m = run(tmp_path, "grpo", tiny_pair, "--algorithm", "grpo")
    assert loaded == [str(student)]
    assert all("time_teacher" not in step and "time_teacher_exposed" not in step and step["teacher_tokens"] == 0 and "kl" not in step for step in m)
    assert any(step["abs_advantage"] > 0 for step in m)
    cfg = parse_config(["--student", str(student), "--teacher", str(teacher), "--algorithm", "grpo", "--plan"])
    plan.print_plan(cfg)
    out = capsys.readouterr().out
    assert "no teacher (grpo)" in out and "| teacher scoring |" not in out


def test_grpo_with_a_kl_term_scores_every_rollout_under_the_initial_student(tiny_pair, tmp_path, monkeypatch):
    loaded, real = [], scope.load_model
    monkeypatch.setattr(scope, "load_model", lambda name, *a: loaded.append(name) or real(name, *a))
    monkeypatch.setattr(evaluate, "grade", graded_by_length)
    student, _, _ = tiny_pair
    m = run(tmp_path, "grpo_kl", tiny_pair, "--algorithm", "grpo", "--kl-beta", "0.5")
    assert loaded == [str(student), str(student)]  # the trained student and its frozen initial copy
    assert m[0]["teacher_tokens"] == m[0]["response_tokens"] and m[0]["loss_kl"] == pytest.approx(0.0, abs=1e-6)
    assert m[1]["loss_kl"] > 0  # after one update the student has moved away from its initial self


def kd_args(tiny_pair, out: Path, kd: Path, *extra) -> list[str]:
    student, teacher, data = tiny_pair
    return tiny_args(student, teacher, data, out, "--algorithm", "kd", "--kd-data", str(kd), *extra)


def test_kd_data_is_written_once_resumes_where_it_stopped_and_trains_on_the_teachers_tokens(tiny_pair, tmp_path):
    kd = tmp_path / "kd.jsonl"
    calls = ("--rollout-kv-gb", "0.004")  # 34 rows a generate call: 8 problems x 4 solutions
    scope.main(kd_args(tiny_pair, tmp_path / "unused", kd, "--kd-generate", "true", *calls))
    whole = kd.read_text()
    lines = [json.loads(line) for line in whole.splitlines()]
    _, teacher, data = tiny_pair
    assert len(lines) == len(data.read_text().splitlines()) == 64
    assert {line["teacher"] for line in lines} == {str(teacher)}
    assert all(len(line["response_ids"]) == len(line["responses"]) == 4 for line in lines)
    # a run stopped inside its second call (its last line torn) continues and draws what an unbroken one drew
    kd.write_text("".join(whole.splitlines(keepends=True)[:10]) + whole.splitlines()[10][:25])
    scope.main(kd_args(tiny_pair, tmp_path / "unused", kd, "--kd-generate", "true", *calls))
    assert kd.read_text() == whole
    seen, real = [], scope.given_rollouts
    scope_given = lambda tok, prompts, ids, *a: seen.append(ids) or real(tok, prompts, ids, *a)  # noqa: E731
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(scope, "given_rollouts", scope_given)
        scope.main(kd_args(tiny_pair, tmp_path / "run", kd))
    by_prompt = {line["prompt"]: line["response_ids"] for line in lines}
    assert len(seen) == 2 and all(ids in by_prompt.values() for ids in seen[0])
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("time_teacher" not in m and m["teacher_tokens"] == 0 and m["loss_sft"] > 0 for m in metrics)


@pytest.mark.parametrize("damage, message", [
    (lambda line: {**line, "teacher": "someone/else"}, "was sampled from teacher 'someone/else'"),
    (lambda line: {**line, "tokenizer": "0123456789abcdef"}, "was tokenized by another tokenizer"),
    (lambda line: {**line, "response_ids": []}, "has no 'response_ids' with 4 non-empty responses"),
    (lambda line: {k: v for k, v in line.items() if k != "response_ids"}, "has no 'response_ids'"),
    (lambda line: {**line, "prompt": "another prompt"}, "holds another prompt than this run builds"),
])
def test_a_kd_file_that_does_not_match_the_run_is_refused_naming_its_line(tiny_pair, tmp_path, capsys, damage, message):
    kd = tmp_path / "kd.jsonl"
    scope.main(kd_args(tiny_pair, tmp_path / "unused", kd, "--kd-generate", "true"))
    lines = [json.loads(line) for line in kd.read_text().splitlines()]
    lines[3] = damage(lines[3])
    kd.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(SystemExit):
        scope.main(kd_args(tiny_pair, tmp_path / "run", kd))
    err = capsys.readouterr().err
    assert f"{kd}, line 4: problem 3" in err and message in err


def test_kd_without_its_file_says_how_to_write_it(tiny_pair, tmp_path, capsys):
    with pytest.raises(SystemExit):
        scope.main(kd_args(tiny_pair, tmp_path / "run", tmp_path / "missing.jsonl"))
    err = capsys.readouterr().err
    assert "missing.jsonl does not exist" in err and "--kd-generate" in err


@pytest.mark.parametrize("flags, message", [
    (["--algorithm", "grpo", "--group-size", "1"], "grpo normalises rewards inside each prompt's group"),
    (["--algorithm", "kd"], "field 'kd_data' is empty"),
    (["--kd-generate", "true"], "field 'kd_data' is empty"),
    (["--kl-beta", "-1"], "field 'kl_beta' is -1.0"),
])
def test_baseline_fields_that_cannot_work_are_refused_by_name(flags, message, capsys):
    with pytest.raises(SystemExit):
        parse_config(flags)
    assert message in capsys.readouterr().err


def test_each_baseline_has_a_config_that_sets_it():
    for name, algorithm in (("toy_grpo.yaml", "grpo"), ("toy_kd.yaml", "kd")):
        cfg = parse_config(["--config", str(ROOT / "configs" / name)])
        assert cfg.algorithm == algorithm and cfg.student == ".toy/student"



def test_a_kd_line_that_is_not_json_is_named_by_its_number(tiny_pair, tmp_path, capsys):
    kd = tmp_path / "kd.jsonl"
    scope.main(kd_args(tiny_pair, tmp_path / "unused", kd, "--kd-generate", "true"))
    lines = kd.read_text().splitlines(keepends=True)
    kd.write_text("".join(lines[:5] + ["{not json\n"] + lines[6:]))
    with pytest.raises(SystemExit):
        scope.main(kd_args(tiny_pair, tmp_path / "run", kd))
    assert f"{kd}, line 6: not JSON" in capsys.readouterr().err
