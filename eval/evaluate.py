"""mIoU of any model file through the runtime, and the cross-backend parity table (``fcn-eval``).

Every model is evaluated by the same code path: ``Segmenter.load(path)`` on the same images with the same
preprocessing, so a delta in the table is the model's, not the harness's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ..core.backend_names import PARITY_PRECISION_HINT, BackendChoice
from ..core.data_source import SourceLike
from ..runtime.backends.onnxruntime import providers_for
from ..runtime import Segmenter
from ..core.errors import FcnsegError
from ..core.output_guard import ArtifactKind, json_dict_with
from ..core.metrics import ConfusionMatrix
from .model_specs import model_specs
from .parity import MiouComparison, ParityResult, compare_miou, evaluate
from .tables import format_table
from ..datasets import for_model, take

# Allowed |mIoU delta| against the reference, in points, by precision.
TOLERANCES = {"fp32": 0.05, "fp16": 0.2, "int8": 1.0}
# What fcn-eval --json writes, for the output guard: an existing file of the kind may be replaced without --force.
EVAL_JSON = ArtifactKind("fcnseg evaluation JSON", json_dict_with("split", "models"))
# fcn-eval's default: each model on the fastest backend installed, OpenVINO in f32 (parity, not speed).
PARITY_RUN = BackendChoice(precision_hint=PARITY_PRECISION_HINT)
FORMATS = {".pth": "PyTorch", ".onnx": "ONNX", ".plan": "TensorRT", ".engine": "TensorRT"}


@dataclass
class ModelEval:
    """One model's row of the parity table."""

    path: str
    format: str
    precision: str
    status: str = "ok"
    size_mb: float = 0.0
    miou: float = float("nan")
    global_acc: float = float("nan")
    iou: list = field(default_factory=list)
    ms_per_image: float = float("nan")
    backend: str = ""
    precision_hint: str = ""      # OpenVINO's inference precision for non-INT8 layers ("" for other backends)
    mode: str = "resize"          # how images met the network: resize, whole or slide
    classes: list = field(default_factory=list)
    comparison: Optional[MiouComparison] = None
    cm: Optional[ConfusionMatrix] = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        """Ran, and (for a compared row) within tolerance."""
        return self.status == "ok" and (self.comparison is None or bool(self.comparison))

    @property
    def backend_label(self) -> str:
        """The backend as tables and charts name it: ``openvino/bf16`` with OpenVINO's hint, else the backend."""
        return f"{self.backend}/{self.precision_hint}" if self.precision_hint else self.backend

    @property
    def tolerance_key(self) -> str:
        """The precision whose tolerance the row is held to: its graph's, FP16's for a float graph that OpenVINO
        ran in bf16 (the hint changes the arithmetic, so FP32's tolerance would fail it for what it is)."""
        return "fp16" if self.precision == "fp32" and self.precision_hint == "bf16" else self.precision

    @property
    def verdict(self) -> str:
        """"ok", "FAIL" (outside tolerance; the delta stays in the row) or the error status."""
        return self.status if self.status != "ok" else ("ok" if self.ok else "FAIL")

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("path", "format", "precision", "status", "size_mb", "miou", "global_acc",
                                           "ms_per_image", "backend", "precision_hint", "mode", "verdict")}
        d["iou"] = [None if np.isnan(x) else float(x) for x in self.iou]
        d["classes"] = list(self.classes)   # names of the iou entries, index = class id
        if self.comparison is not None:
            c = self.comparison
            d.update(delta_points=c.delta, tolerance_points=c.tolerance, passed=bool(c),
                     class_delta_points=[None if np.isnan(x) else float(x) for x in c.class_delta])
        return d


class _ClassMismatch(FcnsegError):
    """Models of a comparison with different class counts: the whole comparison is refused."""


