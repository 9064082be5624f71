"""Charts beside the JSON of ``fcn-eval``, ``fcn-bench`` and the pipeline reports: one function per chart, plain
data in (lists, dicts, numpy arrays), PNG bytes out, so a chart is drawn before anything is written.

matplotlib is imported inside each chart (``--help`` stays fast) and used through ``Figure`` rather than pyplot:
no global backend or current figure, so a chart is safe beside other threads. Every PNG carries fcnseg's
``Software`` chunk and a ``Title`` starting with ``CHART_TITLE``: that is how the output guard (``CHART``) knows
an existing chart is one of ours and may be replaced without ``--force``. The benchmarks import this module
(``eval`` never imports ``benchmarks``).
"""

from __future__ import annotations

import io
import math
import textwrap
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..core.atomic import write_bytes
from ..core.errors import import_optional
from ..core.output_guard import SOFTWARE, ArtifactKind, PathLike, check_output

CHART_TITLE = "fcnseg chart: "
# Stage colours follow the pipeline's order: the host's work in greys/greens, the device's in blues/orange.
STAGE_COLOURS = {"preprocess": "#7f7f7f", "h2d": "#9ecae1", "infer": "#1f77b4", "d2h": "#fdae6b",
                 "postprocess": "#2ca02c"}
PRECISION_COLOURS = {"fp32": "#1f77b4", "fp16": "#9467bd", "bf16": "#2ca02c", "int8": "#d62728"}
ANNOTATE_MAX = 12             # a confusion matrix with more classes than this gets no numbers in its cells


