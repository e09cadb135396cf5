"""The pages as they are: their numbers are what the results files give today, and their commands still run.

Numbers: README.md, docs/weights.md and bench/README_ablations.md hold regions between
`<!-- generated: NAME -->` and `<!-- end -->` that `python bench/ablations.py --pages` writes from
bench/results/<world>.jsonl; each page must equal what it would write now, and each world's report
bench/results/<world>.md what `--report` would write.

Commands: every command line in a code block of README.md or docs/*.md (fenced, or indented by four
spaces), with the block's `NAME=value` lines and a `for` loop's first value substituted. Each one's
script must exist and take every `--flag` the line passes (read from the script's own `--help`, asked
only where the line passes flags), and each file it names under configs/ or data/ must exist. Then
it runs on CPU, in a copy of the repository, and must exit 0 within a minute, unless it is one of these,
which are checked as above and not run:
  - setup (`pip`, `python -m venv`, `.`/`source`): it needs the network or changes the environment;
  - the test suite itself (`python -m pytest`);
  - `torchrun`: several processes, GPUs;
  - a line naming a path under runs/ or .toy: what only an earlier full run or world build leaves;
  - a line naming a .jsonl, .json or .yaml file not in the repository: an example over the reader's own;
  - hub-only: a `scope.py` line whose student is neither on disk nor a toy world (`--plan` included);
  - long runs: training (a `scope.py` line on a toy config runs instead for one step, on tiny random
    models in place of the world, with the world's other files in a directory the block's lines share);
    world builds (`toy.py`; `bench/ablations.py` unless it only reports: --claims, --report, --pages);
    `eval.py --model` (it measures a trained model); `bench/bench_*.py`;
  - `make TARGET` runs as `make -n TARGET`: the target must exist and the python lines of its recipe
    pass the checks above; the recipe is not run.
"""
import contextlib
import io
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from conftest import ROOT, tiny_args

sys.path.insert(0, str(ROOT / "bench"))
import ablations  # noqa: E402
import scope  # noqa: E402
from eval import read_jsonl  # noqa: E402

PAGES_WITH_COMMANDS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROGRAMS = ("python", "torchrun", "make", "pip", ".", "source")
REPORT_ONLY = ("--claims", "--report", "--pages", "--help")


# -----------------------------------------------------------------------------
# Numbers: the generated regions and the results pages

def test_every_generated_region_is_what_the_results_files_give_today():
    parts = ablations.fragments(ablations.RESULTS)
    for page in ablations.PAGES:
        assert page.read_text() == ablations.render_page(page, parts), \
            f"{page.relative_to(ROOT)} differs from the results: run python bench/ablations.py --pages"
    named = {m[1] for page in ablations.PAGES for m in ablations.REGION.finditer(page.read_text())}
    assert {"claims", "claims-full"} | {f"findings-{w}" for w in ablations.toy.WORLDS} <= named


def test_each_worlds_report_is_what_its_results_file_gives_today():
    for world in ablations.toy.WORLDS:
        results = read_jsonl(ablations.RESULTS / f"{world}.jsonl")
        rebuilds = read_jsonl(ablations.RESULTS / f"{world}.rebuilds.jsonl")
        variants = [v for v in ablations.VARIANTS if any(r["variant"] == v for r in results)]
        expected = ablations.report(world, results, variants, rebuilds)
        assert (ablations.RESULTS / f"{world}.md").read_text() == expected, \
            f"bench/results/{world}.md: run python bench/ablations.py --world {world} --report"


def test_a_region_of_an_unknown_name_is_refused_naming_the_page(tmp_path, capsys):
    page = tmp_path / "page.md"
    page.write_text("<!-- generated: nothing-of-that-name -->\nold\n<!-- end -->\n")
    with pytest.raises(SystemExit):
        ablations.render_page(page, {"claims": "| table |"})
    err = capsys.readouterr().err
    assert str(page) in err and "nothing-of-that-name" in err and "claims" in err


