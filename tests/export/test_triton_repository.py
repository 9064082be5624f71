"""Triton model repositories from fcn-export triton: every config.pbtxt parsed with Triton's own schema.

The .onnx cases use the fcn8s_resnet18 exports of tests/export/conftest.py; the .plan case is a real engine
built on this CPU by TensorRT for RTX (its sidecar gives the profile and tensors). The ensemble's Python
steps are checked against Segmenter by running their functions around ONNX Runtime here; a real server
runs them in test_triton_server.py.
"""

from __future__ import annotations

import importlib.util
import io
import json

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from google.protobuf import text_format
from PIL import Image
from tritonclient.grpc import model_config_pb2 as pb

from fcnseg.core.metadata import ModelMetadata
from fcnseg.core.view import Tiling
from fcnseg.export.cli import main as export_cli
from fcnseg.export.triton import Batching, export_segmenter, export_triton
from fcnseg.export.triton_model import postprocess_scores, preprocess_encoded
from fcnseg.runtime import FcnsegError, Segmenter


def parse(path) -> pb.ModelConfig:
    return text_format.Parse(path.read_text(), pb.ModelConfig())


def dims(tensor) -> list:
    return list(tensor.dims)


def test_onnx_logits_repository(r18_onnx, tmp_path):
    repo = export_triton(r18_onnx, tmp_path / "repo")
    config = parse(repo.config_path("fcn"))
    assert (config.name, config.platform, config.max_batch_size) == ("fcn", "onnxruntime_onnx", 8)
    assert [(t.name, t.data_type, dims(t)) for t in config.input] == [("input", pb.TYPE_FP32, [3, -1, -1])]
    assert [(t.name, t.data_type, dims(t)) for t in config.output] == [("logits", pb.TYPE_FP32, [21, -1, -1])]
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(g.kind, g.count) for g in config.instance_group] == [(pb.ModelInstanceGroup.KIND_GPU, 1)]
    assert (tmp_path / "repo/fcn/1/model.onnx").read_bytes() == r18_onnx.read_bytes()
    from fcnseg.core.atomic import current_umask
    assert (tmp_path / "repo/fcn").stat().st_mode & 0o777 == 0o777 & ~current_umask()   # not mkdtemp's 0700
    readme = repo.readme.read_text()
    assert f"tritonserver --model-repository {repo.root.resolve()}" in readme and 'client.infer("fcn"' in readme


def test_onnx_argmax_openvino_cpu(r18_argmax_onnx, tmp_path):
    batching = Batching(kind="cpu", instances=2, max_batch=4, preferred=(2,), max_queue_delay_us=100)
    repo = export_triton(r18_argmax_onnx, tmp_path / "repo", name="seg", batching=batching, onnx_backend="openvino")
    config = parse(repo.config_path("seg"))
    assert (config.backend, config.platform, config.default_model_filename) == ("openvino", "", "model.onnx")
    assert [(t.name, t.data_type, dims(t)) for t in config.output] == [("mask", pb.TYPE_UINT8, [-1, -1])]
    assert config.max_batch_size == 4 and list(config.dynamic_batching.preferred_batch_size) == [2]
    assert [(g.kind, g.count) for g in config.instance_group] == [(pb.ModelInstanceGroup.KIND_CPU, 2)]
    with pytest.raises(FcnsegError, match="--kind cpu"):
        export_triton(r18_argmax_onnx, tmp_path / "other", onnx_backend="openvino")


@pytest.fixture(scope="module")
def rtx_plan(r18_argmax_onnx, export_dir):
    """A real engine (in-graph argmax) with a profile of batch 1..4, built on this CPU."""
    if importlib.util.find_spec("tensorrt_rtx") is None:
        pytest.skip("needs TensorRT for RTX (pip install tensorrt-rtx) to build a .plan on the CPU")
    from fcnseg.export.tensorrt import build_engine

    out = export_dir / "triton_r18_argmax.plan"
    build_engine(r18_argmax_onnx, output=out, library="tensorrt_rtx", min_shape=(1, 3, 64, 64),
                 opt_shape=(2, 3, 96, 96), max_shape=(4, 3, 128, 128))
    return out