def _is_chart(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as img:
            return (img.format == "PNG" and img.info.get("Software") == SOFTWARE
                    and str(img.info.get("Title", "")).startswith(CHART_TITLE))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return False


# What the charts are, for the output guard: an earlier fcnseg chart is replaced, any other file needs --force.
CHART = ArtifactKind("fcnseg chart (PNG)", _is_chart)


# ---------------------------------------------------------------- the charts

def class_iou_png(classes: Sequence[str], reference_iou: Sequence[float],
                  deltas: Optional[Mapping[str, Sequence[float]]] = None, *, reference: str = "reference") -> bytes:
    """The reference's IoU per class as bars, and each other model's delta per class as a heatmap under it.

    Args:
        classes: class names, index = class id.
        reference_iou: the reference's IoU per class, in percent (NaN: the class never occurs).
        deltas: model label -> its IoU minus the reference's per class, in points (empty: bars only).
        reference: the reference's label, for the title.
    """
    deltas = dict(deltas or {})
    n = len(classes)
    fig, axes = _figure(max(6.0, 0.38 * n + 2.5), 3.2 + (0.35 * len(deltas) + 1.2 if deltas else 0),
                        rows=2 if deltas else 1, height_ratios=[3, 0.35 * len(deltas) + 0.9] if deltas else None)
    bars, iou = axes[0], np.asarray(reference_iou, dtype=float)
    bars.bar(range(n), np.nan_to_num(iou, nan=0.0), color="#1f77b4")
    for i in np.flatnonzero(~np.isfinite(iou)):   # a class absent from the images has no IoU, not 0
        bars.text(i, 1, "n/a", ha="center", va="bottom", fontsize=7, color="#555555")
    below = "; below: each model's delta to it" if deltas else ""
    bars.set(ylabel="IoU (%)", ylim=(0, 100), xlim=(-0.5, n - 0.5))
    _title(bars, f"per-class IoU of {reference}{below}")
    bars.grid(axis="y", alpha=0.3)
    _class_ticks(bars, classes if not deltas else [])
    if deltas:
        _delta_heatmap(fig, axes, classes, deltas)
    return _png(fig, "per-class IoU")


def _delta_heatmap(fig: Any, axes: Sequence[Any], classes: Sequence[str], deltas: Mapping[str, Sequence[float]]
                   ) -> None:
    """Rows: models; columns: classes; red below the reference, blue above, grey where a class is absent."""
    ax = axes[-1]
    values = np.asarray([list(v) for v in deltas.values()], dtype=float)
    finite = np.abs(values[np.isfinite(values)])
    limit = max(float(finite.max()) if finite.size else 0.0, 0.1)
    image = ax.imshow(np.ma.masked_invalid(values), cmap=_colormap("RdBu"), vmin=-limit, vmax=limit, aspect="auto")
    ax.set_yticks(range(len(deltas)))
    ax.set_yticklabels(list(deltas), fontsize=8)
    if values.size <= ANNOTATE_MAX * ANNOTATE_MAX:
        for (i, j), v in np.ndenumerate(values):
            if np.isfinite(v):
                ax.text(j, i, f"{v:+.1f}", ha="center", va="center", fontsize=6,
                        color="white" if abs(v) > 0.6 * limit else "black")
    _class_ticks(ax, classes)
    # beside both panels, so the heatmap's columns stay under the bars of their class
    fig.colorbar(image, ax=list(axes), label="delta (points)", fraction=0.03, pad=0.01)


def stage_latency_png(labels: Sequence[str], stage_ms: Mapping[str, Sequence[float]],
                      e2e_ms: Optional[Sequence[float]] = None, *, title: str = "latency per stage") -> bytes:
    """Stacked horizontal bars: each row's median per stage (ms), in pipeline order, and its end-to-end median.

    Args:
        labels: one per row (model and backend).
        stage_ms: stage name -> one median per row, in ms; the bars stack in this mapping's order.
        e2e_ms: end-to-end medians per row (a black tick: what the stages do not account for shows as a gap).
        title: the chart's title.
    """
    fig, (ax,) = _figure(9.0, 1.6 + 0.45 * len(labels))
    left = np.zeros(len(labels))
    for stage, values in stage_ms.items():
        ms = np.asarray(values, dtype=float)
        ax.barh(range(len(labels)), ms, left=left, label=stage, color=STAGE_COLOURS.get(stage))
        left += ms
    if e2e_ms is not None:
        ax.scatter(list(e2e_ms), range(len(labels)), marker="|", s=300, color="black", label="end to end", zorder=3)
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(list(labels), fontsize=8)
    ax.invert_yaxis()   # the first row (the reference of the speed-ups) on top, as in the table
    ax.set(xlabel="ms (medians)")
    _title(ax, title)
    ax.grid(axis="x", alpha=0.3)
    fig.legend(fontsize=8, loc="outside lower center", ncol=len(stage_ms) + 1)
    return _png(fig, "latency per stage")


def roofline_png(rows: Mapping[str, Mapping[str, Any]], peaks: Mapping[str, float], *,
                 gmac: Optional[float] = None) -> bytes:
    """Each row's GMAC/s as a bar coloured by the precision it ran in, against each precision's peak (dashed).

    Args:
        rows: row label -> ``{"gmacs": rate, "ran_in": precision}`` (``roofline()``'s ``rows``).
        peaks: precision -> the peak GMAC/s measured here.
        gmac: GMAC per image, for the title.
    """
    labels = list(rows)
    fig, (ax,) = _figure(9.0, 1.8 + 0.45 * len(labels))
    rates = [float(rows[k]["gmacs"]) for k in labels]
    precisions = [str(rows[k]["ran_in"]) for k in labels]
    ax.barh(range(len(labels)), rates, color=[PRECISION_COLOURS.get(p, "#7f7f7f") for p in precisions])
    for i, (rate, p) in enumerate(zip(rates, precisions)):
        share = rate / peaks[p] if peaks.get(p) else math.nan
        ax.annotate(f" {100 * share:.0f}% of {p.upper()}", (rate, i), va="center", fontsize=7)
    for p, peak in peaks.items():
        ax.axvline(peak, linestyle="--", color=PRECISION_COLOURS.get(p, "#7f7f7f"),
                   label=f"{p.upper()} peak {peak:.0f}")
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    per_image = f", {gmac:.1f} GMAC per image" if gmac else ""
    _title(ax, f"convolution rate against this CPU's peaks{per_image}")
    ax.set(xlabel="GMAC/s", xlim=(0, 1.3 * max([*rates, *peaks.values(), 1.0])))   # room for the labels right of the bars
    fig.legend(fontsize=8, loc="outside lower center", ncol=max(len(peaks), 1))
    return _png(fig, "roofline")


def confusion_png(matrix: "np.ndarray | Sequence[Sequence[float]]", classes: Sequence[str], *,
                  title: str = "confusion matrix") -> bytes:
    """The confusion matrix normalised per row (true class), class names on both axes.

    Args:
        matrix: counts, rows = true class, columns = predicted class (``ConfusionMatrix.mat``).
        classes: class names, index = class id.
        title: the chart's title (which model and backend).
    """
    norm = row_normalised(matrix)
    n = len(classes)
    side = max(4.5, 0.32 * n + 2.5)
    fig, (ax,) = _figure(side + 1.0, side)
    image = ax.imshow(np.ma.masked_invalid(norm), cmap=_colormap("Blues"), vmin=0.0, vmax=1.0)
    _class_ticks(ax, classes)
    ax.set_yticks(range(n))
    ax.set_yticklabels(list(classes), fontsize=8)
    ax.set(xlabel="predicted class", ylabel="true class")
    _title(ax, title)
    if n <= ANNOTATE_MAX:
        for (i, j), v in np.ndenumerate(norm):
            if np.isfinite(v):
                ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if v > 0.6 else "black")
    fig.colorbar(image, ax=ax, label="share of the true class's pixels", fraction=0.046, pad=0.04)
    return _png(fig, "confusion matrix")


