"""
Where the teacher runs: in the trainer's own process, or on ranks of its own (`--teacher-ranks K`).

The training loop talks to the teacher through two calls, the same wherever it runs:
  teacher.send(first, part, scored)  after each generate call: `part`, the call's rollouts (rows first, first+1, ...
                                     of the step), and `scored`, (n,) bool, those the teacher must score
  teacher.receive(ro, scored)        (N, L) the teacher's log-probs of the step's scored rollouts, 0 elsewhere

- `Colocated`: the teacher beside the student (sharded over the same ranks under torchrun) scores the step's
  rollouts when they are asked for, in one pass after sampling: the synchronous pipeline, and the default.
- `OnRanks`: under torchrun with `--teacher-ranks K`, the last K ranks hold the teacher alone (sharded among them)
  and run `serve`; the others train. Each call's scored rows leave as soon as the call is graded, the student
  samples the next call while the teacher scores them, and the update starts on the correct rollouts (their
  loss reads no teacher log-prob), waiting for the teacher only before the wrong ones.

The messages go over a gloo group of every rank (CPU tensors: at most a few MB a step), while each side's own
collectives (FSDP, the trainer's reductions) stay within a process group of its own ranks: the student's code
runs as if the teacher's ranks were not there, and theirs as if they were a job of K ranks.
"""
import atexit
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist

from reliability import out_of_memory
from sample import Rollouts, collective_timeout, compute_dtype, default_backend, fail, load_model, score_rows, shard

ROWS, STOP = 0, 1  # what a message header announces: rows to score, or the end of training


@dataclass
class Link:
    """The gloo group of every rank, over which student ranks and teacher ranks talk."""
    group: dist.ProcessGroupGloo
    rank: int       # this process's rank in the whole job
    students: int   # ranks 0 .. students-1 train; the others hold the teacher
    size: int       # every rank

    @property
    def leader(self) -> int:
        """The first teacher rank: every student's rows go to it, and it shares them among the teacher's ranks."""
        return self.students

    def post(self, tensors: list[torch.Tensor], peer: int) -> list:
        """Send CPU tensors to `peer`, in order; returns the pending works (keep the tensors alive until done)."""
        return [self.group.send([t], peer, 0) for t in tensors]

    def fetch(self, tensor: torch.Tensor, peer: int):
        """Receive into a CPU tensor from `peer`; returns the pending work."""
        return self.group.recv([tensor], peer, 0)


def split_world(teacher_ranks: int) -> Link:
    """Under torchrun: the last `teacher_ranks` ranks become the teacher's, the others the student's, each side its
    own default process group (so FSDP, `generate`'s synced decoding and the checkpoints see only their side), and
    the Link over all of them."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        fail(f"field 'teacher_ranks' is {teacher_ranks}: teacher ranks are ranks of a torchrun job "
             f"(torchrun --nproc_per_node N scope.py ... --teacher-ranks K, with K < N)")
    if teacher_ranks >= world:
        fail(f"field 'teacher_ranks' is {teacher_ranks} of {world} ranks: no student rank is left; use at most "
             f"{world - 1}")
    timeout = collective_timeout()
    store, rank, size = next(dist.rendezvous("env://", timeout=timeout))
    students = size - teacher_ranks
    side, rank_in_side = ("student", rank) if rank < students else ("teacher", rank - students)
    backend = default_backend(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    dist.init_process_group(backend, store=dist.PrefixStore(side, store), rank=rank_in_side,
                            world_size=students if side == "student" else teacher_ranks, timeout=timeout)
    return Link(dist.ProcessGroupGloo(dist.PrefixStore("link", store), rank, size, timeout), rank, students, size)


def scored_rollouts(cfg, correct: torch.Tensor) -> torch.Tensor:
    """(N,) bool: the rollouts the frozen model scores. SCOPE's teacher: those the loss reads, the wrong ones when
    routed (every one under OPD, or with teacher_rollouts all); GRPO's initial student (kl_beta > 0): every one."""
    if cfg.algorithm == "scope" and cfg.route_by_correctness and cfg.teacher_rollouts == "wrong":
        return ~correct
    return torch.full_like(correct, cfg.algorithm == "scope" or (cfg.algorithm == "grpo" and cfg.kl_beta > 0))


# -----------------------------------------------------------------------------
# The teacher in the trainer's process

