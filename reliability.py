"""
Reliability: atomic checkpoints, exact resume, stop on a signal, and faults named instead of tracebacks.

A run writes a checkpoint every `save_every` steps into output_dir/step_NNNNNN (a temporary directory, flushed,
then renamed); the data order and the sampling seeds are functions of the step, so a resumed run draws exactly the
rollouts an uninterrupted one would have. docs/resume.md lists the faults and what the run says about each.
"""
import json
import os
import shutil
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

import torch

from sample import barrier, fail, fsync, load_state, save_model, save_state

def checkpoints(out_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a save in progress lives in a .tmp_ dir until renamed)."""
    return sorted(p for p in out_dir.glob("step_*") if (p / "trainer.json").exists())


def find_checkpoint(cfg, out_dir: Path) -> Path | None:
    """The checkpoint to resume from, or None for a fresh run; refuses to overwrite a previous run."""
    if cfg.resume == "":
        if checkpoints(out_dir) or (out_dir / "metrics.jsonl").exists():
            fail(f"output_dir {out_dir} already holds a run; continue it with --resume auto, "
                 f"or choose another --output-dir")
        return None
    if cfg.resume == "auto":
        found = checkpoints(out_dir)
        return found[-1] if found else None
    path = Path(cfg.resume)
    if not (path / "trainer.json").exists():
        fail(f"--resume {path}: not a checkpoint (expected a step_NNNNNN directory written by scope.py)")
    return path


# Fields that decide which rollouts each step draws: a resumed run must keep them.
RESUME_FIELDS = ("seed", "batch_size", "group_size")


def save_checkpoint(model, optimizer, tokenizer, out_dir: Path, step: int, cfg, rank: int, world: int):
    """Atomically: write into a temporary directory, flush to disk, then rename; prune old ones.

    Holds the student as a plain HF model, and model + optimizer state (sharded under FSDP2) in
    torch.distributed.checkpoint format for an exact resume. Nothing else is needed: the data
    order and the sampling seeds are functions of the step.
    """
    final, tmp = out_dir / f"step_{step:06d}", out_dir / f".tmp_step_{step:06d}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    barrier(world)
    save_model(model, tokenizer, tmp, rank, world)
    save_state(model, optimizer, tmp / "state")
    barrier(world)
    if rank == 0:
        (tmp / "trainer.json").write_text(json.dumps({"step": step, **{k: getattr(cfg, k) for k in RESUME_FIELDS}}))
        fsync(*(f for f in tmp.rglob("*") if f.is_file()))
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
        fsync(out_dir)  # make the rename itself durable
        for old in checkpoints(out_dir)[:-cfg.keep_checkpoints]:
            shutil.rmtree(old)
    barrier(world)


def load_checkpoint(path: Path, model, optimizer, cfg, fast=None) -> int:
    """Restore model and optimizer (and the rollout copy) from a checkpoint made with the same RESUME_FIELDS;
    returns its step."""
    saved = json.loads((path / "trainer.json").read_text())
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


# What lowers each phase's peak memory (the memory plan's phases, plan.py).
PHASE_FIELDS = {"sampling": "rollout_kv_gb (rows per generate call) or max_new_tokens",
                "teacher scoring": "micro_batch_tokens or logprob_chunk_tokens",
                "update": "micro_batch_tokens or logprob_chunk_tokens (gradient_checkpointing true)"}


@contextmanager
def out_of_memory(phase: str, **sizes):
    """Turn an out-of-memory error inside `phase` into a message naming the phase, its sizes and the field to lower."""
    try:
        yield
    except torch.OutOfMemoryError:
        shown = ", ".join(f"{k} {v}" for k, v in sizes.items())
        fail(f"out of memory in {phase} ({shown}); lower {PHASE_FIELDS[phase]} (python scope.py ... --plan shows each "
             f"phase's peak); the newest checkpoint is intact, continue with --resume auto")
