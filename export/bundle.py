"""``fcn-export bundle``: one folder to copy to a Jetson, with everything to build the engine there and run it.

Engines are tied to the GPU and the TensorRT version, so a bundle carries the ONNX graphs (FP16, and INT8
when asked), not engines, plus:

- ``wheels/fcnseg_runtime-*.whl``: the runtime alone (numpy + Pillow, Python >= 3.8), built from
  ``runtime/pyproject.toml`` (``build_runtime_wheel``);
- ``build_engine.sh``: ``fcn-export trt`` where fcnseg's exporter is installed, else ``trtexec`` with the same
  profile and flags (``--useDLACore``/``--allowGPUFallback`` when asked), then the engine's sidecar;
- ``run.py``: a camera or video through ``fcnseg.runtime.video.loop.segment_stream``;
- ``README.md`` with the JetPack 5.1 / 6.x / 7.0 install lines, and ``bundle.json`` (written last: the
  manifest with each file's SHA-256 and the sidecar templates ``build_engine.sh`` fills in).

INT8 graphs (issue 21: the device builds the variant its TensorRT parses), keys of ``bundle.json``'s "graphs":

- ``int8``, ``fcn_int8.onnx``: opset 17, FP32 elsewhere. Every JetPack's TensorRT parses it; 8.5 / 8.6 (JetPack
  5.1 / 6.0) mix INT8 with FP16 by ``--int8 --fp16``.
- ``int8_fp16``, ``fcn_int8_fp16.onnx``: opset 19, FP16-typed with FP16 Q/DQ scales (``fcn-export int8``'s
  default), for the strongly typed builders of TensorRT 10+ (JetPack 6.1 / 6.2: 10.3, 7.0: 10.13) and TensorRT for
  RTX; its ``fcnseg.int8`` metadata says high_precision "fp16", trt_version "10".

``--calib-data`` calibrates once, for the first (``Int8Options.trt_version`` 8.5 unless an 8.x is given,
``high_precision`` fp32 whatever is given), and lowers it to the second with ``fcnseg.export.fp16.qdq_to_fp16``,
checked against it on a few evaluation images (``verify_qdq_fp16``) as ``fcn-export int8`` checks its own.
``--int8-from`` ships its graph as it is: as ``fcn_int8.onnx`` at opset <= 17, as ``fcn_int8_fp16.onnx`` at opset
18+ with FP16 Q/DQ scales; an FP32-elsewhere graph past opset 17 is refused (TensorRT 8.x cannot parse it, and under
the other name it would promise FP16). ``build_engine.sh int8`` builds ``fcn_int8.plan`` from ``int8_fp16`` on
TensorRT 10+ when the bundle has it, else from ``int8``, and says which and why; ``--high-precision fp32|fp16``
chooses instead. Both entries name the plan ``fcn_int8.plan`` and a sidecar of precision "int8" naming their own
ONNX.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Union

import numpy as np
import onnx

from ..core.atomic import atomic_path, file_sha256, write_text
from ..core.errors import FcnsegError
from ..core.metadata import PREFIX, ModelMetadata
from ..core.onnx_names import TRT8_MAX_OPSET
from ..core.output_guard import check_output_dir
from ..runtime.backends.tensorrt import format_shape
from . import chain
from .calibration import split_layouts
from .fp16 import QDQ_FP16_OPSET, has_fp16_qdq
from .int8 import fp16_elsewhere, is_trt8, model_inputs
from .onnx_graph import load_onnx, read_metadata, save_onnx, set_metadata
from .options import EngineOptions, Int8Options
from .runtime_wheel import build_runtime_wheel
from .tensorrt import EngineSpec, Profile, dla_profile, engine_spec, profile_sidecar

PathLike = Union[str, "os.PathLike[str]"]
TEMPLATES = Path(__file__).with_name("templates")
SCRIPTS = ("build_engine.sh", "run.py", "README.md")
LABELS_FILE = "labels.txt"
# bundle.json's graph keys -> file and the precision its engine (and sidecar) has; the INT8 ones share fcn_int8.plan
GRAPH_FILES = {"fp16": "fcn_fp16.onnx", "int8": "fcn_int8.onnx", "int8_fp16": "fcn_int8_fp16.onnx"}
GRAPH_PRECISIONS = {"fp16": "fp16", "int8": "int8", "int8_fp16": "int8"}
FP16_ELSEWHERE_TRT = "10"   # the TensorRT the FP16-elsewhere INT8 graph targets (strongly typed, opset 19)
log = logging.getLogger("fcnseg.export")


@dataclass
class Bundle:
    """What ``make_bundle`` wrote: the folder, the graphs by ``bundle.json`` key (fp16, int8, int8_fp16), the wheel
    and every file's path."""

    path: Path
    graphs: Dict[str, Path]
    wheel: Path
    files: List[Path] = field(default_factory=list)