def model_size_mb(path: "str | Path") -> float:
    """File size in MB, counting ONNX external-data files next to it."""
    p = Path(path)
    total = p.stat().st_size
    data = p.with_name(p.name + ".data")
    return (total + (data.stat().st_size if data.exists() else 0)) / 1e6


def evaluate_model(path: str, data_path: "SourceLike", split: str = "val", *, limit: Optional[int] = None,
                   size: Optional[int] = None, run: BackendChoice = BackendChoice(), progress: bool = True,
                   num_classes: Optional[int] = None, view: Optional[Mapping[str, Any]] = None) -> ModelEval:
    """Evaluate one model file (.pth, .onnx, .plan) through the runtime on a dataset split (any layout:
    ``data_path`` is a folder or a ``DataSource``; its class count must be the model's).

    ``num_classes``: the class count the model must have (a comparison's reference), checked before any image.
    ``run``: its one backend, providers, precision hint and threads, as ``Segmenter.load`` takes them (None: the
    fastest backend installed, its default precision; ``compare_models`` and fcn-eval ask for f32).
    ``view``: how images meet the network: ``mode`` (resize, whole, slide), ``tile``, ``stride``, and ``classes``
    (a class file naming the model's classes) as ``Segmenter`` takes them.
    """
    prov = providers_for(path, run.backend, run.providers)
    seg = Segmenter.load(path, backend=run.backend, size=size, **{**run.load_options(), "providers": prov},
                         **dict(view or {}))
    meta = seg.metadata
    if num_classes is not None and meta.num_classes != num_classes:
        raise _ClassMismatch(f"expected models with the reference's {num_classes} classes, got "
                             f"{meta.num_classes} in {path}; try --compare with models of the same class list")
    layout = for_model(data_path, split, meta.num_classes)
    n = len(layout) if limit is None else min(limit, len(layout))
    bar = _progress(f"eval {Path(path).name}", n) if progress else None
    start = time.perf_counter()
    cm = evaluate(seg, take(layout, n), meta.num_classes, progress=bar)
    elapsed = time.perf_counter() - start
    r = cm.compute()
    return ModelEval(path=str(path), format=FORMATS.get(Path(path).suffix, "?"),
                     precision=meta.precision,
                     size_mb=model_size_mb(path), miou=r["miou"], global_acc=r["global_acc"], iou=list(r["iou"]),
                     ms_per_image=elapsed / max(n, 1) * 1e3, backend=seg.backend.name, classes=list(meta.classes),
                     cm=cm, precision_hint=str(getattr(seg.backend, "precision_hint", "") or ""), mode=seg.mode)


def _progress(desc: str, total: int):
    from tqdm import tqdm

    # disable=None: no bar when stderr is not a terminal (logs, CI), so an error stays one line
    return lambda it: tqdm(it, desc=desc, total=total, leave=False, dynamic_ncols=True, disable=None)


