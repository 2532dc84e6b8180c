"""CUDA-graph capture of a whole attribution step, replayed per batch (METHOD.md section 3).

At training sizes the eager fast engine is dominated by Python and kernel-launch overhead; capturing the eval
forward, the LRP backward and the mask once per input shape and replaying it removes that. The cache key holds
everything a captured graph bakes in:

- the input shapes, dtypes and device (a last batch of another size gets its own graph);
- the module tree and the storage address, shape and dtype of every parameter and buffer: in-place optimizer
  updates keep the storage (the graph reads the new values, no recapture), while replacing a parameter or buffer,
  ``model.to(...)``, ``load_state_dict(assign=True)`` or changing the module tree forces a recapture;
- the caller's own settings (``extra_key``).

Random numbers are not drawn inside the graph: the caller draws them (from its ``torch.Generator``) into an input
buffer before each replay, so they differ per batch and follow the generator.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["GraphCache", "model_key"]


def model_key(model: nn.Module) -> tuple:
    """What a captured graph depends on in ``model``: module tree and tensor storages (not their values).

    Modules and tensors enter as weak references: a freed object's reference equals only itself, so a new object
    that reuses a freed one's address never matches an old key.
    """
    modules = tuple((weakref.ref(m), type(m)) for m in model.modules())
    tensors = tuple(
        (weakref.ref(t), t.data_ptr(), tuple(t.shape), t.dtype) for t in (*model.parameters(), *model.buffers())
    )
    return modules, tensors


class _Captured:
    __slots__ = ("graph", "inputs", "outputs")

    def __init__(self, graph, inputs: list[Tensor], outputs: tuple[Tensor, ...]) -> None:
        self.graph = graph
        self.inputs = inputs
        self.outputs = outputs


class GraphCache:
    """Captures ``body(*inputs)`` once per key and replays it; outputs are static buffers, valid until next call.

    Args:
        max_entries: Graphs kept (least recently used evicted); each holds its intermediate memory.
    """

    def __init__(self, max_entries: int = 4) -> None:
        self.max_entries = max_entries
        self.captures = 0  # number of captures so far (observable by tests and benchmarks)
        self._entries: OrderedDict[Hashable, _Captured] = OrderedDict()
        self._pool = None

    def clear(self) -> None:
        self._entries.clear()
        self._pool = None

    def __len__(self) -> int:
        return len(self._entries)

    def __call__(
        self,
        model: nn.Module,
        extra_key: Hashable,
        inputs: Sequence[Tensor],
        body: Callable[..., tuple[Tensor, ...]],
    ) -> tuple[Tensor, ...]:
        key = (model_key(model), extra_key, tuple((tuple(t.shape), t.dtype, t.device) for t in inputs))
        entry = self._entries.get(key)
        if entry is None:
            entry = self._capture(inputs, body)
            self._entries[key] = entry
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
            for static, new in zip(entry.inputs, inputs):
                static.copy_(new, non_blocking=True)
        entry.graph.replay()
        return entry.outputs

    def _capture(self, inputs: Sequence[Tensor], body: Callable[..., tuple[Tensor, ...]]) -> _Captured:
        static = [t.detach().clone() for t in inputs]
        side = torch.cuda.Stream(device=static[0].device)
        side.wait_stream(torch.cuda.current_stream(static[0].device))
        with torch.cuda.stream(side):  # warm-up outside the capture (lazy library init, autotuning)
            for _ in range(2):
                body(*static)
        torch.cuda.current_stream(static[0].device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            outputs = body(*static)
        self._pool = graph.pool()
        self.captures += 1
        return _Captured(graph, static, tuple(outputs))