def check_bundle_dir(out: PathLike, *, force: bool = False) -> Path:
    """A new or empty folder; an existing non-empty one only with ``force`` (its other files are kept)."""
    path = check_output_dir(out, "--out", what="a folder (new or empty)")
    entries = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    if entries and not force:
        raise FcnsegError(f"expected an empty or new folder for the bundle, got {str(path)!r} holding "
                          f"{len(entries)} entries ({', '.join(entries[:3])}{', ...' if len(entries) > 3 else ''}); "
                          "try another --out, or --force to replace the bundle's files there")
    return path


@contextlib.contextmanager
def staging(dest: Path) -> Iterator[Path]:
    """Where to write the bundle: a hidden sibling folder renamed to ``dest`` at the end (so a failed run leaves
    nothing behind), or ``dest`` itself when it already holds files (``--force``: each file is written atomically)."""
    if dest.is_dir() and any(dest.iterdir()):
        yield dest
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        yield tmp
        tmp.chmod(0o755)
        os.replace(tmp, dest)   # rename(2) also replaces an empty folder
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def bundle_profile(spec: EngineSpec, dla_core: Optional[int], explicit: bool) -> Profile:
    """The profile to build with: the spec's; on a DLA one shape, as ``fcn-export trt`` builds it there
    (``tensorrt.dla_profile``: fixed at opt, or a dynamic profile given explicitly refused here, not on the device)."""
    return dla_profile(spec.profile, dla_core, explicit=explicit)


def make_bundle(model: PathLike, out: PathLike, *, engine: EngineOptions = EngineOptions(),
                int8: Optional[Int8Options] = None, int8_from: Optional[PathLike] = None,
                runtime_wheel: Optional[PathLike] = None, force: bool = False) -> Bundle:
    """Write a device bundle for ``model`` into ``out`` (see the module docstring).

    Args:
        model: the FP32 ONNX (from ``fcn-export onnx``) or an FP16 one.
        out: the bundle folder: new or empty, unless ``force``.
        engine: how the device builds its engines: the profile (defaults as ``fcn-export trt``; fixed at opt on a
            DLA unless all three shapes are given), ``dla_core`` and ``gpu_fallback``.
        int8: quantize ``model`` to INT8 here with these options (exclusive with ``int8_from``): the opset-17 graph
            with FP32 elsewhere and the opset-19 one with FP16 elsewhere lowered from it (``trt_version`` 8.5 and
            ``high_precision`` fp32 for the first, whatever these options say; ``target`` must be tensorrt).
        int8_from: a Q/DQ ONNX (``fcn-export int8``) to ship as it is: ``fcn_int8.onnx`` at opset <= 17,
            ``fcn_int8_fp16.onnx`` when FP16-typed at opset 18+.
        runtime_wheel: a prebuilt ``fcnseg_runtime`` wheel to ship instead of building one.
        force: write into a non-empty ``out`` (replacing the bundle's own files only).
    """
    _check_options(int8_from, int8, engine.dla_core, engine.gpu_fallback)
    shapes = EngineOptions(min_shape=engine.min_shape, opt_shape=engine.opt_shape, max_shape=engine.max_shape)
    spec = engine_spec(model, shapes)
    if spec.graph_precision == "int8":
        raise FcnsegError(f"expected the FP32 (or FP16) ONNX as MODEL, got a Q/DQ INT8 graph {str(model)!r}; try "
                          "the FP32 graph as MODEL and this one with --int8-from")
    int8_spec = engine_spec(int8_from, shapes) if int8_from else None
    int8_key = _check_int8(int8_spec, spec)
    dest = check_bundle_dir(out, force=force)
    profile = bundle_profile(spec, engine.dla_core, explicit=engine.explicit_profile)
    with staging(dest) as stage:
        graphs = _write_graphs(spec, int8_spec, int8_key, int8, stage)
        wheel = _copy_or_build_wheel(runtime_wheel, stage / "wheels")
        context = _template_values(spec, profile, graphs, wheel, engine.dla_core, engine.gpu_fallback, Path(model))
        scripts = [_render(name, stage, context) for name in SCRIPTS]
        labels = stage / LABELS_FILE   # the class names, one per line (index = class id), for the app over run.py
        write_text(labels, "".join(f"{n}\n" for n in spec.metadata.classes))
        files = list(graphs.values()) + [wheel] + scripts + [labels]
        sidecars = {k: _sidecar_template(spec, profile, GRAPH_PRECISIONS[k], g.name, engine.dla_core,
                                         engine.gpu_fallback) for k, g in graphs.items()}
        _write_manifest(stage, spec, profile, graphs, sidecars, files)
        names = [f.relative_to(stage) for f in files + [stage / "bundle.json"]]
    return Bundle(dest, {p: dest / g.name for p, g in graphs.items()}, dest / wheel.relative_to(stage),
                  [dest / n for n in names])


