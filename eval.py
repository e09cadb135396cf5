"""
Measure a model on math benchmarks: sample n answers per problem, grade each (verify.py, or Math-Verify
as the authors' released evaluation does), and report Avg@n and Pass@k per benchmark and their macro
average, as in the paper's Table 1. The code benchmarks of its Table 2 (humaneval, livecodebench, codeforces)
run each response's program against the problem's tests in verify_code.py's sandbox (docs/code.md).
It also holds the measuring side of a training run, which scope.py calls: the quick eval, a step's
numbers for metrics.jsonl, the run's curves (curves.png) and the experiment tracker.

  python eval.py --model runs/scope                           # the paper's six benchmarks and sampling
  python eval.py --model Qwen2.5-0.5B --benchmarks math500,gsm8k --n 4 --k 1,2,4 --limit 100
  python eval.py --model runs/scope --data my.jsonl --problem-field question --answer-field gold
  python eval.py --model runs/scope --grader math-verify --pass-estimator bootstrap   # the paper's protocol
  torchrun --nproc_per_node=8 eval.py --model runs/scope --samples 32   # ranks split the problems
  python eval.py --model runs/scope-code --benchmarks humaneval,livecodebench,codeforces   # Table 2

Defaults are the paper's: 32 samples per problem at temperature 0.6, top-p 0.95, top-k 20, and the
prompt of training (its suffix and chat template; the template's turn-closing token ends a response).
Responses are graded in evaluation mode (verify.grade with fallback=True), or with --grader math-verify;
either way only the text after the last </think> is graded, and a thought that never closes has no answer.
A response never runs past the model's context: --max-new-tokens is capped per batch of prompts, and the
cap is said once. A batch's rows are split into generate calls whose KV cache fits --kv-gb.
Under torchrun, write --samples for --n: torchrun's own argument parser takes --n for an
abbreviation of its options and stops.
The output directory holds
  samples.jsonl   one line per (problem, sample): response, extracted answer, verdict
  summary.json    per benchmark (and "average"): avg@n and pass@k, as fractions in [0, 1]; the grader
  settings.json   what generated and graded the samples (sampling, grader, each data file's sha256 and
                  fields, the model's weights); a rerun must match it
  pass_at_k_<benchmark>.png   Pass@k versus k (when matplotlib is installed)
Rerunning with the same output directory resumes: finished problems are read back, not generated.

  python eval.py --plot-run runs/toy     # draw a training run's curves (curves.png) and exit
"""
import argparse
import hashlib
import importlib
import importlib.util
import json
import math
import os
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from functools import lru_cache
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from transformers.hf_argparser import string_to_bool
from transformers.utils import cached_file

from sample import (PROMPT_SUFFIX, all_sum, build_prompt, compute_dtype, fail, generate, kv_bytes_per_token, load_model,
                    load_rows, quiet_libraries, resolve, rows_per_call, setup_distributed, stop_ids)
from verify import extract_answer, grade
from verify_code import CODE_BENCHMARKS, SandboxUnavailable, check_sandbox, code_rows, extract_code, grade_many

DATA_DIR = Path(__file__).resolve().parent / "data"
BENCHMARKS = {"aime24": "aime24.jsonl", "aime25": "aime25.jsonl", "amc23": "amc23.jsonl",
              "math500": "math500.jsonl", "minerva": "minerva.jsonl", "olympiadbench": "olympiadbench.jsonl",
              "gsm8k": "gsm8k_test.jsonl"}
PAPER_BENCHMARKS = "aime24,aime25,amc23,math500,minerva,olympiadbench"
# The authors' released evaluation grades these on their last \boxed{} only (the others on the whole answer).
LAST_BOX_BENCHMARKS = ("aime24", "aime25", "amc23", "minerva")
# Settings that change what is sampled or how it is graded: a resumed run must use the same (check_settings
# adds the model's weights and each benchmark's data).
GENERATION_SETTINGS = ("model", "n", "temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens",
                       "prompt_suffix", "chat_template", "grader", "strict", "dtype", "seed")


# -----------------------------------------------------------------------------
# Arguments