def test_plan_repository_with_ensemble(rtx_plan, tmp_path):
    repo = export_triton(rtx_plan, tmp_path / "repo", with_preprocessing=True)
    assert repo.models == ["fcn", "fcn_preprocess", "fcn_postprocess", "fcn_image", "fcn_image_slide"]
    assert repo.entry == "fcn_image"
    net = parse(repo.config_path("fcn"))
    assert (net.platform, net.default_model_filename, net.max_batch_size) == ("tensorrt_plan", "model.plan", 4)
    assert list(net.dynamic_batching.preferred_batch_size) == [4]        # the profile's max batch caps 4,8
    assert [(t.name, t.data_type, dims(t)) for t in net.input] == [("input", pb.TYPE_FP32, [3, -1, -1])]
    assert [(t.name, t.data_type, dims(t)) for t in net.output] == [("mask", pb.TYPE_UINT8, [-1, -1])]
    assert sorted(p.name for p in (tmp_path / "repo/fcn/1").iterdir()) == ["model.plan", "model.plan.json"]
    pre, post, ens = (parse(repo.config_path(n)) for n in ("fcn_preprocess", "fcn_postprocess", "fcn_image"))
    assert (pre.backend, pre.input[0].data_type, pre.parameters["fcnseg_role"].string_value) == \
        ("python", pb.TYPE_STRING, "preprocess")
    assert (post.input[0].data_type, post.input[0].allow_ragged_batch) == (pb.TYPE_UINT8, True)
    assert ens.platform == "ensemble" and ens.max_batch_size == 4
    steps = [(s.model_name, dict(s.input_map), dict(s.output_map)) for s in ens.ensemble_scheduling.step]
    assert steps == [("fcn_preprocess", {"image": "image"}, {"input": "net_input", "size": "size"}),
                     ("fcn", {"input": "net_input"}, {"mask": "scores"}),
                     ("fcn_postprocess", {"scores": "scores", "size": "size"}, {"mask": "mask"})]
    assert (tmp_path / "repo/fcn_preprocess/1/model.py").is_file() and (tmp_path / "repo/fcn_image/1").is_dir()
    with pytest.raises(FcnsegError, match="between 1 and 4"):
        export_triton(rtx_plan, tmp_path / "other", batching=Batching(max_batch=8))


def test_slide_model_fits_the_engine_profile(rtx_plan, tmp_path):
    """fcn_image_slide sends tiles to the network through BLS: its window fits the profile's 64..128 sides, the
    default shrunk to 128 (stride 85); a tile the profile does not take is refused before anything is written."""
    repo = export_triton(rtx_plan, tmp_path / "repo", with_preprocessing=True)
    slide = parse(repo.config_path("fcn_image_slide"))
    assert "Large images: call **fcn_image_slide**" in repo.readme.read_text()
    params = {k: v.string_value for k, v in slide.parameters.items()}
    assert (slide.backend, params["fcnseg_role"], slide.input[0].data_type) == ("python", "image_slide", pb.TYPE_STRING)
    assert json.loads(params["fcnseg_view"]) == {"mode": "slide", "tile": 128, "stride": 85}
    assert json.loads(params["fcnseg_network"]) == {"model": "fcn", "input": "input", "input_dtype": "float32",
                                                     "output": "mask", "max_batch": 4}
    with pytest.raises(FcnsegError, match=r"--tile within the model's declared input range 64\.\.128"):
        export_triton(rtx_plan, tmp_path / "other", with_preprocessing=True, tiling=Tiling(512, 341))
    assert not (tmp_path / "other").exists()


def test_static_graph_has_no_slide_model(tmp_path, conv_onnx_factory):
    """A graph with a fixed H/W cannot take tiles: the ensemble comes without fcn_image_slide."""
    static = conv_onnx_factory(tmp_path / "static.onnx", ModelMetadata(num_classes=3, input_hw=[64, 64]))
    repo = export_triton(static, tmp_path / "repo", with_preprocessing=True, batching=Batching(kind="cpu"))
    assert "fcn_image_slide" not in repo.models and "fcn_image" in repo.models


def test_plan_without_sidecar(rtx_plan, tmp_path):
    plan = tmp_path / "bare.plan"
    plan.write_bytes(rtx_plan.read_bytes())
    with pytest.raises(FcnsegError, match="expected a sidecar bare.plan.json"):
        export_triton(plan, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "/abs", "-x", "a b"])
def test_model_name_must_be_plain(r18_onnx, tmp_path, name):
    """The name becomes <repo>/<name>, replaced with force: anything but one plain folder name is refused first."""
    other = tmp_path / "repo" / "other"
    other.mkdir(parents=True)
    for write in (lambda: export_triton(r18_onnx, tmp_path / "repo", name=name, force=True),
                  lambda: export_segmenter(r18_onnx, tmp_path / "repo", name=name, force=True)):
        with pytest.raises(FcnsegError, match="expected a plain model name"):
            write()
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["other"]


def test_segmenter_repository(r18_onnx, tmp_path):
    repo = export_segmenter(r18_onnx, tmp_path / "repo", batching=Batching(kind="cpu", max_batch=16))
    config = parse(repo.config_path("fcnseg"))
    assert (config.backend, config.max_batch_size) == ("python", 16)
    assert [(t.name, t.data_type, dims(t), t.allow_ragged_batch) for t in config.input] == \
        [("image", pb.TYPE_UINT8, [-1, -1, 3], True)]
    assert config.parameters["fcnseg_role"].string_value == "segmenter"
    assert config.parameters["fcnseg_precision_hint"].string_value == ""   # OpenVINO's own for the server's CPU
    assert sorted(p.name for p in (tmp_path / "repo/fcnseg/1").iterdir()) == ["model.onnx", "model.py"]
    exact = export_segmenter(r18_onnx, tmp_path / "exact", precision_hint="f32")   # fcn-serve --precision-hint f32
    assert parse(exact.config_path("fcnseg")).parameters["fcnseg_precision_hint"].string_value == "f32"