def _check_options(int8_from: Optional[PathLike], int8: Optional[Int8Options], dla_core: Optional[int],
                   gpu_fallback: bool) -> None:
    if int8_from and int8 is not None:
        raise FcnsegError("expected at most one of --int8-from and --calib-data, got both; try --int8-from with "
                          "a graph from `fcn-export int8`, or --calib-data alone")
    if dla_core is not None and dla_core < 0:
        raise FcnsegError(f"expected a DLA core number >= 0, got {dla_core}; try --dla-core 0")
    if gpu_fallback and dla_core is None:
        raise FcnsegError("expected --dla-core N with --gpu-fallback, got no DLA core; try --dla-core 0 --gpu-fallback")
    if int8 is not None and int8.target != "tensorrt":
        raise FcnsegError(f"expected the tensorrt INT8 target for a device bundle, got {int8.target!r} (ONNX Runtime's "
                          "CPU layout, which TensorRT does not build); try target='tensorrt'")


def _check_int8(int8_spec: Optional[EngineSpec], spec: EngineSpec) -> Optional[str]:
    """None without ``--int8-from``, else its graph's key in the bundle (``_int8_variant``)."""
    if int8_spec is None:
        return None
    if int8_spec.graph_precision != "int8":
        raise FcnsegError(f"expected a Q/DQ INT8 ONNX for --int8-from, got an {int8_spec.graph_precision} graph "
                          f"{str(int8_spec.onnx_path)!r}; try `fcn-export int8 MODEL.onnx --calib-data ROOT` first")
    if int8_spec.input_name != spec.input_name:
        raise FcnsegError(f"expected --int8-from to have the model's input {spec.input_name!r}, got "
                          f"{int8_spec.input_name!r}; try the INT8 graph made from this MODEL")
    return _int8_variant(int8_spec.onnx_path)


def _int8_variant(path: Path) -> str:
    """The key an ``--int8-from`` graph ships under: "int8" at opset <= 17 (every JetPack's TensorRT parses it),
    "int8_fp16" past it with FP16 Q/DQ scales (TensorRT 10+); an FP32-elsewhere graph past opset 17 is refused."""
    model = load_onnx(path)
    opset = _opset(model)
    if opset <= TRT8_MAX_OPSET:
        return "int8"
    if has_fp16_qdq(model):
        return "int8_fp16"
    raise FcnsegError(f"expected --int8-from at opset <= {TRT8_MAX_OPSET} (fcn_int8.onnx, every JetPack) or FP16 "
                      f"elsewhere (fcn_int8_fp16.onnx, TensorRT 10+), got an FP32-elsewhere graph at opset {opset} "
                      f"{str(path)!r}; try `fcn-export int8 MODEL.onnx --calib-data ROOT --trt-version 8.5`, or "
                      "--calib-data here to ship both")


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _write_graphs(spec: EngineSpec, int8_spec: Optional[EngineSpec], int8_key: Optional[str],
                  int8: Optional[Int8Options], dest: Path) -> Dict[str, Path]:
    graphs = {"fp16": dest / GRAPH_FILES["fp16"]}
    if spec.graph_precision == "fp16":
        _copy(spec.onnx_path, graphs["fp16"])
    else:
        log.info("converting %s to FP16", spec.onnx_path.name)
        chain.lower(spec.onnx_path, "fp16", graphs["fp16"])
    if int8_spec is not None and int8_key is not None:
        graphs[int8_key] = dest / GRAPH_FILES[int8_key]
        _copy(int8_spec.onnx_path, graphs[int8_key])
    elif int8 is not None:
        graphs["int8"], graphs["int8_fp16"] = dest / GRAPH_FILES["int8"], dest / GRAPH_FILES["int8_fp16"]
        _quantize(spec, int8, graphs["int8"], graphs["int8_fp16"])
    return graphs


