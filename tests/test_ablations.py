"""bench/ablations.py: the variants' flags, builds and resuming, the tables, paired intervals and claims."""
import json
import shutil
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
    ("opd_g1_paper", dict(route_by_correctness=False, teacher_weight="uniform", group_size=1, batch_size=16)),
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
    ("kd", dict(algorithm="kd", kd_data=".toy/kd_solutions.jsonl")),   # the build's teacher's solutions
])
def test_each_variant_sets_the_papers_flags_on_the_worlds_config(variant, expected):
    cfg = fields_of(variant)
    assert {k: getattr(cfg, k) for k in expected} == expected
    assert cfg.train_data == ".toy/train.jsonl" and cfg.max_steps == 40   # the world's own fields stay


def test_every_variant_keeps_scopes_rollouts_per_step_but_the_papers_opd_which_keeps_its_prompts():
    for variant in ablations.VARIANTS:
        cfg = fields_of(variant)
        expected = 16 if variant == "opd_g1_paper" else 128            # 16 prompts x 1: 1/8 of SCOPE's rollouts
        assert cfg.batch_size * cfg.group_size == expected == ablations.rollouts_per_step("demo", variant), variant


def test_a_build_has_its_own_world_directory_and_files():
    cfg, flags = ablations.build_config("demo", 2)
    assert ablations.build_dir("demo", 2) == Path(".toy_build2")
    assert (cfg.student, cfg.teacher, cfg.train_data, cfg.eval_data) == \
        (".toy_build2/student", ".toy_build2/teacher", ".toy_build2/train.jsonl", ".toy_build2/test.jsonl")
    assert flags[:2] == ["--student", ".toy_build2/student"] and cfg.group_size == 8   # the rest is the world's


# -----------------------------------------------------------------------------
# Statistics by hand

def test_mean_and_sample_std_over_runs_by_hand():
    assert ablations.mean_std([0.5, 0.7]) == "0.600 +- 0.141"      # std = 0.2 / sqrt(2)
    assert ablations.mean_std([0.25]) == "0.250 +- -"
    rows = [{"variant": v, "build": b, "seed": s, "step": t, "avg@8": a, "pass@2": a, "pass@8": p}
            for v, b, s, t, a, p in [("scope", 0, 0, 0, 0.1, 0.2), ("scope", 1, 0, 0, 0.1, 0.2),
                                     ("scope", 0, 0, 10, 0.5, 0.9), ("scope", 1, 0, 10, 0.7, 1.0),
                                     ("no_dpaw", 0, 0, 0, 0.1, 0.2), ("no_dpaw", 0, 0, 10, 0.4, 0.6)]]
    lines = ablations.table(rows, ["scope", "no_dpaw", "opd_g1"], "demo").splitlines()
    assert lines[0] == ("| variant | rollouts/step | runs | Avg@8 step 0 | Avg@8 step 10 | Pass@2 step 10 | "
                        "Pass@8 step 10 | Avg@8 step 10 by build (0, 1) |")
    assert lines[2] == ("| scope | 128 | 2 | 0.100 +- 0.000 | 0.600 +- 0.141 | 0.600 +- 0.141 | 0.950 +- 0.071 | "
                        "0.500 / 0.700 |")
    assert lines[3] == "| no_dpaw | 128 | 1 | 0.100 +- - | 0.400 +- - | 0.400 +- - | 0.600 +- - | 0.400 / - |"
    assert len(lines) == 4                                            # a variant without results has no row