def test_segmenter_with_a_class_file_is_checked_against_the_model(r18_onnx, tmp_path):
    """--classes: the model's 21 classes named by the user's file (YAML here, shipped as JSON: the server's Python
    may lack PyYAML); another class count is refused before anything is written."""
    names = [f"c{i}" for i in range(21)]
    (tmp_path / "names.yaml").write_text("classes:\n" + "".join(f"  - {n}\n" for n in names))
    repo = export_segmenter(r18_onnx, tmp_path / "repo", classes=tmp_path / "names.yaml")
    config = parse(repo.config_path("fcnseg"))
    assert config.parameters["fcnseg_classes"].string_value == "classes.json"
    assert (tmp_path / "repo/fcnseg/labels.txt").read_text().split() == names
    shipped = json.loads((tmp_path / "repo/fcnseg/1/classes.json").read_text())
    assert [c["name"] for c in shipped["classes"]] == names
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    with pytest.raises(FcnsegError, match="expected a class file with the model's 21 classes, got 3"):
        export_segmenter(r18_onnx, tmp_path / "bad", classes=tmp_path / "three.txt")
    assert not (tmp_path / "bad").exists()


def test_a_checkpoints_class_count_is_checked_too(r18_ckpt, tmp_path):
    """A served .pth: its recorded class count, read here, not first by a server that fails to load it."""
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    with pytest.raises(FcnsegError, match="expected a class file with the model's 21 classes, got 3"):
        export_segmenter(r18_ckpt, tmp_path / "bad", classes=tmp_path / "three.txt")
    assert not (tmp_path / "bad").exists()
    names = tmp_path / "names.txt"
    names.write_text("".join(f"c{i}\n" for i in range(21)))
    export_segmenter(r18_ckpt, tmp_path / "repo", classes=names)
    assert (tmp_path / "repo/fcnseg/labels.txt").read_text().split() == [f"c{i}" for i in range(21)]


def test_network_on_python_backend(r18_onnx, tmp_path):
    """--backend python: fcnseg's runtime runs the network where the server has no ONNX Runtime backend."""
    repo = export_triton(r18_onnx, tmp_path / "repo", onnx_backend="python", batching=Batching(kind="cpu"))
    config = parse(repo.config_path("fcn"))
    assert (config.backend, config.parameters["fcnseg_role"].string_value) == ("python", "network")
    assert [(t.name, dims(t), t.allow_ragged_batch) for t in config.input] == [("input", [3, -1, -1], True)]
    assert [(t.name, dims(t)) for t in config.output] == [("logits", [21, -1, -1])]
    assert sorted(p.name for p in (tmp_path / "repo/fcn/1").iterdir()) == ["model.onnx", "model.py"]


def test_cli_refuses_existing_models_unless_force(r18_onnx, tmp_path):
    repo = tmp_path / "repo"
    args = ["triton", str(r18_onnx), "--repo", str(repo), "--with-preprocessing", "--preferred-batch", "2,4"]
    first = CliRunner().invoke(export_cli, args)
    assert first.exit_code == 0, first.output
    assert first.stdout.strip() == str(repo / "fcn_image")
    marker = repo / "fcn" / "1" / "mine.txt"
    marker.write_text("user file")
    again = CliRunner().invoke(export_cli, args)
    assert again.exit_code == 2 and len(again.stderr.strip().splitlines()) == 1 and "--force" in again.stderr
    assert marker.is_file()
    forced = CliRunner().invoke(export_cli, args + ["--force", "--max-batch", "2", "--preferred-batch", "2"])
    assert forced.exit_code == 0, forced.output
    assert not marker.exists() and parse(repo / "fcn" / "config.pbtxt").max_batch_size == 2
    assert not [p for p in repo.iterdir() if p.name.startswith(".")]          # no temporary folders left


def test_ensemble_steps_match_segmenter(r18_onnx):
    """Preprocess (PNG bytes) -> network -> postprocess gives the Segmenter's mask at the image's size."""
    seg = Segmenter.load(r18_onnx, precision_hint="f32")   # OpenVINO exact (the default is bf16 where it can)
    session = ort.InferenceSession(str(r18_onnx), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    for h, w in ((48, 64), (71, 33)):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        x, size = preprocess_encoded(buf.getvalue(), seg.metadata)
        scores = session.run(None, {"input": x})[0][0]
        mask = postprocess_scores(scores, size)
        assert mask.shape == (h, w) and np.array_equal(mask, seg(image))


def test_fp16_qdq_graph_runs_unoptimized_on_onnxruntime(r18_int8, r18_onnx, tmp_path):
    """The default INT8 graph (FP16 elsewhere) needs ONNX Runtime without WeightBiasQuantization; Triton's backend
    cannot turn one optimizer off, so its config turns graph optimization off; other graphs keep the default."""
    int8 = parse(export_triton(r18_int8.path, tmp_path / "a", batching=Batching(kind="cpu")).config_path("fcn"))
    fp32 = parse(export_triton(r18_onnx, tmp_path / "b", batching=Batching(kind="cpu")).config_path("fcn"))
    assert int8.optimization.graph.level == -1 and fp32.optimization.graph.level == 0