class Colocated:
    """The teacher (or GRPO's frozen initial student) in this process: it scores the step's rollouts when they are
    asked for. busy and waited: seconds of the last step's scoring (the same here: all of it is exposed)."""
    remote = False

    def __init__(self, model, cfg, vocab: int, amp, world: int):
        self.model, self.cfg, self.vocab, self.amp, self.world = model, cfg, vocab, amp, world
        self.busy = self.waited = 0.0

    def send(self, first: int, part: Rollouts, scored: torch.Tensor):
        """Nothing to do before the step's rollouts are all sampled."""

    def receive(self, ro: Rollouts, scored: torch.Tensor) -> torch.Tensor:
        t0, cfg = time.perf_counter(), self.cfg
        with torch.no_grad(), self.amp, out_of_memory("teacher scoring", micro_batch_tokens=cfg.micro_batch_tokens,
                                                      tokens_per_row=ro.resp.shape[1]):
            logp = score_rows(self.model, ro, scored, cfg.micro_batch_tokens, self.world, vocab=self.vocab,
                              temperature=cfg.teacher_temperature or cfg.temperature,
                              chunk_tokens=cfg.logprob_chunk_tokens)
        self.busy = self.waited = time.perf_counter() - t0
        return logp


class Given:
    """Log-probs already at hand, for benchmarks and tests that score the teacher themselves."""
    remote, busy, waited = False, 0.0, 0.0

    def __init__(self, logp: torch.Tensor | None):
        self.logp = logp

    def send(self, first: int, part: Rollouts, scored: torch.Tensor):
        """Nothing to send."""

    def receive(self, ro: Rollouts, scored: torch.Tensor) -> torch.Tensor | None:
        return self.logp


# -----------------------------------------------------------------------------
# The teacher on ranks of its own: the student's side

