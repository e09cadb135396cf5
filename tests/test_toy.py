"""The premises world holds its two premises in its data (toy.py, "The premises world")."""
import json
import random

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


def test_a_small_premises_world_builds_with_the_flag_in_its_files(tmp_path):
    root = toy.build_premises(tmp_path / "world", n_train=200, n_test=20, steps={"student": 2, "teacher": 2})
    train = [json.loads(line) for line in (root / "train.jsonl").read_text().splitlines()]
    test = [json.loads(line) for line in (root / "test.jsonl").read_text().splitlines()]
    assert len(train) == 200 and len(test) == 20
    assert all(isinstance(r["teacher_unreliable"], bool) for r in train + test)
    assert {r["problem"] for r in test}.isdisjoint(r["problem"] for r in train)
    assert (root / "student" / "config.json").exists() and (root / "teacher" / "config.json").exists()


def test_the_teachers_training_solutions_never_borrow_and_the_students_always_do():
    rng = random.Random(0)
    flagged = [r for r in problems() if r["teacher_unreliable"]][:50]
    teacher, student = toy.premises_writer("teacher"), toy.premises_writer("student")
    assert not any(grade(teacher(r, rng), r["answer"]) for r in flagged)
    assert all(grade(student(r, rng), r["answer"]) for r in flagged)
    places = [toy.route(r["problem"], student(r, rng)) == "places" for r in problems(1000)]
    assert 0.15 < sum(places) / len(places) < 0.35                   # the student's unlikely route