def compare_models(paths: Sequence[str], data_path: "SourceLike", split: str = "val", *, limit: Optional[int] = None,
                   size: Optional[int] = None, tolerances: Optional[dict] = None,
                   run: BackendChoice = PARITY_RUN, progress: bool = True,
                   view: Optional[Mapping[str, Any]] = None, extra_hints: Sequence[str] = ()) -> ParityResult:
    """Evaluate every model on the same images; the first is the reference for the deltas.

    A model that fails to load or run gets a row with its error as status instead of stopping the table.
    Each .onnx is evaluated once per entry of ``run.backends`` (None: the fastest installed);
    ``run.precision_hint`` applies to the OpenVINO rows, ``run.providers`` to the ONNX Runtime ones; each
    OpenVINO row is repeated under every hint of ``extra_hints`` (e.g. "bf16" beside the parity run's f32).

    Returns:
        A ``ParityResult`` of ``ModelEval`` rows: truthy when every model ran within its tolerance.
    """
    tol = {**TOLERANCES, **(tolerances or {})}
    rows: list = []
    specs = model_specs(paths, run.backends, precision_hint=run.precision_hint, providers=run.providers)
    specs = [s for spec in specs for s in [spec] + [replace(spec, precision_hint=h) for h in extra_hints
                                                    if spec.backend == "openvino" and h != spec.precision_hint]]
    with _model_bar(len(specs), progress) as bar:
        for spec in specs:
            bar.set_postfix_str(f"{Path(spec.path).name} {spec.backend or ''}".strip())
            classes = len(rows[0].classes) if rows and rows[0].classes else None   # the reference's, once known
            rows.append(_evaluate_row(spec, data_path, split, classes, run, progress=progress, limit=limit,
                                      size=size, view=view))
            bar.update()
    ref = rows[0]
    if ref.status != "ok":
        raise FcnsegError(f"expected the reference model {paths[0]} to evaluate, got {ref.status}")
    for row in rows[1:]:
        if row.status == "ok" and row.cm is not None and ref.cm is not None:
            row.comparison = compare_miou(ref.cm, row.cm, tolerance=tol.get(row.tolerance_key, 1.0),
                                          classes=ref.classes)
    return ParityResult(rows)


def _evaluate_row(spec: Any, data_path: "SourceLike", split: str, num_classes: Optional[int], run: BackendChoice, *,
                  progress: bool, **kw: Any) -> ModelEval:
    """One spec's row; a model that fails to load or run gets its error as status (a class mismatch raises)."""
    try:
        return evaluate_model(spec.path, data_path, split, progress=progress, num_classes=num_classes,
                              run=replace(run.one(spec.backend), precision_hint=spec.precision_hint), **kw)
    except _ClassMismatch:
        raise   # no delta table is meaningful across class lists
    except FcnsegError as e:
        return ModelEval(path=str(spec.path), format=FORMATS.get(Path(spec.path).suffix, "?"), precision="?",
                         status=f"error: {e}", backend=spec.backend or "")


def _model_bar(total: int, enabled: bool):
    """The overall "models i/n" bar of a comparison; each model's bar over its images runs under it."""
    from tqdm import tqdm

    # disable=None: none when stderr is not a terminal; none for a single model (its image bar says it all)
    return tqdm(total=total, desc="models", unit="model", leave=False, dynamic_ncols=True,
                disable=None if enabled and total > 1 else True)


def parity_table(rows: Sequence[ModelEval]) -> str:
    """One row per model in the style of Ultralytics' benchmark table."""
    headers = ["format", "backend", "precision", "status", "size MB", "mIoU", "delta", "tol", "pixel acc", "ms/image",
               "file"]
    body = []
    for r in rows:
        c = r.comparison
        backend = r.backend_label
        body.append([r.format, backend, r.precision, r.verdict[:60], r.size_mb, r.miou * 100, c.delta if c else None,
                     c.tolerance if c else None, r.global_acc * 100, r.ms_per_image, Path(r.path).name])
    if any(r.mode != "resize" for r in rows):   # say how images met the network when it is not the default
        headers = headers[:3] + ["mode"] + headers[3:]
        body = [b[:3] + [r.mode] + b[3:] for b, r in zip(body, rows)]
    return format_table(headers, body)


def class_delta_table(rows: Sequence[ModelEval]) -> str:
    """Per-class IoU of the reference and each model's delta (points)."""
    ref = rows[0]
    compared = [r for r in rows[1:] if r.comparison is not None]
    # A model evaluated on several backends appears once per backend: name the backend in its column then.
    names = [Path(r.path).name for r in compared]
    headers = ["class", f"IoU {Path(ref.path).name}"] + [
        f"d {n} {r.backend_label}" if names.count(n) > 1 else f"d {n}" for n, r in zip(names, compared)]
    body = [[name, ref.iou[i] * 100] + [float(r.comparison.class_delta[i]) for r in compared]
            for i, name in enumerate(ref.classes)]
    return format_table(headers, body)
