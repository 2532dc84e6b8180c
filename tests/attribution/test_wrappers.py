"""RelevanceDropout2d on wrapped models: DistributedDataParallel, DataParallel and torch.compile (issue: distributed
and compiled models).

Attribution must run on the plain module underneath (METHOD.md section 3): forwarding through DDP outside a training
step prepares a gradient reduction that never comes, and hooks added to a compiled module force recompilation.
"""

import multiprocessing
import os
import time

import pytest
import torch
import torch._dynamo
import torch._dynamo.testing
from torch import nn

import reldrop_transforms as rt
from reldrop_transforms.attribution import relevance

import _ddp_worker
from _models import small_cnn
from test_model_state import assert_same_state, prepared, snapshot

BACKENDS = ["fast", "zennit"]
DDP_TIMEOUT_S = 120.0


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: intra-op threads only add overhead, a lot of it on a small machine shared with others."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _run_ddp(backends: list[str], out_dir: str, world_size: int = 2) -> list[dict]:
    """Start the ranks, join them under a hard deadline (a hang fails, never blocks) and return their results."""
    ctx = multiprocessing.get_context("spawn")
    # a file rendezvous in the test's own folder: no port that another process could take first
    init_method = f"file://{os.path.join(out_dir, 'rendezvous')}"
    procs = [
        ctx.Process(target=_ddp_worker.run, args=(rank, world_size, init_method, backends, out_dir), daemon=True)
        for rank in range(world_size)
    ]
    try:
        for proc in procs:
            proc.start()
        deadline = time.monotonic() + DDP_TIMEOUT_S
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
        hung = [rank for rank, proc in enumerate(procs) if proc.is_alive()]
        errors = []
        for rank in range(world_size):
            err = os.path.join(out_dir, f"rank{rank}.err")
            if os.path.exists(err):
                with open(err) as f:
                    errors.append(f"rank {rank}:\n{f.read()}")
        assert not errors, "\n".join(errors)
        assert not hung, f"ranks {hung} still running after {DDP_TIMEOUT_S:.0f} s (hang)"
        codes = [proc.exitcode for proc in procs]
        assert codes == [0] * world_size, f"exit codes {codes}"
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join(5)
    return [torch.load(os.path.join(out_dir, f"rank{rank}.pt")) for rank in range(world_size)]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    """One 2-rank run for both backends (starting processes and importing torch in them is most of the cost)."""
    start = time.perf_counter()
    results = _run_ddp(BACKENDS, str(tmp_path_factory.mktemp("ddp")))
    print(f"2-rank DDP run, backends {BACKENDS}: {time.perf_counter() - start:.1f} s")
    return results


@pytest.mark.parametrize("backend", BACKENDS)
def test_ddp_two_ranks_train_with_reldrop(backend, ddp_results):
    """Two gloo ranks on CPU train a few steps with RelDrop on their own data: no hang, identical parameters."""
    results = [per_rank[backend] for per_rank in ddp_results]
    rank0, rank1 = results
    for rank, result in enumerate(results):
        # Relevance through the DDP wrapper is exactly the plain module's, before and after training.
        assert result["unwrap_equal"] == [True, True], (rank, result["unwrap_equal"])
        # Masks were applied (p=1: every batch loses some pixels, in every channel) but not to everything.
        assert len(result["dropped"]) == _ddp_worker.STEPS
        pixels = _ddp_worker.BATCH[0] * _ddp_worker.BATCH[2] * _ddp_worker.BATCH[3]
        assert all(0 < d < pixels for d in result["dropped"]), (rank, result["dropped"])
    assert rank0["dropped"] != rank1["dropped"]  # rank-specific data and noise

    # DDP kept the replicas in lockstep: bitwise identical parameters, which did train.
    assert list(rank0["params"]) == list(rank1["params"])
    for name in rank0["params"]:
        assert torch.equal(rank0["params"][name], rank1["params"][name]), f"{name} differs across ranks"
    for name, value in rank0["initial"].items():
        assert torch.equal(value, rank1["initial"][name]), f"initial {name} differs across ranks"
    changed = [name for name, p in rank0["params"].items() if not torch.equal(p, rank0["initial"][name])]
    assert changed == list(rank0["params"]), f"not updated: {set(rank0['params']) - set(changed)}"
    # BatchNorm statistics: each rank's last forward updates them with its own batch after DDP's broadcast, so
    # they may differ in value, but the same number of training forwards (and no attribution forward) counted.
    for name, buf in rank0["buffers"].items():
        if name.endswith("num_batches_tracked"):
            assert int(buf) == int(rank1["buffers"][name]) == _ddp_worker.STEPS, name
        else:
            assert not torch.equal(buf, rank0["initial"][name]), name


