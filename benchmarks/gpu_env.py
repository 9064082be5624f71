"""What a machine offers the pipeline: GPUs (NVML through ``nvidia-ml-py``), torch's own environment
report (``torch.utils.collect_env``), TensorRT / TensorRT-RTX bindings, CUDA bindings and ONNX Runtime providers.

No text of ``nvidia-smi`` or ``ldconfig`` is parsed: NVML and the libraries answer for themselves, and each
piece that is absent reads as None / False / [].
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import platform
import sys
from typing import Any, Dict, List, Optional

from ..core.errors import FcnsegError, one_line
from ..eval.tables import format_table
from ..runtime.backends.tensorrt import import_tensorrt

PACKAGES = ("torch", "torchvision", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxslim",
            "onnxconverter-common", "openvino", "tensorrt", "tensorrt-rtx", "tensorrt_rtx", "cuda-python",
            "cuda-bindings", "pycuda", "nvidia-ml-py")
TRT_LIBRARIES = ("tensorrt", "tensorrt_rtx")


def environment_report() -> Dict[str, Any]:
    """What this machine offers the pipeline; works anywhere (absent pieces are None / False / []).

    Returns:
        A JSON-serialisable dict: ``python``, ``executable``, ``platform``, ``packages`` (distribution ->
        version or None), ``nvml`` (driver, CUDA driver version, ``gpus`` with name, compute capability
        and memory; ``error`` when NVML is absent), ``torch`` (from ``torch.utils.collect_env`` plus the
        CUDA devices torch sees and its TF32 flags), ``tensorrt`` (per library: importable, version,
        error), ``cuda_python``, ``pycuda``, ``onnxruntime`` and ``onnxruntime_providers``.
    """
    return {"python": platform.python_version(), "executable": sys.executable, "platform": platform.platform(),
            "packages": {name: _version(name) for name in PACKAGES}, "nvml": nvml_info(), "torch": torch_info(),
            "tensorrt": {lib: tensorrt_info(lib) for lib in TRT_LIBRARIES},
            "cuda_python": _module_version("cuda", "cuda-python", "cuda-bindings"),
            "pycuda": _module_version("pycuda", "pycuda"), **_onnxruntime_info()}


def nvml_info() -> Dict[str, Any]:
    """Driver and GPUs from NVML (``import pynvml``, the ``nvidia-ml-py`` package)."""
    info: Dict[str, Any] = {"driver": None, "cuda_driver": None, "gpus": [], "error": None}
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as e:  # ImportError, or NVMLError_LibraryNotFound / DriverNotLoaded where there is no GPU
        info["error"] = one_line(e) or type(e).__name__
        return info
    try:
        info["driver"] = _text(pynvml.nvmlSystemGetDriverVersion())
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        info["cuda_driver"] = f"{cuda // 1000}.{cuda % 1000 // 10}"
        info["gpus"] = [_nvml_gpu(pynvml, i) for i in range(pynvml.nvmlDeviceGetCount())]
    finally:
        pynvml.nvmlShutdown()
    return info


def _nvml_gpu(pynvml: Any, index: int) -> Dict[str, Any]:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
    return {"index": index, "name": _text(pynvml.nvmlDeviceGetName(handle)),
            "compute_capability": f"{major}.{minor}",
            "memory_gib": round(pynvml.nvmlDeviceGetMemoryInfo(handle).total / 2**30, 1)}


def gpu_count() -> int:
    """GPUs NVML sees (0 without a driver or without nvidia-ml-py)."""
    return len(nvml_info()["gpus"])


def torch_info() -> Dict[str, Any]:
    """``torch.utils.collect_env.get_env_info()`` plus the devices and TF32 flags torch uses; {} without torch."""
    try:
        import torch
        from torch.utils import collect_env
    except ImportError:
        return {}
    env = collect_env.get_env_info()
    keep = ("torch_version", "cuda_compiled_version", "cuda_runtime_version", "cudnn_version", "nvidia_driver_version", "nvidia_gpu_models", "os", "python_version", "cpu_info")
    info: Dict[str, Any] = {k: getattr(env, k, None) for k in keep}
    info["cuda_available"] = bool(torch.cuda.is_available())
    info["tf32"] = {"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32}
    info["devices"] = []
    with contextlib.suppress(Exception):  # a CPU build or a broken driver answers nothing useful
        for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
            p = torch.cuda.get_device_properties(i)
            info["devices"].append({"index": i, "name": p.name, "compute_capability": f"{p.major}.{p.minor}",
                                    "multiprocessors": p.multi_processor_count})
    return info


def tensorrt_info(library: str = "tensorrt") -> Dict[str, Any]:
    """Whether ``library`` ("tensorrt" or "tensorrt_rtx") imports with its bindings, and its version."""
    try:
        trt = import_tensorrt(library)
    except FcnsegError as e:
        return {"importable": False, "version": None, "error": str(e)}
    except Exception as e:  # e.g. OSError: the bindings are there but the shared library is not
        return {"importable": False, "version": None, "error": one_line(e)}
    return {"importable": True, "version": str(getattr(trt, "__version__", "unknown")), "error": None}


def environment_table(env: Dict[str, Any]) -> str:
    """The environment report as a two-column table."""
    nvml, t = env["nvml"], env["torch"]
    rows: List[List[Any]] = [["python", f"{env['python']} ({env['executable']})"], ["platform", env["platform"]],
                             ["driver (NVML)", nvml["driver"] or f"none: {nvml['error']}"[:120]],
                             ["CUDA driver (NVML)", nvml["cuda_driver"]]]
    rows += [[f"GPU {g['index']}", f"{g['name']}, compute {g['compute_capability']}, {g['memory_gib']} GiB"]
             for g in nvml["gpus"]]
    if t:
        rows += [["torch", f"{t['torch_version']} (CUDA {t['cuda_compiled_version']}, cuDNN {t['cudnn_version']}, "
                           f"available: {t['cuda_available']}, TF32 {t['tf32']})"], ["CPU", _first(t["cpu_info"])]]
    for lib, info in env["tensorrt"].items():
        rows.append([f"import {lib}", info["version"] if info["importable"] else f"no: {info['error']}"[:160]])
    rows += [["cuda-python", env["cuda_python"]], ["pycuda", env["pycuda"]],
             ["onnxruntime", f"{env['onnxruntime']} ({', '.join(env['onnxruntime_providers'])})"]]
    rows += [[f"pip {k}", v] for k, v in env["packages"].items() if v and k not in ("torch", "onnxruntime")]
    return format_table(["item", "value"], rows)


def _first(text: Optional[str]) -> Optional[str]:
    lines = [line.strip() for line in (text or "").splitlines() if "Model name" in line]
    return lines[0].split(":", 1)[-1].strip() if lines else None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _find_spec(name: str) -> Any:
    """The module's spec without importing it (importing pycuda.autoinit would create a CUDA context)."""
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


def _module_version(module: str, *dists: str) -> Optional[str]:
    """The first installed distribution's version when ``module`` is importable; None when it is not."""
    if _find_spec(module) is None:
        return None
    return next((v for v in map(_version, dists) if v), "installed (version unknown)")


def _version(dist: str) -> Optional[str]:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _onnxruntime_info() -> Dict[str, Any]:
    try:
        import onnxruntime as ort
    except ImportError:
        return {"onnxruntime": None, "onnxruntime_providers": []}
    return {"onnxruntime": ort.__version__, "onnxruntime_providers": list(ort.get_available_providers())}
