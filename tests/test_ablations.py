"""bench/ablations.py: the variants' flags, resuming, and the mean +- std table."""
import json
import sys
from pathlib import Path

import pytest
import torch

import scope
import toy

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import ablations  # noqa: E402

DEMO = ablations.world_config("demo")


def fields_of(variant: str) -> scope.Config:
    world = scope.parse_config(["--config", str(DEMO)])
    return scope.parse_config(["--config", str(DEMO), *ablations.variant_flags(variant, world)])


@pytest.mark.parametrize("variant, expected", [
    ("scope", dict(route_by_correctness=True, student_weight="ppl", teacher_weight="ppl", tau=1.0, group_size=8,
                   batch_size=16)),
    ("opd_g1", dict(route_by_correctness=False, teacher_weight="uniform", group_size=1, batch_size=128)),
    ("opd_g8", dict(route_by_correctness=False, teacher_weight="uniform", group_size=8, batch_size=16)),
    ("no_teacher_weight", dict(route_by_correctness=True, student_weight="ppl", teacher_weight="uniform")),
    ("no_student_weight", dict(route_by_correctness=True, student_weight="uniform", teacher_weight="ppl")),
    ("no_dpaw", dict(route_by_correctness=True, student_weight="uniform", teacher_weight="uniform")),
    ("reversed_teacher", dict(student_weight="ppl", teacher_weight="reversed")),
    ("reversed_student", dict(student_weight="reversed", teacher_weight="ppl")),
    ("tau_0.5", dict(tau=0.5, student_weight="ppl", teacher_weight="ppl")),
    ("tau_2", dict(tau=2.0)),
    ("released", dict(student_weight="reversed", teacher_weight="ppl", weight_scale="mean", mle_tokens="correct",
                      teacher_temperature=1.0, output_dir="runs/toy")),
])
def test_each_variant_sets_the_papers_flags_on_the_worlds_config(variant, expected):
    cfg = fields_of(variant)
    assert {k: getattr(cfg, k) for k in expected} == expected
    assert cfg.train_data == ".toy/train.jsonl" and cfg.max_steps == 40   # the world's own fields stay


def test_every_variant_keeps_the_rollouts_per_step():
    for variant in ablations.VARIANTS:
        cfg = fields_of(variant)
        assert cfg.batch_size * cfg.group_size == 128, variant


def test_mean_and_sample_std_over_seeds_by_hand():
    assert ablations.mean_std([0.5, 0.7]) == "0.600 +- 0.141"      # std = 0.2 / sqrt(2)
    assert ablations.mean_std([0.25]) == "0.250 +- -"
    rows = [{"variant": v, "seed": s, "step": t, "avg@8": a, "pass@2": a, "pass@8": p}
            for v, s, t, a, p in [("scope", 0, 0, 0.1, 0.2), ("scope", 1, 0, 0.1, 0.2),
                                  ("scope", 0, 10, 0.5, 0.9), ("scope", 1, 10, 0.7, 1.0),
                                  ("no_dpaw", 0, 0, 0.1, 0.2), ("no_dpaw", 0, 10, 0.4, 0.6)]]
    lines = ablations.table(rows, ["scope", "no_dpaw", "opd_g1"]).splitlines()
    assert lines[0] == "| variant | seeds | Avg@8 step 0 | Avg@8 step 10 | Pass@2 step 10 | Pass@8 step 10 |"
    assert lines[2] == "| scope | 2 | 0.100 +- 0.000 | 0.600 +- 0.141 | 0.600 +- 0.141 | 0.950 +- 0.071 |"
    assert lines[3] == "| no_dpaw | 1 | 0.100 +- - | 0.400 +- - | 0.400 +- - | 0.600 +- - |"
    assert len(lines) == 4                                            # a variant without results has no row