def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="a local directory, a hub name, or a bare Qwen name (required)")
    p.add_argument("--plot-run", metavar="DIR", help="draw the curves of the training run in DIR and exit")
    p.add_argument("--benchmarks", default="",
                   help=f"comma list of {', '.join([*BENCHMARKS, *CODE_BENCHMARKS])} (default: {PAPER_BENCHMARKS}; "
                        f"none with --data)")
    p.add_argument("--data", action="append", default=[],
                   help="evaluate a .jsonl/.json/.parquet file (repeatable; named by its file stem)")
    p.add_argument("--problem-field", default="problem", help="problem field of --data files")
    p.add_argument("--answer-field", default="answer", help="reference answer field of --data files")
    p.add_argument("--skip-bad-rows", default=False, type=string_to_bool,
                   metavar="true|false", help="skip rows of --data files with a missing or empty field")
    p.add_argument("--n", "--samples", dest="n", type=int, default=32,
                   help="samples per problem (paper: 32); under torchrun spell it --samples, as torchrun's own "
                        "parser rejects --n as an ambiguous abbreviation of its options")
    p.add_argument("--k", default="", help="comma list of k for Pass@k, each <= n (default: n)")
    p.add_argument("--pass-estimator", choices=("unbiased", "bootstrap"), default="unbiased",
                   help="unbiased: 1 - C(n-c,k)/C(n,k); bootstrap: k draws with replacement (authors' code)")
    p.add_argument("--temperature", type=float, default=0.6, help="sampling temperature, 0 = greedy (paper: 0.6)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling threshold (paper: 0.95)")
    p.add_argument("--top-k", type=int, default=20, help="top-k sampling, 0 = off (paper: 20)")
    p.add_argument("--max-new-tokens", type=int, default=32768,
                   help="longest response (paper: 32768); capped so that prompt + response fit the model's context")
    p.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="HF repetition penalty, 1 = off (paper: 1.08 for Qwen3-1.7B-Base)")
    p.add_argument("--limit", type=int, default=0, help="only the first N problems of each benchmark (0 = all)")
    p.add_argument("--prompt-suffix", default=PROMPT_SUFFIX, help="instruction after each problem (as training)")
    p.add_argument("--chat-template", default=True, metavar="true|false", type=string_to_bool,
                   help="wrap the prompt in the tokenizer's chat template when it has one (as training)")
    p.add_argument("--grader", choices=("verify", "math-verify"), default="verify",
                   help="verify: verify.py in evaluation mode; math-verify: as the authors' released evaluation, "
                        "Math-Verify on the answer (on its last \\boxed{} for AIME, AMC, Minerva); needs "
                        "pip install math-verify")
    p.add_argument("--sandbox", choices=("bwrap", "process"), default="bwrap",
                   help="where the code benchmarks' programs run: bwrap (bubblewrap; grading refuses to start "
                        "without it) or process (a plain child process with the same limits, not isolated; warns)")
    p.add_argument("--strict", action="store_true",
                   help="grade as training does (only a marked answer counts) instead of evaluation mode (verify)")
    p.add_argument("--batch-size", type=int, default=8, help="problems sampled together (and saved together)")
    p.add_argument("--kv-gb", type=float, default=40.0,
                   help="KV-cache budget of one generate call, GB: a batch's rows are split into calls that fit it, "
                        "sized from the model's config as the trainer's rollout_kv_gb (default: fits one 80 GB GPU "
                        "with each shipped config's student at 32,768 new tokens)")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="GPU dtype (CPU: float32)")
    p.add_argument("--seed", type=int, default=0, help="seeds each batch's sampling")
    p.add_argument("--output-dir", default="", help="default: runs/eval/<model name>")
    args = p.parse_args(argv)
    if args.plot_run:
        return args
    if not args.model:
        p.error("--model is required (or --plot-run DIR)")
    if not args.benchmarks:
        args.benchmarks = "" if args.data else PAPER_BENCHMARKS
    args.benchmarks = [name for name in args.benchmarks.split(",") if name]
    for name in args.benchmarks:
        if name not in BENCHMARKS and name not in CODE_BENCHMARKS:
            p.error(f"unknown benchmark {name!r}; choose from {', '.join([*BENCHMARKS, *CODE_BENCHMARKS])}")
    if set(args.benchmarks) & CODE_BENCHMARKS.keys():
        try:  # before the model loads: a sandbox that cannot run is said at once
            check_sandbox(args.sandbox)
        except SandboxUnavailable as e:
            p.error(str(e))
    for name in ("n", "max_new_tokens", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.kv_gb <= 0:
        p.error("--kv-gb must be > 0")
    if args.grader == "math-verify" and args.strict:
        p.error("--strict is verify.py's training mode; it does not apply to --grader math-verify")
    if args.grader == "math-verify" and importlib.util.find_spec("math_verify") is None:
        p.error("--grader math-verify needs the Math-Verify package: pip install math-verify")
    if args.temperature < 0 or not 0 < args.top_p <= 1 or args.top_k < 0 or args.limit < 0 \
            or args.repetition_penalty <= 0:
        p.error("need --temperature >= 0, 0 < --top-p <= 1, --top-k >= 0, --limit >= 0, --repetition-penalty > 0")
    try:
        args.k = [int(k) for k in args.k.split(",")] if args.k else [args.n]
    except ValueError:
        p.error(f"--k {args.k!r}: expected a comma list of integers")
    for k in args.k:
        if not 1 <= k <= args.n:
            p.error(f"--k {k}: Pass@k needs 1 <= k <= n, and n is {args.n} (raise --n)")
    args.output_dir = Path(args.output_dir or Path("runs/eval") / Path(resolve(args.model)).name)
    return args


# -----------------------------------------------------------------------------
# Data

def benchmark_sources(args) -> dict[str, tuple[str, str, str]]:
    """{name: (file or hub dataset, problem field, answer field)} for the named benchmarks (shipped in data/)
    and the --data files."""
    sources = {name: (CODE_BENCHMARKS[name] if name in CODE_BENCHMARKS else str(DATA_DIR / BENCHMARKS[name]),
                      "problem", "answer") for name in args.benchmarks}
    for path in args.data:
        name = Path(path).stem
        if name in sources:
            sys.exit(f"eval.py: error: --data {path}: the name {name!r} is already taken; rename the file")
        sources[name] = (path, args.problem_field, args.answer_field)
    return sources


def load_benchmarks(args) -> dict[str, list[dict]]:
    """{name: rows} for the named benchmarks and the --data files, cut to --limit."""
    # "test" is the split read when a --data source is a hub dataset name rather than a file.
    return {name: code_rows(name, path, args.limit) if name in CODE_BENCHMARKS else
            load_rows(path, "test", problem, answer, args.skip_bad_rows)[:args.limit or None]
            for name, (path, problem, answer) in benchmark_sources(args).items()}


# -----------------------------------------------------------------------------
# Generation and grading

def grader(name: str, benchmark: str = "", strict: bool = False, sandbox: str = "bwrap"):
    """judge(response, gold) -> {"extracted": the answer it graded or None, "correct": verdict}, for one
    benchmark's responses.

    verify: verify.py, in evaluation mode (an answer given in prose counts) or, `strict`, as training's reward.
    math-verify: as the authors' released evaluation grades: Math-Verify's verify(parse("$gold$"), parse(answer)),
    where the answer is the text after the thinking, or, on AIME, AMC and Minerva, the last \\boxed{} of it
    (none: wrong). Both grade nothing of a response whose <think> never closes.
    A code benchmark's judge runs the response's program against the problem's tests (verify_code.py; its
    "gold" is the tests), and grades a batch at once on a pool of sandboxes (`judge.many`).
    """
    if benchmark in CODE_BENCHMARKS:
        def judge(response: str, tests: dict) -> dict:
            return judge.many([response], [tests])[0]
        judge.many = lambda responses, tests: [
            {"extracted": extract_code(r), "correct": v.passed, "verdict": v.status}
            for r, v in zip(responses, grade_many(list(zip(responses, tests)), sandbox))]
        return judge
    if name == "verify":
        return lambda response, gold: {"extracted": extract_answer(response, not strict),
                                       "correct": grade(response, gold, not strict)}
    from math_verify import parse, verify  # parse_args checked that it is installed

    gold_of = lru_cache(maxsize=256)(lambda gold: parse("$" + gold + "$"))  # n samples share one gold

    def judge(response: str, gold: str) -> dict:
        if "<think>" in response and "</think>" not in response:  # verify.extract_answer's rule: a thought
            return {"extracted": None, "correct": False}          # still open has no answer,
        text = response.rpartition("</think>")[2]                 # and only what follows the thinking counts
        if benchmark in LAST_BOX_BENCHMARKS:  # the last box as verify.py reads it (extract_answer's first choice)
            box = extract_answer(response) if "\\boxed" in text or "\\fbox" in text else None
            text = "\\boxed{" + box + "}" if box else ""
        found = parse(text) if text else []  # [sympy value, the string it read], or [] when nothing parses
        return {"extracted": str(found[-1]) if found else None,
                "correct": bool(found) and verify(gold_of(gold), found)}
    return judge


def sample_and_grade(model, tokenizer, prompts: list[str], golds: list[str], *, n: int, stop: list[int],
                     temperature: float, top_p: float = 1.0, top_k: int = 0, repetition_penalty: float = 1.0,
                     max_new_tokens: int, judge, max_rows: int = 0, synced: bool = False,
                     static=None) -> list[list[dict]]:
    """For each prompt, n samples as {response, extracted, correct, truncated}, graded by judge(response, gold)
    (`grader`); at most max_rows per generate call (`static`: the trainer's fast path, sample.RolloutCopy)."""
    ro = generate(model, tokenizer, prompts, n, stop=stop, temperature=temperature, top_p=top_p, top_k=top_k,
                  repetition_penalty=repetition_penalty, max_new_tokens=max_new_tokens, max_rows=max_rows,
                  synced=synced, static=static)
    graded = judge_all(judge, ro.texts, [gold for gold in golds for _ in range(n)])  # rows i*n .. i*n+n-1: prompt i
    return [[{"response": t, **g, "truncated": c} for t, g, c in
             zip(ro.texts[i * n:(i + 1) * n], graded[i * n:(i + 1) * n], ro.truncated[i * n:(i + 1) * n].tolist())]
            for i in range(len(golds))]


def judge_all(judge, responses: list[str], golds: list) -> list[dict]:
    """A `grader`'s verdicts on many responses: at once on a pool where it grades batches (code), else one by one."""
    return judge.many(responses, golds) if hasattr(judge, "many") else list(map(judge, responses, golds))


def training_judge(task: str, sandbox: str):
    """The trainer's grader, for the training reward and the quick eval alike: verify.py's strict grade of a marked
    final answer (math), or every test passed in the sandbox (code: the golds are the tests; a pool of sandboxes
    grades a generate call's rollouts at once)."""
    if task == "code":
        try:
            check_sandbox(sandbox)  # refuse at start, saying how to install bubblewrap, rather than at step 1
        except SandboxUnavailable as e:
            fail(f"field 'code_sandbox' is {sandbox!r}: {e} (--code-sandbox process)")
    return grader("verify", "codeforces" if task == "code" else "", strict=True, sandbox=sandbox)


class Grading:
    """A training step's verdicts, graded one generate call at a time on a thread of their own while the next call
    samples (code's programs run in sandboxes of their own processes; math takes milliseconds). After grading a call
    the thread runs `then(first, part, correct)` (the trainer sends the teacher its rows there). seconds: the
    grading's own time; waited: what `verdicts` waited for it once sampling was done (its exposed time)."""

    def __init__(self, judge, golds: list, then):
        self.judge, self.golds, self.then, self.seconds, self.waited, self.futures = judge, golds, then, 0.0, 0.0, []
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="grading")  # one: calls are graded, and sent, in order

    def submit(self, first: int, part):
        """Grade `part`, the rollouts of rows first, first+1, ... (generate's on_call)."""
        self.futures.append(self.pool.submit(self.grade, first, part))

    def grade(self, first: int, part) -> torch.Tensor:
        t0 = time.perf_counter()
        verdicts = judge_all(self.judge, part.texts, self.golds[first:first + len(part.texts)])
        correct = torch.tensor([v["correct"] for v in verdicts], dtype=torch.bool, device=part.tokens.device)  # (n,)
        self.seconds += time.perf_counter() - t0
        self.then(first, part, correct)
        return correct

    def verdicts(self) -> torch.Tensor:
        """(N,) bool, once every call is graded (an error raised while grading is raised here)."""
        t0 = time.perf_counter()
        try:
            return torch.cat([f.result() for f in self.futures])
        finally:
            self.pool.shutdown()
            self.waited = time.perf_counter() - t0


