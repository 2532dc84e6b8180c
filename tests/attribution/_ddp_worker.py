"""Worker of the 2-process DistributedDataParallel test in test_wrappers.py (a module of its own: `spawn` children
import it by name, without importing pytest or the test module).

For each attribution backend in turn, each rank trains the same small CNN, wrapped in DDP, for a few steps with
RelevanceDropout2d applied to its own (rank-specific) batches (one process group for all backends: spawning and
importing torch is most of the cost), and writes what the parent checks to ``<out_dir>/rank<r>.pt``; on failure it writes the
traceback to ``<out_dir>/rank<r>.err`` instead.
"""

from __future__ import annotations

import os
import sys
import traceback

FILL = -7.25  # a fill value that randn data never takes exactly
STEPS = 4
BATCH = (8, 3, 16, 16)


def run(rank: int, world_size: int, init_method: str, backends: list[str], out_dir: str) -> None:
    try:
        import datetime

        import torch
        import torch.distributed as dist

        torch.set_num_threads(1)  # two ranks on a small shared machine
        dist.init_process_group(
            "gloo", init_method=init_method, rank=rank, world_size=world_size,
            timeout=datetime.timedelta(seconds=60),
        )
        try:
            result = {backend: _train(rank, backend) for backend in backends}
        finally:
            dist.destroy_process_group()

        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    except BaseException:  # noqa: BLE001 - reported to the parent, which fails the test with it
        with open(os.path.join(out_dir, f"rank{rank}.err"), "w") as f:
            f.write(traceback.format_exc())
        sys.exit(1)


def _train(rank: int, backend: str) -> dict:
    import torch
    import torch.distributed as dist
    from torch import nn

    import reldrop_transforms as rt
    from reldrop_transforms.attribution import relevance

    from _models import small_cnn
    from test_model_state import assert_same_state, snapshot

    torch.manual_seed(0)  # the same initial model on every rank (DDP also broadcasts rank 0's)
    model = small_cnn()
    ddp = nn.parallel.DistributedDataParallel(model)  # broadcast_buffers=True: rank 0's BN statistics
    initial = {name: t.detach().clone() for name, t in model.state_dict().items()}
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    data = torch.Generator().manual_seed(1000 + rank)  # rank-specific batches
    transform = rt.RelevanceDropout2d(
        ddp, p=1.0, value=FILL, backend=backend, generator=torch.Generator().manual_seed(2000 + rank)
    )

    # Unwrapping: relevance through DDP is the plain module's, and attribution leaves its state alone.
    x = torch.randn(BATCH, generator=data)
    y = torch.randint(0, 5, (BATCH[0],), generator=data)
    unwrap_equal = [torch.equal(relevance(ddp, x, y, backend=backend), relevance(model, x, y, backend=backend))]

    dropped = []
    for _ in range(STEPS):
        x = torch.randn(BATCH, generator=data)
        y = torch.randint(0, 5, (BATCH[0],), generator=data)
        before = snapshot(model)
        x_masked, y_out = transform(x, y)
        assert_same_state(before, model)  # eval mode, hooks, BN statistics, .grad: all as they were
        assert y_out is y
        dropped.append(int((x_masked == FILL).all(1).sum()))
        optimizer.zero_grad()
        nn.functional.cross_entropy(ddp(x_masked), y).backward()  # gradients all-reduced across ranks
        optimizer.step()

    x = torch.randn(BATCH, generator=data)
    y = torch.randint(0, 5, (BATCH[0],), generator=data)
    unwrap_equal.append(
        torch.equal(relevance(ddp, x, y, backend=backend), relevance(model, x, y, backend=backend))
    )
    dist.barrier()  # also proves that no rank is stuck in a half-finished gradient reduction
    return {
        "initial": initial,
        "params": {name: p.detach().clone() for name, p in model.named_parameters()},
        "buffers": {name: b.detach().clone() for name, b in model.named_buffers()},
        "dropped": dropped,
        "unwrap_equal": unwrap_equal,
    }