def test_the_paired_interval_is_the_mean_difference_plus_minus_t_times_its_standard_error():
    # differences 0.1, 0.3, 0.2: mean 0.2, sd 0.1, n 3; t(0.975, 2 df) = 4.303: 0.2 +- 4.303 x 0.1 / sqrt(3)
    mean, low, high = ablations.paired([0.1, 0.3, 0.2])
    assert mean == pytest.approx(0.2) and low == pytest.approx(-0.04843, abs=1e-5) and high == pytest.approx(0.44843,
                                                                                                            abs=1e-5)
    # 0.05, 0.07, 0.06, 0.08, 0.04: mean 0.06, sd sqrt(0.001 / 4) = 0.015811; t(4 df) = 2.776
    mean, low, high = ablations.paired([0.05, 0.07, 0.06, 0.08, 0.04])
    assert (low, high) == (pytest.approx(0.06 - 2.776 * 0.015811 / 5 ** 0.5, abs=1e-6),
                           pytest.approx(0.06 + 2.776 * 0.015811 / 5 ** 0.5, abs=1e-6))
    assert ablations.paired([0.3]) is None                            # one pair has no spread to go on
    assert ablations.t975(1) == 12.706 and ablations.t975(30) == 2.042
    assert ablations.t975(31) == pytest.approx(2.0395, abs=1e-4)      # beyond the table: the expansion
    assert ablations.t975(1000) == pytest.approx(1.9623, abs=1e-4)


def result(variant, build, seed, step=40, avg=0.5, pass8=0.7, **training):
    return {"variant": variant, "build": build, "seed": seed, "step": step, "avg@8": avg, "pass@8": pass8,
            "training": training, "weights_hash": f"h{build}", "eval_problems": 200, "threads": 1}


def test_pairs_are_made_within_one_build_and_seed_only():
    results = [result("scope", 0, 0, avg=0.5), result("scope", 1, 0, avg=0.6), result("scope", 0, 1, avg=0.4),
               result("no_dpaw", 0, 0, avg=0.55), result("no_dpaw", 1, 0, avg=0.5), result("no_dpaw", 1, 1, avg=0.9)]
    assert ablations.differences(results, "no_dpaw", "scope", 40, "avg@8") == pytest.approx([0.05, -0.1])
    lines = ablations.paired_table(results, ["scope", "no_dpaw"]).splitlines()
    # -0.025 +- 12.706 x sd(0.05, -0.1) / sqrt(2) = -0.025 +- 12.706 x 0.075
    assert lines[2] == "| no_dpaw | 2 | -0.025 [-0.978, +0.928] | +0.000 [+0.000, +0.000] |"   # Pass@8: all 0.7
    assert ablations.interval_text(None, 1) == "1 pair: no interval" and ablations.interval_text(None, 0) == "no pairs"
    assert ablations.paired_table(results, ["scope", "no_dpaw"]).splitlines()[0] == \
        "| variant - scope | pairs | Avg@8 step 40 | Pass@8 step 40 |"


def claim(name: str) -> tuple:
    return next(c for c in ablations.CLAIMS if c[0].startswith(name))


def test_a_claim_is_reproduced_refuted_or_inconclusive_by_its_paired_interval():
    pairs = [(0, 0), (0, 1), (1, 0), (1, 1)]
    scope_avg = [0.50, 0.60, 0.55, 0.45]
    results = [result("scope", b, s, avg=a, ess_mle=0.9, ess_opd=0.8) for (b, s), a in zip(pairs, scope_avg)]
    for variant, gaps in (("opd_g8", [0.10, 0.12, 0.08, 0.10]),           # SCOPE ahead in every pair
                          ("no_teacher_weight", [-0.10, -0.12, -0.08, -0.10]),   # behind in every pair
                          ("reversed_teacher", [0.10, -0.10, 0.05, -0.05]),      # either way
                          ("tau_0.5", [0.10, 0.12, 0.08, 0.10])):
        results += [result(variant, b, s, avg=a - g) for (b, s), a, g in zip(pairs, scope_avg, gaps)]
    results.append(result("opd_g1_paper", 0, 0, avg=0.1))
    word, evidence = ablations.verdict(results, claim("routing helps (SCOPE"))
    # gaps 0.10, 0.12, 0.08, 0.10: mean 0.1, sd 0.01633, t(3 df) 3.182: 0.1 +- 0.026
    assert word == "reproduced" and evidence == "scope - opd_g8, Avg@8 step 40: +0.100 [+0.074, +0.126] (4 pairs)"
    assert ablations.verdict(results, claim("the teacher weight helps"))[0] == "not reproduced"
    assert ablations.verdict(results, claim("reversing the teacher"))[0] == "inconclusive (interval includes zero)"
    assert ablations.verdict(results, claim("tau = 1"))[0] == "not run"                 # tau_2 never ran
    assert ablations.verdict(results, claim("SCOPE beats OPD (the paper's"))[0] == \
        "inconclusive (interval includes zero)"                                             # one pair only
    assert ablations.verdict(results, claim("routing helps, weights equal"))[0] == "not run"