def batch_seed(seed: int, benchmark: str, first: int) -> int:
    """The seed of the batch that starts at problem `first`: a resumed run draws what an uninterrupted one did."""
    return zlib.crc32(f"{seed}/{benchmark}/{first}".encode())


def read_samples(out_dir: Path) -> dict[tuple[str, int], dict[int, dict]]:
    """{(benchmark, problem index): {sample index: {correct, truncated}}} from every samples*.jsonl.

    Responses are not kept (they can be gigabytes). A line an interrupted write left unfinished is
    skipped; a line written twice counts once.
    """
    done = {}
    for path in sorted(out_dir.glob("samples*.jsonl")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    continue
                done.setdefault((r["benchmark"], r["index"]), {})[r["sample"]] = {
                    "correct": r["correct"], "truncated": r["truncated"]}
    return done


def open_for_append(path: Path):
    """`path` opened for appending, after cutting a last line that an interrupted write left without its newline."""
    if path.exists():
        with open(path, "rb+") as f:
            end = 0
            for line in f:
                if line.endswith(b"\n"):
                    end += len(line)
            f.truncate(end)
    return open(path, "a", encoding="utf-8")


def sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read 16 MB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_weights(name: str) -> dict:
    """What identifies a model's weights. A local directory: the sha256 of its config.json and of each weight file
    (a second or two per GB, small beside an evaluation). A hub name: the name and the revision (commit) that
    loading it resolves to, from the local cache when offline."""
    path = resolve(name)
    if Path(path).is_dir():
        files = sorted(f for f in Path(path).iterdir()
                       if f.name == "config.json" or f.suffix in (".safetensors", ".bin"))
        return {f.name: sha256(f) for f in files}
    try:
        config = cached_file(path, "config.json")  # the file from_pretrained reads, in snapshots/<revision>/
    except OSError as e:
        fail(f"model {name!r} (as {path!r}) is not a local directory and could not be found on the Hugging Face "
             f"Hub or in its cache: {e}")
    return {"hub": path, "revision": Path(config).parent.name}


def data_settings(args) -> dict:
    """Per benchmark, what decides its problems and golds: the sha256 of its file (a hub dataset: its name), the
    fields read, and whether bad rows are skipped (which renumbers the problems)."""
    out = {}
    for name, (source, problem, answer) in benchmark_sources(args).items():
        content = {"sha256": sha256(Path(source))} if Path(source).is_file() else {"hub_dataset": source}
        out[name] = {**content, "problem_field": problem, "answer_field": answer, "skip_bad_rows": args.skip_bad_rows}
    return out


def flatten(settings: dict, prefix: str = "") -> dict:
    """Nested settings by their full names: {"data.aime24.answer_field": "answer", ...}."""
    out = {}
    for k, v in settings.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def check_settings(args, rank: int):
    """Refuse an output directory whose samples were made or graded differently: sampling, grader, the model's
    weights, a benchmark's data or fields. Record the settings on a first run, and a benchmark a later run adds."""
    settings = {**{name: getattr(args, name) for name in GENERATION_SETTINGS},
                "model_weights": model_weights(args.model), "data": data_settings(args)}
    path = args.output_dir / "settings.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    if saved:
        common = saved.get("data", {}).keys() & settings["data"].keys()  # a benchmark new here has no samples yet
        before = flatten({**saved, "data": {k: saved["data"][k] for k in common}})
        after = flatten({**settings, "data": {k: settings["data"][k] for k in common}})
        changed = [f"{k}: {before.get(k)!r} there, {after.get(k)!r} now" for k in sorted(before.keys() | after.keys())
                   if before.get(k) != after.get(k)]
        if changed:
            sys.exit(f"eval.py: error: {args.output_dir} holds samples made with other settings "
                     f"({'; '.join(changed)}); pass another --output-dir")
    if rank == 0 and (not saved or settings["data"].keys() - saved.get("data", {}).keys()):
        tmp = path.with_suffix(".tmp")  # written whole then renamed, so other ranks never read half of it
        tmp.write_text(json.dumps({**settings, "data": {**saved.get("data", {}), **settings["data"]}}, indent=1))
        os.replace(tmp, path)


def run(args, benchmarks: dict[str, list[dict]], rank: int, world: int, device: torch.device):
    """Sample and grade every unfinished problem of this rank's share, appending to its samples file.

    Rank r takes problems r, r + world, ...; its share is cut into batches at fixed positions, each
    seeded from (seed, benchmark, first problem), so a resumed batch is the batch it would have been.
    (Only a batch whose write was itself cut off is left part done; its unfinished problems are then
    sampled alone: valid samples, though not the very ones an uninterrupted run would have drawn.)
    """
    dtype = compute_dtype(args.dtype, device)
    model, tokenizer = load_model(args.model, dtype, device)
    model.eval()
    stop = stop_ids(model, tokenizer, args.chat_template)
    context = model.config.get_text_config().max_position_embeddings
    kv_token = kv_bytes_per_token(model.config, dtype.itemsize)  # no autocast here: the cache holds `dtype`
    said = False
    done = read_samples(args.output_dir)
    unfinished = {name: {i for i in range(rank, len(rows), world) if len(done.get((name, i), ())) < args.n}
                  for name, rows in benchmarks.items()}
    bar = tqdm(total=args.n * sum(map(len, unfinished.values())), unit="sample", disable=rank != 0,
               dynamic_ncols=True)
    start = time.perf_counter()
    with open_for_append(args.output_dir / ("samples.jsonl" if world == 1 else f"samples.rank{rank}.jsonl")) as f:
        for name, rows in benchmarks.items():
            bar.set_description(name)
            judge = grader(args.grader, name, args.strict, args.sandbox)
            share = list(range(rank, len(rows), world))
            for b in range(0, len(share), args.batch_size):
                batch = share[b:b + args.batch_size]
                todo = [i for i in batch if i in unfinished[name]]
                if not todo:
                    continue
                torch.manual_seed(batch_seed(args.seed, name, batch[0]))
                suffix = "" if name in CODE_BENCHMARKS else args.prompt_suffix  # a code row carries its instruction
                prompts = [build_prompt(tokenizer, rows[i]["problem"], suffix, args.chat_template)
                           for i in todo]
                longest = max(len(ids) for ids in tokenizer(prompts, add_special_tokens=False).input_ids)
                max_new = max(1, min(args.max_new_tokens, context - longest))  # prompt + response within context
                if max_new < args.max_new_tokens and not said and rank == 0:
                    tqdm.write(f"--max-new-tokens {args.max_new_tokens} is capped where prompt + response would "
                               f"pass the model's context of {context} tokens (first: {max_new} for {name})")
                    said = True
                results = sample_and_grade(model, tokenizer, prompts, [rows[i].get("tests", rows[i]["answer"])
                                                                      for i in todo], n=args.n,
                                           stop=stop, temperature=args.temperature, top_p=args.top_p,
                                           top_k=args.top_k, repetition_penalty=args.repetition_penalty,
                                           max_new_tokens=max_new, judge=judge,
                                           max_rows=rows_per_call(args.kv_gb, kv_token, longest + max_new))
                lines = [{"benchmark": name, "index": i, "sample": j, "answer": rows[i]["answer"], **s}
                         for i, samples in zip(todo, results) for j, s in enumerate(samples)]
                f.write("".join(json.dumps(line) + "\n" for line in lines))
                f.flush()  # a finished batch survives an interruption
                bar.update(args.n * len(todo))
    bar.close()
    seconds = time.perf_counter() - start
    if rank == 0 and bar.n:
        print(f"sampled {bar.n} answers in {seconds:.1f} s: {bar.n / seconds:.1f} samples/s"
              + (f" on rank 0 of {world}" if world > 1 else ""))


def merge_rank_files(out_dir: Path):
    """Fold the per-rank files of a torchrun into samples.jsonl (finished lines only), then delete them."""
    parts = sorted(out_dir.glob("samples.rank*.jsonl"))
    if not parts:
        return
    with open_for_append(out_dir / "samples.jsonl") as out:
        for path in parts:
            with open(path, encoding="utf-8") as f:
                out.writelines(line for line in f if line.endswith("\n"))
    for path in parts:
        path.unlink()


# -----------------------------------------------------------------------------
# Metrics

def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased Pass@k (Chen et al., 2021): the chance that k of the n samples, drawn without
    replacement, include one of the c correct ones: 1 - C(n-c, k) / C(n, k), as the product
    1 - prod_{i=n-c+1}^{n} (1 - k/i), which never forms the huge binomials."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0  # every k-subset holds a correct sample
    fail = 1.0
    for i in range(n - c + 1, n + 1):
        fail *= 1.0 - k / i
    return 1.0 - fail


def pass_at_k_bootstrap(n: int, c: int, k: int) -> float:
    """Pass@k as the authors' released evaluation estimates it: draw k of the n samples WITH
    replacement, many times, and count the draws holding a correct one. This is that procedure's
    expectation in closed form, 1 - (1 - c/n)^k, so there is no sampling noise. It is below the
    unbiased estimate whenever 0 < c < n and k > 1 (a draw can repeat a wrong sample)."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k_bootstrap needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return 1.0 - (1.0 - c / n) ** k


def counts(done: dict, name: str, problems: int, n: int) -> list[tuple[int, int]]:
    """(correct, truncated) sample counts of each of the benchmark's first `problems` problems."""
    out = []
    for i in range(problems):
        samples = [done.get((name, i), {}).get(j) for j in range(n)]
        if None in samples:
            sys.exit(f"eval.py: error: {name} problem {i} has fewer than {n} samples in the output directory")
        out.append((sum(s["correct"] for s in samples), sum(s["truncated"] for s in samples)))
    return out


def summarize(per_benchmark: dict[str, list[tuple[int, int]]], n: int, ks: list[int], estimator: str) -> dict:
    """{benchmark: {problems, avg@n, pass@k for each k, truncated}} plus "average", the macro mean
    over benchmarks (each benchmark counts once, whatever its size), as in the paper's Table 1."""
    estimate = pass_at_k if estimator == "unbiased" else pass_at_k_bootstrap
    summary = {}
    for name, cs in per_benchmark.items():
        row = {"problems": len(cs), f"avg@{n}": sum(c for c, _ in cs) / (n * len(cs))}
        row.update({f"pass@{k}": sum(estimate(n, c, k) for c, _ in cs) / len(cs) for k in ks})
        row["truncated"] = sum(t for _, t in cs) / (n * len(cs))
        summary[name] = row
    rows = list(summary.values())
    summary["average"] = {key: sum(r[key] for r in rows) / len(rows) for key in rows[0]}
    summary["average"]["problems"] = sum(r["problems"] for r in rows)
    return summary


# -----------------------------------------------------------------------------
# Report: table and plot

def table(summary: dict, estimator: str) -> str:
    """The summary as a plain-text table, percentages with one decimal like the paper's."""
    keys = [key for key in summary["average"] if key != "problems"]
    lines = [f"{'benchmark':<16}{'problems':>9}" + "".join(f"{key:>11}" for key in keys),
             "-" * (25 + 11 * len(keys))]
    for name, row in summary.items():
        if name == "average":
            lines.append(lines[1])
        lines.append(f"{name:<16}{row['problems']:>9}" + "".join(f"{100 * row[key]:>11.1f}" for key in keys))
    return "\n".join(lines + [f"(percent; pass@k estimator: {estimator}; average = macro mean over benchmarks)"])


def pyplot():
    """matplotlib's pyplot drawing to files, or None (with a note) when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no plots: pip install matplotlib to get them")
        return None
    return plt


def plot(per_benchmark: dict[str, list[tuple[int, int]]], n: int, estimator: str, out_dir: Path):
    """pass_at_k_<benchmark>.png: Pass@k for every k from 1 to n, beside the summary."""
    plt = pyplot()
    if plt is None:
        return
    estimate = pass_at_k if estimator == "unbiased" else pass_at_k_bootstrap
    ks = list(range(1, n + 1))
    for name, cs in per_benchmark.items():
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        ax.plot(ks, [100 * sum(estimate(n, c, k) for c, _ in cs) / len(cs) for k in ks], marker=".")
        ax.set_xscale("log", base=2)
        ax.set(xlabel="k", ylabel="Pass@k (%)", title=f"{name} ({len(cs)} problems, n = {n})")
        ax.grid(alpha=0.3)
        fig.savefig(out_dir / f"pass_at_k_{name}.png", dpi=120, bbox_inches="tight")
        plt.close(fig)


# -----------------------------------------------------------------------------
# Training runs: the quick eval, a step's numbers, the curves, the tracker (scope.py calls these)

def held_out_accuracy(model, tokenizer, rows: list[dict], *, n: int, rank: int, world: int, judge=None,
                      **sampling) -> float:
    """Fraction of correct samples over rows ({prompt, answer}), each rank sampling rows[rank::world]:
    the trainer's quick eval, graded strictly as its training reward is (`judge`, a `grader`; math by default)."""
    mine = rows[rank::world]
    results = sample_and_grade(model, tokenizer, [r["prompt"] for r in mine], [r["answer"] for r in mine], n=n,
                               judge=judge or grader("verify", strict=True), **sampling)
    return all_sum(sum(s["correct"] for samples in results for s in samples), world) / (len(rows) * n)


LABELS = ("teacher_unreliable", "unlikely_route")  # what a `rollout_labels` labeller says of each rollout


def rollout_labeller(spec: str):
    """label(rows, texts) -> {name: (N,) bool} for each name in LABELS, text i answering rows[i // G], from the
    labeller 'module:function' of the `rollout_labels` field, imported here once; {} for every step when spec is ''."""
    if not spec:
        return lambda rows, texts: {}
    module, _, name = spec.partition(":")
    try:
        labeller = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        fail(f"field 'rollout_labels' is {spec!r}, which cannot be imported ({type(e).__name__}: {e}); "
             f"expected 'module:function'")
    if not callable(labeller):
        fail(f"field 'rollout_labels' is {spec!r}, which is not a function")

    def label(rows: list[dict], texts: list[str]) -> dict[str, torch.Tensor]:
        per_row, found = len(texts) // len(rows), []
        for i, text in enumerate(texts):
            row = rows[i // per_row]
            try:
                labels = labeller(row, text)
            except Exception as e:  # the user's function: name it, and the problem it failed on
                fail(f"field 'rollout_labels': {spec} failed on problem {row.get('problem')!r} "
                     f"({type(e).__name__}: {e})")
            if not isinstance(labels, dict) or any(not isinstance(labels.get(k), bool) for k in LABELS):
                fail(f"field 'rollout_labels': {spec} returned {labels!r} for problem {row.get('problem')!r}; "
                     f"expected {{'teacher_unreliable': bool, 'unlikely_route': bool}}")
            found.append(labels)
        return {k: torch.tensor([labels[k] for labels in found]) for k in LABELS}
    return label


def gather_rollouts(infos: list[dict], ro, correct, group, scored, world: int, labels: dict[str, torch.Tensor]) -> dict:
    """One entry per rollout of the whole step (every rank): the objective's per-rollout infos (`scope_loss`'s, or a
    baseline's), its path losses (`loss_*`), verdicts, truncation, which rollouts the teacher scored (`scored`), and
    the rollout labeller's labels (`rollout_labeller`; none without one)."""
    keys = [k for k in ("weight", "mle", "nll_student", "nll_teacher", "kl_sum", "n_tokens", "advantage") if k in infos[0]]
    roll = {k: torch.cat([i[k].reshape(-1) for i in infos]).cpu() for k in keys}
    roll.update({k: sum(i[k] for i in infos).reshape(1).cpu() for k in infos[0] if k.startswith("loss_")})
    roll.update(labels, correct=correct.cpu(), truncated=ro.truncated.cpu(), group=group.cpu(), scored=scored.cpu())
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, roll)
        roll = {k: torch.cat([p[k] for p in parts]) for k in roll}
    return roll


def merged(parts: list[tuple[torch.Tensor, dict]], n: int) -> dict:
    """One micro-batch's info, of n rollouts, from its parts' (rows within it, info): per-rollout numbers put back in
    row order, the path losses (loss_*) added."""
    out = {}
    for rows, info in parts:
        for k, v in info.items():
            if k.startswith("loss_"):
                out[k] = out.get(k, 0) + v
            else:
                out.setdefault(k, v.new_zeros((n, *v.shape[1:])))[rows] = v
    return out


def step_metrics(roll: dict, group_size: int) -> dict:
    """Per-step numbers that tell whether training does something, and what the weights do (docs/metrics.md).

    The reverse KL (kl) is taken over the rollouts on the reverse-KL path (the wrong ones when routed, all under
    OPD), the teacher's perplexity over the rollouts it scored (teacher_tokens of the step's response_tokens).
    Per path, over the prompts' subsets of more than one rollout: the weights' normalised entropy and
    effective sample size, (sum w)^2 / sum w^2 / n, both 1 when uniform (the ESS is 1/n when one
    rollout takes all). With rollout labels, where the weights fall inside a prompt: over the prompts whose
    reverse-KL subset holds both teacher-unreliable rollouts and others, the unreliable ones' share of the
    subset's weight (opd_unreliable_weight) beside their share of its rollouts (opd_unreliable_count), each
    averaged over those prompts (opd_unreliable_prompts of them); the same for the unlikely route among a
    prompt's correct rollouts on the MLE path (mle_unlikely_*). A weight that ignores the label keeps the two
    shares equal. GRPO adds the mean absolute advantage; a baseline without weights logs none of theirs.
    """
    per_group = roll["correct"].float().reshape(-1, group_size)      # (B, G)
    losses = {k: v.sum().item() for k, v in roll.items() if k.startswith("loss_")}
    tokens, scored = roll["n_tokens"], roll["scored"]
    out = {"loss": sum(losses.values()), **losses,
           "frac_correct": per_group.mean().item(),
           "frac_all_correct": (per_group == 1).all(1).float().mean().item(),
           "frac_all_wrong": (per_group == 0).all(1).float().mean().item(),
           "frac_truncated": roll["truncated"].float().mean().item(),
           "response_len": tokens.mean().item(),
           "response_tokens": int(tokens.sum().item()), "teacher_tokens": int(tokens[scored].sum().item()),
           "ppl_student": roll["nll_student"].exp().mean().item()}
    if "advantage" in roll:
        out["abs_advantage"] = roll["advantage"].abs().mean().item()
    if "weight" not in roll:
        return out
    on_kl = ~roll["mle"]                                              # the reverse-KL path's rollouts
    out["kl"] = (roll["kl_sum"][on_kl].sum() / tokens[on_kl].sum().clamp(min=1)).item() if on_kl.any() else None
    out["ppl_teacher"] = roll["nll_teacher"][scored].exp().mean().item() if scored.any() else None
    group, weight = roll["group"], roll["weight"]
    for path, member, label, name in (("mle", roll["mle"], "unlikely_route", "unlikely"),
                                      ("opd", ~roll["mle"], "teacher_unreliable", "unreliable")):
        prompts = [member & (group == g) for g in group[member].unique()]   # (N,) bool: one prompt's subset
        subsets = [weight[m] / weight[m].sum() for m in prompts if m.sum() > 1]       # each sums to 1
        entropy = [(-(p * p.clamp(min=1e-30).log()).sum() / math.log(len(p))).item() for p in subsets]
        ess = [(1 / (p * p).sum() / len(p)).item() for p in subsets]
        w = weight[member]
        out[f"w_{path}_min"] = w.min().item() if len(w) else None
        out[f"w_{path}_max"] = w.max().item() if len(w) else None
        out[f"w_{path}_entropy"] = sum(entropy) / len(entropy) if entropy else None
        out[f"ess_{path}"] = sum(ess) / len(ess) if ess else None
        if label in roll:
            mixed = [m for m in prompts if roll[label][m].any() and not roll[label][m].all()]
            weights = [(weight[m & roll[label]].sum() / weight[m].sum()).item() for m in mixed]
            counts = [roll[label][m].float().mean().item() for m in mixed]
            out[f"{path}_{name}_weight"] = sum(weights) / len(mixed) if mixed else None
            out[f"{path}_{name}_count"] = sum(counts) / len(mixed) if mixed else None
            out[f"{path}_{name}_prompts"] = len(mixed)
    return out


def sampler_gap(infos: list[dict], batches: list, sampler_logp, resp, world: int) -> dict:
    """How far the sampling policy (the fast path's copy) is from the one being trained, on the step's sampled
    tokens (every rank): the mean per-token log-ratio log pi_student - log pi_sampler, and its mean absolute value.
    infos: `scope_loss` infos with the student's "logp" per micro-batch (rows, columns) of `batches`."""
    gap = torch.cat([(i["logp"] - sampler_logp[r, c])[resp[r, c]] for i, (r, c) in zip(infos, batches)])
    n = max(all_sum(gap.numel(), world), 1)
    return {"sampler_logratio": all_sum(gap.sum().item(), world) / n,
            "sampler_abs_logratio": all_sum(gap.abs().sum().item(), world) / n}


def append_eval(run_dir: Path, step: int, accuracy: float, what: str):
    """One quick-eval result: its line of eval.jsonl, a line on the console, the run's curves redrawn. A step
    eval.jsonl already holds has its line replaced, not repeated: a run resumed before its first checkpoint
    measures step 0 again."""
    path = run_dir / "eval.jsonl"
    lines = [*(r for r in read_jsonl(path) if r.get("step") != step), {"step": step, "eval_accuracy": accuracy}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    tqdm.write(f"step {step}: held-out accuracy {accuracy:.1%} ({what})")
    plot_run(run_dir)


# The panels of a training run's picture: (title, [(metrics.jsonl key, label)]).
CURVES = [("loss of each path", [("loss_mle", "MLE (correct)"), ("loss_opd", "reverse KL (wrong)"),
                                 ("loss_pg", "policy gradient (GRPO)"), ("loss_sft", "teacher's solutions (KD)")]),
          ("rollouts graded correct", [("frac_correct", "fraction correct")]),
          ("reverse KL to the teacher, per token", [("kl", "kl")]),
          ("effective sample size (1 = uniform)", [("ess_mle", "student weights"), ("ess_opd", "teacher weights")])]


def read_jsonl(path: Path) -> list[dict]:
    """The whole lines of a jsonl log; a line torn by an interrupted write is skipped."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def plot_run(run_dir: Path) -> Path | None:
    """curves.png in a training run's directory: each path's loss, fraction correct, KL, the weights' effective
    sample size, held-out accuracy; from metrics.jsonl and eval.jsonl. Returns its path, or None when nothing was drawn."""
    metrics, evals = read_jsonl(run_dir / "metrics.jsonl"), read_jsonl(run_dir / "eval.jsonl")
    plt = pyplot() if metrics or evals else None
    if plt is None:
        return None
    fig, axes = plt.subplots(1, len(CURVES) + 1, figsize=(4 * (len(CURVES) + 1), 3.2))
    for ax, (title, keys) in zip(axes, CURVES):
        for key, label in keys:
            points = [(m["step"], m[key]) for m in metrics if m.get(key) is not None]
            if points:
                ax.plot(*zip(*points), label=label)
        ax.set(title=title, xlabel="step")
        if len(keys) > 1 and ax.lines:
            ax.legend(fontsize=8)
    if evals:
        axes[-1].plot([e["step"] for e in evals], [100 * e["eval_accuracy"] for e in evals], marker="o")
    axes[-1].set(title="held-out accuracy (%)", xlabel="step")
    for ax in axes:
        ax.grid(alpha=0.3)
    path = run_dir / "curves.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def open_run_logs(run_dir: Path, config: dict, report_to: str, start: int):
    """Prepare a training run's directory (run_config.json; logs cut back to step `start`, where a resumed run
    continues); returns the function that records one step in metrics.jsonl and the tracker."""
    run_dir.mkdir(parents=True, exist_ok=True)
    # not config.json: the trained student is saved into this directory at the end, with its own config.json
    (run_dir / "run_config.json").write_text(json.dumps(config, indent=1))
    for name in ("metrics.jsonl", "eval.jsonl"):  # lines after `start`, and a line a kill tore, are dropped
        path = run_dir / name
        if path.exists():
            path.write_text("".join(json.dumps(r) + "\n" for r in read_jsonl(path) if r.get("step", start + 1) <= start))
    track = open_tracker(report_to, run_dir, config)

    def write(record: dict):
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        track({k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}, record["step"])
    return write


TRACKERS = {"wandb": ("wandb", "wandb"), "trackio": ("trackio", "trackio"),
            "tensorboard": ("torch.utils.tensorboard", "tensorboard")}


def open_tracker(name: str, run_dir: Path, config: dict):
    """log(numbers, step) for the experiment tracker `name` (none, wandb, tensorboard, trackio), imported
    only when asked for."""
    if name == "none":
        return lambda numbers, step: None
    module, package = TRACKERS[name]
    try:
        tracker = importlib.import_module(module)
    except ImportError:
        fail(f"--report-to {name}: the package is not installed (pip install {package})")
    if name == "tensorboard":
        writer = tracker.SummaryWriter(str(run_dir / "tensorboard"))

        def add_scalars(numbers: dict, step: int):
            for k, v in numbers.items():
                writer.add_scalar(k, v, step)
            writer.flush()
        return add_scalars
    tracker.init(project="scope", name=run_dir.name, config=config)
    return lambda numbers, step: tracker.log(numbers, step=step)


def main(argv: list[str]) -> dict | None:
    """Evaluate, resuming what the output directory holds; returns the summary on rank 0."""
    quiet_libraries()
    args = parse_args(argv)
    if args.plot_run:
        path = plot_run(Path(args.plot_run))
        print(f"curves in {path}" if path else f"eval.py: no curves drawn for {args.plot_run}")
        return None
    # gloo serves only the final barrier; a long timeout, as ranks finish their shares at different times
    rank, world, device = setup_distributed("gloo", timedelta(hours=12))
    benchmarks = load_benchmarks(args)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    check_settings(args, rank)
    run(args, benchmarks, rank, world, device)
    summary = None
    if world > 1:
        dist.barrier()  # every rank has written its share
    if rank == 0:
        merge_rank_files(args.output_dir)
        done = read_samples(args.output_dir)
        per_benchmark = {name: counts(done, name, len(rows), args.n) for name, rows in benchmarks.items()}
        summary = summarize(per_benchmark, args.n, args.k, args.pass_estimator)
        (args.output_dir / "summary.json").write_text(
            json.dumps({"grader": args.grader, "pass_estimator": args.pass_estimator, **summary}, indent=1))
        print(table(summary, args.pass_estimator))
        plot(per_benchmark, args.n, args.pass_estimator, args.output_dir)
        print(f"results in {args.output_dir}")
    if world > 1:
        dist.destroy_process_group()
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
