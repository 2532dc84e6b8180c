"""What every relevance transform shares: its settings, its one :class:`Attributor`, and the masking of a dense batch.

The rule for ``p`` (every transform, every path): one coin per sample is drawn from ``generator`` first
(``True`` with probability ``p``; ``p = 1`` and ``p = 0`` draw nothing); then the random numbers of the masks are
drawn for the whole batch, also from ``generator``; only samples whose coin came up are masked. Which samples are
attributed is a matter of cost, not of the result (a sample's relevance depends on that sample only): eagerly, only
the selected samples are attributed (with another one where a single coin comes up; a PyG batch's selected clouds as a
batch of their own, see ``Attributor.attribute_graph``'s ``index``); replayed CUDA graphs (fixed shapes) attribute all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_generator, check_unit_interval
from ..attribution import Attributor
from ..functional import noise_dtype, sample_coins, uniform_like
from ._labels import parse_labels_getter


def _fixed_at_construction(name: str, doc: str) -> property:
    """A read-only property for one of the attributor's settings, whose setter says to build a new transform (the
    attributor's engine and caches are set up for it)."""

    def read(self):
        return getattr(self._attributor, name)

    def refuse(self, value) -> None:
        raise AttributeError(f"{type(self).__name__}.{name} is fixed at construction (the attribution is set up for "
                             f"it): build a new transform, {type(self).__name__}(model, {name}=..., ...).")

    return property(read, refuse, doc=doc)

