"""Triton Python-backend model for fcnseg, copied as ``<model>/1/model.py`` by ``fcnseg.export.triton``.

One file serves three roles, chosen by the config parameter ``fcnseg_role``:

- ``segmenter``: ``image`` (UINT8, HxWx3 RGB) -> ``mask`` (UINT8, HxW at the image's size), running
  ``fcnseg.runtime.Segmenter`` on the model file next to this one (parameter ``fcnseg_model``), with every
  request of a dynamic batch segmented in one call;
- ``preprocess``: ``image`` (BYTES, an encoded JPEG/PNG/...) -> ``input`` (FP32 3xhxw, resized and normalised
  by ``fcnseg.runtime.preprocess.preprocess`` with the model's metadata) and ``size`` (INT32, the image's HxW);
- ``postprocess``: ``scores`` (FP32 logits Cxhxw, or the in-graph UINT8 mask hxw) and ``size`` -> ``mask``;
- ``network``: the network alone (its own input and outputs), run by the fcnseg backend for the model file
  next to this one: the ensemble's middle step where Triton has no backend of its own for that file;
- ``image_slide``: ``image`` (BYTES, encoded) -> ``mask`` at the image's size, segmented at its own resolution
  in overlapping tiles (``Segmenter(mode="slide")``), each batch of tiles run by the served network through
  Triton's BLS (``pb_utils.InferenceRequest``): an ensemble's fixed steps cannot loop over a varying number of
  tiles, so this step calls the network the way Triton documents for loops.

It runs inside Triton's Python backend stub, whose interpreter must have ``fcnseg`` (runtime only: numpy,
pillow and, for ``segmenter``, the model's inference library) installed. ``triton_python_backend_utils``
is imported inside the methods, so the functions above the class can be imported and tested anywhere.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from fcnseg.core.errors import FcnsegError, one_line
from fcnseg.core.metadata import ModelMetadata
from fcnseg.runtime import preprocess, resize_mask
from fcnseg.runtime.backends.base import BaseBackend

ROLES = ("segmenter", "preprocess", "postprocess", "network", "image_slide")


def config_parameters(model_config: Dict[str, Any]) -> Dict[str, str]:
    """The string parameters of a model config as Triton hands it to ``initialize`` (JSON-decoded)."""
    return {k: v.get("string_value", "") for k, v in model_config.get("parameters", {}).items()}


def decode_image(data: bytes) -> np.ndarray:
    """Encoded image bytes -> HxWx3 uint8 RGB, EXIF orientation applied (as ``fcnseg.runtime`` reads files)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise FcnsegError(f"could not decode the request's image ({e}); expected the bytes of a JPEG, PNG, BMP, "
                          "WebP or TIFF file") from None


def preprocess_encoded(data: bytes, meta: ModelMetadata) -> Tuple[np.ndarray, np.ndarray]:
    """Encoded image -> (the 1x3xhxw network input, its original [H, W] as int32)."""
    image = decode_image(data)
    hw = tuple(meta.input_hw) if getattr(meta, "input_hw", None) else None
    kwargs: Dict[str, Any] = {"hw": hw} if hw else {}
    x = preprocess(image, size=meta.input_size, mean=meta.mean, std=meta.std, **kwargs)
    return x, np.asarray(image.shape[:2], dtype=np.int32)