def test_dataparallel_is_unwrapped():
    torch.manual_seed(0)
    model = prepared(small_cnn())
    wrapped = nn.DataParallel(model)  # CPU only: forwards to the module, but attribution must not go through it
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    for backend in BACKENDS:
        before = snapshot(model)
        assert torch.equal(relevance(wrapped, x, y, backend=backend), relevance(model, x, y, backend=backend))
        assert_same_state(before, model)


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _steps(forward, transform, optimizer, data, steps):
    """RelDrop training steps: mask the batch, then forward/backward/step through ``forward``."""
    dropped = []
    for _ in range(steps):
        x = torch.randn(8, 3, 16, 16, generator=data)
        y = torch.randint(0, 5, (8,), generator=data)
        x_masked, y = transform(x, y)
        dropped.append(int((x_masked == 0.0).all(1).sum()))
        optimizer.zero_grad()
        nn.functional.cross_entropy(forward(x_masked), y).backward()
        optimizer.step()
    return dropped


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_model_trains_without_recompiling(backend, fresh_dynamo):
    torch.manual_seed(0)
    model = small_cnn()
    eager = small_cnn()
    eager.load_state_dict(model.state_dict())
    cnt = torch._dynamo.testing.CompileCounter()  # no inductor: the captured graph runs eagerly, fast on CPU
    compiled = torch.compile(model, backend=cnt)

    def run(module, forward, steps, data, noise):
        transform = rt.RelevanceDropout2d(forward, p=1.0, backend=backend, generator=noise)
        optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
        return _steps(forward, transform, optimizer, data, steps)

    data, noise = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    torch.manual_seed(3)  # nn.Dropout in training forwards
    dropped = run(model, compiled, 2, data, noise)
    frames = cnt.frame_count
    assert 1 <= frames <= 2
    dropped += run(model, compiled, 3, data, noise)
    assert cnt.frame_count == frames, f"recompiled: {frames} -> {cnt.frame_count} frames over 3 RelDrop steps"
    assert all(d > 0 for d in dropped), dropped

    # Same steps on an uncompiled copy: the same masks and the same trained parameters.
    data, noise = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    torch.manual_seed(3)
    assert run(eager, eager, 5, data, noise) == dropped
    for (name, p), q in zip(model.state_dict().items(), eager.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=f"{name} differs from the eager run")

    # Relevance through the compiled module is the original module's, and costs no recompilation either.
    x, y = torch.randn(8, 3, 16, 16), torch.arange(8) % 5  # the training batch size: no shape recompile
    assert torch.equal(relevance(compiled, x, y, backend=backend), relevance(model, x, y, backend=backend))
    compiled(x)
    assert cnt.frame_count == frames


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("p", [1.0, 0.0])
def test_a_model_compiled_in_place_is_attributed_eagerly(backend, p, fresh_dynamo):
    # model.compile() (in place: no wrapper to unwrap) sent every attribution through dynamo: a compilation for
    # eval mode and for the engine's hooks on the first calls (about 3 s, 21 graphs). It now runs the eager
    # forward, and the model stays compiled for training
    torch.manual_seed(0)
    model = small_cnn()
    eager = small_cnn()
    eager.load_state_dict(model.state_dict())
    cnt = torch._dynamo.testing.CompileCounter()
    model.compile(backend=cnt)
    x, y = torch.randn(8, 3, 16, 16), torch.arange(8) % 5
    model(x).sum().backward()
    eager(x).sum().backward()  # (the same BatchNorm statistics)
    frames = cnt.frame_count
    assert frames >= 1
    before = snapshot(model)
    transform = rt.RelevanceDropout2d(model, p=p, backend=backend, generator=torch.Generator().manual_seed(0))
    expected = rt.RelevanceDropout2d(eager, p=p, backend=backend, generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        assert torch.equal(transform(x, y)[0], expected(x, y)[0])
    assert torch.equal(relevance(model, x, y, backend=backend), relevance(eager, x, y, backend=backend))
    assert cnt.frame_count == frames, f"compiled {cnt.frame_count - frames} more frames while attributing"
    assert_same_state(before, model)
    model(x).sum().backward()  # still compiled, and nothing to recompile
    assert model._compiled_call_impl is not None and cnt.frame_count == frames


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_model_state_is_preserved(backend, fresh_dynamo):
    """The model-state guarantees hold for the module under torch.compile (and for the wrapper's view of it)."""
    torch.manual_seed(0)
    model = prepared(small_cnn())  # warm BN, existing .grad, a frozen conv, an eval BN, a user hook
    cnt = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(model, backend=cnt)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    compiled(torch.randn(4, 3, 16, 16)).sum().backward()
    frames = cnt.frame_count

    before, before_wrapper = snapshot(model), snapshot(compiled)
    transform = rt.RelevanceDropout2d(compiled, p=1.0, backend=backend)
    images, labels = transform(torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3]))
    assert (images == 0.0).all(1).any()
    rel = relevance(compiled, torch.randn(2, 3, 16, 16), torch.tensor([4, 0]), backend=backend)
    assert rel.abs().sum() > 0
    assert_same_state(before, model)
    assert_same_state(before_wrapper, compiled)

    # The optimizer built before still updates the same parameters, through the compiled module, no recompile.
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer.zero_grad()
    nn.functional.cross_entropy(compiled(images), labels).backward()
    optimizer.step()
    assert cnt.frame_count == frames
    for n, p in model.named_parameters():
        if p.requires_grad and p.grad.abs().sum() > 0:
            assert not torch.equal(p.detach(), trainable[n]), f"{n} was not updated"