def row_normalised(matrix: "np.ndarray | Sequence[Sequence[float]]") -> np.ndarray:
    """Each row divided by its sum; NaN for a class with no pixels (nothing to divide)."""
    m = np.asarray(matrix, dtype=float)
    sums = m.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sums > 0, m / np.where(sums > 0, sums, 1.0), np.nan)


# ---------------------------------------------------------------- from evaluation rows

def parity_charts(rows: Sequence[Any]) -> Dict[str, bytes]:
    """``{"iou": ..., "confusion": ...}`` for ``compare_models``' rows (the first is the reference).

    The IoU chart shows the reference's per-class IoU and each compared row's delta; the confusion matrix is
    the worst row's (the lowest mIoU among the rows that ran).
    """
    ref = rows[0]
    classes = list(ref.classes) or [str(i) for i in range(len(ref.iou))]
    compared = [r for r in rows[1:] if r.comparison is not None]
    deltas = {row_label(r): [float(x) for x in r.comparison.class_delta] for r in compared}
    worst = worst_row(rows)
    title = (f"{row_label(worst)}: mIoU {100 * worst.miou:.1f}%"
             + (f", the lowest of {len(rows)}" if len(rows) > 1 else "") + " (row-normalised)")
    return {"iou": class_iou_png(classes, [100 * float(x) for x in ref.iou], deltas, reference=row_label(ref)),
            "confusion": confusion_png(worst.cm.mat, classes, title=title)}


def worst_row(rows: Sequence[Any]) -> Any:
    """The row with the lowest mIoU among those that ran (have a confusion matrix); the reference on a tie."""
    ran = [r for r in rows if r.status == "ok" and r.cm is not None]
    return min(ran, key=lambda r: (r.miou if np.isfinite(r.miou) else math.inf))


def row_label(row: Any) -> str:
    """``file (backend[/hint])``: the name of a row in charts."""
    backend = row.backend_label
    return f"{Path(row.path).name} ({backend})" if backend else Path(row.path).name


# ---------------------------------------------------------------- files

def chart_paths(data_path: PathLike, names: Iterable[str]) -> Dict[str, Path]:
    """``<stem>_<name>.png`` beside a data file (``eval.json`` -> ``eval_iou.png``), per chart name."""
    p = Path(data_path)
    return {name: p.with_name(f"{p.stem}_{name}.png") for name in names}


def check_chart_outputs(data_path: PathLike, names: Iterable[str], *, inputs: Iterable[PathLike] = (),
                        force: bool = False, option: str = "--json") -> Dict[str, Path]:
    """The charts' paths beside ``data_path``, each refused (or allowed) by the rules the data file follows."""
    inputs = list(inputs)
    paths = chart_paths(data_path, names)
    for path in paths.values():
        check_output(path, CHART, inputs=inputs, force=force, option=option)
    return paths


def write_charts(paths: Mapping[str, Path], pngs: Mapping[str, bytes]) -> Tuple[Path, ...]:
    """Write each chart to its path atomically; returns the paths written."""
    for name, path in paths.items():
        write_bytes(path, pngs[name])
    return tuple(paths.values())


# ---------------------------------------------------------------- matplotlib

def _figure(width: float, height: float, *, rows: int = 1, height_ratios: Optional[Sequence[float]] = None
            ) -> Tuple[Any, Sequence[Any]]:
    import_optional("matplotlib", "matplotlib for the charts", "`pip install matplotlib`")
    from matplotlib.figure import Figure   # no pyplot: no global backend or current figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    axes = fig.subplots(rows, 1, squeeze=False, gridspec_kw={"height_ratios": height_ratios} if height_ratios
                        else None)
    return fig, list(axes[:, 0])


def _title(ax: Any, text: str) -> None:
    """A title wrapped to the figure's width (a long model name must not run off a narrow chart)."""
    width = max(30, int(ax.figure.get_figwidth() * 11))   # characters of a 10 pt title per inch, about
    ax.set_title(textwrap.fill(text, width, break_on_hyphens=False), fontsize=10)


def _colormap(name: str) -> Any:
    """A copy of matplotlib's colormap ``name`` drawing missing values (NaN) in light grey."""
    from matplotlib import colormaps

    return colormaps[name].with_extremes(bad="#dddddd")


def _class_ticks(ax: Any, classes: Sequence[str]) -> None:
    ax.set_xticks(range(len(classes)))
    ax.set_xticklabels(list(classes), rotation=60, ha="right", rotation_mode="anchor", fontsize=8)


def _png(fig: Any, what: str) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": SOFTWARE, "Title": CHART_TITLE + what})
    return buf.getvalue()
