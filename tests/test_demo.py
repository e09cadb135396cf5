"""The demo in one command: `python scope.py --config configs/toy.yaml` builds its toy world when it is missing."""
import inspect
import shutil
from pathlib import Path

import pytest

import scope
import toy
from conftest import ROOT, tiny_args


@pytest.fixture
def fake_world(tiny_pair, monkeypatch):
    """toy.WORLDS["demo"] replaced by a builder that copies the tiny random models into root in a moment;
    returns the list of roots it was called with."""
    student, teacher, data = tiny_pair
    built = []

    def build(root):
        built.append(root)
        shutil.copytree(student, root / "student")
        shutil.copytree(teacher, root / "teacher")
        shutil.copy(data, root / "train.jsonl")
        return root

    monkeypatch.setitem(toy.WORLDS, "demo", build)
    return built


def test_the_demo_config_builds_its_missing_world_says_so_and_trains(fake_world, tmp_path, capsys):
    world, out = tmp_path / "world", tmp_path / "run"
    scope.main(["--config", str(ROOT / "configs/toy.yaml"),
                *tiny_args(world / "student", world / "teacher", world / "train.jsonl", out)])
    assert fake_world == [world]                                      # the student's parent directory
    assert f"building the demo toy world in {world} first" in capsys.readouterr().out
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2  # tiny_args: 2 steps


def test_an_existing_world_is_not_rebuilt(fake_world, tiny_pair, capsys):
    student, teacher, _ = tiny_pair
    cfg = scope.parse_config(["--build-world", "demo", "--student", str(student), "--teacher", str(teacher)])
    toy.build_missing_world(cfg, world=1)
    assert fake_world == [] and "building" not in capsys.readouterr().out


def test_an_empty_build_world_never_builds(fake_world, tmp_path):
    cfg = scope.parse_config(["--student", str(tmp_path / "missing" / "student")])
    toy.build_missing_world(cfg, world=1)
    assert cfg.build_world == "" and fake_world == []


def test_under_torchrun_a_missing_world_is_refused_with_the_command_that_builds_it(fake_world, tmp_path, capsys):
    cfg = scope.parse_config(["--build-world", "demo", "--student", str(tmp_path / "world" / "student")])
    with pytest.raises(SystemExit):
        toy.build_missing_world(cfg, world=2)
    assert f"python toy.py --world demo {tmp_path / 'world'}" in capsys.readouterr().err
    assert fake_world == []


def test_an_unknown_world_is_refused_naming_the_field_and_the_worlds(tmp_path, capsys):
    cfg = scope.parse_config(["--build-world", "moon", "--student", str(tmp_path / "world" / "student")])
    with pytest.raises(SystemExit):
        toy.build_missing_world(cfg, world=1)
    err = capsys.readouterr().err
    assert "build_world" in err and "'moon'" in err and "demo" in err and "premises" in err


@pytest.mark.parametrize("config, world", [("toy.yaml", "demo"), ("toy_premises.yaml", "premises")])
def test_each_toy_config_builds_the_world_it_trains_on(config, world):
    cfg = scope.parse_config(["--config", str(ROOT / "configs" / config)])
    assert cfg.build_world == world
    inspect.signature(toy.WORLDS[world]).bind(Path(cfg.student).parent)  # what build_missing_world calls
