"""scope.py end to end: configuration, refusals, a run on tiny models, and the demo learning."""
import json
import subprocess
import sys
from dataclasses import fields

import pytest
import torch
from transformers import AutoModelForCausalLM

import sample
import scope
import teacher as teacher_module
from conftest import ROOT, save_tiny, tiny_args


def run_scope(args: list[str]):
    scope.main(args)


def error_of(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as e:
        scope.parse_config(args)
    assert e.value.code != 0
    return capsys.readouterr().err


def test_help_documents_every_config_field():
    out = subprocess.run([sys.executable, "scope.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0
    for f in fields(scope.Config):
        assert "--" + f.name.replace("_", "-") in out.stdout
        assert "".join(f.metadata["help"].split()) in "".join(out.stdout.split()), f.name  # ignore wrapping


def test_yaml_sets_fields_and_flags_override_it(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("tau: 2\ngroup_size: 4\nroute_by_correctness: false\n")
    cfg = scope.parse_config(["--config", str(path), "--group-size", "6"])
    assert cfg.tau == 2.0 and isinstance(cfg.tau, float)
    assert cfg.group_size == 6 and cfg.route_by_correctness is False


def test_unknown_yaml_key_is_named_with_the_valid_keys(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("taux: 2\n")
    err = error_of(["--config", str(path)], capsys)
    assert "taux" in err and str(path) in err and "group_size" in err and "tau" in err


def test_unknown_flag_is_named_with_the_valid_keys(capsys):
    err = error_of(["--group-sise", "3"], capsys)
    assert "--group-sise" in err and "group_size" in err


@pytest.mark.parametrize("args, words", [
    (["--group-size", "0"], ["group_size", "> 0"]),
    (["--tau", "0"], ["tau", "> 0"]),
    (["--lr=-1e-5"], ["lr", ">= 0"]),
    (["--tau", "warm"], ["tau", "float", "warm"]),
    (["--teacher-weight", "inverse"], ["teacher_weight", "inverse", "ppl", "uniform", "reversed"]),
    (["--chat-template", "maybe"], ["chat_template", "maybe", "true/false"]),
])
def test_impossible_values_are_refused_naming_the_field(args, words, capsys):
    err = error_of(args, capsys)
    assert all(w in err for w in words), err


def test_bare_names_resolve_to_the_qwen_organisation(tmp_path):
    assert sample.resolve("Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    assert sample.resolve("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B") == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    assert sample.resolve(str(tmp_path)) == str(tmp_path)


def test_default_config_is_the_papers_where_the_paper_gives_one():
    cfg = scope.Config()
    assert (cfg.group_size, cfg.tau, cfg.temperature, cfg.lr, cfg.weight_decay) == (8, 1.0, 0.6, 5e-5, 0.01)
    assert (cfg.student, cfg.teacher) == ("Qwen2.5-0.5B", "Qwen2.5-7B")


@pytest.mark.parametrize("config", ["toy.yaml", "qwen2.5.yaml", "r1-distill-1.5b_skywork-7b.yaml",
                                    "qwen3-1.7b-base_qwen3-8b.yaml"])
def test_shipped_configs_parse_and_keep_the_papers_settings(config):
    cfg = scope.parse_config(["--config", str(ROOT / "configs" / config)])
    assert cfg.student and cfg.teacher and cfg.train_data and cfg.output_dir
    if config != "toy.yaml":
        assert (cfg.group_size, cfg.tau, cfg.temperature, cfg.lr, cfg.weight_decay) == (8, 1.0, 0.6, 5e-5, 0.01)


def test_a_run_writes_metrics_and_a_student_that_plain_hf_reloads(tiny_pair, tmp_path):
    """The teacher's head has 64 more rows than the student's: the run must line them up."""
    student, teacher, data = tiny_pair
    run_scope(tiny_args(student, teacher, data, tmp_path / "run"))
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2]
    wanted = ["loss", "loss_mle", "loss_opd", "frac_correct", "frac_all_correct", "frac_all_wrong", "frac_truncated",
              "response_len", "kl", "w_mle_min", "w_opd_max", "w_opd_entropy", "ppl_student", "ppl_teacher",
              "tokens_per_s", "time_sample", "time_grade", "time_grade_exposed", "time_teacher", "time_teacher_exposed", "time_update"]
    for r in lines:
        assert all(k in r for k in wanted)
        assert all(v is None or v == v for v in r.values())  # no NaN
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "run")
    original = AutoModelForCausalLM.from_pretrained(student)
    changed = any(not torch.equal(a, b) for a, b in zip(reloaded.parameters(), original.parameters()))
    assert changed, "two optimizer steps left the student unchanged"
    assert (tmp_path / "run" / "step_000002" / "model.safetensors").exists()


def test_different_tokenizers_are_refused_naming_both(tiny_pair, tmp_path, capsys):
    student, _, data = tiny_pair
    import random

    import toy
    rng = random.Random(5)
    other = toy.train_tokenizer([f"Compute {rng.randint(1, 99)} times {rng.randint(1, 99)}" for _ in range(200)])
    teacher = save_tiny(tmp_path / "other", other, len(other))
    with pytest.raises(SystemExit):
        run_scope(tiny_args(student, teacher, data, tmp_path / "run"))
    err = capsys.readouterr().err
    assert "different tokenizers" in err and str(student) in err and str(teacher) in err


def test_a_missing_model_says_it_is_neither_local_nor_on_the_hub(tiny_pair, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _, teacher, data = tiny_pair
    with pytest.raises(SystemExit):
        run_scope(tiny_args(tmp_path / "nowhere" / "model", teacher, data, tmp_path / "run"))
    err = capsys.readouterr().err
    assert "nowhere" in err and "local directory" in err


@pytest.mark.parametrize("row, message", [
    ({"problem": "1+1"}, "field 'answer' is missing"),
    ({"problem": "1+1", "answer": "  "}, "field 'answer' is '  '"),
    ({"question": "1+1", "answer": "2"}, "field 'problem' is missing"),
])
def test_bad_data_rows_are_named_by_file_row_and_field(tmp_path, capsys, row, message):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"problem": "2+2", "answer": "4"}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(SystemExit):
        sample.load_rows(str(path), "train", "problem", "answer", skip_bad=False)
    err = capsys.readouterr().err
    assert str(path) in err and "row 1" in err and message in err
    rows = sample.load_rows(str(path), "train", "problem", "answer", skip_bad=True)
    assert rows == [{"problem": "2+2", "answer": "4"}]


def test_non_string_answers_are_refused(tmp_path, capsys):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"problem": "2+2", "answer": 4}) + "\n")
    with pytest.raises(SystemExit):
        sample.load_rows(str(path), "train", "problem", "answer", skip_bad=False)
    err = capsys.readouterr().err
    assert "row 0" in err and "4" in err and "expected a non-empty string" in err


def test_data_order_reshuffles_each_epoch_and_depends_only_on_the_step():
    first_epoch = [i for s in range(5) for i in scope.batch_indices(10, 2, s, seed=0)]
    second_epoch = [i for s in range(5, 10) for i in scope.batch_indices(10, 2, s, seed=0)]
    assert sorted(first_epoch) == sorted(second_epoch) == list(range(10))
    assert first_epoch != second_epoch
    assert scope.batch_indices(10, 2, 7, seed=0) == scope.batch_indices(10, 2, 7, seed=0)


def test_demo_runs_offline_and_its_checkpoint_reloads(toy_world, tmp_path):
    run_scope(["--config", str(ROOT / "configs" / "toy.yaml"),
               "--student", str(toy_world / "student"), "--teacher", str(toy_world / "teacher"),
               "--train-data", str(toy_world / "train.jsonl"), "--eval-data", str(toy_world / "test.jsonl"),
               "--max-steps", "2", "--eval-every", "0", "--output-dir", str(tmp_path / "demo")])
    assert len((tmp_path / "demo" / "metrics.jsonl").read_text().splitlines()) == 2
    AutoModelForCausalLM.from_pretrained(tmp_path / "demo")


def test_scope_raises_the_demo_students_held_out_accuracy(toy_world, tmp_path):
    """The demo as shipped (configs/toy.yaml, seeded): a clear rise within 40 steps."""
    out = tmp_path / "learn"
    run_scope(["--config", str(ROOT / "configs" / "toy.yaml"),
               "--student", str(toy_world / "student"), "--teacher", str(toy_world / "teacher"),
               "--train-data", str(toy_world / "train.jsonl"), "--eval-data", str(toy_world / "test.jsonl"),
               "--eval-every", "20", "--output-dir", str(out)])
    evals = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [0, 20, 40]
    before, after = evals[0]["eval_accuracy"], evals[-1]["eval_accuracy"]
    assert after >= before + 0.25, evals
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    first, last = metrics[:10], metrics[-10:]
    assert sum(m["frac_correct"] for m in last) > sum(m["frac_correct"] for m in first)


@pytest.mark.parametrize("flags, expected", [([], 0.6), (["--teacher-temperature", "1.0"], 1.0)])
def test_teacher_log_probs_use_the_teacher_temperature_when_one_is_set(tiny_pair, tmp_path, monkeypatch, flags,
                                                                      expected):
    student, teacher, data = tiny_pair
    seen, real = [], teacher_module.score_rows
    monkeypatch.setattr(teacher_module, "score_rows", lambda *a, **kw: seen.append(kw["temperature"]) or real(*a, **kw))
    run_scope(tiny_args(student, teacher, data, tmp_path / "run", *flags))
    assert seen == [expected, expected]                       # one teacher scoring per step


LABELLER = """
def labels(row, text):
    return {"teacher_unreliable": row["teacher_wrong"], "unlikely_route": text.startswith("1")}

def broken(row, text):
    return {"teacher_unreliable": "yes"}
"""


def test_a_rollout_labeller_reads_each_rows_own_fields_and_metrics_log_where_the_weights_fell(tiny_pair, tmp_path,
                                                                                          monkeypatch):
    student, teacher, data = tiny_pair
    (tmp_path / "my_labels.py").write_text(LABELLER)
    monkeypatch.syspath_prepend(str(tmp_path))
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    flagged = tmp_path / "flagged.jsonl"
    flagged.write_text("".join(json.dumps({**r, "teacher_wrong": i % 2 == 0}) + "\n" for i, r in enumerate(rows)))
    seen, real = [], scope.gather_rollouts
    monkeypatch.setattr(scope, "gather_rollouts", lambda *a: seen.append(a[-1]) or real(*a))
    run_scope(tiny_args(student, teacher, flagged, tmp_path / "run", "--rollout-labels", "my_labels:labels"))
    assert [sorted(labels) for labels in seen] == [["teacher_unreliable", "unlikely_route"]] * 2
    for labels in seen:  # 4 problems x 4 rollouts, each rollout labelled with its own problem's flag
        assert labels["teacher_unreliable"].shape == (16,)
        assert all(labels["teacher_unreliable"][i] == labels["teacher_unreliable"][i // 4 * 4] for i in range(16))
    for m in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()):
        assert "opd_unreliable_prompts" in m and "mle_unlikely_prompts" in m


@pytest.mark.parametrize("spec, message", [("no_such_module:labels", "cannot be imported"),
                                           ("my_labels:nothing", "cannot be imported"),
                                           ("my_labels", "cannot be imported"),
                                           ("my_labels:broken", "expected {'teacher_unreliable': bool")])
def test_a_labeller_that_cannot_be_imported_or_answers_wrongly_is_named(tiny_pair, tmp_path, monkeypatch, capsys,
                                                                        spec, message):
    student, teacher, data = tiny_pair
    (tmp_path / "my_labels.py").write_text(LABELLER)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SystemExit):
        run_scope(tiny_args(student, teacher, data, tmp_path / "run", "--rollout-labels", spec))
    err = capsys.readouterr().err
    assert "'rollout_labels'" in err and spec.split(":")[0] in err and message in err
