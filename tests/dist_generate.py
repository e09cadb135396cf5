"""Run by tests/test_distributed.py under torchrun: FSDP2 generation where the ranks stop at
different lengths, counting the parameter all-gathers. Rank 0 prints every rank's numbers as one JSON line."""
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sample import gathered, generate, load_model, setup_distributed, shard  # noqa: E402

rank, world, device = setup_distributed()
model, tokenizer = load_model(sys.argv[1], torch.float32, device)
shard(model, torch.float32)
model.eval()
# Count FSDP2's parameter all-gathers (a private hook point: what unshard() calls for each unit).
from torch.distributed.fsdp._fully_shard import _fsdp_param_group  # noqa: E402

calls = 0
real_all_gather = _fsdp_param_group.foreach_all_gather


def counting_all_gather(*args, **kwargs):
    global calls
    calls += 1
    return real_all_gather(*args, **kwargs)


_fsdp_param_group.foreach_all_gather = counting_all_gather
prompt = ["1+1\nPut your final answer within \\boxed{}.", "987+989\nPut your final answer within \\boxed{}."][rank]
kw = dict(stop=[tokenizer.eos_token_id], temperature=1.0, top_p=1.0, top_k=1, max_new_tokens=40, synced=True)
with gathered(model):
    ro = generate(model, tokenizer, [prompt], 2, **kw)
once = calls
generate(model, tokenizer, [prompt], 2, **kw)  # without `gathered`: one all-gather per unit per token
mine = {"rank": rank, "lengths": ro.resp.sum(1).tolist(), "gathered_all_gathers": once,
        "plain_all_gathers": calls - once, "units": len(model.model.layers) + 1}
everyone = [None] * world
dist.all_gather_object(everyone, mine)  # one print from rank 0: two ranks writing to one pipe can interleave
if rank == 0:
    print(json.dumps(everyone), flush=True)
dist.destroy_process_group()
sys.stdout.flush()
os._exit(0)  # as sample.leave_torchrun_worker: no C++ static destructors, where gloo's threads can abort a rank