def postprocess_scores(scores: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """One image's network output (Cxhxw logits or an hxw mask) -> HxW uint8 mask at ``size``."""
    mask = scores.argmax(axis=0) if scores.ndim == 3 else scores
    return resize_mask(np.ascontiguousarray(mask, dtype=np.uint8), int(size[0]), int(size[1]))


class TritonPythonModel:
    """The model Triton's Python backend instantiates (see the module docstring for the roles)."""

    def initialize(self, args: Dict[str, str]) -> None:
        params = config_parameters(json.loads(args["model_config"]))
        self.role = params.get("fcnseg_role", "")
        if self.role not in ROLES:
            raise FcnsegError(f"expected parameter fcnseg_role in {ROLES}, got {self.role!r}; "
                              "try writing the repository again with fcn-export triton")
        self.metadata = ModelMetadata.from_dict(json.loads(params.get("fcnseg_metadata") or "{}"))
        here = Path(args["model_repository"]) / args["model_version"]
        threads = int(params["fcnseg_num_threads"]) if params.get("fcnseg_num_threads") else None
        if self.role == "segmenter":
            from fcnseg.runtime import Segmenter

            size = int(params["fcnseg_size"]) if params.get("fcnseg_size") else None
            view = json.loads(params.get("fcnseg_view") or "{}")   # mode, tile, stride (large images: slide)
            hint = params.get("fcnseg_precision_hint") or None   # OpenVINO's; None: its own for the CPU
            classes = here / params["fcnseg_classes"] if params.get("fcnseg_classes") else None   # --classes
            self.segmenter = Segmenter.load(here / params["fcnseg_model"], size=size, num_threads=threads,
                                            precision_hint=hint, classes=classes, **view)
        elif self.role == "network":
            from fcnseg.runtime import load_backend

            config = json.loads(args["model_config"])
            self.io = (config["input"][0]["name"], [o["name"] for o in config["output"]])
            # The graph's own outputs: ONNX Runtime for .onnx (OpenVINO's backend folds the argmax into the graph).
            model = here / params["fcnseg_model"]
            self.backend = load_backend(model, num_threads=threads,
                                        backend="onnxruntime" if model.suffix == ".onnx" else None)
        elif self.role == "image_slide":
            from fcnseg.runtime import Segmenter

            network = TritonNetwork(json.loads(params["fcnseg_network"]), self.metadata)
            self.segmenter = Segmenter(network, **json.loads(params.get("fcnseg_view") or "{}"))

    def execute(self, requests: List[Any]) -> List[Any]:
        import triton_python_backend_utils as pb_utils

        if self.role == "segmenter":
            return self._segment(requests, pb_utils)
        if self.role == "network":
            return self._network(requests, pb_utils)
        handle = {"preprocess": self._preprocess, "postprocess": self._postprocess,
                  "image_slide": self._image_slide}[self.role]
        return [_respond(pb_utils, handle, request) for request in requests]

    def _segment(self, requests: List[Any], pb_utils: Any) -> List[Any]:
        """All images of all requests in one Segmenter call (it batches equal shapes); per request on error."""
        arrays = [pb_utils.get_input_tensor_by_name(r, "image").as_numpy() for r in requests]
        try:
            masks = self.segmenter([im for a in arrays for im in a])
        except FcnsegError:
            return [_respond(pb_utils, lambda a: [("mask", np.stack(self.segmenter(list(a))))], a) for a in arrays]
        out, start = [], 0
        for a in arrays:
            out.append(_response(pb_utils, [("mask", np.stack(masks[start:start + len(a)]))]))
            start += len(a)
        return out

    def _network(self, requests: List[Any], pb_utils: Any) -> List[Any]:
        """Requests of one input shape run as one batch; each gets its rows of every output back."""
        name, outputs = self.io
        arrays = [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests]
        groups: Dict[tuple, List[int]] = {}
        for i, a in enumerate(arrays):
            groups.setdefault(a.shape[1:], []).append(i)
        responses: List[Any] = [None] * len(requests)
        for idx in groups.values():
            try:
                out = self.backend.infer(np.concatenate([arrays[i] for i in idx]))
            except FcnsegError as e:
                for i in idx:
                    responses[i] = _error(pb_utils, e)
                continue
            start = 0
            for i in idx:
                n = len(arrays[i])
                responses[i] = _response(pb_utils, [(k, out[k][start:start + n]) for k in outputs])
                start += n
        return responses

    def _preprocess(self, request: Any) -> List[Tuple[str, np.ndarray]]:
        import triton_python_backend_utils as pb_utils

        data = pb_utils.get_input_tensor_by_name(request, "image").as_numpy().reshape(-1)
        pairs = [preprocess_encoded(bytes(d), self.metadata) for d in data]
        shapes = {x.shape for x, _ in pairs}
        if len(shapes) > 1:
            raise FcnsegError(f"expected images of one size per request, got network inputs {sorted(shapes)}; "
                              "try one image per request")
        return [("input", np.concatenate([x for x, _ in pairs])), ("size", np.stack([s for _, s in pairs]))]

    def _postprocess(self, request: Any) -> List[Tuple[str, np.ndarray]]:
        import triton_python_backend_utils as pb_utils

        scores = pb_utils.get_input_tensor_by_name(request, "scores").as_numpy()
        sizes = pb_utils.get_input_tensor_by_name(request, "size").as_numpy()
        masks = [postprocess_scores(s, hw) for s, hw in zip(scores, sizes)]
        if len({m.shape for m in masks}) > 1:
            raise FcnsegError("expected images of one size per request, got several; try one image per request")
        return [("mask", np.stack(masks))]

    def _image_slide(self, request: Any) -> List[Tuple[str, np.ndarray]]:
        import triton_python_backend_utils as pb_utils

        data = pb_utils.get_input_tensor_by_name(request, "image").as_numpy().reshape(-1)
        masks = [self.segmenter(decode_image(bytes(d))) for d in data]
        if len({m.shape for m in masks}) > 1:
            raise FcnsegError("expected images of one size per request, got several; try one image per request")
        return [("mask", np.stack(masks))]

    def finalize(self) -> None:
        for attr in ("segmenter", "backend"):
            if getattr(self, attr, None) is not None:
                getattr(self, attr).close()


class TritonNetwork(BaseBackend):
    """The served network as a ``Backend``: each batch goes to the model ``network["model"]`` through BLS.

    ``network`` holds the model's name, its input name and dtype, its result's name and its max batch, as
    ``fcnseg.export.triton`` records them in the ``fcnseg_network`` parameter.
    """

    name = "triton"

    def __init__(self, network: Dict[str, Any], metadata: ModelMetadata) -> None:
        super().__init__()
        self.network = network
        self.max_batch = int(network["max_batch"]) or None
        self.metadata = metadata

    def _infer(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        import triton_python_backend_utils as pb_utils

        net = self.network
        x = pb_utils.Tensor(net["input"], batch.astype(net["input_dtype"], copy=False))
        response = pb_utils.InferenceRequest(model_name=net["model"], inputs=[x],
                                             requested_output_names=[net["output"]]).exec()
        if response.has_error():
            raise FcnsegError(f"expected the network {net['model']!r} to answer a batch of tiles, got "
                              f"{response.error().message()}; check the server's log")
        out = pb_utils.get_output_tensor_by_name(response, net["output"]).as_numpy()
        return {"mask" if self.metadata.argmax else "logits": out}


def _response(pb_utils: Any, outputs: List[Tuple[str, np.ndarray]]) -> Any:
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(n, np.ascontiguousarray(a)) for n, a in outputs])


def _respond(pb_utils: Any, handle: Any, request: Any) -> Any:
    """One request's response; a bad input (``FcnsegError``) fails that request only, with its message."""
    try:
        return _response(pb_utils, handle(request))
    except FcnsegError as e:
        return _error(pb_utils, e)


def _error(pb_utils: Any, error: FcnsegError) -> Any:
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(one_line(error)))
