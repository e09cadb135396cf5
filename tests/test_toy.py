"""The toy worlds hold their premises in their data, a build is pinned and recorded, and the premises are
measured as the module docstring says (toy.py)."""
import json
import math
import random

import pytest
import torch
from safetensors.torch import save_file

import toy
from verify import grade


def problems(n: int = 2000) -> list[dict]:
    rng = random.Random(3)
    return [toy.make_premises_problem(rng) for _ in range(n)]


def test_flagged_problems_are_exactly_those_the_teachers_rule_gets_wrong():
    rows = problems()
    for r in rows:
        a, op, b = toy.split_problem(r["problem"])
        for route in ("columns", "places"):
            teacher_solution, teacher_answer = toy.worked(a, op, b, route, borrows=False)
            assert r["teacher_unreliable"] == (teacher_answer != int(r["answer"]))
            assert grade(teacher_solution, r["answer"]) == (not r["teacher_unreliable"])
    flagged = [r for r in rows if r["teacher_unreliable"]]
    assert all("-" in r["problem"] for r in flagged)                  # only subtractions...
    assert 0.25 < len(flagged) / len(rows) < 0.45                     # ...that borrow: a third of the task


def test_both_routes_reach_the_answer_and_are_told_apart():
    for r in problems():
        a, op, b = toy.split_problem(r["problem"])
        assert int(r["answer"]) == (a + b if op == "+" else a - b)
        for route in ("columns", "places"):
            solution, answer = toy.worked(a, op, b, route)
            assert answer == int(r["answer"]) and grade(solution, r["answer"])
            assert toy.route(r["problem"], solution) == (route if max(a, b) >= 10 else "columns")


def test_worked_solutions_by_hand():
    assert toy.worked(532, "-", 178, "columns") == ("12-8=4 12-7=5 4-1=3 \\boxed{354}", 354)
    assert toy.worked(532, "-", 178, "columns", borrows=False) == ("8-2=6 7-3=4 5-1=4 \\boxed{446}", 446)
    assert toy.worked(532, "-", 178, "places") == ("500-100=400 30-70=-40 2-8=-6 400-40-6=354 \\boxed{354}", 354)
    assert toy.worked(486, "+", 357, "places") == ("400+300=700 80+50=130 6+7=13 700+130+13=843 \\boxed{843}", 843)
    assert toy.worked(486, "+", 357, "columns") == ("6+7=13 8+5+1=14 4+3+1=8 \\boxed{843}", 843)  # the demo's


SMALL = dict(n_train=200, n_test=20, steps={"student": 2, "teacher": 2}, premise_problems=2)


def test_a_small_premises_world_builds_with_the_flag_in_its_files_and_its_record(tmp_path):
    root = toy.build_premises(tmp_path / "world", **SMALL)
    train = [json.loads(line) for line in (root / "train.jsonl").read_text().splitlines()]
    test = [json.loads(line) for line in (root / "test.jsonl").read_text().splitlines()]
    assert len(train) == 200 and len(test) == 20
    assert all(isinstance(r["teacher_unreliable"], bool) for r in train + test)
    assert {r["problem"] for r in test}.isdisjoint(r["problem"] for r in train)
    assert (root / "student" / "config.json").exists() and (root / "teacher" / "config.json").exists()
    record = json.loads((root / "world.json").read_text())
    assert (record["world"], record["build_seed"], record["threads"]) == ("premises", 0, 1)
    assert record["weights_sha256"] == toy.weights_hash(root)
    assert record["premises"]["counts"]["rollouts"] == 2 * 8
    rollouts = [json.loads(line) for line in (root / "premises.jsonl").read_text().splitlines()]
    assert len(rollouts) == 16
    assert all({"teacher_unreliable", "unlikely_route", "nll_teacher"} <= set(r) for r in rollouts)


def test_the_same_build_seed_gives_the_same_weights_and_another_seed_other_ones(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the caller's own setting: a build pins one thread, then gives this back
    try:
        hashes = [toy.weights_hash(toy.build_routes(tmp_path / name, build_seed=seed, **SMALL))
                  for name, seed in (("a", 0), ("b", 0), ("c", 1))]
        assert torch.get_num_threads() == 2 and not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.set_num_threads(threads)
    assert hashes[0] == hashes[1] != hashes[2]
    assert (tmp_path / "a" / "train.jsonl").read_text() != (tmp_path / "c" / "train.jsonl").read_text()


def test_build_seed_0_keeps_the_original_seeds_and_no_two_builds_share_one():
    assert toy.build_seeds(0) == (0, 1, 2)
    seeds = [s for b in range(100) for s in toy.build_seeds(b)]
    assert len(set(seeds)) == len(seeds)


def test_a_directory_holding_another_build_is_not_taken_for_the_one_asked(tmp_path, capsys):
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "config.json").write_text("{}")
    (tmp_path / "world.json").write_text(json.dumps({"world": "routes", "build_seed": 0}))
    assert toy.build_routes(tmp_path) == tmp_path                     # already built: returns at once
    with pytest.raises(SystemExit):
        toy.build_routes(tmp_path, build_seed=1)
    assert "the routes world from build seed 0, not the routes world from build seed 1" in capsys.readouterr().err


