"""Figures of a batch, its relevance and its RelDrop mask, for images and point clouds.

Optional: needs matplotlib (``pip install reldrop-transforms[viz]``), imported only when a function is called; the
core package never imports this module. Figures are built with ``matplotlib.figure.Figure`` directly (no pyplot, no
global state, no window) and written with the Agg canvas, so this works on headless machines and in threads.

Example:
    >>> from reldrop_transforms.attribution import relevance
    >>> from reldrop_transforms.functional import relevance_dropout_mask
    >>> from reldrop_transforms import viz
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
    ...                             torch.nn.Flatten(), torch.nn.Linear(8, 10))
    >>> images, labels = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    >>> rel = relevance(model, images, labels)
    >>> mask = relevance_dropout_mask(rel.sum(1), alpha=0.3, beta=0.5)
    >>> figure = viz.plot_image_relevance(images, rel, mask, path="relevance.png")  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["plot_image_relevance", "plot_point_relevance", "save_png"]

_INSTALL_HINT = (
    "reldrop_transforms.viz needs matplotlib, which is an optional extra: pip install 'reldrop-transforms[viz]' "
    "(or pip install matplotlib)."
)


def _matplotlib():
    """``(Figure, FigureCanvasAgg)``, or an ImportError that names the ``viz`` extra."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(_INSTALL_HINT) from error
    return Figure, FigureCanvasAgg


def save_png(figure: Any, path: str | Path, *, dpi: int = 110) -> Path:
    """Write ``figure`` to ``path`` as a PNG with the Agg canvas (no display needed); parent folders are created.

    Args:
        figure: A ``matplotlib.figure.Figure``.
        path: The file to write.
        dpi: Resolution.

    Returns:
        ``path`` as a ``Path``.
    """
    _, canvas_type = _matplotlib()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas_type(figure)  # attaches an Agg canvas to the figure, whatever backend pyplot would use
    figure.savefig(path, dpi=dpi, format="png")
    return path


def _as_cpu(name: str, value: Any) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} should be a torch.Tensor, but got {type(value).__name__}.")
    return value.detach().to("cpu")


def _names(labels: Tensor | Sequence[Any] | None, class_names: Sequence[str] | None, count: int) -> list[str]:
    if labels is None:
        return [""] * count
    values = labels.tolist() if isinstance(labels, Tensor) else list(labels)
    if len(values) < count:
        raise ValueError(f"labels should hold one entry per sample ({count}), but got {len(values)}.")
    if class_names is None:
        return [str(v) for v in values[:count]]
    return [class_names[int(v)] if isinstance(v, (int, float)) or hasattr(v, "__index__") else str(v)
            for v in values[:count]]


def _signed_limit(values: Tensor) -> float:
    limit = float(values.abs().max()) if values.numel() else 0.0
    return limit if limit > 0 and math.isfinite(limit) else 1.0


