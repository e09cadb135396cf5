"""How the project is put together: imports that point one way, the configuration parser, and
what a run shows (its console, its curves, the experiment tracker)."""
import ast
import json
import subprocess
import sys
import types

import matplotlib.image
import pytest

import eval as evaluation
import scope
from conftest import ROOT, tiny_args

PROJECT = {"scope", "sample", "verify", "verify_extract", "verify_code", "eval", "toy", "plan", "reliability", "teacher"}
# Each file and the project modules it may import: the trainer on top; the graders and sample.py at the bottom.
ALLOWED = {"verify.py": {"verify_extract"}, "verify_extract.py": set(), "verify_code.py": set(), "sample.py": set(),
           "plan.py": {"sample"}, "eval.py": {"sample", "verify", "verify_code"}, "toy.py": {"sample", "verify"},
           "reliability.py": {"sample", "plan", "eval"}, "teacher.py": {"sample", "reliability"},
           "scope.py": {"sample", "verify", "verify_code", "eval", "plan", "toy", "reliability", "teacher"}}


def imports(path) -> tuple[set[str], set[str]]:
    """(project modules imported at the top of the file, those imported inside a function)."""
    tree = ast.parse((ROOT / path).read_text())
    top, inner = set(), set()
    for node in ast.walk(tree):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        found = {n.split(".")[0] for n in names} & PROJECT
        (top if node in tree.body else inner).update(found)
    return top, inner


@pytest.mark.parametrize("path", sorted(ALLOWED))
def test_imports_point_one_way_and_none_hides_inside_a_function(path):
    top, inner = imports(path)
    assert top <= ALLOWED[path], f"{path} imports {sorted(top - ALLOWED[path])}"
    assert not inner, f"{path} imports {sorted(inner)} inside a function"


def test_every_choice_field_lists_its_choices_in_help():
    out = subprocess.run([sys.executable, "scope.py", "--help"], cwd=ROOT, capture_output=True, text=True).stdout
    for words in ("{ppl,uniform,reversed}", "{mean,sum}", "{token_mean,sum,micro_token_mean}", "{plain,static}",
                  "{none,wandb,tensorboard,trackio}", "{scope,grpo,kd}", "{math,code}", "{wrong,all}"):
        assert words in out
    assert "(default: 0.6)" in out  # defaults are shown


@pytest.fixture
def fake_tracker(monkeypatch):
    """A stand-in for wandb that records what it is given."""
    fake = types.ModuleType("wandb")
    fake.inits, fake.logs = [], []
    fake.init = lambda **kw: fake.inits.append(kw)
    fake.log = lambda numbers, step: fake.logs.append((numbers, step))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    return fake


def test_report_to_sends_every_steps_numbers_to_the_tracker(tiny_pair, tmp_path, fake_tracker):
    student, teacher, data = tiny_pair
    scope.main(tiny_args(student, teacher, data, tmp_path / "run", "--report-to", "wandb"))
    assert fake_tracker.inits[0]["project"] == "scope" and fake_tracker.inits[0]["config"]["group_size"] == 4
    assert [step for _, step in fake_tracker.logs] == [1, 2]
    logged = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert fake_tracker.logs[0][0]["loss"] == logged["loss"] and "step" not in fake_tracker.logs[0][0]


def test_a_tracker_that_is_not_installed_is_named_with_its_install_command(tiny_pair, tmp_path, monkeypatch, capsys):
    student, teacher, data = tiny_pair
    monkeypatch.setitem(sys.modules, "trackio", None)  # importing it now raises ImportError
    with pytest.raises(SystemExit):
        scope.main(tiny_args(student, teacher, data, tmp_path / "run", "--report-to", "trackio"))
    assert "pip install trackio" in capsys.readouterr().err


def test_a_run_prints_only_its_own_lines_and_draws_its_curves(tiny_pair, tmp_path):
    student, teacher, data = tiny_pair
    run = tmp_path / "run"
    args = tiny_args(student, teacher, data, run, "--eval-every", "1", "--eval-data", str(data), "--eval-limit", "4")
    proc = subprocess.run([sys.executable, "scope.py", *args], cwd=ROOT, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    pieces = [p.strip() for p in (proc.stdout + proc.stderr).replace("\r", "\n").splitlines()]
    foreign = [p for p in pieces if p and not p.startswith(("scope:", "step ", "done:"))]
    assert not foreign, foreign                          # no library's bars, warnings or notices
    assert sum(p.startswith("step ") for p in pieces) == 3   # the quick eval at steps 0, 1 and 2

    picture = matplotlib.image.imread(run / "curves.png")
    assert picture.shape[1] > 3 * picture.shape[0]        # the panels side by side
    (run / "curves.png").unlink()
    evaluation.main(["--plot-run", str(run)])              # a finished run's picture, by one command
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_nothing_is_drawn_for_a_directory_without_logs(tmp_path):
    assert evaluation.plot_run(tmp_path) is None