def _quantize(spec: EngineSpec, int8: Int8Options, fp32_out: Path, fp16_out: Path) -> None:
    """Calibrate once: the graph every JetPack builds (opset 17, FP32 elsewhere: TensorRT 8.5 / 8.6 parse opset
    <= 17 and mix INT8 with FP16 by their flags), then the FP16-elsewhere graph for TensorRT 10+ lowered from it."""
    log.info("quantizing %s to INT8 on %s", spec.onnx_path.name, int8.calib_root)
    options = replace(int8, trt_version=int8.trt_version if is_trt8(int8.trt_version) else "8.5",
                      high_precision="fp32")
    chain.lower(spec.onnx_path, "int8", fp32_out, int8=options)
    _write_fp16_elsewhere(fp32_out, fp16_out, options)


def _write_fp16_elsewhere(src: Path, dst: Path, options: Int8Options) -> None:
    """``src`` (Q/DQ, FP32 elsewhere) as ``fcn-export int8``'s default writes it: FP16 elsewhere at opset 19
    (``qdq_to_fp16``), checked against ``src`` on the evaluation images, metadata kept but for what it targets."""
    log.info("lowering %s to FP16 elsewhere (opset %d) for TensorRT %s+", src.name, QDQ_FP16_OPSET,
             FP16_ELSEWHERE_TRT)
    fp32_elsewhere = load_onnx(src)
    meta, props = read_metadata(fp32_elsewhere, str(src))
    fp16 = fp16_elsewhere(fp32_elsewhere, _check_inputs(options, meta))
    del fp16.metadata_props[:]
    fp16.metadata_props.extend(fp32_elsewhere.metadata_props)
    info = props.get(PREFIX + "int8")
    set_metadata(fp16, meta, {PREFIX + "int8": {**(info if isinstance(info, dict) else {}),
                                                "high_precision": "fp16", "trt_version": FP16_ELSEWHERE_TRT}})
    save_onnx(fp16, dst)


def _check_inputs(options: Int8Options, meta: ModelMetadata) -> List[np.ndarray]:
    """What ``fcn-export int8`` checks its FP16 lowering on: the first ``sensitivity_images`` evaluation images
    (never a calibration image), preprocessed as the model's metadata says."""
    _, evaluation = split_layouts(options.source(), options.calib_split, options.eval_split, options.num_images,
                                  options.eval_images, meta.num_classes)
    return model_inputs(evaluation, meta, options.sensitivity_images)


