"""The catalogue of bad invocations: each one line on stderr, a non-zero exit, nothing written or changed.

Every row is (command, arguments, expected fragment of the one stderr line, exit code). Arguments may name
the session's artifacts as ``{onnx}``, ``{onnx5}``, ``{voc}``, ``{ckpt}``, ``{image}``, ``{notes}``
(see ``ARTIFACTS``); ``{tmp}`` is the row's own empty folder (its working directory too). A row's
optional ``setup(tmp)`` prepares extra files there. New cases are one row each. Commands run in-process
through click's CliRunner; the few artifacts are built once per session (a 1x1-conv ONNX, a tiny VOC).

``python tests/test_bad_inputs.py`` prints the table as markdown.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import shutil
import signal
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import pytest
from click.testing import CliRunner


@dataclass(frozen=True)
class Row:
    command: str                    # "fcn-export onnx", "fcn-eval", ...
    args: Tuple[str, ...]
    fragment: str                   # expected in the one stderr line
    exit_code: int = 2
    setup: Optional[Callable[[Path], None]] = None
    note: str = ""                  # what the row is about, for the printed table

    @property
    def id(self) -> str:
        args = " ".join(self.args).replace("{", "").replace("}", "")
        return f"{self.command} {args if len(args) <= 60 else '...' + args[-57:]}"


def _text(name: str, content: str = "my notes\n") -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / name).write_text(content)
    return setup


def _folder(name: str) -> Callable[[Path], None]:
    return lambda tmp: (tmp / name).mkdir()


def _copy(key: str, name: str) -> Callable[[Path], None]:
    return lambda tmp: shutil.copy(ARTIFACTS[key], tmp / name)


ROWS: Sequence[Row] = (
    # --- never write over an input, never replace what is not ours ------------------------------------------------
    Row("fcn-export onnx", ("{ckpt}", "-o", "{ckpt}"), "which is the command's own input",
        note="output over its own input"),
    Row("fcn-export onnx", ("{ckpt}", "-o", "{ckpt}", "--force"), "which is the command's own input",
        note="--force never writes over an input"),
    Row("fcn-export fp16", ("{onnx}", "-o", "{onnx}"), "which is the command's own input"),
    Row("fcn-export int8", ("{onnx}", "--calib-data", "{voc}", "-o", "{onnx}"), "which is the command's own input"),
    Row("fcn-export onnx", ("{ckpt}", "-o", "{tmp}/notes.txt"), "notes.txt exists and is not an fcnseg ONNX model; "
        "pass --force", setup=_text("notes.txt"), note="foreign file in the way"),
    Row("fcn-export fp16", ("{onnx}", "-o", "{tmp}/notes.txt"), "is not an fcnseg ONNX model; pass --force",
        setup=_text("notes.txt")),
    Row("fcn-export int8", ("{onnx}", "--calib-data", "{voc}", "--cache", "{tmp}/notes.txt"),
        "is not an fcnseg calibration cache; pass --force", setup=_text("notes.txt")),
    Row("fcn-export int8", ("{onnx}", "--calib-data", "{voc}", "-o", "{tmp}/notes.txt"),
        "is not an fcnseg ONNX model; pass --force", setup=_text("notes.txt")),
    Row("fcn-export trt", ("{onnx}", "-o", "{tmp}/notes.plan"), "is not an fcnseg engine",
        setup=_text("notes.plan")),
    Row("fcn-eval", ("--model", "{onnx}", "--data-path", "{voc}", "--json", "{tmp}/notes.json"),
        "is not an fcnseg evaluation JSON; pass --force", setup=_text("notes.json", '{"mine": 1}')),
    Row("fcn-bench", ("--model", "{onnx}", "--json", "{tmp}/notes.json"), "is not an fcnseg benchmark JSON",
        setup=_text("notes.json", '{"mine": 1}')),
    Row("fcn-bench", ("--model", "{onnx}", "--csv", "{tmp}/notes.csv"), "is not an fcnseg benchmark CSV",
        setup=_text("notes.csv", "a,b\n1,2\n")),
    Row("fcn-predict", ("{image}", "-m", "{onnx}", "-o", "{tmp}/out"), "is not an fcnseg mask; pass --force",
        setup=lambda tmp: (tmp / "out").mkdir() or (tmp / "out" / "cat.png").write_bytes(b"my png"),
        note="a foreign cat.png in the output folder"),
    # --- output paths that cannot be written -------------------------------------------------------------------
    Row("fcn-eval", ("--model", "{onnx}", "--data-path", "{voc}", "--json", "{notes}/r.json"),
        "is a file", note="--json under a file"),
    Row("fcn-eval", ("--model", "{onnx}", "--data-path", "{voc}", "--json", "{tmp}/sub"), "which is a folder",
        setup=_folder("sub")),
    Row("fcn-eval", ("--model", "{onnx}", "--data-path", "{voc}", "--json", "/proc/r.json"), "permission denied"),
    Row("fcn-bench", ("--model", "{onnx}", "--json", "{notes}/r.json"), "is a file"),
    Row("fcn-bench", ("--model", "{onnx}", "--csv", "{tmp}/sub"), "which is a folder", setup=_folder("sub")),
    Row("fcn-bench", ("--model", "{onnx}", "--json", "/proc/r.json"), "permission denied"),
    Row("fcn-export onnx", ("{ckpt}", "-o", "{notes}/m.onnx"), "is a file"),
    Row("fcn-export fp16", ("{onnx}", "-o", "{tmp}/sub"), "is a directory", setup=_folder("sub")),
    Row("fcn-export fp16", ("{onnx}", "-o", "/proc/m.onnx"), "permission denied"),
    Row("fcn-predict", ("{image}", "-m", "{onnx}", "-o", "{notes}/out"), "is a file"),
    Row("fcn-predict", ("{image}", "-m", "{onnx}", "-o", "/proc/out"), "permission denied"),
)

ROWS += (
    # --- refused before any work ------------------------------------------------------------------------------------
    Row("fcn-bench", ("--model", "{onnx}", "--batch", "0"), "'--batch': 0 is not in the range x>=1"),
    Row("fcn-bench", ("--model", "{onnx}", "--rounds", "0"), "'--rounds': 0 is not in the range x>=1"),
    Row("fcn-bench", ("--model", "{onnx}", "--iters", "0"), "'--iters': 0 is not in the range x>=1"),
    Row("fcn-eval", ("--model", "{onnx}", "--data-path", "{voc}", "--limit", "0", "--json", "{tmp}/r.json"),
        "'--limit': 0 is not in the range x>=1", note="was NaN written into JSON"),
    Row("fcn-eval", ("--data-path", "{voc}", "--compare", "{onnx}", "{onnx5}"),
        "expected models with the reference's 21 classes, got 5"),
    Row("fcn-bench", ("--model", "{onnx}", "--shape", "100000x100000"), "expected --shape and --batch that fit",
        note="was OOM-killed"),
    Row("fcn-predict", ("{image}", "-m", "{onnx}", "-o", "{tmp}/out", "--size", "100000"),
        "expected --size within the model's declared input range 8..256", note="was OOM-killed"),
)

ROWS += (
    Row("fcn-export int8", ("{onnx}", "--calib-data", "{voc}", "--report", "{tmp}/notes.json"),
        "is not an fcnseg INT8 report; pass --force", setup=_text("notes.json", '{"mine": 1}')),
    Row("fcn-export nosuch", (), "No such command 'nosuch'"),
    Row("fcn-export trt", ("{onnx}", "-o", "{tmp}/m.plan"), "m.plan.json exists and is not an fcnseg engine sidecar",
        setup=_text("m.plan.json", '{"mine": 1}'), note="a foreign file where the sidecar goes"),
    Row("fcn-export fp16", ("{onnx}", "-o", "{tmp}/big.onnx", "--verify-shapes", "1x9999x9999"),
        "expected verify shapes with H, W in the model's declared range 8..256", note="was OOM-killed"),
)

def _train_run(tmp: Path) -> None:
    (tmp / "run").mkdir()
    (tmp / "run" / "model_best.pth").write_bytes(b"the best weights of an earlier run")


def _foreign_voc(tmp: Path) -> None:
    lists = tmp / "voc" / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("2007_000032\n")


def _aux_checkpoint(tmp: Path) -> None:
    from fcnseg.train.checkpoint import save_checkpoint
    from fcnseg.train.models import get_model

    sd = get_model("fcn8s_resnet18", aux_loss=True).state_dict()
    save_checkpoint({"model": sd, "optimizer": {}, "epoch": 0, "arch": "fcn8s_resnet18", "num_classes": 21},
                    tmp / "aux.pth")


def _torch_file(name: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        import torch

        torch.save({"w": torch.zeros(1)}, tmp / name)
    return setup


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


_TRAIN = ("--data-path", "{voc}", "--model", "fcn8s_resnet18", "-j", "0", "--output-dir", "{tmp}/run")
ROWS += (
    # --- fcn-train / fcn-data: refused before data loading, nothing created ------------------------------------
    Row("fcn-train", _TRAIN + ("--data-path", "{tmp}/nowhere"), "expected a dataset folder"),
    Row("fcn-train", _TRAIN + ("--model", "fcn_nope"), "expected --model to be one of fcn_resnet50"),
    Row("fcn-train", _TRAIN + ("-b", "0"), "expected -b/--batch-size to be an integer >= 1, got 0; try -b 8"),
    Row("fcn-train", _TRAIN + ("--lr", "-1"), "expected --lr > 0, got -1.0; try --lr 0.01"),
    Row("fcn-train", _TRAIN + ("-j", "-1"), "expected -j/--workers to be an integer >= 0, got -1"),
    Row("fcn-train", _TRAIN + ("--epochs", "0"), "expected --epochs to be an integer >= 1, got 0"),
    Row("fcn-train", _TRAIN + ("--device", "gpu"), "expected --device cpu, cuda or cuda:N, got 'gpu'"),
    *(() if _has_cuda() else (Row("fcn-train", _TRAIN + ("--device", "cuda"),
                                  "expected a CUDA GPU for --device cuda, got none", note="on a machine without CUDA"),)),
    Row("fcn-train", _TRAIN + ("--output-dir", "{notes}"), "expected --output-dir to be a folder, got the file"),
    Row("fcn-train", _TRAIN + ("--output-dir", "{notes}/run"), "expected --output-dir in a folder"),
    Row("fcn-train", _TRAIN + ("--output-dir", "/proc/run"), "expected a writable folder for --output-dir"),
    Row("fcn-data synth", ("/proc/voc",), "expected a writable folder for ROOT"),
    Row("fcn-train", _TRAIN, "holding a previous run (model_best.pth); try --resume", setup=_train_run,
        note="a better run's model_best.pth was replaced"),
    Row("fcn-train", _TRAIN + ("--resume", "{tmp}/aux.pth"), "got one with it in", setup=_aux_checkpoint,
        note="--aux-loss mismatch (was a 33-line traceback)"),
    Row("fcn-train", _TRAIN + ("--resume", "{onnx}"), "expected a PyTorch checkpoint (.pth), got an ONNX model"),
    Row("fcn-train", _TRAIN + ("--pretrained", "{onnx}"), "expected a PyTorch checkpoint (.pth), got an ONNX model"),
    Row("fcn-export onnx", ("{onnx}", "-o", "{tmp}/m.onnx"), "expected a PyTorch checkpoint (.pth), got an ONNX "
        "model", note=".onnx where a .pth is expected"),
    Row("fcn-export fp16", ("{tmp}/m.pth", "-o", "{tmp}/m16.onnx"), "got the PyTorch checkpoint",
        setup=_torch_file("m.pth"), note=".pth where an .onnx is expected"),
    Row("fcn-data synth", ("{notes}",), "expected ROOT to be a folder (new or empty), got"),
    Row("fcn-data synth", ("{tmp}/voc",), "holding 1 files it did not write", setup=_foreign_voc,
        note="was rewriting train.txt of a real VOC copy"),
)

def _other_model(tmp: Path) -> None:
    (tmp / "repo" / "other").mkdir(parents=True)
    (tmp / "repo" / "other" / "config.pbtxt").write_text('name: "other"\n')


def _truncated(key: str, name: str) -> Callable[[Path], None]:
    return lambda tmp: (tmp / name).write_bytes(ARTIFACTS[key].read_bytes()[:40])


def _dataset(layout: str, damage: Callable[[Path], None] = lambda root: None, **kw) -> Callable[[Path], None]:
    """Setup: a tiny synthetic dataset in ``layout`` at ``tmp/data``, then ``damage(root)``."""
    def setup(tmp: Path) -> None:
        from fcnseg.datasets.synth import synthesize

        damage(synthesize(tmp / "data", num_train=2, num_val=2, size=32, seed=0, progress=False, layout=layout,
                          **kw))
    return setup


def _labels(root: Path) -> list:
    return sorted(p for p in root.rglob("*.png") if "SegmentationClass" in p.parts or "masks" in p.parts)


def _paint(colour: Tuple[int, int, int], count: int) -> Callable[[Path], None]:
    """Damage: one pixel of ``colour`` (an id for index labels) in the first ``count`` labels."""
    def damage(root: Path) -> None:
        from PIL import Image

        for path in _labels(root)[:count]:
            im = Image.open(path)
            arr = np.array(im)
            arr[0, 0] = colour if arr.ndim == 3 else colour[0]
            out = Image.fromarray(arr, im.mode)
            if im.mode == "P":
                out.putpalette(im.getpalette())
            out.save(path)
    return damage


def _shrink_label(root: Path) -> None:
    from PIL import Image

    path = _labels(root)[0]
    Image.open(path).resize((20, 20)).save(path)


def _empty_val(root: Path) -> None:
    (root / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt").write_text("")


def _second_layout(root: Path) -> None:
    (root / "images").mkdir()
    (root / "masks").mkdir()


def _r18_weights(tmp: Path) -> None:
    import torch

    from fcnseg.train.models import fcn8s_resnet18

    torch.save({"model": fcn8s_resnet18(num_classes=3).state_dict()}, tmp / "r18.pth")


_DATA = ("--model", "fcn8s_resnet18", "-j", "0", "-b", "2", "--output-dir", "{tmp}/run", "--data-path", "{tmp}/data")
ROWS += (
    # --- your own datasets and classes: one line, nothing written ------------------------------------------------
    Row("fcn-data check", ("{tmp}/data",), "got colour (1,2,3) in 2 files of the train split",
        setup=_dataset("cvat", _paint((1, 2, 3), 2), classes=3), note="a colour not in the labelmap"),
    Row("fcn-data check", ("{tmp}/data",), "got class id 30 in 1 file", setup=_dataset("voc", _paint((30, 0, 0), 1)),
        note="a class id >= N"),
    Row("fcn-train", _DATA, "expected each label the size of its image", setup=_dataset("voc", _shrink_label),
        note="a mask of another size than its image (before training)"),
    Row("fcn-train", _DATA + ("--val-split", "nosuch"), "expected the split list",
        setup=_dataset("voc"), note="a missing split"),
    Row("fcn-train", _DATA, "expected image ids in", setup=_dataset("voc", _empty_val), note="an empty split"),
    Row("fcn-data check", ("{tmp}/data",), "expected one dataset layout", setup=_dataset("voc", _second_layout),
        note="two layouts in one root"),
    Row("fcn-train", _TRAIN + ("--classes", "{tmp}/dup.txt"), "expected distinct class names",
        setup=_text("dup.txt", "sky\nroad\nsky\n"), note="a class file with duplicate names"),
    Row("fcn-train", _TRAIN + ("--classes", "{tmp}/labelmap.txt"), "expected distinct class colours",
        setup=_text("labelmap.txt", "sky:1,2,3::\nroad:1,2,3::\n"), note="a class file with duplicate colours"),
    Row("fcn-train", _TRAIN + ("--model", "fcn8s_resnet34", "--pretrained", "{tmp}/r18.pth"),
        "expected --pretrained weights of fcn8s_resnet34, got fcn8s_resnet18", setup=_r18_weights,
        note="--pretrained of another architecture"),
)


_TRITON = ("{onnx}", "--repo", "{tmp}/repo", "--kind", "cpu")
ROWS += (
    # --- fcn-export triton / trt: names and paths refused before anything is written -------------------------------
    Row("fcn-export triton", _TRITON + ("--name", "", "--force"), "expected a plain model name", setup=_other_model,
        note="was moving aside and deleting the whole repository"),
    Row("fcn-export triton", _TRITON + ("--name", "a/b"), "got 'a/b'; try --name fcn",
        note="was a traceback"),
    Row("fcn-export triton", _TRITON + ("--name", ".."), "got '..'; try --name fcn",
        setup=_other_model),
    Row("fcn-export triton", _TRITON + ("--with-preprocessing", "--tile", "4096"),
        "expected --tile within the model's declared input range", note="fcn_image_slide's window"),
    Row("fcn-export triton", _TRITON + ("--with-preprocessing", "--tile", "256", "--stride", "300"),
        "expected 1 <= --stride <= --tile"),
    Row("fcn-export triton", ("{tmp}/cut.onnx", "--repo", "{tmp}/repo"), "as an ONNX model",
        setup=_truncated("onnx", "cut.onnx"), note="truncated ONNX (was a traceback)"),
    Row("fcn-export trt", ("{onnx}", "--fp16", "--save-onnx", "{tmp}/m16.onnx", "-o", "{tmp}/m.onnx"),
        "expected an engine path ending in .plan or .engine", note="was refused after the FP16 step"),
    Row("fcn-export trt", ("{onnx}", "-o", "{tmp}/m.plan", "--timing-cache", "{tmp}/notes.txt"),
        "notes.txt exists and is not an engine timing cache; pass --force", setup=_text("notes.txt")),
    Row("fcn-export trt", ("{onnx}", "-o", "{tmp}/m.plan", "--timing-cache", "{onnx}"),
        "which is the command's own input"),
    Row("fcn-export trt", ("{onnx}", "-o", "{tmp}/m.plan", "--timing-cache", "{tmp}/m.plan.json"),
        "which the command also writes"),
    Row("fcn-export trt", ("{onnx}", "-o", "{tmp}/m.plan", "--timing-cache", "{notes}/t.cache"), "is a file"),
)

def _frames(tmp: Path) -> None:
    (tmp / "frames").mkdir()
    shutil.copy(ARTIFACTS["image"], tmp / "frames" / "f0.jpg")


def _foreign_frame(tmp: Path) -> None:
    _frames(tmp)
    (tmp / "vis").mkdir()
    shutil.copy(ARTIFACTS["image"], tmp / "vis" / "frame_000000.png")


ROWS += (
    # --- stream frame folders and model suffixes ----------------------------------------------------------------
    Row("fcn-predict", ("{tmp}/frames/*.jpg", "-m", "{onnx}", "-o", "{tmp}/frames"), "got the input folder",
        setup=_frames, note="a glob's folder as --out (was overwriting frame_*.png there)"),
    Row("fcn-predict", ("{tmp}/frames/*.jpg", "-m", "{onnx}", "-o", "{tmp}/vis"),
        "expected --out to hold only fcnseg frames", setup=_foreign_frame, note="a foreign frame_000000.png"),
    Row("fcn-bench", ("--model", "{tmp}/foo.bin"), "expected a model file ending in one of .onnx",
        note="was an IndexError"),
)


def _big_image(tmp: Path) -> None:
    from PIL import Image

    Image.fromarray(np.full((300, 400, 3), 90, np.uint8)).save(tmp / "big.png")   # shorter side 300 > 256 declared


ROWS += (
    # --- faults and foreign inputs (issue 18) -------------------------------------------------------------------
    Row("fcn-predict", ("{tmp}/big.png", "-m", "{onnx}", "-o", "{tmp}/out", "--size", "0"),
        "when fed at their own size (--size 0), got 300x400", setup=_big_image,
        note="--size 0 skipped the declared size range (6.4 GB for a 6000x4000 photo)"),
    Row("fcn-predict", ("{image}", "-m", "{onnx}", "-o", "{tmp}/out", "--threads", "-3"),
        "'--threads': -3 is not in the range x>=1", note="reached OpenVINO, whose error blamed the graph"),
    Row("fcn-eval", ("--model", "{onnx}", "--data-path", "{voc}", "--threads", "-3"),
        "'--threads': -3 is not in the range x>=1"),
    Row("fcn-bench", ("--model", "{onnx}", "--threads", "-3"), "'--threads': -3 is not in the range x>=1"),
)

ARTIFACTS: Dict[str, Path] = {}


def _tiny_onnx(path: Path, num_classes: int) -> Path:
    """A 1x1 conv with fcnseg metadata (input size 16, declared sizes 8..256)."""
    import json

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from fcnseg.core.metadata import ModelMetadata

    w = np.random.default_rng(num_classes).standard_normal((num_classes, 3, 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "W"], ["logits"], kernel_shape=[1, 1])], "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", num_classes, "H", "W"])],
        [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    props = ModelMetadata(arch="tiny", num_classes=num_classes, input_size=16).to_props()
    props.update({"fcnseg.min_size": json.dumps(8), "fcnseg.max_size": json.dumps(256)})
    helper.set_model_props(model, props)
    model.producer_name = "fcnseg"
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Dict[str, Path]:
    from PIL import Image

    from fcnseg.datasets.synth import synthesize

    root = tmp_path_factory.mktemp("catalogue")
    ARTIFACTS["onnx"] = _tiny_onnx(root / "tiny.onnx", 21)
    ARTIFACTS["onnx5"] = _tiny_onnx(root / "tiny5.onnx", 5)
    ARTIFACTS["voc"] = synthesize(root / "voc", num_train=1, num_val=3, size=32, seed=0, progress=False)
    ARTIFACTS["ckpt"] = root / "ckpt.pth"
    ARTIFACTS["ckpt"].write_bytes(b"not really a checkpoint: rows using it fail before reading it")
    ARTIFACTS["image"] = root / "cat.jpg"
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(ARTIFACTS["image"])
    ARTIFACTS["notes"] = root / "notes.txt"
    ARTIFACTS["notes"].write_text("a plain file\n")
    return ARTIFACTS


def _entry(command: str):
    from fcnseg.benchmarks.cli import bench_main
    from fcnseg.eval.cli import eval_main
    from fcnseg.export.cli import main as export_main
    from fcnseg.runtime.cli import predict_main
    from fcnseg.datasets.cli import main as data_main
    from fcnseg.train.cli import train_main

    head, _, sub = command.partition(" ")
    entry = {"fcn-export": export_main, "fcn-eval": eval_main, "fcn-bench": bench_main, "fcn-predict": predict_main,
             "fcn-train": train_main, "fcn-data": data_main}[head]
    return entry, sub.split() if sub else []


def _snapshot(*folders: Path) -> Dict[str, Tuple[int, str]]:
    state = {}
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                state[str(p)] = (p.stat().st_mode, hashlib.sha1(p.read_bytes()).hexdigest())
            else:
                state[str(p)] = (p.stat().st_mode, "dir")
    return state


def run_row(row: Row, tmp: Path) -> Tuple[int, str, str]:
    """Run the row's command in-process; (exit code, stdout, stderr)."""
    if row.setup:
        row.setup(tmp)
    fmt = {k: str(v) for k, v in ARTIFACTS.items()}
    args = [a.format(tmp=tmp, **fmt) for a in row.args]
    entry, sub = _entry(row.command)
    result = CliRunner().invoke(entry, sub + args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("row", ROWS, ids=[f"{i:02d} {r.id}" for i, r in enumerate(ROWS)])
def test_bad_input_is_one_line(row: Row, artifacts, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if row.setup:
        row.setup(tmp_path)
    shared = Path(artifacts["onnx"]).parent
    before = _snapshot(tmp_path, shared)
    code, _, err = run_row(Row(row.command, row.args, row.fragment, row.exit_code), tmp_path)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert row.fragment in lines[0], lines[0]
    assert "Traceback" not in err
    assert code == row.exit_code, err
    assert _snapshot(tmp_path, shared) == before, "the command created or changed a file"


def test_own_artifacts_are_replaced_and_world_readable(artifacts, tmp_path):
    """An fcnseg ONNX at -o is replaced without --force; files come out 0644 under umask 022."""
    from fcnseg.export.cli import main as export_main

    out = tmp_path / "m16.onnx"
    old = os.umask(0o022)
    try:
        for _ in range(2):
            result = CliRunner().invoke(export_main, ["-q", "fp16", str(artifacts["onnx"]), "-o", str(out)])
            assert result.exit_code == 0, result.output
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m16.onnx"]   # no temporary file left


def test_own_reports_are_replaced_without_force(artifacts, tmp_path):
    """A second fcn-bench/fcn-eval run replaces the JSON/CSV the first wrote (they are recognised as ours)."""
    from fcnseg.benchmarks.cli import bench_main
    from fcnseg.eval.cli import eval_main

    bench = ["--model", str(artifacts["onnx"]), "--shape", "16x16", "--warmup", "0", "--iters", "1", "--rounds", "1",
             "--json", str(tmp_path / "b.json"), "--csv", str(tmp_path / "b.csv")]
    evaluate = ["--model", str(artifacts["onnx"]), "--data-path", str(artifacts["voc"]), "--limit", "1",
                "--json", str(tmp_path / "e.json")]
    for _ in range(2):
        for entry, args in ((bench_main, bench), (eval_main, evaluate)):
            result = CliRunner().invoke(entry, args)
            assert result.exit_code == 0, result.stderr
    import json

    assert json.loads((tmp_path / "e.json").read_text())["models"]   # valid JSON (no NaN)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.csv", "b.json", "b_latency.png", "e.json", "e_confusion.png",
                                                          "e_iou.png"]


NOBODY = 65534   # uid and gid of "nobody": root reads every file, so the unreadable-input row runs as nobody


def run_row_as(uid: int, row: Row, tmp: Path, timeout: float = 120) -> Optional[Tuple[int, str]]:
    """``run_row`` in a forked child whose user and group are ``uid``, without supplementary groups: its (exit
    code, stderr), or None when the child could not drop its privileges.

    Forked rather than a new interpreter started as that user: the child then reads nothing from the disk that
    the parent has not loaded, since the interpreter's own folder may be closed to that user (here
    /root/.pyenv under /root, 0700, which the kernel refuses to exec from as nobody).
    """
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)   # "multi-threaded fork": the child runs one thread
        pid = os.fork()
    if pid == 0:   # the child: never returns into pytest
        os.close(read)
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        except OSError as e:
            result: dict = {"dropped": False, "error": str(e)}
        else:
            try:
                code, _, err = run_row(row, tmp)
                result = {"dropped": True, "code": code, "err": err}
            except BaseException as e:   # reported to the parent, which fails the test with it
                result = {"dropped": True, "code": -1, "err": f"{type(e).__name__}: {e}"}
        with os.fdopen(write, "w") as f:
            f.write(json.dumps(result))
        os._exit(0)
    os.close(write)
    result = _read_child(read, pid, timeout)
    return (result["code"], result["err"]) if result["dropped"] else None