class RelevanceSettings:
    """The settings block of a relevance transform: the model (through its :class:`Attributor`), ``p``, the
    labels getter and the generator. ``composite``, ``epsilon``, ``backend``, ``dtype`` and ``cuda_graphs`` are
    the attributor's."""

    def _set_up(self, model: nn.Module, *, p: float, composite, epsilon: float, backend: str,
                labels_getter: str | Callable[[Any], Any] | None, generator: torch.Generator | None,
                dtype: torch.dtype | None, cuda_graphs: bool) -> None:
        self._attributor = Attributor(model, composite=composite, epsilon=epsilon, backend=backend, dtype=dtype,
                                      cuda_graphs=cuda_graphs)
        self.p = check_unit_interval("p", p)
        parse_labels_getter(labels_getter)  # (checked here; read on every call, so that setting it later counts)
        self.labels_getter = labels_getter
        self.generator = check_generator(generator)

    def check_settings(self) -> None:
        """Validate the settings as they are now (also those set after construction, ``t.alpha = 0.2``), raising as
        the constructor would. Every call runs this before any coin is drawn, so that a bad setting raises whatever
        the coins and ``p``; subclasses add their own settings."""
        self.p = check_unit_interval("p", self.p)
        self.generator = check_generator(self.generator)  # (else refused only where a number is drawn)

    @property
    def model(self) -> nn.Module:
        """The model whose relevance drives the mask (held by reference, not registered as a submodule).

        A pickled or deep-copied transform holds a copy of the model: ``t.model = model`` rebinds it.
        """
        return self._attributor.model

    @model.setter
    def model(self, model: nn.Module) -> None:
        self._attributor.model = model

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "model":  # nn.Module.__setattr__ would register a module as a submodule, past the property
            object.__setattr__(self, name, value)
            return
        super().__setattr__(name, value)

    def for_this_call(self):
        """A shallow copy of the transform with its settings as they are now, on which one call runs: a setting
        assigned meanwhile (``t.alpha = 0.2`` from a schedule thread while a prefetcher calls ``t``) applies from
        the next call, and the call reads each setting once (it read them again after its draws: the noise of one
        ``alpha``, the mask of another). It shares everything else (the model's ``Attributor``, the generator); no
        lock is held, so a call that waits for another thread (a ``labels_getter``) cannot deadlock a setter.
        (What a subclass's method rebinds on ``self`` during a call lands on the copy.)"""
        view = object.__new__(type(self))
        object.__setattr__(view, "__dict__", dict(self.__dict__))  # (one C-level copy: never half of a change)
        return view

    def _labels_from(self, sample: Any) -> Tensor | None:
        """The labels ``labels_getter`` finds in ``sample`` (``None`` without a getter); the attributor's
        ``check_batch``/``check_graph`` validates them for the batch."""
        getter = parse_labels_getter(self.labels_getter)
        if getter is None:
            return None
        labels = getter(sample)
        if not isinstance(labels, Tensor):
            raise TypeError(f"the labels should be a torch.Tensor, but got {type(labels).__name__}.")
        return labels

    composite = _fixed_at_construction("composite", "LRP rules (see Attributor).")
    epsilon = _fixed_at_construction("epsilon", "Stabiliser of the Epsilon rule.")
    backend = _fixed_at_construction("backend", "Attribution backend (see Attributor).")
    dtype = _fixed_at_construction("dtype", "Autocast dtype of the attribution, or None.")
    cuda_graphs = _fixed_at_construction("cuda_graphs", "Replay captured CUDA graphs.")

    def settings_repr(self) -> str:
        """``key=value, ...`` for ``repr``: the public settings (``p``, ``labels_getter='default'``, ``generator``,
        ...; plain values as ``repr`` writes them, a generator as ``torch.Generator(device='cpu')``, a callable by its
        name, so that a seeded transform or one with a getter does not read as one without), then the attribution's
        composite, epsilon, backend, and dtype / cuda_graphs where set."""
        options = {key: _setting_repr(value) for key, value in vars(self).items()
                   if not key.startswith("_") and key != "training"}
        options = {key: text for key, text in options.items() if text is not None}
        options.update(composite=repr(self.composite), epsilon=repr(self.epsilon), backend=repr(self.backend))
        if self.dtype is not None:
            options["dtype"] = repr(self.dtype)
        if self.cuda_graphs:
            options["cuda_graphs"] = "True"
        return ", ".join(f"{key}={text}" for key, text in options.items())

    # -- dense batches ---------------------------------------------------------------------------------------------
    def masks(self, inputs: Tensor, targets: Tensor | None, reduce: Callable[[Tensor], Tensor],
              draw: Callable[[int], Sequence[Tensor]], mask_rows: Callable[..., Tensor],
              extra: Sequence[Tensor] = (), key: Any = ()) -> Tensor | None:
        """The mask of a dense batch under the rule for ``p`` (module docstring); ``None`` if no coin came up.

        ``inputs`` and ``targets`` were validated by the attributor's ``check_batch`` (before any draw).

        ``reduce(relevance)`` gives the per-element relevance (channels summed); ``draw(batch_size)`` the random
        tensors of the masks, one row per sample; ``mask_rows(relevance, *extra, *draws)`` the masks of some rows (a
        pure tensor function: it is what a CUDA graph captures, with ``key`` naming its settings); ``extra`` are
        other per-sample tensors it reads (e.g. positions).
        """
        name = type(self).__name__
        attributor = self._attributor
        batch_size = inputs.shape[0]
        with attributor.drawing():  # one batch's numbers in one piece, also when threads share the generator
            coins = sample_coins(batch_size, self.p, device=inputs.device, generator=self.generator)
            draws = tuple(draw(batch_size))
        if attributor.graphs_apply(inputs):

            def post(rel: Tensor, *tensors: Tensor) -> tuple[Tensor]:
                return (mask_rows(reduce(rel), *tensors),)

            (mask,) = attributor.then(inputs, targets, post, (*extra, *draws), key=(type(self), key), caller=name,
                                      checked=True)
            return mask & coins.view(-1, *([1] * (mask.ndim - 1)))
        if self.p >= 1.0:
            return mask_rows(reduce(attributor(inputs, targets, caller=name, checked=True)), *extra, *draws)
        index = coins.nonzero().flatten()  # one synchronisation
        rel = attributor(inputs, targets, index=index, caller=name, checked=True)
        if index.numel() == 0:
            return None
        rows = mask_rows(reduce(rel), *(t.index_select(0, index) for t in (*extra, *draws)))
        full = torch.zeros((batch_size, *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
        return full.index_copy_(0, index, rows)


def _setting_repr(value: Any) -> str | None:
    """How :meth:`RelevanceSettings.settings_repr` writes one setting; ``None`` for what it leaves out."""
    if value is None or isinstance(value, (bool, int, float, str, tuple)):
        return repr(value)
    if isinstance(value, torch.Generator):
        return f"torch.Generator(device={str(value.device)!r})"
    if callable(value) and not isinstance(value, nn.Module):
        return getattr(value, "__qualname__", None) or type(value).__name__
    return None

class DropoutSettings:
    """The RelDrop rule's settings, ``alpha`` and ``beta``, and its noise: shared by :class:`RelevanceDropout2d` and
    :class:`RelevanceDropout3d` (placed before their transform base, whose ``check_settings`` it extends)."""

    def check_settings(self) -> None:
        super().check_settings()
        self.alpha = check_unit_interval("alpha", self.alpha)
        self.beta = check_unit_interval("beta", self.beta)

    def noise(self, like: Tensor, shape: Sequence[int]) -> tuple[Tensor, ...]:
        """The rule's ``U`` of ``shape`` on ``like``'s device, in float32 at least (:func:`noise_dtype`), from
        ``generator``; none at ``alpha = 0`` (a deterministic threshold)."""
        if self.alpha == 0.0:
            return ()
        return (uniform_like(like.new_empty(tuple(shape), dtype=noise_dtype(like.dtype)), self.generator),)