# -- images ------------------------------------------------------------------------------------------------------------
def plot_image_relevance(
    images: Tensor,
    relevance: Tensor | None = None,
    mask: Tensor | None = None,
    *,
    mean: Sequence[float] | Tensor | None = None,
    std: Sequence[float] | Tensor | None = None,
    labels: Tensor | Sequence[Any] | None = None,
    class_names: Sequence[str] | None = None,
    max_samples: int = 8,
    title: str | None = None,
    path: str | Path | None = None,
    dpi: int = 110,
):
    """A grid with one row per image: the input, its relevance heatmap, the RelDrop mask and the masked input.

    The relevance is summed over channels and shown with a diverging colour map centred on zero (red positive, blue
    negative), scaled per image. The mask column shows dropped pixels in black with the dropped fraction underneath;
    the last column greys out the dropped pixels of the input. Columns without data are left out.

    Args:
        images: A batch of images, normalised or not.
        relevance: Relevance of the same shape as ``images``, or already summed over channels.
        mask: ``True`` where a pixel is dropped (e.g. from
            :func:`reldrop_transforms.functional.relevance_dropout_mask`).
        mean: Per-channel mean used to normalise ``images`` (undone for display); ``None`` shows them as given.
        std: Per-channel standard deviation used to normalise ``images``.
        labels: One label per image (class index or text), written at the left of each row.
        class_names: Names of the class indices in ``labels``.
        max_samples: At most this many rows (the first images).
        title: Figure title.
        path: If given, the figure is also written there as a PNG (see :func:`save_png`).
        dpi: Resolution of the PNG.

    Returns:
        The ``matplotlib.figure.Figure``.

    Shape:
        - images: (B, C, H, W) with C = 1 or 3.
        - relevance: (B, C, H, W) or (B, H, W).
        - mask: (B, H, W) or (B, 1, H, W), bool.

    Raises:
        ValueError: On shapes that do not fit together.
    """
    figure_type, _ = _matplotlib()
    images = _as_cpu("images", images).float()
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"plot_image_relevance expects images of shape (B, C, H, W) with C = 1 or 3, but got "
            f"{tuple(images.shape)} instead."
        )
    b, c, h, w = images.shape
    if b == 0:
        raise ValueError("plot_image_relevance expects at least one image, but got an empty batch.")
    if max_samples < 1:
        raise ValueError(f"max_samples should be >= 1, but got {max_samples} instead.")
    heat = None
    if relevance is not None:
        relevance = _as_cpu("relevance", relevance).float()
        if relevance.shape == images.shape:
            heat = relevance.sum(1)
        elif relevance.shape == (b, h, w):
            heat = relevance
        else:
            raise ValueError(
                f"relevance of shape {tuple(relevance.shape)} does not match images of shape {tuple(images.shape)}: "
                f"expected {tuple(images.shape)} or {(b, h, w)}."
            )
    drop = None
    if mask is not None:
        mask = _as_cpu("mask", mask)
        if mask.shape == (b, 1, h, w):
            mask = mask[:, 0]
        if mask.shape != (b, h, w):
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} does not match images of shape {tuple(images.shape)}: "
                f"expected {(b, h, w)} or {(b, 1, h, w)}."
            )
        drop = mask.bool()

    shown = images
    if mean is not None or std is not None:
        m = torch.as_tensor(mean if mean is not None else 0.0, dtype=torch.float32).reshape(-1, 1, 1)
        s = torch.as_tensor(std if std is not None else 1.0, dtype=torch.float32).reshape(-1, 1, 1)
        if m.shape[0] not in (1, c) or s.shape[0] not in (1, c):
            raise ValueError(f"mean and std should hold 1 or {c} values, but got {m.shape[0]} and {s.shape[0]}.")
        shown = images * s + m
    else:  # min-max per image so that any range displays
        low = shown.amin(dim=(1, 2, 3), keepdim=True)
        high = shown.amax(dim=(1, 2, 3), keepdim=True)
        if float(low.min()) < 0.0 or float(high.max()) > 1.0:
            shown = (shown - low) / (high - low).clamp(min=1e-12)
    shown = shown.clamp(0.0, 1.0)

    n = min(b, max_samples)
    names = _names(labels, class_names, n)
    columns = ["input"]
    if heat is not None:
        columns.append("relevance")
    if drop is not None:
        columns += ["mask", "masked input"]
    fig = figure_type(figsize=(2.2 * len(columns) + 0.4, 2.2 * n + (0.5 if title else 0.2)))
    axes = fig.subplots(n, len(columns), squeeze=False)
    titles = {"input": "input", "relevance": "relevance (red +, blue -)", "mask": "RelDrop mask (black: dropped)",
              "masked input": "masked input"}
    for i in range(n):
        picture = shown[i].permute(1, 2, 0).numpy()
        cmap = "gray" if c == 1 else None
        for j, column in enumerate(columns):
            ax = axes[i, j]
            if column == "input":
                ax.imshow(picture[..., 0] if c == 1 else picture, cmap=cmap, vmin=0, vmax=1)
            elif column == "relevance":
                limit = _signed_limit(heat[i])
                ax.imshow(heat[i].numpy(), cmap="bwr", vmin=-limit, vmax=limit)
            elif column == "mask":
                ax.imshow(drop[i].float().numpy(), cmap="gray_r", vmin=0, vmax=1)
                ax.set_xlabel(f"{float(drop[i].float().mean()):.0%} dropped", fontsize=8)
            else:
                grey = torch.full_like(shown[i], 0.5)
                masked = torch.where(drop[i].unsqueeze(0), grey, shown[i]).permute(1, 2, 0).numpy()
                ax.imshow(masked[..., 0] if c == 1 else masked, cmap=cmap, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(titles[column], fontsize=9)
        if names[i]:
            axes[i, 0].set_ylabel(names[i], fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if path is not None:
        save_png(fig, path, dpi=dpi)
    return fig


# -- point clouds ------------------------------------------------------------------------------------------------------
def _split_clouds(points: Any) -> tuple[list[Tensor], bool]:
    """Clouds as a list of ``(N_i, C)`` tensors, and whether per-point values come dense ``(B, N, ...)``."""
    if isinstance(points, Tensor):
        points = points.detach().to("cpu")
        if points.ndim != 3 or points.shape[-1] < 3:
            raise ValueError(
                "plot_point_relevance expects points of shape (B, N, C) with C >= 3 (xyz first), but got "
                f"{tuple(points.shape)} instead."
            )
        return list(points.float()), True
    pos = getattr(points, "pos", None)
    if isinstance(pos, Tensor):  # PyG Data / Batch
        pos = pos.detach().to("cpu").float()
        if pos.ndim != 2 or pos.shape[1] != 3:
            raise ValueError(f"plot_point_relevance expects pos of shape (N, 3), but got {tuple(pos.shape)} instead.")
        ptr = getattr(points, "ptr", None)
        if ptr is None:
            return [pos], False
        bounds = ptr.detach().to("cpu").tolist()
        return [pos[a:b] for a, b in zip(bounds[:-1], bounds[1:])], False
    if isinstance(points, (list, tuple)) and all(isinstance(p, Tensor) for p in points):
        clouds = [p.detach().to("cpu").float() for p in points]
        for cloud in clouds:
            if cloud.ndim != 2 or cloud.shape[-1] < 3:
                raise ValueError(f"each cloud should have shape (N, C) with C >= 3, but got {tuple(cloud.shape)}.")
        return clouds, False
    raise TypeError(
        "plot_point_relevance expects a dense tensor (B, N, C), a list of (N, C) tensors or a PyG Data/Batch, but "
        f"got {type(points).__name__}."
    )


def _per_cloud(name: str, value: Any, clouds: list[Tensor], dense: bool, reduce: bool) -> list[Tensor] | None:
    """Split a per-point quantity like the clouds: dense ``(B, N[, C])``, flat ``(N_total[, C])`` (PyG) or a list of
    ``(N_i[, C])``; with ``reduce`` a trailing channel dimension is summed."""
    if value is None:
        return None
    sizes = [cloud.shape[0] for cloud in clouds]
    extra = " (with an optional trailing channel dimension)" if reduce else ""
    if isinstance(value, (list, tuple)):
        parts = [_as_cpu(name, part) for part in value]
        if len(parts) != len(clouds):
            raise ValueError(f"{name} should hold one tensor per cloud ({len(clouds)}), but got {len(parts)}.")
    else:
        value = _as_cpu(name, value)
        if dense:
            expected = (len(clouds), sizes[0])
            if tuple(value.shape[:2]) != expected or value.ndim not in ((2, 3) if reduce else (2,)):
                raise ValueError(f"{name} of shape {tuple(value.shape)} does not match the points: expected "
                                 f"{expected}{extra}.")
            parts = list(value)
        else:
            total = sum(sizes)
            if value.ndim not in ((1, 2) if reduce else (1,)) or value.shape[0] != total:
                raise ValueError(f"{name} of shape {tuple(value.shape)} does not match the points: expected "
                                 f"({total},){extra}.")
            parts = list(value.split(sizes))
    out = []
    for part, size in zip(parts, sizes):
        if reduce and part.ndim == 2:
            part = part.sum(-1)
        if tuple(part.shape) != (size,):
            raise ValueError(f"{name} of shape {tuple(part.shape)} does not match a cloud of {size} points.")
        out.append(part)
    return out


def plot_point_relevance(
    points: Any,
    relevance: Tensor | None = None,
    mask: Tensor | None = None,
    *,
    labels: Tensor | Sequence[Any] | None = None,
    class_names: Sequence[str] | None = None,
    max_samples: int = 6,
    point_size: float = 4.0,
    elev: float = 20.0,
    azim: float = -60.0,
    title: str | None = None,
    path: str | Path | None = None,
    dpi: int = 110,
):
    """3D scatter plots of point clouds: one column per cloud, one row for the relevance and one for the mask.

    The relevance row colours each point by its relevance (summed over channels; diverging map centred on zero, red
    positive, blue negative, grey near zero, scaled per cloud). The mask row shows dropped points in red and kept
    points in blue, as the paper's Fig. A.1, with the dropped fraction in the title. Rows without data are left out;
    with neither, the clouds are drawn in one colour. Axes have equal scales.

    Args:
        points: Dense clouds (xyz in the first three channels), a list of clouds, or a PyG ``Data``/``Batch``
            (``pos`` is drawn).
        relevance: Relevance per point, or per point and channel.
        mask: ``True`` where a point is dropped (e.g. from
            :func:`reldrop_transforms.functional.relevance_dropout_mask`).
        labels: One label per cloud (class index or text).
        class_names: Names of the class indices in ``labels``.
        max_samples: At most this many clouds (the first ones).
        point_size: Marker size.
        elev: Elevation of the view, in degrees.
        azim: Azimuth of the view, in degrees.
        title: Figure title.
        path: If given, the figure is also written there as a PNG (see :func:`save_png`).
        dpi: Resolution of the PNG.

    Returns:
        The ``matplotlib.figure.Figure``.

    Shape:
        - points: (B, N, C) with C >= 3, a list of (N_i, C), or PyG ``pos`` (N_total, 3) (split by ``ptr``).
        - relevance: (B, N) or (B, N, C) for dense points; (N_total,) or (N_total, C) for PyG; or a list of
          (N_i,) / (N_i, C).
        - mask: (B, N) for dense points, (N_total,) for PyG, or a list of (N_i,); bool.

    Raises:
        ValueError: On shapes that do not fit together.
    """
    figure_type, _ = _matplotlib()
    clouds, dense = _split_clouds(points)
    if not clouds:
        raise ValueError("plot_point_relevance expects at least one cloud, but got an empty batch.")
    if max_samples < 1:
        raise ValueError(f"max_samples should be >= 1, but got {max_samples} instead.")
    rels = _per_cloud("relevance", relevance, clouds, dense, reduce=True)
    masks = _per_cloud("mask", mask, clouds, dense, reduce=False)
    n = min(len(clouds), max_samples)
    names = _names(labels, class_names, n)
    rows = [row for row, data in (("relevance", rels), ("mask", masks)) if data is not None] or ["points"]
    fig = figure_type(figsize=(2.6 * n + 0.2, 2.6 * len(rows) + (0.5 if title else 0.2)))
    for r, row in enumerate(rows):
        for i in range(n):
            xyz = clouds[i][:, :3].numpy()
            ax = fig.add_subplot(len(rows), n, r * n + i + 1, projection="3d")
            if row == "relevance":
                values = rels[i].float()
                limit = _signed_limit(values)
                ax.scatter(xyz[:, 0], xyz[:, 1], xyz[:, 2], c=values.numpy(), cmap="coolwarm", vmin=-limit,
                           vmax=limit, s=point_size, depthshade=False)
                label = "relevance (red +, blue -)"
            elif row == "mask":
                dropped = masks[i].bool().numpy()
                ax.scatter(*xyz[~dropped].T, c="tab:blue", s=point_size, depthshade=False)
                ax.scatter(*xyz[dropped].T, c="tab:red", s=point_size, depthshade=False)
                label = f"dropped {float(masks[i].float().mean()):.0%} (red)"
            else:
                ax.scatter(*xyz.T, c="tab:blue", s=point_size, depthshade=False)
                label = ""
            ax.view_init(elev=elev, azim=azim)
            centre = (xyz.max(0) + xyz.min(0)) / 2
            half = max(float((xyz.max(0) - xyz.min(0)).max()) / 2, 1e-6)
            ax.set_xlim(centre[0] - half, centre[0] + half)
            ax.set_ylim(centre[1] - half, centre[1] + half)
            ax.set_zlim(centre[2] - half, centre[2] + half)
            ax.set_xticklabels([])
            ax.set_yticklabels([])
            ax.set_zticklabels([])
            heading = " | ".join(part for part in (names[i] if r == 0 else "", label) if part)
            ax.set_title(heading, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if path is not None:
        save_png(fig, path, dpi=dpi)
    return fig