class OnRanks:
    """A student rank's handle on the teacher's ranks. busy: seconds the teacher spent on this rank's calls of the
    last step (its leader's clock); waited: seconds this rank waited for them after its sampling was done (the
    teacher's exposed time)."""
    remote = True

    def __init__(self, link: Link, out_dir: str):
        self.link, self.out_dir, self.pending, self.busy, self.waited = link, out_dir, [], 0.0, 0.0
        atexit.register(self.close)  # a run that ends, stops on a signal or fails lets the teacher's ranks go

    def send(self, first: int, part: Rollouts, scored: torch.Tensor):
        rows = part.select(scored)
        n, width = len(rows.texts), rows.tokens.shape[1]
        out = [torch.tensor([ROWS, n, width, 1])]
        if n:
            out.append(torch.stack([rows.tokens, rows.attn.long(), rows.resp.long()]).cpu())      # (3, n, L)
        seconds, logp = torch.zeros(1, dtype=torch.float64), torch.zeros(n, width)
        sent = self.guard(lambda: self.link.post(out, self.link.leader))
        got = self.guard(lambda: [self.link.fetch(t, self.link.leader) for t in ([seconds, logp] if n else [seconds])])
        rows_at = first + scored.nonzero()[:, 0].cpu()                                              # (n,)
        self.pending.append((rows_at, seconds, logp, out, sent + got))  # `out` kept alive until its sends are done

    def receive(self, ro: Rollouts, scored: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        logp = torch.zeros(ro.tokens.shape, device=ro.tokens.device)
        self.busy = 0.0
        for rows_at, seconds, part, _, works in self.pending:
            self.guard(lambda: [w.wait() for w in works])
            logp[rows_at.to(logp.device), :part.shape[1]] = part.to(logp.device)
            self.busy += seconds.item()
        self.pending, self.waited = [], time.perf_counter() - t0
        return logp

    def close(self):
        """Tell the teacher's ranks that training is over (once; nothing if they are gone already)."""
        if self.link is not None:
            try:
                for w in self.link.post([torch.tensor([STOP, 0, 0, 0])], self.link.leader):
                    w.wait()
            except RuntimeError:
                pass
            self.link = None

    def guard(self, talk):
        """Run a send or a wait on the link; a teacher rank that died or was killed stops the run, naming it."""
        try:
            return talk()
        except RuntimeError as e:
            link, self.link = self.link, None
            fail(f"the teacher ({ranks(link.students, link.size)} of this torchrun job) stopped answering "
                 f"({said(e)}): it ended, or was killed; torchrun's report names how. The checkpoints in "
                 f"{self.out_dir} are as they were: continue with --resume auto")


def said(error: RuntimeError) -> str:
    """gloo's words, without its source location and advice: "Connection closed by peer [127.0.0.1]:8083"."""
    text = str(error).split(". This")[0]
    return text.split("] ", 1)[1] if text.startswith("[") and "] " in text else text


def ranks(first: int, end: int) -> str:
    return f"rank {first}" if end - first == 1 else f"ranks {first}-{end - 1}"


# -----------------------------------------------------------------------------
# The teacher on ranks of its own: the teacher's side

def serve(cfg, link: Link, device: torch.device):
    """A teacher rank's whole life: load the teacher (sharded over the teacher's ranks), then score what the students
    send, round by round (a round: one generate call of every student rank), until they say training is over.

    The leader receives each student's rows, shares them out among the teacher's ranks, scores its own share,
    gathers the others' log-probs and sends each student its own. Every teacher rank runs as many forwards in a
    round (FSDP's collectives): `score_rows` agrees on the count, and a rank whose share is empty is lent one row to
    run them on, its result dropped. Signals are left to the students, who checkpoint and then say stop.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    compute = compute_dtype(cfg.dtype, device)
    model, tok = load_model(cfg.teacher, compute, device)
    model.requires_grad_(False).eval()
    k, me = link.size - link.students, link.rank - link.students
    if k > 1 and cfg.shard_teacher:
        shard(model, compute)
    amp = torch.autocast("cuda", dtype=compute) if device.type == "cuda" and k == 1 else nullcontext()
    teacher = Colocated(model, cfg, len(tok), amp, k if cfg.shard_teacher else 1)
    while (asked := receive_rows(link, range(link.students)) if me == 0 else receive_rows(link, [link.leader])):
        if me:
            rows, keep = asked[0]
            if keep:
                talk(lambda: link.post([scored(teacher, rows, keep, device)], link.leader), link)
            else:
                scored(teacher, rows, keep, device)
            continue
        t0 = time.perf_counter()
        rows = padded([r for r, _ in asked])                                     # (3, n, L) every student's rows
        shares = torch.tensor_split(torch.arange(rows.shape[1]), k)
        keep = [len(s) > 0 for s in shares]
        lent = [rows[:, s] if len(s) or not rows.shape[1] else rows[:, :1] for s in shares]  # an empty share: one row
        for j in range(1, k):
            talk(lambda: link.post(message(lent[j], keep[j]), link.leader + j), link)
        logp = [scored(teacher, lent[0], keep[0], device)]
        for j in range(1, k):
            if keep[j]:
                logp.append(torch.zeros(len(shares[j]), rows.shape[2]))
                talk(lambda: [link.fetch(logp[-1], link.leader + j)], link)
        logp = torch.cat(logp)                                                   # (n, L)
        seconds, at = torch.tensor([time.perf_counter() - t0], dtype=torch.float64), 0
        for s, (r, _) in enumerate(asked):
            n = r.shape[1]
            talk(lambda: link.post([seconds] + ([logp[at:at + n, :r.shape[2]].contiguous()] if n else []), s), link)
            at += n
    for j in range(1, k if me == 0 else 0):
        talk(lambda: link.post([torch.tensor([STOP, 0, 0, 0])], link.leader + j), link)


def message(rows: torch.Tensor, keep: bool) -> list[torch.Tensor]:
    """The tensors that carry rows, (3, n, L) (tokens, attention, response), to a teacher rank: a header, then them."""
    header = torch.tensor([ROWS, rows.shape[1], rows.shape[2], int(keep)])
    return [header, rows.contiguous()] if rows.numel() else [header]


def receive_rows(link: Link, peers) -> list[tuple[torch.Tensor, bool]] | None:
    """From each peer in turn, its rows, (3, n, L), and whether they are to be scored; None once any says stop."""
    got = []
    for peer in peers:
        header = torch.zeros(4, dtype=torch.long)
        talk(lambda: [link.fetch(header, peer)], link)
        code, n, width, keep = header.tolist()
        if code == STOP:
            return None
        rows = torch.zeros(3, n, width, dtype=torch.long)
        if n:
            talk(lambda: [link.fetch(rows, peer)], link)
        got.append((rows, bool(keep)))
    return got


def padded(parts: list[torch.Tensor]) -> torch.Tensor:
    """(3, n_i, L_i) parts as one (3, sum n_i, max L_i), padded on the right with zeros (no token, no attention)."""
    width = max(p.shape[2] for p in parts)
    return torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[2])) for p in parts], 1)


def scored(teacher: Colocated, rows: torch.Tensor, keep: bool, device: torch.device) -> torch.Tensor:
    """The teacher's (n, L) log-probs of rows (3, n, L), on the CPU; `keep` false: forwards run, nothing is kept."""
    rows = rows.to(device)
    ro = Rollouts(rows[0], rows[1].bool(), rows[2].bool(), [""] * rows.shape[1],
                  torch.zeros(rows.shape[1], dtype=torch.bool, device=device))
    return teacher.receive(ro, torch.full((rows.shape[1],), keep, device=device)).cpu()


def talk(fn, link: Link):
    """Run sends and waits on the link from a teacher rank; a rank that is gone ends this one, saying so."""
    try:
        works = fn()
        for w in works or []:
            w.wait()
    except RuntimeError as e:
        print(f"scope.py: teacher rank {link.rank}: a rank of the job stopped answering ({said(e)}); the teacher "
              f"stops too", file=sys.stderr)
        os._exit(1)