def test_a_claim_about_a_weight_that_never_acts_or_has_no_mixed_prompt_is_not_testable_there():
    results = [result("scope", 0, s, ess_mle=0.9995, ess_opd=0.93, opd_unreliable_prompts=0.0,
                      mle_unlikely_prompts=1.5) for s in (0, 1)]
    results += [result(v, 0, s) for v in ("no_student_weight", "no_teacher_weight", "tau_0.5", "tau_2") for s in (0, 1)]
    word, evidence = ablations.verdict(results, claim("the student weight helps"))
    assert word == "not testable" and evidence.startswith("the student weight stays uniform (ess_mle 1.000)")
    word, evidence = ablations.verdict(results, claim("the teacher weight helps"))
    assert word == "not testable" and "no prompt mixes" in evidence
    assert ablations.verdict(results, claim("tau = 1"))[0] == "not testable"             # neither weight acts
    results[0]["training"]["ess_opd"] = results[1]["training"]["opd_unreliable_prompts"] = 0.5
    assert ablations.verdict(results, claim("the teacher weight helps"))[0] != "not testable"
    assert ablations.verdict(results, claim("tau = 1"))[0] != "not testable"


def test_the_claims_table_has_a_column_per_world_with_results():
    by_world = {"demo": [result("scope", 0, s, avg=0.5 + s / 10) for s in range(3)]
                + [result("opd_g8", 0, s, avg=0.4 + s / 10) for s in range(3)], "premises": []}
    lines = ablations.claims_table(by_world, full=False).splitlines()
    assert lines[0] == "| claim | paper | demo |" and len(lines) == 2 + len(ablations.CLAIMS)
    assert lines[2].startswith("| routing helps (SCOPE") and lines[2].endswith("| improves | reproduced |")


# -----------------------------------------------------------------------------
# The harness end to end on tiny random models

@pytest.fixture
def tiny_world(tiny_pair, tmp_path, monkeypatch):
    """The harness pointed at the tiny random models: a world config whose world directory is tmp/world, and a
    builder that copies the tiny models into a build's directory (recording each build seed)."""
    student, teacher, data = tiny_pair
    world = tmp_path / "world"
    for source in (student, teacher):
        shutil.copytree(source, world / Path(source).name)
    shutil.copy(data, world / "train.jsonl")
    config = tmp_path / "tiny.yaml"
    config.write_text("\n".join(f"{k}: {v}" for k, v in dict(
        student=world / "student", teacher=world / "teacher", train_data=world / "train.jsonl",
        eval_data=world / "train.jsonl", group_size=2, batch_size=2, max_new_tokens=8, max_prompt_tokens=64,
        gradient_checkpointing="false", lr=1e-3).items()))
    monkeypatch.setattr(ablations, "world_config", lambda name: config)
    built, trained, measured = [], [], []

    def build(root, build_seed):
        built.append(build_seed)
        if not Path(root).exists():
            shutil.copytree(world, root)
    monkeypatch.setitem(toy.WORLDS, "demo", build)
    monkeypatch.setattr(toy, "weights_hash", lambda root: f"weights-of-{Path(root).name}")
    train, evaluate = ablations.train, ablations.evaluate
    monkeypatch.setattr(ablations, "train", lambda *a: (trained.append(a[1]), train(*a)))
    monkeypatch.setattr(ablations, "evaluate", lambda *a: (measured.append(a[0]), evaluate(*a))[1])
    threads = torch.get_num_threads()
    yield tmp_path, built, trained, measured
    torch.set_num_threads(threads)  # the harness pins one thread for its process; the other tests keep theirs