def test_a_region_is_rewritten_and_the_prose_around_it_kept(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("before\n<!-- generated: claims -->\nstale 0.221\n<!-- end -->\nafter\n")
    assert ablations.render_page(page, {"claims": "fresh 0.242"}) == \
        "before\n<!-- generated: claims -->\n\nfresh 0.242\n\n<!-- end -->\nafter\n"


# -----------------------------------------------------------------------------
# Commands: every command shown in a code block

def code_blocks(text: str) -> list[list[str]]:
    """The lines of each fenced block (```, any language) and each block indented by four spaces."""
    blocks, current, fenced = [], None, False
    for line in text.splitlines():
        if line.startswith("```"):
            if fenced:
                blocks.append(current)
            fenced, current = not fenced, []
        elif fenced:
            current.append(line)
        elif line.startswith("    ") and line.strip():
            if current is None:
                current = []
                blocks.append(current)
            current.append(line[4:])
        elif line.strip():
            current = None
    return blocks


def commands(block: list[str]) -> list[list[str]]:
    """The block's command lines as argument lists: continuations joined, comments dropped, its NAME=value lines
    and a `for NAME in A B ...; do` loop's first value A substituted; lines that are no command (output) skipped."""
    joined, found, names = [], [], {}
    for line in block:
        if joined and joined[-1].endswith("\\"):
            joined[-1] = joined[-1][:-1] + " " + line.strip()
        else:
            joined.append(line.strip())
    for line in joined:
        if loop := re.match(r"for (\w+) in (\S+)[^;]*; do$", line):
            names[loop[1]] = loop[2]
            continue
        if assign := re.fullmatch(r"(\w+)=(\S+)", line):
            names[assign[1]] = assign[2]
            continue
        for name, value in names.items():
            line = line.replace(f"${name}", value)
        if line.split(" ")[0] in PROGRAMS:
            found.append(shlex.split(line, comments=True))
    return found


def shown_commands() -> list[tuple[str, list[str], str]]:
    """(where and what, argument list, its block) of each distinct command line, the first page that shows it."""
    found = {}
    for page in PAGES_WITH_COMMANDS:
        for i, block in enumerate(code_blocks(page.read_text())):
            for words in commands(block):
                found.setdefault(shlex.join(words), (f"{page.name}: {shlex.join(words)}", words, f"{page.name}{i}"))
    return list(found.values())


def script_and_args(words: list[str]) -> tuple[str | None, list[str]]:
    """(script, its arguments) of a python or torchrun line; (None, []) for anything else."""
    if words[0] == "python" and len(words) > 1 and words[1].endswith(".py"):
        return words[1], words[2:]
    if words[0] == "torchrun":
        script = next((i for i, w in enumerate(words) if w.endswith(".py")), None)
        return (words[script], words[script + 1:]) if script else (None, [])
    return None, []


HELP: dict[str, str] = {}


def help_text(script: str) -> str:
    """The script's --help, run in this process (its imports are this suite's already)."""
    if script not in HELP:
        out, argv = io.StringIO(), sys.argv
        sys.argv = [script, "--help"]
        try:
            with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
                runpy.run_path(str(ROOT / script), run_name="__main__")
        finally:
            sys.argv = argv
        HELP[script] = out.getvalue()
    return HELP[script]


def why_not_run(words: list[str]) -> str:
    """Which of the module docstring's kinds of command this is ('' for one that runs as written)."""
    script, args = script_and_args(words)
    if words[0] in ("pip", ".", "source") or words[:3] == ["python", "-m", "venv"]:
        return "setup"
    if words[:3] == ["python", "-m", "pytest"]:
        return "the test suite"
    if words[0] == "torchrun":
        return "torchrun"
    if any(a.startswith(("runs/", ".toy")) for a in args):
        return "an earlier run's output"
    if any(Path(a).suffix in (".jsonl", ".json", ".yaml") and not (ROOT / a).exists() for a in args):
        return "a file of the reader's own"
    if script == "scope.py" and "--help" not in args:
        cfg = scope.parse_config(args)
        if not (cfg.build_world or (ROOT / cfg.student).exists()):
            return "hub-only"
        return "" if "--plan" in args else "training"
    if script == "toy.py" or (script == "bench/ablations.py" and not set(args) & set(REPORT_ONLY)):
        return "a world build"
    if script == "eval.py" and "--model" in args or script and Path(script).name.startswith("bench_"):
        return "a long run"
    return ""


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A copy of the repository, without its environments and outputs, where a command may write what it writes
    (a report, plots) without touching the pages the tests above compare."""
    copy = tmp_path_factory.mktemp("checkout") / "repo"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".git", ".venv*", "runs", ".toy*", "__pycache__",
                                                              ".pytest_cache"))
    return copy


def check_script_flags_and_files(shown: str, words: list[str]):
    """The line's script exists, takes every --flag the line passes, and each configs/ or data/ file it names
    exists."""
    script, args = script_and_args(words)
    if script:
        assert (ROOT / script).exists(), f"{shown}: no {script}"
        passed = {a.split("=")[0] for a in args if a.startswith("--")}
        if passed:
            flags = set(re.findall(r"--[\w-]+", help_text(script)))
            assert passed <= flags, f"{shown}: {script} takes no {', '.join(sorted(passed - flags))}"
        for a in args:
            if a.startswith(("configs/", "data/")):
                assert (ROOT / a).exists(), f"{shown}: no {a}"


def tiny_world_flags(args: list[str], tiny_pair, files: Path, run: Path) -> list[str]:
    """Flags that run a toy config's line for one step on the tiny random models, into `run`; every other file of
    the world the config names (one an earlier line of the block writes, say) goes to `files`."""
    student, teacher, data = tiny_pair
    cfg = scope.parse_config(args)
    world = Path(cfg.student).parent
    elsewhere = [a for f in fields(cfg) if f.name not in ("student", "teacher", "train_data", "eval_data")
                 and isinstance(value := getattr(cfg, f.name), str) and Path(value).parent == world
                 for a in (f"--{f.name}", str(files / Path(value).name))]
    return [*tiny_args(student, teacher, data, run, "--eval-data", str(data), "--eval-limit", "2",
                       "--max-steps", "1", "--build-world", ""), *elsewhere]


@pytest.mark.parametrize("shown, words, block", shown_commands(), ids=[c for c, *_ in shown_commands()])
def test_every_command_shown_in_the_docs_still_runs(shown, words, block, tiny_pair, checkout, tmp_path,
                                                     tmp_path_factory, monkeypatch):
    check_script_flags_and_files(shown, words)
    kind = why_not_run(words)
    if kind == "training":                     # the lines of one block share their files, in the block's order
        files = tmp_path_factory.getbasetemp() / "blocks" / block
        files.mkdir(parents=True, exist_ok=True)
        monkeypatch.chdir(ROOT)
        args = script_and_args(words)[1]
        scope.main([*args, *tiny_world_flags(args, tiny_pair, files, tmp_path / "run")])
    elif not kind:
        run = ["make", "-n", *words[1:]] if words[0] == "make" else [sys.executable, *words[1:]]
        done = subprocess.run(run, cwd=checkout, capture_output=True, text=True, timeout=60,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, f"{shown}: exit {done.returncode}\n{done.stderr[-2000:]}"
        for line in done.stdout.splitlines() if words[0] == "make" else []:  # the recipe's python lines
            if line.split(" ")[0].endswith("/python"):
                check_script_flags_and_files(f"{shown}: {line}", ["python", *shlex.split(line)[1:]])


def test_the_command_reader_joins_lines_substitutes_names_and_skips_output():
    block = ["V=a,b", "for w in demo premises; do", "  python x.py --world $w --variants $V \\",
             "      --seeds 0   # a comment", "done", "x.py: error: not a command"]
    assert commands(block) == [["python", "x.py", "--world", "demo", "--variants", "a,b", "--seeds", "0"]]
    assert code_blocks("text\n\n    python a.py\n    python b.py\n\nmore\n```bash\npython c.py\n```\n") == \
        [["python a.py", "python b.py"], ["python c.py"]]