def test_the_command_line_rejects_an_unknown_world_by_name(capsys):
    with pytest.raises(SystemExit):
        toy.main(["--world", "moon"])
    assert "invalid choice: 'moon'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        toy.main(["--build-seed", "-1"])
    assert "--build-seed is -1; expected 0 or more" in capsys.readouterr().err


# -----------------------------------------------------------------------------
# The weights' hash

def save_pair(root, student: dict, teacher: dict, metadata=None):
    for name, tensors in (("student", student), ("teacher", teacher)):
        (root / name).mkdir(parents=True, exist_ok=True)
        save_file(tensors, root / name / "model.safetensors", metadata=metadata)


def test_the_weights_hash_changes_with_one_weight_and_with_nothing_else(tmp_path):
    student = {"embed": torch.arange(6.0).reshape(2, 3), "norm": torch.ones(3)}
    teacher = {"head": torch.full((4, 3), 0.5)}
    save_pair(tmp_path / "a", student, teacher)
    save_pair(tmp_path / "b", dict(reversed(student.items())), teacher, metadata={"format": "pt"})  # other file
    changed = {**teacher, "head": teacher["head"].clone()}
    changed["head"][3, 2] = 0.5000001
    save_pair(tmp_path / "c", student, changed)
    save_pair(tmp_path / "d", teacher, student)                       # the same tensors, the models swapped
    hashes = [toy.weights_hash(tmp_path / name) for name in "abcd"]
    assert hashes[0] == hashes[1]
    assert len(set(hashes[1:])) == 3


# -----------------------------------------------------------------------------
# The routes world, and the premises measured at build

def addition_rows(n: int = 2000) -> list[dict]:
    rng = random.Random(3)
    return [toy.make_problem(rng) for _ in range(n)]


def test_routes_teacher_solutions_are_right_columns_and_the_students_columns_drop_the_top_carry():
    rng = random.Random(0)
    rows = addition_rows()
    student = [toy.routes_student_solution(r, rng) for r in rows]
    places = [toy.route(r["problem"], s) == "places" for r, s in zip(rows, student)]
    assert 0.3 < sum(places) / len(places) < 0.4                      # the student's unlikely route
    carries_out = [len(r["answer"]) > len(str(max(toy.split_problem(r["problem"])[::2]))) for r in rows]
    for r, s, p, c in zip(rows, student, places, carries_out):
        assert grade(r["solution"], r["answer"]) and toy.route(r["problem"], r["solution"]) == "columns"  # teacher
        assert grade(s, r["answer"]) == (p or not c)                 # only places carry out of the top column
    assert 0.4 < sum(carries_out) / len(rows) < 0.6                   # place values decide half the problems
    assert toy.worked(486, "+", 657, "columns", carries_out=False) == ("6+7=13 8+5+1=14 4+6+1=11 \\boxed{143}", 143)


def test_the_labellers_read_the_route_and_the_premises_flag():
    row = {"problem": "486+657", "answer": "1143"}
    places = "400+600=1000 80+50=130 6+7=13 1000+130+13=1143 \\boxed{1143}"
    columns = "6+7=13 8+5+1=14 4+6+1=11 \\boxed{143}"
    assert toy.routes_labels(row, places) == {"teacher_unreliable": True, "unlikely_route": True}
    assert toy.routes_labels(row, columns) == {"teacher_unreliable": False, "unlikely_route": False}
    assert toy.routes_labels(row, "garbage") == {"teacher_unreliable": False, "unlikely_route": False}
    assert toy.route("486+657", "500+600=1100 80+50=130") == "places"  # a wrong place value is still that route
    assert toy.route("70+30", "0+0=0 7+3=10 \\boxed{100}") == "columns"   # digits, even when both are 0
    assert toy.route("57+368", "0+300=300 50+60=110") == "places"      # the shorter number's place value is 0
    flagged = {"problem": "532-178", "answer": "354", "teacher_unreliable": True}
    assert toy.premises_labels(flagged, "500-100=400 30-70=-40 2-8=-6 400-40-6=354 \\boxed{354}") == \
        {"teacher_unreliable": True, "unlikely_route": True}
    assert toy.premises_labels({**flagged, "teacher_unreliable": False}, "12-8=4 12-7=5 4-1=3 \\boxed{354}") == \
        {"teacher_unreliable": False, "unlikely_route": False}