def test_a_rerun_reads_finished_results_back_and_continues_an_unfinished_run(tiny_world):
    tmp, built, trained, measured = tiny_world
    results, out = tmp / "results" / "tiny.jsonl", tmp / "runs"
    argv = ["--variants", "scope,no_dpaw", "--builds", "0,1", "--seeds", "0", "--steps", "2", "--eval-steps", "0,1,2",
            "--eval-problems", "3", "--out", str(out), "--results", str(results)]
    first = ablations.main(argv)
    assert sorted(set(built)) == [0, 1]
    assert (tmp / "world_build0" / "student").exists() and (tmp / "world_build1" / "student").exists()
    assert [(r["variant"], r["build"], r["step"]) for r in first] == \
        [(v, b, s) for b in (0, 1) for v in ("scope", "no_dpaw") for s in (0, 1, 2)]
    assert len(trained) == 4 and len(measured) == 10                  # step 0 is measured once per (build, seed)
    assert {(r["build"], r["weights_hash"], r["threads"]) for r in first} == \
        {(0, "weights-of-world_build0", 1), (1, "weights-of-world_build1", 1)}
    assert torch.get_num_threads() == 1
    assert "ess_opd" in first[2]["training"] and first[0]["training"] == {}
    report = results.with_suffix(".md").read_text()
    assert "0 (weights-of-w), 1 (weights-of-w)" in report and "| no_dpaw | 4 | 2 |" in report   # 12 characters
    assert (out / "accuracy.png").exists() and (out / "pass_at_k.png").exists()

    trained.clear(), measured.clear()
    assert ablations.main(argv) == first and not trained and not measured   # all finished: nothing reruns

    # no_dpaw of build 1 stopped after step 1: its last checkpoint and result are gone
    lines = results.read_text().splitlines()
    results.write_text("".join(line + "\n" for line in lines if json.loads(line)["variant"] != "no_dpaw"
                               or json.loads(line)["build"] != 1 or json.loads(line)["step"] < 2))
    shutil.rmtree(out / "build1" / "no_dpaw" / "seed0" / "step_000002")
    again = ablations.main(argv)
    assert trained == [out / "build1" / "no_dpaw" / "seed0"]
    assert measured == [str(out / "build1" / "no_dpaw" / "seed0" / "step_000002")]
    metrics = (out / "build1" / "no_dpaw" / "seed0" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(m)["step"] for m in metrics] == [1, 2]         # continued from step 1, not restarted
    assert sorted(map(json.dumps, again)) == sorted(map(json.dumps, first))


def test_results_of_a_build_whose_weights_differ_here_are_refused(tiny_world, monkeypatch, capsys):
    tmp, *_ = tiny_world
    results = tmp / "tiny.jsonl"
    argv = ["--variants", "scope", "--builds", "0", "--seeds", "0", "--steps", "1", "--eval-steps", "0,1",
            "--eval-problems", "2", "--out", str(tmp / "runs"), "--results", str(results)]
    ablations.main(argv)
    monkeypatch.setattr(toy, "weights_hash", lambda root: "other-bits")
    with pytest.raises(SystemExit):
        ablations.main(argv)
    err = capsys.readouterr().err
    assert str(results) in err and "weights-of-world_build0" in err and "other-bits" in err
    with pytest.raises(SystemExit):                                   # another protocol: refused as well
        ablations.main([*argv, "--eval-problems", "3"])
    assert "another protocol" in capsys.readouterr().err


def test_the_probe_sorts_rollouts_into_the_kinds_each_world_is_about():
    texts = ["6+7=13 sum 13", "6+7=13 \\boxed{14}", "6+7=13 \\boxed{13}"]
    correct = torch.tensor([False, False, True])
    demo = ablations.kinds(texts, correct, {})
    assert demo["wrong, unboxed"].tolist() == [True, False, False]
    assert demo["wrong, boxed"].tolist() == [False, True, False]
    labels = {"teacher_unreliable": torch.tensor([True, False, True, False]),
              "unlikely_route": torch.tensor([True, False, False, True])}
    labelled = ablations.kinds(["a"] * 4, torch.tensor([True, True, False, False]), labels)
    assert labelled["wrong, teacher unreliable"].tolist() == [False, False, True, False]
    assert labelled["wrong, teacher reliable"].tolist() == [False, False, False, True]
    assert labelled["correct, unlikely route"].tolist() == [True, False, False, False]
    assert labelled["correct, likely route"].tolist() == [False, True, False, False]
