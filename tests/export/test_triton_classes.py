"""A model of the user's own classes on the real tritonserver: the labels file travels with every model that
returns class ids or scores, and the served masks equal the local Segmenter's."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from PIL import Image

from fcnseg.core.class_map import ClassMap
from fcnseg.core.metadata import ModelMetadata
from fcnseg.export.triton import Batching, LABELS_FILE, export_segmenter, export_triton
from fcnseg.runtime import Segmenter

httpclient = pytest.importorskip("tritonclient.http")

CLASSES = ClassMap(("sky", "road", "crack"), ((70, 130, 180), (128, 64, 128), (255, 0, 0)))


@pytest.fixture(scope="module")
def three_class_onnx(tmp_path_factory, conv_onnx_factory):
    meta = ModelMetadata.for_classes(CLASSES, arch="tiny3", input_size=64, min_size=16, max_size=512)
    return conv_onnx_factory(tmp_path_factory.mktemp("three") / "three.onnx", meta)


def test_labels_file_is_written_and_named(three_class_onnx, tmp_path):
    repo = export_triton(three_class_onnx, tmp_path / "repo", with_preprocessing=True, onnx_backend="python",
                         batching=Batching(kind="cpu"))
    for name in ("fcn", "fcn_postprocess", "fcn_image", "fcn_image_slide"):
        assert (repo.root / name / LABELS_FILE).read_text().splitlines() == ["sky", "road", "crack"], name
        assert f'label_filename: "{LABELS_FILE}"' in repo.config_path(name).read_text(), name
    assert not (repo.root / "fcn_preprocess" / LABELS_FILE).exists()   # its outputs are not classes


def test_three_classes_served_as_the_local_segmenter(three_class_onnx, tmp_path, triton_install):
    from fcnseg.serve import TritonServer

    batching = Batching(kind="cpu", max_queue_delay_us=1000)
    repo = export_segmenter(three_class_onnx, tmp_path / "repo", name="three", batching=batching)
    ens = export_triton(three_class_onnx, tmp_path / "ens", name="net", with_preprocessing=True,
                        onnx_backend="python", batching=batching)
    for step in ens.models:
        shutil.copytree(ens.root / step, repo.root / step)
    assert (repo.root / "three" / LABELS_FILE).read_text() == "sky\nroad\ncrack\n"
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    # the served Segmenter model picks its backend as Segmenter.load does (OpenVINO, in its own precision); the
    # ensemble's network step runs ONNX Runtime
    with Segmenter.load(three_class_onnx) as seg, Segmenter.load(three_class_onnx, backend="onnxruntime") as ort:
        default, local = seg(image), ort(image)
    assert set(np.unique(local).tolist()) <= {0, 1, 2} and len(np.unique(local)) > 1
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    with TritonServer(repo.root, install=triton_install, models=["three"] + ens.models) as srv:
        srv.wait_ready(timeout=90)
        client = httpclient.InferenceServerClient(srv.http_url)
        try:
            arr = httpclient.InferInput("image", [1, *image.shape], "UINT8")
            arr.set_data_from_numpy(image[None])
            served = client.infer("three", [arr]).as_numpy("mask")[0]
            data = httpclient.InferInput("image", [1, 1], "BYTES")
            data.set_data_from_numpy(np.array([[buf.getvalue()]], dtype=object))
            ensemble = client.infer("net_image", [data]).as_numpy("mask")[0]
            config = client.get_model_config("net_image")
        finally:
            client.close()
    assert np.array_equal(served, default) and np.array_equal(ensemble, local)
    assert config["output"][0]["label_filename"] == LABELS_FILE
