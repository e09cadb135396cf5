"""
Reliability: atomic checkpoints that record what they hold, exact resume, stop on a signal, and faults named
instead of tracebacks.

A run writes a checkpoint every `save_every` steps into output_dir/step_NNNNNN (a temporary directory, flushed,
then renamed); the data order and the sampling seeds are functions of the step, so a resumed run draws exactly the
rollouts an uninterrupted one would have. The checkpoint's trainer.json, written last, lists every other file with
its size and sha256: a resume checks them before loading and steps over a damaged checkpoint, naming the file and
how it differs. Before each save the space a checkpoint needs is compared with what is free, and a full disk stops
the run as a signal does. docs/resume.md lists the faults, how each was injected, and what the run says.
"""
import errno
import hashlib
import json
import os
import shutil
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException

import plan
from eval import plot_run
from sample import all_max, barrier, fail, fsync, load_state, save_model, save_state


def checkpoints(out_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a save in progress lives in a .tmp_ dir until renamed)."""
    return sorted(p for p in out_dir.glob("step_*") if (p / "trainer.json").exists())


# -----------------------------------------------------------------------------
# What a checkpoint holds, and whether it still holds it

def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_list(ckpt: Path) -> dict[str, list]:
    """{path relative to ckpt: [bytes, sha256]} of every file under ckpt."""
    return {f.relative_to(ckpt).as_posix(): [f.stat().st_size, sha256(f)] for f in sorted(ckpt.rglob("*"))
            if f.is_file()}


def read_trainer_json(ckpt: Path) -> tuple[dict | None, str | None]:
    """(trainer.json's contents, None), or (None, what is wrong with it)."""
    try:
        saved = json.loads((ckpt / "trainer.json").read_text())
    except OSError as e:
        return None, f"trainer.json cannot be read ({e.strerror})"
    except ValueError as e:  # cut short, or bytes that are not UTF-8 text
        return None, f"trainer.json is not valid JSON ({e})"
    if not isinstance(saved, dict) or not isinstance(saved.get("step"), int):
        return None, "trainer.json holds no step number"
    return saved, None


def damage(ckpt: Path) -> str | None:
    """What is wrong with checkpoint `ckpt` (which file, and how), or None when every file its trainer.json lists
    is there with the size and sha256 it had when written. Sizes first: a file cut short is found without hashing.
    A checkpoint whose trainer.json lists no files (written before they were listed) is taken unchecked."""
    saved, wrong = read_trainer_json(ckpt)
    if wrong:
        return wrong
    files = saved.get("files", {})
    for name, (size, _) in files.items():
        path = ckpt / name
        if not path.is_file():
            return f"{name} is missing"
        if (actual := path.stat().st_size) != size:
            return f"{name} has {actual:,} bytes, {size:,} when written ({'cut short' if actual < size else 'grown'})"
    for name, (_, digest) in files.items():
        try:
            if sha256(ckpt / name) != digest:
                return f"{name} has changed since it was written (its sha256 is not the one trainer.json records)"
        except OSError as e:
            return f"{name} cannot be read ({e.strerror})"
    return None


def newest_intact(out_dir: Path) -> tuple[Path | None, str | None]:
    """(the newest undamaged checkpoint, None); (None, None) when there is none to resume; (None, why) when every
    one is damaged. Says which it steps over, and why."""
    found = checkpoints(out_dir)
    for ckpt in reversed(found):
        wrong = damage(ckpt)
        if wrong is None:
            if ckpt != found[-1]:
                print(f"resuming from {ckpt}, the newest intact checkpoint", file=sys.stderr)
            return ckpt, None
        print(f"checkpoint {ckpt} is damaged: {wrong}; stepping over it", file=sys.stderr)
    if found:
        return None, (f"no intact checkpoint in {out_dir} (each one's damage is said above); start afresh in another "
                      f"--output-dir")
    return None, None


# -----------------------------------------------------------------------------
# Choosing, writing and loading a checkpoint

def choose_checkpoint(cfg, out_dir: Path) -> tuple[Path | None, str | None]:
    """(the checkpoint to resume from or None for a fresh run, None), or (None, why the run must not start)."""
    if cfg.resume == "":
        if checkpoints(out_dir) or (out_dir / "metrics.jsonl").exists():
            return None, (f"output_dir {out_dir} already holds a run; continue it with --resume auto, "
                          f"or choose another --output-dir")
        return None, None
    if cfg.resume == "auto":
        return newest_intact(out_dir)
    path = Path(cfg.resume)
    if not (path / "trainer.json").exists():
        return None, f"--resume {path}: not a checkpoint (expected a step_NNNNNN directory written by scope.py)"
    wrong = damage(path)
    if wrong:
        return None, (f"checkpoint {path} is damaged: {wrong}; resume from another one, or with --resume auto "
                      f"(the newest intact one)")
    return path, None


def find_checkpoint(cfg, out_dir: Path) -> Path | None:
    """The checkpoint to resume from, or None for a fresh run; refuses to overwrite a previous run, and to load a
    damaged checkpoint. Under torchrun rank 0 checks the files and broadcasts its choice: every rank loads the same
    checkpoint, or every rank stops."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    verdict = list(choose_checkpoint(cfg, out_dir)) if rank == 0 else [None, None]
    if world > 1:
        dist.broadcast_object_list(verdict, src=0, device=torch.device("cpu"))
    path, error = verdict
    if error:
        if rank == 0:
            fail(error)
        sys.exit(2)
    return path


# Fields that decide which rollouts each step draws: a resumed run must keep them.
RESUME_FIELDS = ("seed", "batch_size", "group_size")


def save_checkpoint(model, optimizer, tokenizer, out_dir: Path, step: int, cfg, rank: int, world: int):
    """Atomically: write into a temporary directory, flush to disk, then rename; prune old ones.

    Holds the student as a plain HF model, and model + optimizer state (sharded under FSDP2) in
    torch.distributed.checkpoint format for an exact resume. Nothing else is needed: the data
    order and the sampling seeds are functions of the step. A disk short of the space a checkpoint
    needs, before or during the write, stops the run (`stop_for_space`); the ranks agree after each
    part of the write, since the others would wait in the next collective for a rank that failed.
    """
    final, tmp = out_dir / f"step_{step:06d}", out_dir / f".tmp_step_{step:06d}"
    need = checkpoint_bytes(out_dir, model)
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        prune(out_dir, step - 1, cfg.keep_checkpoints)  # a lowered keep_checkpoints frees its space before the write
    if all_max(rank == 0 and disk_free(out_dir) < need, world):
        stop_for_space(out_dir, tmp, need, cfg, rank)

    def seal():
        """trainer.json, listing every file already written; everything flushed; the rename; old ones pruned."""
        record = {"step": step, **{k: getattr(cfg, k) for k in RESUME_FIELDS}, "files": file_list(tmp)}
        (tmp / "trainer.json").write_text(json.dumps(record))
        fsync(*(f for f in tmp.rglob("*") if f.is_file()))
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
        fsync(out_dir)  # make the rename itself durable
        prune(out_dir, step, cfg.keep_checkpoints)

    for write in (lambda: save_model(model, tokenizer, tmp, rank, world),
                  lambda: save_state(model, optimizer, tmp / "state"),
                  lambda: rank == 0 and seal()):
        error = None
        try:
            write()
        except (Exception, CheckpointException) as e:  # torch.distributed.checkpoint's is a BaseException
            if not out_of_space(e, out_dir, need):
                raise
            error = e
        if all_max(error is not None, world):
            stop_for_space(out_dir, tmp, need, cfg, rank, error)


def prune(out_dir: Path, step: int, keep: int):
    """Remove all but the newest `keep` checkpoints up to `step`. Those after it are stale, left by the run a resume
    went back from; it writes them anew."""
    for old in [c for c in checkpoints(out_dir) if c.name <= f"step_{step:06d}"][:-keep]:
        shutil.rmtree(old)


def load_checkpoint(path: Path, model, optimizer, cfg, fast=None) -> int:
    """Restore model and optimizer (and the rollout copy) from a checkpoint made with the same RESUME_FIELDS;
    returns its step. `find_checkpoint` has checked its files."""
    saved, _ = read_trainer_json(path)
    for name in RESUME_FIELDS:
        if name in saved and saved[name] != getattr(cfg, name):
            fail(f"--resume {path}: the checkpoint was made with {name}={saved[name]!r}, this run has "
                 f"{getattr(cfg, name)!r}; it decides which rollouts each step draws, so resume with the same "
                 f"value or start a fresh run in another --output-dir")
    load_state(model, optimizer, path / "state")
    if fast is not None:
        fast.refresh(model)
    print(f"resumed from {path} (step {saved['step']})")
    return saved["step"]


# -----------------------------------------------------------------------------
# A full disk

def disk_free(path: Path) -> int:
    """Bytes free to this user on the filesystem that holds `path` (or would: its nearest existing parent)."""
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def checkpoint_bytes(out_dir: Path, model) -> int:
    """Disk one checkpoint takes: what the newest one's trainer.json records, or before the first, the plan's
    estimate from the student's parameters."""
    found = checkpoints(out_dir)
    saved, _ = read_trainer_json(found[-1]) if found else (None, None)
    if saved and saved.get("files"):
        return sum(size for size, _ in saved["files"].values())
    return plan.checkpoint_bytes(sum(p.numel() for p in model.parameters()))


def out_of_space(error: BaseException, out_dir: Path, need: int) -> bool:
    """Whether a failed write means a full disk: ENOSPC or EDQUOT anywhere in the error (torch.distributed.checkpoint
    wraps each rank's in its own), or less space free than a checkpoint needs (torch's zip writer says only
    'unexpected pos'; the message quotes the error, should it be another)."""
    todo = [error]
    while todo:
        e = todo.pop()
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        todo += [c for c in (e.__cause__, e.__context__) if c is not None]
        if isinstance(e, CheckpointException):
            todo += [failure for failure, _ in e.failures.values()]
    return disk_free(out_dir) < need


def one_line(error: BaseException) -> str:
    """An error in one line; for torch.distributed.checkpoint's, the first failed rank's own error."""
    if isinstance(error, CheckpointException) and error.failures:
        error = next(iter(error.failures.values()))[0]
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def size(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if abs(n) >= 1e9 else f"{n / 1e6:.1f} MB"


def stop_for_space(out_dir: Path, tmp: Path, need: int, cfg, rank: int, error: BaseException | None = None):
    """Stop as a signal does (exit status 1, the run continues from its newest checkpoint) when the disk cannot hold
    another checkpoint: the partial one removed, the space needed and free stated, and what to do."""
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        newest, _ = newest_intact(out_dir)
        free = disk_free(out_dir)
        failed = f"a write failed ({one_line(error)}); " if error is not None else ""
        more = f" (at least {size(need - free)})" if need > free else ""  # a quota, or a first estimate too low
        print(f"\nstopped: the disk holding {out_dir} is full: {failed}a checkpoint needs {size(need)} and "
              f"{size(free)} is free (the partial checkpoint removed). The newest intact checkpoint is "
              f"{newest or 'none: nothing of this run is saved'}.\nFree space there{more}, or lower "
              f"keep_checkpoints (now {cfg.keep_checkpoints}: the run keeps that many and writes one more before it "
              f"removes the oldest), then continue with --resume auto", file=sys.stderr)
    sys.exit(1)


# -----------------------------------------------------------------------------
# Signals

def catch_stop_signals() -> dict:
    """SIGTERM (preemption) and SIGINT set a flag the loop reads at the next step boundary; a second one kills."""
    stop = {"signal": None}

    def handler(signum, frame):
        stop["signal"] = signum
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def stop_now(argv: list[str], step: int, signum, rank: int):
    """Exit after a signal, once the checkpoint is saved, saying how to continue."""
    again = argv if any(a.startswith("--resume") for a in argv) else [*argv, "--resume", "auto"]
    if rank == 0:
        print(f"\nstopped by a signal after step {step}; checkpoint saved. Continue with:\n"
              f"  python scope.py {' '.join(again)}", file=sys.stderr)
    sys.exit(128 + (signum or signal.SIGTERM))


# -----------------------------------------------------------------------------
# Out of memory

# The memory plan's phases (plan.py) that each phase of the step runs through: their fields lower its peak.
PLAN_PHASES = {"sampling": ("generation",),
               "teacher scoring": ("teacher scoring", "log-prob chunk"),
               "update": ("update", "log-prob chunk")}


@contextmanager
def out_of_memory(phase: str, **sizes):
    """Turn an out-of-memory error inside `phase` (a key of PLAN_PHASES) into a message naming the phase, its sizes
    and the fields that lower its peak in the memory plan, in place of a traceback from deep inside torch."""
    try:
        yield
    except torch.OutOfMemoryError as e:
        shown = ", ".join(f"{k} {v}" for k, v in sizes.items())
        lower = " or ".join(f"{plan.PHASE_FIELDS[p]} (the plan's {p} phase)" for p in PLAN_PHASES[phase])
        fail(f"out of memory in {phase} ({shown}).\nLower {lower}; the same command with --plan estimates each "
             f"phase's peak. The newest checkpoint is intact: continue from it with --resume auto.\n"
             f"torch said: {one_line(e)}")


def finish(student, tok, out_dir: Path, rank: int, world: int):
    """The trained student as a plain HF model in output_dir, and the run's curves."""
    save_model(student, tok, out_dir, rank, world)
    if rank == 0:
        plot_run(out_dir)
        print(f"done: the student is in {out_dir} (AutoModelForCausalLM.from_pretrained('{out_dir}'))")
    if world > 1:
        barrier(world)  # every rank is done with the process group before any tears it down
        dist.destroy_process_group()
