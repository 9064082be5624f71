"""Triton Inference Server model repositories for fcnseg models.

``export_triton`` writes what a stock ``tritonserver --model-repository DIR`` loads: the network itself
(``model.plan`` on ``tensorrt_plan``, ``model.onnx`` on ``onnxruntime_onnx`` or the ``openvino`` backend) with
a ``config.pbtxt`` (max batch, dtypes and dynamic dims, dynamic batching, instance groups, the engine's
optimization profile respected), optionally an ensemble that takes encoded images (a Python-backend
preprocessing step, the network, a Python-backend step that returns the mask at the image's size), and a
README with the server and client commands. ``export_segmenter`` writes one Python-backend model that runs
``fcnseg.runtime.Segmenter`` on any model file fcnseg loads (what ``fcn-serve`` serves).

Configs are built as ``tritonclient``'s ``ModelConfig`` protobuf (Triton's own schema) and written in its
text format, so a misspelt field cannot reach a file. Python-backend models are ``triton_model.py``, copied.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

from ..core.atomic import current_umask, write_text
from ..core.class_map import ClassMap
from ..core.metadata import ModelMetadata
from ..core.errors import FcnsegError, import_optional
from ..core.sidecar import find_sidecar, sidecar_path
from ..core.view import Tiling
from .triton_io import ModelIO, TensorSpec, TritonRepository, read_onnx_io, read_plan_io
from .triton_readme import readme_text

log = logging.getLogger(__name__)
PathLike = Union[str, "os.PathLike[str]"]
DEFAULT_NAME = "fcn"
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")   # one folder name: no "", "/", ".", ".."
DEFAULT_MAX_BATCH = 8
DEFAULT_PREFERRED = (4, 8)
KINDS = ("gpu", "cpu")
ONNX_BACKENDS = ("onnxruntime", "openvino", "python")
PYTHON_MODEL = Path(__file__).with_name("triton_model.py")
LABELS_FILE = "labels.txt"
CLASSES_FILE = "classes.json"   # a served Segmenter's --classes, normalised to JSON, in its version folder
CLASS_OUTPUTS = ("mask", "logits")
TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "uint8": "TYPE_UINT8", "int8": "TYPE_INT8",
                "int32": "TYPE_INT32", "int64": "TYPE_INT64", "bool": "TYPE_BOOL", "bytes": "TYPE_STRING"}


@dataclass(frozen=True)
class Batching:
    """How Triton batches and places a model.

    Attributes:
        max_batch: largest batch Triton forms; None = ``DEFAULT_MAX_BATCH``, capped at an engine's profile.
        preferred: batch sizes the dynamic batcher aims for; None = ``DEFAULT_PREFERRED`` within ``max_batch``.
        max_queue_delay_us: how long a request may wait for others to form a batch.
        instances: model instances (per GPU with kind "gpu").
        kind: "gpu" (KIND_GPU) or "cpu" (KIND_CPU).
    """

    max_batch: Optional[int] = None
    preferred: Optional[Tuple[int, ...]] = None
    max_queue_delay_us: int = 500
    instances: int = 1
    kind: str = "gpu"


def _config_pb2() -> Any:
    return import_optional("tritonclient.grpc.model_config_pb2", "tritonclient for Triton's model-config schema",
                           "`pip install 'tritonclient[grpc]'` (fcnseg's `triton` extra)")


# ---------------------------------------------------------------- configs

def resolve_batching(batching: Batching, limit: Optional[int]) -> Tuple[int, Tuple[int, ...]]:
    """Max batch and preferred sizes within the network's limit (an engine profile's max N)."""
    wanted = batching.max_batch
    if wanted is not None and (wanted < 1 or (limit is not None and wanted > limit)):
        raise FcnsegError(f"expected --max-batch between 1 and {limit or 'any'} (the model's largest batch), got "
                          f"{wanted}; try --max-batch {limit or DEFAULT_MAX_BATCH}")
    max_batch = wanted or min(DEFAULT_MAX_BATCH, limit or DEFAULT_MAX_BATCH)
    if batching.preferred is None:
        return max_batch, tuple(p for p in DEFAULT_PREFERRED if p <= max_batch)
    bad = [p for p in batching.preferred if not 1 <= p <= max_batch]
    if bad:
        raise FcnsegError(f"expected preferred batch sizes between 1 and the max batch {max_batch}, got {bad}; "
                          f"try --preferred-batch {','.join(str(p) for p in DEFAULT_PREFERRED if p <= max_batch)}")
    return max_batch, tuple(batching.preferred)


def model_config(name: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], *, max_batch: int,
                 batching: Optional[Batching] = None, preferred: Sequence[int] = (), platform: str = "",
                 backend: str = "", filename: str = "", parameters: Optional[Mapping[str, str]] = None) -> Any:
    """A ``ModelConfig`` message; dynamic batching and instance groups when ``batching`` is given."""
    pb = _config_pb2()
    config = pb.ModelConfig(name=name, platform=platform, backend=backend, max_batch_size=max_batch,
                            default_model_filename=filename)
    for t in inputs:
        config.input.add(name=t.name, data_type=_triton_type(t), dims=list(t.dims), allow_ragged_batch=t.ragged)
    for t in outputs:
        config.output.add(name=t.name, data_type=_triton_type(t), dims=list(t.dims))
    if batching is not None:
        config.dynamic_batching.preferred_batch_size.extend(preferred)
        config.dynamic_batching.max_queue_delay_microseconds = batching.max_queue_delay_us
        kind = pb.ModelInstanceGroup.KIND_GPU if batching.kind == "gpu" else pb.ModelInstanceGroup.KIND_CPU
        config.instance_group.add(kind=kind, count=batching.instances)
    for key, value in (parameters or {}).items():
        config.parameters[key].string_value = value
    return config


def _triton_type(t: TensorSpec) -> int:
    if t.dtype not in TRITON_TYPES:
        raise FcnsegError(f"expected a tensor type Triton serves ({', '.join(TRITON_TYPES)}), got {t.dtype!r} for "
                          f"{t.name!r}; try re-exporting the model with fcn-export")
    return int(getattr(_config_pb2(), TRITON_TYPES[t.dtype]))


def config_text(config: Any) -> str:
    """The ``config.pbtxt`` text of a ``ModelConfig`` message."""
    from google.protobuf import text_format

    return text_format.MessageToString(config)


def network_config(name: str, model: Path, io: ModelIO, batching: Batching, onnx_backend: str) -> Any:
    """The config of the network itself (``tensorrt_plan``, ``onnxruntime_onnx``, ``openvino`` or ``python``)."""
    max_batch, preferred = resolve_batching(batching, io.max_batch)
    if onnx_backend == "python":
        inputs = [replace(t, ragged=True) for t in io.inputs]     # the model groups equal shapes itself
        return python_config(name, "network", inputs, io.outputs, max_batch=max_batch, batching=batching,
                             preferred=preferred, parameters={"fcnseg_model": "model" + model.suffix})
    if model.suffix in (".plan", ".engine"):
        kind = dict(platform="tensorrt_plan", filename="model.plan")
    elif onnx_backend == "openvino":
        kind = dict(backend="openvino", filename="model.onnx")
    else:
        kind = dict(platform="onnxruntime_onnx", filename="model.onnx")
    config = model_config(name, io.inputs, io.outputs, max_batch=max_batch, batching=batching,
                          preferred=preferred, **kind)
    if io.fp16_qdq and config.platform == "onnxruntime_onnx":
        # ONNX Runtime's WeightBiasQuantization breaks FP16 Q/DQ graphs and Triton's backend cannot turn off one
        # optimizer: all graph optimizations off (level -1) keeps the masks right (or serve it with openvino).
        config.optimization.graph.level = -1
    return config


def python_config(name: str, role: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], *,
                  max_batch: int, batching: Batching, preferred: Sequence[int] = (),
                  parameters: Optional[Mapping[str, str]] = None) -> Any:
    """A Python-backend model running ``triton_model.py`` in ``role`` (instances on the CPU)."""
    cpu = Batching(max_batch=max_batch, preferred=tuple(preferred), max_queue_delay_us=batching.max_queue_delay_us,
                   instances=batching.instances, kind="cpu")
    return model_config(name, inputs, outputs, max_batch=max_batch, batching=cpu, preferred=preferred,
                        backend="python", parameters={"fcnseg_role": role, **(parameters or {})})


def ensemble_configs(name: str, io: ModelIO, max_batch: int, batching: Batching,
                     slide: bool = False, tiling: Optional[Tiling] = None) -> Dict[str, Any]:
    """Preprocess (encoded image -> input), the network ``name``, postprocess (-> mask at the image's size);
    with ``slide`` (a graph with dynamic H/W), also ``<name>_image_slide``: see ``slide_config``."""
    image, size, mask = TensorSpec("image", "bytes", (1,)), TensorSpec("size", "int32", (2,)), \
        TensorSpec("mask", "uint8", (-1, -1))
    net_in, net_out = io.inputs[0], io.result
    meta = json.dumps(io.metadata.to_dict())
    pre = python_config(f"{name}_preprocess", "preprocess", [image], [TensorSpec("input", "float32", net_in.dims),
                        size], max_batch=max_batch, batching=batching, parameters={"fcnseg_metadata": meta})
    scores = TensorSpec("scores", net_out.dtype, net_out.dims, ragged=True)
    post = python_config(f"{name}_postprocess", "postprocess", [scores, size], [mask], max_batch=max_batch,
                         batching=batching)
    ens = model_config(f"{name}_image", [image], [mask], max_batch=max_batch, platform="ensemble")
    steps = [(pre.name, {"image": "image"}, {"input": "net_input", "size": "size"}),
             (name, {net_in.name: "net_input"}, {net_out.name: "scores"}),
             (post.name, {"scores": "scores", "size": "size"}, {"mask": "mask"})]
    for model_name, inputs, outputs in steps:
        step = ens.ensemble_scheduling.step.add(model_name=model_name, model_version=-1)
        step.input_map.update(inputs)
        step.output_map.update(outputs)
    configs = {pre.name: pre, post.name: post, ens.name: ens}
    if slide:
        config = slide_config(name, io, max_batch, batching, tiling)
        configs[config.name] = config
    return configs


def slide_config(name: str, io: ModelIO, max_batch: int, batching: Batching, tiling: Optional[Tiling]) -> Any:
    """``<name>_image_slide``: encoded image in, mask at its size out, segmented in overlapping tiles at its own
    resolution, each batch of tiles sent to the network ``name`` through BLS (``triton_model.TritonNetwork``).

    ``tiling`` None: the default window, its tile shrunk to the largest the network takes.

    Raises:
        FcnsegError: a tile or stride the graph's declared size range (an engine: its profile) does not take.
    """
    meta = io.metadata
    low, high = _size_range(io)
    tiling = tiling.check(low, high) if tiling is not None else _fitted(low, high)
    net_in, net_out = io.inputs[0], io.result
    network = {"model": name, "input": net_in.name, "input_dtype": net_in.dtype, "output": net_out.name,
               "max_batch": max_batch}
    view = {"mode": "slide", "tile": tiling.tile, "stride": tiling.stride}
    return python_config(f"{name}_image_slide", "image_slide", [TensorSpec("image", "bytes", (1,))],
                         [TensorSpec("mask", "uint8", (-1, -1))], max_batch=max_batch, batching=batching,
                         parameters={"fcnseg_metadata": json.dumps(meta.to_dict()),
                                     "fcnseg_network": json.dumps(network), "fcnseg_view": json.dumps(view)})


def _size_range(io: ModelIO) -> Tuple[int, Optional[int]]:
    """Sides the network takes: the declared range, narrowed to an engine profile's H/W."""
    low, high = io.metadata.min_size or 1, io.metadata.max_size
    if io.profile:
        low = max(low, *(int(d) for d in io.profile["min"][2:]))
        high = min(high or 1 << 30, *(int(d) for d in io.profile["max"][2:]))
    return low, high


def _fitted(low: int, high: Optional[int]) -> Tiling:
    tile = max(low, min(Tiling.tile, high or Tiling.tile))
    return Tiling(tile, Tiling.stride if tile == Tiling.tile else max(1, tile * 2 // 3))


def _dynamic_hw(io: ModelIO) -> bool:
    """The network takes any height and width (its input's H and W are symbolic)."""
    dims = io.inputs[0].dims
    return len(dims) >= 2 and dims[-1] == -1 and dims[-2] == -1 and not io.metadata.input_hw


# ---------------------------------------------------------------- writing the repository

def export_triton(model: PathLike, repo: PathLike, *, name: str = DEFAULT_NAME, batching: Batching = Batching(),
                  onnx_backend: str = "onnxruntime", with_preprocessing: bool = False,
                  tiling: Optional[Tiling] = None, force: bool = False) -> TritonRepository:
    """Write a Triton model repository serving ``model`` (an fcnseg ``.onnx`` or ``.plan``).

    Args:
        model: the network; a ``.plan`` needs its sidecar ``<plan>.json`` (profile, tensors, metadata).
        repo: the repository folder (created; other models in it are left alone).
        name: the network's model name; with preprocessing, also ``<name>_preprocess``,
            ``<name>_postprocess`` and the ensemble ``<name>_image`` that clients call with image bytes, and for
            a graph with dynamic H/W ``<name>_image_slide`` (image bytes in, the mask of ``mode="slide"`` out).
        batching: max batch, preferred sizes, queue delay, instances and their kind.
        onnx_backend: for an ``.onnx``: "onnxruntime", "openvino" (CPU), or "python" (fcnseg's runtime on
            Triton's Python backend, CPU: for a server without those backends, e.g. pytriton's).
        with_preprocessing: add the ensemble (encoded image in, mask at the image's size out).
        tiling: the sliding window of ``<name>_image_slide`` (large images); None: ``Tiling()``, its tile
            shrunk to the largest the network takes.
        force: replace model folders (and the README) that already exist.

    Raises:
        FcnsegError: an unknown file type, a missing sidecar, batching outside the engine's profile, or
            model folders that exist without ``force``.
    """
    check_model_name(name)
    path = _check_model(model, (".onnx", ".plan", ".engine"))
    _check_choices(batching, onnx_backend, path)
    io = read_plan_io(path) if path.suffix in (".plan", ".engine") else read_onnx_io(path)
    net = network_config(name, path, io, batching, onnx_backend)
    configs: Dict[str, Any] = {name: net}
    files = {name: _network_files(net, path)}
    if with_preprocessing:
        extra = ensemble_configs(name, io, net.max_batch_size, batching, _dynamic_hw(io), tiling)
        configs.update(extra)
        files.update({n: {"model.py": PYTHON_MODEL} for n, c in extra.items() if c.backend == "python"})
        files[f"{name}_image"] = {}
    entry = f"{name}_image" if with_preprocessing else name
    return write_repository(Path(repo), configs, files, entry=entry, force=force, profile=io.profile,
                            input_size=io.metadata.input_size, labels=io.metadata.classes)


def _network_files(net: Any, path: Path) -> Dict[str, Path]:
    """The network's version folder: the model file (and an engine's sidecar), plus model.py on Python."""
    if net.backend == "python":
        return {"model.py": PYTHON_MODEL, "model" + path.suffix: path}
    files = {net.default_model_filename: path}
    sidecar = find_sidecar(path) if net.platform == "tensorrt_plan" else None
    if sidecar is not None:
        files[sidecar_path("model.plan").name] = sidecar
    return files


def export_segmenter(model: PathLike, repo: PathLike, *, name: str = "fcnseg",
                     batching: Batching = Batching(kind="cpu"), size: Optional[int] = None,
                     num_threads: Optional[int] = None, force: bool = False, view: Optional[Mapping[str, Any]] = None,
                     precision_hint: Optional[str] = None, classes: Optional[PathLike] = None) -> TritonRepository:
    """Write a repository with one Python-backend model running ``fcnseg.runtime.Segmenter`` on ``model``.

    Clients send ``image`` (UINT8 HxWx3 RGB, any size) and get ``mask`` (UINT8 HxW at that size); requests
    that arrive together are segmented in one call. Any file ``Segmenter.load`` opens works (``.onnx``,
    ``.plan`` with its sidecar, ``.pth``); the Triton Python environment needs fcnseg's runtime and the
    model's inference library. ``size``, ``num_threads``, ``view`` (``mode``, ``tile``, ``stride``: a
    ``mode="slide"`` model segments large images in tiles) and ``precision_hint`` (OpenVINO's; None: its own for
    the CPU, bf16 where it has it: masks may then differ in a few pixels with the batch Triton forms; "f32" is
    exact) are passed to ``Segmenter.load``. ``classes``: a class file (``--classes``) naming the model's classes
    (e.g. a graph without fcnseg metadata): checked against the model's class count here, shipped as
    ``1/classes.json`` and written as ``labels.txt``.
    """
    check_model_name(name)
    path = _check_model(model, (".onnx", ".plan", ".engine", ".pth", ".pt"))
    max_batch, preferred = resolve_batching(batching, None)
    class_map = _checked_classes(path, classes)
    params = {"fcnseg_model": "model" + path.suffix, "fcnseg_size": str(size or ""),
              "fcnseg_num_threads": str(num_threads or ""), "fcnseg_view": json.dumps(dict(view or {})),
              "fcnseg_precision_hint": precision_hint or "", "fcnseg_classes": CLASSES_FILE if class_map else ""}
    config = python_config(name, "segmenter", [TensorSpec("image", "uint8", (-1, -1, 3), ragged=True)],
                           [TensorSpec("mask", "uint8", (-1, -1))], max_batch=max_batch, batching=batching,
                           preferred=preferred, parameters=params)
    files: Dict[str, Path] = {"model.py": PYTHON_MODEL, params["fcnseg_model"]: path}
    sidecar = sidecar_path(path)
    if sidecar.is_file():
        files[sidecar_path(params["fcnseg_model"]).name] = sidecar
    with tempfile.TemporaryDirectory(prefix="fcnseg-classes-") as tmp:
        if class_map is not None:   # normalised to JSON: the server's Python may lack PyYAML
            files[CLASSES_FILE] = Path(tmp) / CLASSES_FILE
            files[CLASSES_FILE].write_text(json.dumps(class_map.to_json_obj(), indent=1) + "\n")
        return write_repository(Path(repo), {name: config}, {name: files}, entry=name, force=force,
                                labels=class_map.names if class_map else _model_classes(path))


def _checked_classes(path: Path, classes: Optional[PathLike]) -> Optional[ClassMap]:
    """The class file's map, checked against the model's class count before anything is written (a server that
    failed to load the model would say so only in its log)."""
    if classes is None:
        return None
    class_map = ClassMap.read(classes)
    meta = _model_metadata(path)
    if meta is None:   # a checkpoint: what fcn-train recorded (read with weights_only=True)
        from ..train.checkpoint import load_checkpoint

        meta = load_checkpoint(path).metadata()
    meta.with_classes(class_map)   # raises on another class count
    return class_map


def _model_metadata(path: Path) -> Optional[ModelMetadata]:
    """The fcnseg metadata of an .onnx or .plan (None for a checkpoint)."""
    if path.suffix in (".plan", ".engine"):
        return read_plan_io(path).metadata
    return read_onnx_io(path).metadata if path.suffix == ".onnx" else None


def _model_classes(path: Path) -> Optional[Sequence[str]]:
    """The class names of an .onnx or .plan (None for a checkpoint: no labels file)."""
    meta = _model_metadata(path)
    return meta.classes if meta is not None else None


def check_model_name(name: str) -> str:
    """Refuse a model name that is not one plain folder name (it becomes ``<repo>/<name>``, replaced with force).

    Raises:
        FcnsegError: an empty name, a path (``a/b``), ``.``/``..`` or other characters than letters, digits,
            ``_``, ``.`` and ``-`` (not first).
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name in (".", ".."):
        raise FcnsegError(f"expected a plain model name (letters, digits, '_', then also '.' or '-'), got {name!r}; "
                          f"try --name {DEFAULT_NAME}")
    return name


def _check_model(model: PathLike, suffixes: Sequence[str]) -> Path:
    path = Path(model)
    if path.suffix.lower() not in suffixes:
        raise FcnsegError(f"expected a model file ending in {', '.join(suffixes)}, got {str(path)!r}; "
                          "try the .onnx or .plan written by fcn-export")
    if not path.is_file():
        raise FcnsegError(f"expected a model file, got {str(path)!r} which does not exist; check the path")
    return path


def _check_choices(batching: Batching, onnx_backend: str, model: Path) -> None:
    if batching.kind not in KINDS:
        raise FcnsegError(f"expected kind in {KINDS}, got {batching.kind!r}; try --kind cpu")
    if onnx_backend not in ONNX_BACKENDS:
        raise FcnsegError(f"expected an ONNX backend in {ONNX_BACKENDS}, got {onnx_backend!r}")
    if onnx_backend != "onnxruntime" and (batching.kind != "cpu" or model.suffix != ".onnx"):
        raise FcnsegError(f"expected an .onnx with --kind cpu for the {onnx_backend} backend, got {model.name!r} "
                          f"with --kind {batching.kind}; try --kind cpu")
    if batching.instances < 1 or batching.max_queue_delay_us < 0:
        raise FcnsegError(f"expected --instances >= 1 and --max-queue-delay-us >= 0, got {batching.instances} "
                          f"and {batching.max_queue_delay_us}")


def write_repository(repo: Path, configs: Mapping[str, Any], files: Mapping[str, Mapping[str, Path]], *,
                     entry: str, force: bool = False, profile: Optional[Dict[str, Any]] = None,
                     input_size: Optional[int] = None, labels: Optional[Sequence[str]] = None) -> TritonRepository:
    """Write each model folder (``config.pbtxt``, ``1/<files>``) and the README, each folder atomically.

    ``labels``: the class names, written as ``labels.txt`` (one per line, index = class id) in each model folder
    with a ``mask`` or ``logits`` output, which names it through ``label_filename`` (Triton's labels file).
    """
    readme = repo / "README.md"
    taken = [str(repo / n) for n in configs if (repo / n).exists()] + ([str(readme)] if readme.exists() else [])
    if taken and not force:
        raise FcnsegError(f"expected new model folders in {str(repo)!r}, got existing {', '.join(taken)}; "
                          "try --force to replace them, or another --repo or --name")
    repo.mkdir(parents=True, exist_ok=True)
    for name, config in configs.items():
        extra = {LABELS_FILE: "".join(f"{n}\n" for n in labels)} if labels and _label_outputs(config) else {}
        _write_model_dir(repo / name, config_text(config), files.get(name, {}), extra)

    result = TritonRepository(repo, list(configs), entry, readme, dict(configs), profile, input_size)
    write_text(readme, readme_text(result))
    log.info("wrote Triton repository %s: %s (clients call %r)", repo, ", ".join(configs), entry)
    return result


def _label_outputs(config: Any) -> bool:
    """Point the class outputs (``mask``, ``logits``) of ``config`` at the labels file; True if it has any."""
    outputs = [o for o in config.output if o.name in CLASS_OUTPUTS]
    for o in outputs:
        o.label_filename = LABELS_FILE
    return bool(outputs)


def _write_model_dir(target: Path, config: str, files: Mapping[str, Path],
                     texts: Optional[Mapping[str, str]] = None) -> None:
    """Fill a temporary folder next to ``target``, then swap it in (the old one, if any, is removed after);
    ``texts`` are written beside ``config.pbtxt`` (the labels file)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    tmp.chmod(0o777 & ~current_umask())   # mkdtemp's 0700 would keep a server running as another user out
    try:
        (tmp / "config.pbtxt").write_text(config)
        for dest, text in (texts or {}).items():
            (tmp / dest).write_text(text)
        (tmp / "1").mkdir()
        for dest, source in files.items():
            shutil.copyfile(source, tmp / "1" / dest)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def parse_batch_sizes(text: Optional[str]) -> Optional[Tuple[int, ...]]:
    """"4,8" -> (4, 8); None or "" -> None (the defaults)."""
    if not text:
        return None
    try:
        return tuple(int(p) for p in text.split(","))
    except ValueError:
        raise FcnsegError(f"expected comma-separated batch sizes like 4,8, got {text!r}") from None