def test_the_premises_labeller_names_a_missing_flag(capsys):
    with pytest.raises(SystemExit):
        toy.premises_labels({"problem": "532-178", "answer": "354"}, "12-8=4")
    assert "problem '532-178': field 'teacher_unreliable' is None; expected true or false" in capsys.readouterr().err


def test_the_teacher_takes_over_where_a_rollout_first_leaves_the_right_solution_of_its_route(tokenizer):
    dropped = "6+7=13 8+5+1=14 4+6+1=11 \\boxed{143}"
    assert toy.right_so_far("486+657", dropped, tokenizer) == "6+7=13 8+5+1=14 4+6+1=11"
    slip = "400+600=1000 80+50=130 6+7=13 1000+130+13=1133 \\boxed{1133}"
    assert toy.right_so_far("486+657", slip, tokenizer) == "400+600=1000 80+50=130 6+7=13 1000+130+13=11"
    right = toy.worked(486, "+", 657, "places")[0]
    assert toy.right_so_far("486+657", right, tokenizer) == right


def test_ranks_share_ties_and_spearman_is_pearson_on_ranks():
    assert toy.ranks([3.0, 1.0, 3.0, 2.0]) == [3.5, 1.0, 3.5, 2.0]
    assert toy.spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert toy.spearman([1, 2, 3], [0, 0, 0]) is None                 # one kind only: no correlation


def rollout(group, correct, nll_teacher=1.0, nll_student=1.0, unreliable=False, unlikely=False, useful=None):
    r = {"group": group, "correct": correct, "teacher_unreliable": unreliable, "unlikely_route": unlikely,
         "nll_student": nll_student, "nll_teacher": nll_teacher}
    return r if correct else {**r, "teacher_continues_right": useful}


def test_premise_numbers_on_hand_made_groups():
    records = [  # group 0: two wrong rollouts the teacher can guide (low NLL), two it cannot; one correct each way
        rollout(0, False, 0.5, useful=True), rollout(0, False, 2.0, unreliable=True, useful=False),
        rollout(0, False, 3.0, unreliable=True, useful=False), rollout(0, False, 1.0, useful=True),
        rollout(0, True, nll_student=0.2), rollout(0, True, nll_student=0.9, unlikely=True),
        # group 1: the teacher's NLL says nothing about its use here
        rollout(1, False, 1.0, useful=False), rollout(1, False, 2.0, unreliable=True, useful=True),
        rollout(1, False, 3.0, useful=False),
        # group 2: solved only on the unlikely route; its wrong rollouts of one kind count in no correlation
        rollout(2, True, nll_student=0.8, unlikely=True), rollout(2, False, 0.1, useful=True),
        rollout(2, False, 0.3, useful=True)]
    numbers = toy.premise_numbers(records)
    assert numbers["counts"] == {"problems": 3, "rollouts": 12, "correct": 3, "correct, unlikely route": 2,
                                 "wrong": 9, "wrong, teacher unreliable": 3}
    a, b = numbers["a"], numbers["b"]
    # group 0: NLL ranks 1 3 4 2 against useful ranks 3.5 1.5 1.5 3.5 -> -4 / sqrt(5 * 4); group 1: 0
    assert a["spearman teacher nll, guidance useful"] == {"mean": pytest.approx(-2 / math.sqrt(5) / 2), "groups": 2}
    assert a["spearman teacher nll, labelled reliable"]["groups"] == 2
    assert a["teacher continues right, reliable"] == pytest.approx(4 / 6)
    assert a["teacher continues right, unreliable"] == pytest.approx(1 / 3)
    assert a["holds"]
    assert b["unlikely share of correct"] == pytest.approx(2 / 3)
    assert b["spearman student nll, unlikely route"] == {"mean": pytest.approx(1.0), "groups": 1}
    assert (b["pass@8"], b["pass@8 without the unlikely route"]) == (pytest.approx(2 / 3), pytest.approx(1 / 3))
    assert b["holds"]
    useless = [{**r, "teacher_continues_right": not r["teacher_continues_right"]} if not r["correct"] else r
               for r in records]
    assert not toy.premise_numbers(useless)["a"]["holds"]             # guidance useful where the NLL is high


def test_the_teachers_training_solutions_never_borrow_and_the_students_always_do():
    rng = random.Random(0)
    flagged = [r for r in problems() if r["teacher_unreliable"]][:50]
    teacher, student = toy.premises_writer("teacher"), toy.premises_writer("student")
    assert not any(grade(teacher(r, rng), r["answer"]) for r in flagged)
    assert all(grade(student(r, rng), r["answer"]) for r in flagged)
    places = [toy.route(r["problem"], student(r, rng)) == "places" for r in problems(1000)]
    assert 0.15 < sum(places) / len(places) < 0.35                   # the student's unlikely route
