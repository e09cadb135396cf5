"""A fresh machine in two commands (Makefile): `make demo` and `make test` make the environment once, install
torch before the requirements, install the requirements again only when they change, and install bubblewrap
when it is missing. Run here against fake python, pip, id and apt-get that log their calls; .ci/fresh_clone
runs the real commands on a fresh clone."""
import os
import shutil
import subprocess
import time

import pytest

from conftest import ROOT

MAKE = shutil.which("make")
INHERITED = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "ARGS", "TORCH", "PYTHON")  # `make test ARGS=...` passes them down
FAKE_PYTHON = """#!/bin/sh
# `python3 -m venv DIR`: a venv whose python and pip only log their arguments
echo "venv $3" >> "$LOG"
mkdir -p "$3/bin"
for tool in python pip; do
  printf '#!/bin/sh\\necho "%s $*" >> "$LOG"\\n' "$tool" > "$3/bin/$tool"
  chmod +x "$3/bin/$tool"
done
"""


def fake(bin_dir, name: str, body: str):
    (bin_dir / name).write_text(body)
    (bin_dir / name).chmod(0o755)


@pytest.fixture
def project(tmp_path):
    """(a copy of the Makefile and requirements.txt, run(*targets, path=None) -> the lines logged)."""
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    shutil.copy(ROOT / "requirements.txt", tmp_path / "requirements.txt")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake(bin_dir, "python3", FAKE_PYTHON)
    fake(bin_dir, "bwrap", "#!/bin/sh\n")
    log = tmp_path / "log"

    def run(*args, path: str | None = None, ok: bool = True) -> list[str]:
        log.write_text("")
        env = {k: v for k, v in os.environ.items() if k not in INHERITED}
        env.update(LOG=str(log), PATH=path or f"{bin_dir}:{os.environ['PATH']}")
        done = subprocess.run([MAKE, "--no-print-directory", "-s", *args, f"PYTHON={bin_dir / 'python3'}"],
                              cwd=tmp_path, env=env, capture_output=True, text=True)
        assert (done.returncode == 0) == ok, done.stdout + done.stderr
        return log.read_text().splitlines() + ([done.stderr] if not ok else [])

    return tmp_path, run


def test_the_first_run_makes_the_environment_and_installs_torch_before_the_requirements(project):
    _, run = project
    assert run("test") == ["venv .venv", "pip install --quiet torch==2.13.0",
                           "pip install --quiet -r requirements.txt", "python -m pytest -q tests"]


def test_a_second_run_installs_nothing(project):
    _, run = project
    run("demo")
    assert run("demo") == ["python scope.py --config configs/toy.yaml"]
    assert run("test", "ARGS=-k loss --durations=25") == ["python -m pytest -q tests -k loss --durations=25"]


def test_changed_requirements_are_installed_again_and_torch_is_not(project):
    root, run = project
    run("test")
    later = time.time() + 10
    os.utime(root / "requirements.txt", (later, later))
    assert run("demo", "ARGS=--resume auto") == ["pip install --quiet -r requirements.txt",
                                                  "python scope.py --config configs/toy.yaml --resume auto"]


def test_a_missing_bwrap_is_installed_by_root_with_apt_get(project):
    root, run = project
    bare = root / "bare"  # a PATH without bwrap
    bare.mkdir()
    fake(bare, "id", "#!/bin/sh\necho 0\n")
    fake(bare, "apt-get", '#!/bin/sh\necho "apt-get $*" >> "$LOG"\n')
    assert run("sandbox", path=str(bare)) == ["apt-get update -qq", "apt-get install -y -qq bubblewrap"]


@pytest.mark.parametrize("user, apt_get", [("0", False), ("1000", True)])
def test_a_missing_bwrap_that_cannot_be_installed_stops_with_how_to_install_it(project, user, apt_get):
    root, run = project
    bare = root / "bare"
    bare.mkdir()
    fake(bare, "id", f"#!/bin/sh\necho {user}\n")
    if apt_get:
        fake(bare, "apt-get", '#!/bin/sh\necho "apt-get $*" >> "$LOG"\n')
    for target in ("demo", "test"):
        *calls, err = run(target, path=str(bare), ok=False)
        assert calls == []                                  # nothing installed, nothing run
        assert "bwrap is missing" in err and "apt-get install bubblewrap" in err


def test_ci_runs_the_readmes_test_command():
    quick_start = (ROOT / "README.md").read_text().split("## Quick start")[1].split("```")[1]
    commands = [line for line in quick_start.splitlines()[1:] if line.strip()]
    assert commands == ["make demo", "make test"]
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-1] == "make test"
