"""A real Triton Inference Server (the tritonserver bundled by nvidia-pytriton, in .venv-triton) on 127.0.0.1.

The repository is written by fcnseg.export.triton: the Python-backend model ``fcnseg`` runs Segmenter (ONNX
Runtime, CPU) on the tiny fcn8s_resnet18 export, and next to it the ensemble ``fcn_image`` (encoded image in,
mask out) with its network step on the Python backend too (``--backend python``: the bundled server has no
ONNX Runtime backend). Masks come back over HTTP and gRPC and are compared with the local Segmenter pixel
for pixel; a bounded concurrent load (8 clients x 25 requests) must fail nothing and make the dynamic
batcher form batches larger than one. Set FCNSEG_TRITON_REPORT=path to get the figures as JSON.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from fcnseg.export.triton import Batching, export_segmenter, export_triton
from fcnseg.export.triton_model import postprocess_scores, preprocess_encoded
from fcnseg.core.view import Tiling
from fcnseg.runtime import Segmenter

CLIENTS, REQUESTS = 8, 25
SLIDE = {"mode": "slide", "tile": 64, "stride": 48}   # large images in tiles (the export declares 64..2048)
SIZES = [(48, 64), (64, 48), (33, 71), (48, 64)]


@pytest.fixture(scope="module")
def server(triton_install, r18_onnx, tmp_path_factory):
    """The running server; stopped by the fixture's finalizer whatever the tests did."""
    from fcnseg.serve import TritonServer

    root = tmp_path_factory.mktemp("triton")
    batching = Batching(kind="cpu", max_queue_delay_us=5000)
    # f32: exact masks whatever batch Triton forms (OpenVINO's bf16 default may move a few pixels with the batch)
    repo = export_segmenter(r18_onnx, root / "repo", batching=batching, precision_hint="f32").root
    slide = export_segmenter(r18_onnx, root / "slide", name="fcnseg_slide", batching=batching, view=SLIDE)
    shutil.copytree(slide.root / "fcnseg_slide", repo / "fcnseg_slide")
    ensemble = export_triton(r18_onnx, root / "ensemble", with_preprocessing=True, onnx_backend="python",
                             batching=batching, tiling=Tiling(SLIDE["tile"], SLIDE["stride"]))
    for step in ensemble.models:
        shutil.copytree(ensemble.root / step, repo / step)
    with TritonServer(repo, install=triton_install, models=["fcnseg", "fcnseg_slide"] + ensemble.models) as srv:
        srv.wait_ready(timeout=90)
        yield srv
    assert srv.process.poll() is not None


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in SIZES]


@pytest.fixture(scope="module")
def reference(r18_onnx, images):
    with Segmenter.load(r18_onnx, precision_hint="f32") as seg:   # as the served model (and ONNX Runtime)
        return [seg(im) for im in images]


def infer(client, module, image: np.ndarray, model: str = "fcnseg") -> np.ndarray:
    batch = image if image.ndim == 4 else image[None]
    inp = module.InferInput("image", list(batch.shape), "UINT8")
    inp.set_data_from_numpy(batch)
    return client.infer(model, [inp]).as_numpy("mask")


def test_slide_mode_is_served_as_the_local_segmenter_slides(server, r18_onnx):
    """A Segmenter model exported with mode slide: large images in tiles on the server, the same masks."""
    rng = np.random.default_rng(11)
    big = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((150, 200), (97, 131))]
    client = httpclient.InferenceServerClient(server.http_url, network_timeout=120)
    with Segmenter.load(r18_onnx, **SLIDE) as seg:
        for image in big:
            served = infer(client, httpclient, image, model="fcnseg_slide")[0]
            assert served.shape == image.shape[:2] and (served == seg(image)).all()


@pytest.mark.parametrize("module", [httpclient, grpcclient], ids=["http", "grpc"])
def test_masks_match_local_segmenter(server, module, images, reference):
    url = server.http_url if module is httpclient else server.grpc_url
    client = module.InferenceServerClient(url)
    try:
        assert client.is_model_ready("fcnseg")
        for image, ref in zip(images, reference):
            mask = infer(client, module, image)
            assert mask.shape == (1,) + image.shape[:2] and int((mask[0] != ref).sum()) == 0
        two = infer(client, module, np.stack([images[0], images[3]]))      # one request, two images
        assert int((two != np.stack([reference[0], reference[3]])).sum()) == 0
    finally:
        client.close()


def _client_run(url: str, images, reference, seed: int) -> int:
    """REQUESTS requests from one client; returns the mismatching pixels it saw."""
    client = httpclient.InferenceServerClient(url, network_timeout=60)
    order = np.random.default_rng(seed).integers(0, len(images), REQUESTS)
    try:
        return sum(int((infer(client, httpclient, images[i])[0] != reference[i]).sum()) for i in order)
    finally:
        client.close()


def test_concurrent_load_forms_batches(server, images, reference):
    stats_before = _settled_stats(server)
    with ThreadPoolExecutor(CLIENTS) as pool:
        mismatches = sum(pool.map(lambda s: _client_run(server.http_url, images, reference, s), range(CLIENTS)))
    stats = _settled_stats(server)
    requests = stats["inference_count"] - stats_before["inference_count"]
    executions = stats["execution_count"] - stats_before["execution_count"]
    failed = stats["inference_stats"]["fail"].get("count", 0)
    batches = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats["batch_stats"]}
    metrics = _metrics(server)
    assert mismatches == 0 and failed == 0 and requests == CLIENTS * REQUESTS
    assert max(batches) > 1 and executions < requests, batches
    assert metrics["nv_inference_count"] / metrics["nv_inference_exec_count"] > 1.0
    if os.environ.get("FCNSEG_TRITON_REPORT"):
        report = {"requests": requests, "executions": executions, "mean_batch": requests / executions,
                  "mismatched_pixels": mismatches, "failed": failed, "batch_sizes": batches, "metrics": metrics}
        with open(os.environ["FCNSEG_TRITON_REPORT"], "w") as f:
            json.dump(report, f, indent=2)