@pytest.fixture
def tiny_world(tiny_pair, tmp_path, monkeypatch):
    """The harness pointed at the tiny random models: a world config, and a builder with nothing to build."""
    student, teacher, data = tiny_pair
    config = tmp_path / "tiny.yaml"
    config.write_text("\n".join(f"{k}: {v}" for k, v in dict(
        student=student, teacher=teacher, train_data=data, eval_data=data, group_size=2, batch_size=2,
        max_new_tokens=8, max_prompt_tokens=64, gradient_checkpointing="false", lr=1e-3).items()))
    monkeypatch.setattr(ablations, "world_config", lambda world: config)
    monkeypatch.setitem(toy.WORLDS, "demo", (lambda root: root, ""))
    trained, measured = [], []
    train, evaluate = ablations.train, ablations.evaluate
    monkeypatch.setattr(ablations, "train", lambda *a: (trained.append(a[1:]), train(*a)))
    monkeypatch.setattr(ablations, "evaluate", lambda *a: (measured.append(a[0]), evaluate(*a))[1])
    return tmp_path / "out", trained, measured


def test_a_rerun_reads_finished_results_back_and_continues_an_unfinished_run(tiny_world):
    out, trained, measured = tiny_world
    argv = ["--variants", "scope,no_dpaw", "--seeds", "0", "--steps", "2", "--eval-steps", "0,1,2",
            "--eval-problems", "3", "--out", str(out)]
    first = ablations.main(argv)
    assert [(r["variant"], r["step"]) for r in first] == [("scope", 0), ("scope", 1), ("scope", 2),
                                                          ("no_dpaw", 0), ("no_dpaw", 1), ("no_dpaw", 2)]
    assert len(trained) == 2 and len(measured) == 5                   # step 0 is measured once per seed
    assert (out / "table.md").exists() and (out / "accuracy.png").exists() and (out / "pass_at_k.png").exists()

    trained.clear(), measured.clear()
    assert ablations.main(argv) == first and not trained and not measured   # all finished: nothing reruns

    # no_dpaw stopped after step 1: its last checkpoint and result are gone
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text("".join(line + "\n" for line in lines
                                               if json.loads(line)["variant"] != "no_dpaw" or json.loads(line)["step"] < 2))
    for path in sorted((out / "no_dpaw" / "seed0" / "step_000002").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (out / "no_dpaw" / "seed0" / "step_000002").rmdir()
    again = ablations.main(argv)
    assert [t[0].name for t in trained] == ["seed0"] and trained[0][0].parent.name == "no_dpaw"
    assert measured == [str(out / "no_dpaw" / "seed0" / "step_000002")]
    assert [json.loads(m)["step"] for m in (out / "no_dpaw" / "seed0" / "metrics.jsonl").read_text().splitlines()] \
        == [1, 2]                                                     # continued from step 1, not restarted
    assert [r for r in again if r["step"] < 2] == [r for r in first if r["step"] < 2]


def test_the_probe_sorts_rollouts_into_the_kinds_each_world_is_about():
    texts = ["6+7=13 sum 13", "6+7=13 \\boxed{14}", "6+7=13 \\boxed{13}"]
    correct = torch.tensor([False, False, True])
    demo = ablations.kinds("demo", [{"problem": "6+7"}], texts, correct, 3)
    assert demo["wrong, unboxed"].tolist() == [True, False, False]
    assert demo["wrong, boxed"].tolist() == [False, True, False]
    rows = [{"problem": "32-18", "answer": "14", "unreliable": True}]    # the teacher's rule says 26
    texts = ["12-8=4 2-1=1 \\boxed{14}", "30-10=20 2-8=-6 20-6=14 \\boxed{14}", "8-2=6 3-1=2 \\boxed{26}",
             "12-8=4 2-1=1 \\boxed{15}"]
    premises = ablations.kinds("premises", rows, texts, torch.tensor([True, True, False, False]), 4)
    assert premises["wrong, teacher-unreliable, the teacher's (wrong) answer"].tolist() == [False, False, True, False]
    assert premises["wrong, teacher-unreliable, another answer"].tolist() == [False, False, False, True]
    assert premises["correct, place values"].tolist() == [False, True, False, False]
    assert premises["correct, columns"].tolist() == [True, False, False, False]