def _read_child(fd: int, pid: int, timeout: float) -> dict:
    chunks, deadline = [], time.monotonic() + timeout
    with os.fdopen(fd, "rb") as f:
        while True:
            ready, _, _ = select.select([f], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail(f"the command run as nobody did not finish within {timeout} s")
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    os.waitpid(pid, 0)
    return json.loads(b"".join(chunks) or b'{"dropped": false, "error": "the child died"}')


def test_unreadable_model_says_permission_denied(artifacts, tmp_path):
    if os.geteuid() != 0:   # a user who cannot read the file: the row runs in-process
        model = tmp_path / "m.onnx"
        shutil.copy(artifacts["onnx"], model)
        model.chmod(0)
        code, _, err = run_row(Row("fcn-predict", ("{image}", "-m", str(model), "-o", "{tmp}/out"), ""), tmp_path)
        assert_permission_denied(code, err, model)
        return
    # As root, in a process dropped to nobody; its files in a folder of /tmp that nobody can reach (pytest's
    # tmp_path lies under /tmp/pytest-of-root, 0700), writable so that only the model is refused.
    folder = Path(tempfile.mkdtemp(prefix="fcnseg-unreadable-"))
    try:
        folder.chmod(0o777)
        image, model = folder / "cat.jpg", folder / "m.onnx"
        for src, dst in ((artifacts["image"], image), (artifacts["onnx"], model)):
            shutil.copy(src, dst)
            dst.chmod(0o644)
        # ONNX Runtime: OpenVINO (the default backend) hangs compiling in a forked child, its thread pool gone.
        predict = lambda out: Row("fcn-predict", (str(image), "-m", str(model), "-o", str(folder / out),  # noqa
                                                  "--backend", "onnxruntime"), "")
        assert run_row(predict("warm"), folder)[0] == 0   # as root: every module the command needs is loaded
        ok = run_row_as(NOBODY, predict("ok"), folder)
        if ok is None:
            pytest.skip(f"cannot drop privileges to nobody ({NOBODY}) here")
        assert ok[0] == 0 and (folder / "ok" / "cat.png").is_file(), ok[1]   # nobody runs it, model readable
        model.chmod(0)
        before = _snapshot(folder)
        code, err = run_row_as(NOBODY, predict("out"), folder)
        assert _snapshot(folder) == before, "the refused command created or changed a file"
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert_permission_denied(code, err, model)


def assert_permission_denied(code: int, err: str, model: Path) -> None:
    """One line on stderr, exit status 2, naming the model and saying "permission denied"."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert str(model) in lines[0], lines[0]
    assert "permission denied" in lines[0], lines[0]


def test_bare_group_still_shows_its_help():
    from fcnseg.export.cli import main as export_main

    result = CliRunner().invoke(export_main, [])
    assert "Usage:" in result.output + result.stderr and "Commands:" in result.output + result.stderr


def test_hints_name_only_options_that_exist():
    """Every "try ... --option" in a message names an option some fcn-* command declares (no `try --split` typos)."""
    import re

    root = Path(__file__).resolve().parents[1]
    sources = [p for pkg in ("core", "datasets", "eval", "runtime", "export", "benchmarks", "train", "serve")
               for p in (root / pkg).rglob("*.py")]
    texts = {p: p.read_text() for p in sources}
    declared = {m for t in texts.values() if "click.option" in t for m in re.findall(r"[\"'](--[a-z][a-z0-9-]*)", t)}
    hints = {(p.name, m) for p, t in texts.items() for m in re.findall(r"try[^\"';]*?(--[a-z][a-z0-9-]*)", t)}
    assert declared and hints
    not_ours = {"--enable-shared"}   # CPython's configure flag, named in fcn-serve's hint
    assert sorted(h for h in hints if h[1] not in declared | not_ours) == []


def markdown_table(junit_xml: Optional[str] = None) -> str:
    """The catalogue as a markdown table; with a pytest ``--junitxml`` file, each row's result too."""
    results: Dict[str, str] = {}
    if junit_xml:
        import xml.etree.ElementTree as ET

        for case in ET.parse(junit_xml).iter("testcase"):
            outcome = "failed" if case.find("failure") is not None or case.find("error") is not None else \
                "skipped" if case.find("skipped") is not None else "passed"
            results[case.get("name", "")] = outcome
    out = ["| command | arguments | expected (one stderr line contains) | exit |" + (" result |" if results else ""),
           "|---|---|---|---|" + ("---|" if results else "")]
    for i, r in enumerate(ROWS):
        args = " ".join(r.args).replace("|", "\\|")
        status = f" {results.get(f'test_bad_input_is_one_line[{i:02d} {r.id}]', 'not run')} |" if results else ""
        out.append(f"| `{r.command}` | `{args}` | {r.fragment.replace('|', '/')} | {r.exit_code} |{status}")
    return "\n".join(out)


if __name__ == "__main__":
    import sys

    print(markdown_table(sys.argv[1] if len(sys.argv) > 1 else None))
