"""Run by tests/test_distributed.py under torchrun: a bf16 RolloutCopy of an FSDP2-sharded student, refreshed
after each of 3 updates, compared bitwise with the gathered fp32 weights cast to bf16. Rank 0 prints every rank's
numbers as one JSON line."""
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sample import RolloutCopy, load_model, setup_distributed, shard  # noqa: E402

rank, world, device = setup_distributed()
model, tokenizer = load_model(sys.argv[1], torch.float32, device)
fast = RolloutCopy(model, torch.bfloat16, rows=2, max_len=16)  # made before sharding, as scope.load_models does
start = {name: p.clone() for name, p in fast.model.named_parameters()}
shard(model, torch.float32)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
mismatches = []
for step in range(3):
    torch.manual_seed(step * 10 + rank)  # each rank its own batch, as in training
    ids = torch.randint(0, len(tokenizer), (2, 8))
    model(ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    fast.refresh(model)
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    mismatches += [f"{step}:{name}" for name, p in fast.model.named_parameters()
                   if not torch.equal(p, full[name].to(torch.bfloat16))]
moved = max((p - start[name]).abs().max().item() for name, p in fast.model.named_parameters())
mine = {"rank": rank, "mismatches": mismatches, "moved": moved, "checked": len(start)}
everyone = [None] * world
dist.all_gather_object(everyone, mine)
if rank == 0:
    print(json.dumps(everyone), flush=True)
dist.barrier()
dist.destroy_process_group()
sys.stdout.flush()
os._exit(0)  # as sample.leave_torchrun_worker: no C++ static destructors, where gloo's threads can abort a rank