def _settled_stats(server) -> dict:
    """fcnseg's statistics once two reads 0.2 s apart agree (the server records a request after answering it)."""
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        last = None
        for _ in range(25):
            stats = client.get_inference_statistics("fcnseg")["model_stats"][0]
            if last is not None and stats["inference_count"] == last["inference_count"]:
                return stats
            last = stats
            time.sleep(0.2)
        return stats
    finally:
        client.close()


def _metrics(server) -> dict:
    """nv_inference_count and nv_inference_exec_count of the fcnseg model from the Prometheus endpoint."""
    with urllib.request.urlopen(server.metrics_url, timeout=10) as r:
        text = r.read().decode()
    found = {}
    for name in ("nv_inference_count", "nv_inference_exec_count"):
        match = re.search(rf'^{name}{{[^}}]*model="fcnseg"[^}}]*}} (\S+)$', text, re.M)
        assert match, f"{name} missing from the metrics"
        found[name] = float(match.group(1))
    return found


@pytest.mark.parametrize("module", [httpclient, grpcclient], ids=["http", "grpc"])
def test_ensemble_image_bytes_to_mask(server, module, images, reference):
    """fcn_image: PNG or JPEG bytes in, the Segmenter's mask of the decoded image out, at the image's size."""
    client = module.InferenceServerClient(server.http_url if module is httpclient else server.grpc_url)
    try:
        for image, ref, fmt in zip(images, reference, ["PNG", "JPEG", "PNG", "JPEG"]):
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, format=fmt)
            inp = module.InferInput("image", [1, 1], "BYTES")
            inp.set_data_from_numpy(np.array([[buf.getvalue()]], dtype=object))
            mask = client.infer("fcn_image", [inp]).as_numpy("mask")
            if fmt == "JPEG":   # lossy: compare with the Segmenter on the pixels the server decoded
                ref = _segment(server, np.asarray(Image.open(buf).convert("RGB")))
            assert mask.shape == (1,) + image.shape[:2] and int((mask[0] != ref).sum()) == 0
    finally:
        client.close()


def _segment(server, image: np.ndarray) -> np.ndarray:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        return infer(client, httpclient, image)[0]
    finally:
        client.close()


def test_image_slide_bytes_to_the_segmenters_slide_mask(server, r18_onnx):
    """fcn_image_slide: PNG bytes of an image larger than a tile in, the mask of Segmenter(mode="slide") with
    the same window out (tiles batched to the served network through BLS), at the image's size."""
    rng = np.random.default_rng(11)
    image = rng.integers(0, 256, (150, 203, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    with Segmenter.load(r18_onnx, backend="onnxruntime", **SLIDE) as seg:
        ref = seg(image)
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        inp = httpclient.InferInput("image", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[buf.getvalue()]], dtype=object))
        mask = client.infer("fcn_image_slide", [inp]).as_numpy("mask")
        bad = httpclient.InferInput("image", [1, 1], "BYTES")
        bad.set_data_from_numpy(np.array([[b"not an image"]], dtype=object))
        with pytest.raises(InferenceServerException, match="could not decode"):
            client.infer("fcn_image_slide", [bad])
    finally:
        client.close()
    assert mask.shape == (1, 150, 203) and len(np.unique(ref)) > 1
    assert int((mask[0] != ref).sum()) == 0


def test_ensemble_python_steps_on_server(server, r18_onnx, images):
    """fcn_preprocess and fcn_postprocess, served, agree with the same functions run here."""
    seg = Segmenter.load(r18_onnx, precision_hint="f32")
    buf = io.BytesIO()
    Image.fromarray(images[2]).save(buf, format="PNG")
    data = np.array([[buf.getvalue()]], dtype=object)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        inp = grpcclient.InferInput("image", [1, 1], "BYTES")
        inp.set_data_from_numpy(data)
        result = client.infer("fcn_preprocess", [inp])
        x, size = preprocess_encoded(buf.getvalue(), seg.metadata)
        assert np.array_equal(result.as_numpy("input"), x) and result.as_numpy("size").tolist() == [size.tolist()]
        scores = np.random.default_rng(3).standard_normal((1, 21, 16, 24)).astype(np.float32)
        inputs = [grpcclient.InferInput("scores", list(scores.shape), "FP32"),
                  grpcclient.InferInput("size", [1, 2], "INT32")]
        inputs[0].set_data_from_numpy(scores)
        inputs[1].set_data_from_numpy(size[None])
        mask = client.infer("fcn_postprocess", inputs).as_numpy("mask")
        assert np.array_equal(mask[0], postprocess_scores(scores[0], size))
        bad = grpcclient.InferInput("image", [1, 1], "BYTES")
        bad.set_data_from_numpy(np.array([[b"not an image"]], dtype=object))
        with pytest.raises(InferenceServerException, match="could not decode"):
            client.infer("fcn_preprocess", [bad])
        assert client.is_server_live()
    finally:
        client.close()
        seg.close()