def _copy(src: PathLike, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def _copy_or_build_wheel(runtime_wheel: Optional[PathLike], wheels: Path) -> Path:
    if runtime_wheel is None:
        return build_runtime_wheel(wheels)
    src = Path(runtime_wheel)
    if not (src.is_file() and src.name.startswith("fcnseg_runtime-") and src.suffix == ".whl"):
        raise FcnsegError(f"expected an fcnseg_runtime-*.whl file for --runtime-wheel, got {str(src)!r}; try "
                          "leaving it out to build one")
    _copy(src, wheels / src.name)
    return wheels / src.name


def _template_values(spec: EngineSpec, profile: Profile, graphs: Dict[str, Path], wheel: Path,
                     dla_core: Optional[int], gpu_fallback: bool, source: Path) -> Dict[str, str]:
    dla = dla_core is not None
    opt = profile.opt
    int8_line = "./build_engine.sh int8                      # -> fcn_int8.plan + fcn_int8.plan.json\n" \
        if {"int8", "int8_fp16"} & set(graphs) else ""
    return {
        "ARCH": spec.metadata.arch, "NUM_CLASSES": str(spec.metadata.num_classes), "SOURCE": source.name,
        "INPUT_NAME": spec.input_name, "MIN_SHAPE": format_shape(profile.min), "OPT_SHAPE": format_shape(opt),
        "MAX_SHAPE": format_shape(profile.max), "OPT_HW": f"{opt[2]}x{opt[3]}" if len(opt) == 4 else "520x520",
        "DLA_CORE": str(dla_core) if dla else "", "GPU_FALLBACK": "1" if gpu_fallback else "0",
        "PRECISIONS": " ".join(dict.fromkeys(GRAPH_PRECISIONS[k] for k in graphs)), "GRAPHS": " ".join(graphs),
        "DEFAULT_PRECISION": "fp16", "WHEEL": wheel.name, "INT8_BUILD": int8_line, "INT8_TEXT": _int8_text(graphs),
        "DLA_TEXT": f", DLA core {dla_core}" + (" with GPU fallback" if gpu_fallback else "") if dla else "",
        "DLA_FLAGS_FCN": f" and `--dla-core {dla_core}`" + (" --gpu-fallback" if gpu_fallback else "") if dla else "",
        "DLA_FLAGS_TRTEXEC": f", `--useDLACore={dla_core}`" + (" --allowGPUFallback" if gpu_fallback else "")
        if dla else "",
        "TREE": "\n".join(sorted([g.name for g in graphs.values()] + [f"wheels/{wheel.name}", "bundle.json",
                                                                      LABELS_FILE, *SCRIPTS])),
        "CLASSES": ", ".join(f"{i} {n}" for i, n in enumerate(spec.metadata.classes)),
    }


INT8_BOTH = """\
`./build_engine.sh int8` builds `fcn_int8.plan` from the INT8 graph the device's TensorRT parses, and prints
which and why (both graphs come from one calibration):

| JetPack | TensorRT | INT8 graph |
| --- | --- | --- |
| 5.1.x | 8.5.2 | `fcn_int8.onnx`: opset 17, FP32 elsewhere, mixed with FP16 by `--int8 --fp16` |
| 6.0 | 8.6.2 | `fcn_int8.onnx`, as on 5.1 |
| 6.1 / 6.2 | 10.3 | `fcn_int8_fp16.onnx`: opset 19, FP16 elsewhere (FP16 Q/DQ scales), strongly typed |
| 7.0 | 10.13 | `fcn_int8_fp16.onnx`, as on 6.1 |

TensorRT for RTX (`--library tensorrt_rtx`) builds `fcn_int8_fp16.onnx` too. `--high-precision fp32` builds
`fcn_int8.onnx` whatever the TensorRT (on 10+: FP32 elsewhere, slower); `--high-precision fp16` asks for
`fcn_int8_fp16.onnx` (TensorRT 10+ only).

"""
INT8_OPSET17 = """\
`./build_engine.sh int8` builds `fcn_int8.plan` from `fcn_int8.onnx` (opset 17, FP32 elsewhere), which every
JetPack's TensorRT parses: 8.5 / 8.6 (JetPack 5.1 / 6.0) mix it with FP16 by `--int8 --fp16`; 10.x (JetPack 6.1 /
6.2 / 7.0) builds it strongly typed, with the layers outside INT8 in FP32. For FP16 elsewhere on TensorRT 10+, make
the bundle with `--calib-data` (it also ships `fcn_int8_fp16.onnx`, opset 19).

"""
INT8_OPSET19 = """\
`./build_engine.sh int8` builds `fcn_int8.plan` from `fcn_int8_fp16.onnx` (opset 19, FP16 elsewhere): TensorRT 10+
only (JetPack 6.1 / 6.2: 10.3, 7.0: 10.13, or TensorRT for RTX). JetPack 5.1 and 6.0 (TensorRT 8.5 / 8.6 parse
opset <= 17) cannot build it: make the bundle with `--calib-data` (it also ships the opset-17 `fcn_int8.onnx`), or
`--int8-from` a graph from `fcn-export int8 --trt-version 8.5`.

"""


def _int8_text(graphs: Dict[str, Path]) -> str:
    """The README's paragraph on which INT8 graph each JetPack builds ("" without INT8)."""
    have = {"int8", "int8_fp16"} & set(graphs)
    if have == {"int8", "int8_fp16"}:
        return INT8_BOTH
    return {"int8": INT8_OPSET17, "int8_fp16": INT8_OPSET19}.get(next(iter(have), ""), "")


def _render(name: str, dest: Path, values: Dict[str, str]) -> Path:
    text = (TEMPLATES / name).read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    target = dest / name
    write_text(target, text)
    if name.endswith((".sh", ".py")):
        target.chmod(target.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return target


def _sidecar_template(spec: EngineSpec, profile: Profile, precision: str, onnx_name: str,
                      dla_core: Optional[int], gpu_fallback: bool) -> Dict[str, Any]:
    """The sidecar ``build_engine.sh`` writes after trtexec (library_version filled in on the device)."""
    return profile_sidecar(spec, profile, precision, library="tensorrt", onnx=onnx_name, dla_core=dla_core,
                           gpu_fallback=gpu_fallback).to_dict()


def _write_manifest(dest: Path, spec: EngineSpec, profile: Profile, graphs: Dict[str, Path],
                    sidecars: Dict[str, Dict[str, Any]], files: List[Path]) -> None:
    doc = {"format": 1, "model": spec.metadata.to_dict(), "input": spec.input_name, "profile": profile.to_dict(),
           "graphs": {k: {"onnx": g.name, "plan": f"fcn_{GRAPH_PRECISIONS[k]}.plan", "sidecar": sidecars[k]}
                      for k, g in graphs.items()},
           "files": {str(f.relative_to(dest)): file_sha256(f) for f in files}}
    write_text(dest / "bundle.json", json.dumps(doc, indent=2) + "\n")
