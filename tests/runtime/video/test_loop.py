"""Video through fcn-predict and segment_stream with real PyAV: frames, masks, statistics, errors, the MJPEG preview."""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from contextlib import suppress as contextlib_suppress
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from fcnseg.runtime import FcnsegError, ModelMetadata, Segmenter
from fcnseg.core.atomic import current_umask
from fcnseg.runtime.cli import predict_main
from fcnseg.runtime.video.mjpeg import BOUNDARY, MjpegSink
from fcnseg.runtime.video.loop import FrameRenderer, Source, segment_clip, segment_stream
from fcnseg.runtime.video.sources import csi_pipeline, read_video
from fcnseg.runtime.video.sinks import rtp_sdp, write_video

pytest.importorskip("av")
H, W, N = 64, 96, 12


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A random 3x3 convolution with 21 VOC logits; images are resized to 48 px and masks back to the frame."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((21, 3, 3, 3)).astype(np.float32)
    conv = helper.make_node("Conv", ["input", "W"], ["logits"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [conv], "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 21, "H", "W"])],
        [numpy_helper.from_array(w, "W")])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(m, ModelMetadata(arch="tiny", input_size=48).to_props())
    path = tmp_path_factory.mktemp("stream_model") / "tiny.onnx"
    onnx.save(m, str(path))
    return path


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """N synthetic VOC frames (HxW) written as an H.264 mp4 by the test, and the frames decoded back from it."""
    from fcnseg.datasets.synth import render_sample

    rng = np.random.default_rng(7)
    frames = []
    for i in range(N):
        image, _ = render_sample(rng, size=96, classes=[1 + i % 20, 1 + (i * 7) % 20])
        frames.append(np.asarray(Image.fromarray(image).resize((W, H), Image.BILINEAR)))
    path = write_video(frames, tmp_path_factory.mktemp("video") / "in.mp4", fps=10)
    return path, read_video(path)


def run(*args):
    result = CliRunner().invoke(predict_main, [str(a) for a in args])
    return result.exit_code, result.stderr


def test_video_to_mp4_with_masks_and_stats(model, video, tmp_path):
    path, decoded = video
    out, masks, stats = tmp_path / "out.mp4", tmp_path / "masks", tmp_path / "stats.jsonl"
    code, err = run("--model", model, path, "--out", out, "--visualize", "side-by-side", "--save-masks", masks,
                    "--stats", stats)
    assert code == 0, err
    assert f"{N} frames" in err and "0 dropped" in err and "latency" in err
    written = read_video(out)
    assert len(decoded) == N and len(written) == N
    for artifact in (out, stats):                                        # the user's umask, not mkstemp's 0600
        assert artifact.stat().st_mode & 0o777 == 0o666 & ~current_umask()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temporary file left
    seg = Segmenter.load(model)
    legend_w = FrameRenderer("side-by-side", classes=seg.metadata.classes).legend_width
    assert written[0].shape == (H, 2 * W + legend_w + legend_w % 2, 3)
    files = sorted(masks.iterdir())
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(N)]
    for f, frame in zip(files, decoded):
        mask = Image.open(f)
        assert mask.mode == "P" and mask.size == (W, H)
        np.testing.assert_array_equal(np.asarray(mask), seg(frame))
    lines = [json.loads(ln) for ln in stats.read_text().splitlines()]
    assert [r["frame"] for r in lines] == list(range(N))
    shares = lines[3]["shares"]
    assert abs(sum(shares.values()) - 1) < 1e-4 and set(shares) <= set(seg.metadata.classes)
    counts = np.bincount(seg(decoded[3]).ravel(), minlength=21)
    assert shares == {seg.metadata.classes[i]: round(counts[i] / (H * W), 6) for i in np.flatnonzero(counts)}


def test_pipelined_batched_equals_sequential(model, video, tmp_path):
    path, _ = video
    seg = Segmenter.load(model)
    runs = {}
    for name, kwargs in {"seq": dict(pipelined=False), "pipe": dict(pipelined=True, batch=4)}.items():
        stats = segment_stream(seg, path, None, save_masks=tmp_path / name, **kwargs)
        assert stats.frames == N and stats.dropped == 0 and stats.batch == kwargs.get("batch", 1)
        assert set(stats.stage_ms) == {"decode", "infer", "write", "latency"} and stats.fps > 0
        runs[name] = [np.asarray(Image.open(f)) for f in sorted((tmp_path / name).iterdir())]
    assert len(runs["seq"]) == N
    for a, b in zip(runs["seq"], runs["pipe"]):
        np.testing.assert_array_equal(a, b)


def test_frame_folder_to_frame_folder_with_max_frames(model, video, tmp_path):
    _, decoded = video
    src = tmp_path / "frames"
    src.mkdir()
    for i, frame in enumerate(decoded[:6]):
        Image.fromarray(frame).save(src / f"f{i:02d}.png")
    (src / "older_run").mkdir()     # frames in sub-folders (earlier outputs) are not read
    Image.fromarray(decoded[0]).save(src / "older_run" / "frame_000000.png")
    code, err = run("--model", model, src, "--out", tmp_path / "vis", "--visualize", "mask", "--no-legend",
                    "--max-frames", 4)
    assert code == 0, err
    out = sorted((tmp_path / "vis").iterdir())
    assert [f.name for f in out] == [f"frame_{i:06d}.png" for i in range(4)]
    seg = Segmenter.load(model)
    colours = np.asarray(Image.open(out[2]).convert("RGB"))
    expected = FrameRenderer("mask", legend=False, palette=seg.metadata.palette)(decoded[2], seg(decoded[2]))
    np.testing.assert_array_equal(colours, expected)
    code, err = run("--model", model, src, "--out", src, "--visualize", "mask")
    assert code == 2 and "input folder" in err


def test_frame_outputs_never_go_over_inputs_or_foreign_frames(model, video, tmp_path):
    """--out/--save-masks may not be an input's folder (a folder, image files, a glob, a video's); frame_*.png
    there that fcnseg did not write need --force; fcnseg's own frames are replaced without it."""
    from fcnseg.runtime.video.app import STATS

    path, decoded = video
    src = tmp_path / "frames"
    src.mkdir()
    for i, frame in enumerate(decoded[:2]):
        Image.fromarray(frame).save(src / f"f{i}.png")
    for inputs in ([f"{src}/*.png"], [src / "f0.png", src / "f1.png"], [path]):
        folder = Path(inputs[0]).parent
        for outputs in (("--out", folder), ("--out", tmp_path / "o.mp4", "--save-masks", folder)):
            code, err = run("--model", model, *inputs, *outputs, "--max-frames", 1)
            assert code == 2 and "input folder" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames"]
    assert sorted(p.name for p in src.iterdir()) == ["f0.png", "f1.png"]
    vis = tmp_path / "vis"
    vis.mkdir()
    Image.fromarray(decoded[0]).save(vis / "frame_000000.png")   # the user's own picture, by our name
    mine = (vis / "frame_000000.png").read_bytes()
    code, err = run("--model", model, f"{src}/*.png", "--out", vis, "--max-frames", 1)
    assert code == 2 and "--force" in err and "frame_000000.png" in err
    assert (vis / "frame_000000.png").read_bytes() == mine
    for extra in (["--force"], []):   # replaced with --force; then fcnseg's own frame again without
        code, err = run("--model", model, f"{src}/*.png", "--out", vis, "--max-frames", 1, *extra)
        assert code == 0, err
        assert (vis / "frame_000000.png").read_bytes() != mine
    (tmp_path / "s.jsonl").write_text('{"frame": 0}\n')
    assert STATS.is_ours(tmp_path / "s.jsonl") and not STATS.is_ours(tmp_path)   # unreadable: not ours, no error


def test_segment_clip_for_reports(model, video, tmp_path):
    _, decoded = video
    report = segment_clip(Segmenter.load(model), decoded[:5], tmp_path, keep=2)
    assert report.stats.frames == 5 and len(read_video(report.output)) == 5
    assert [p.name for p in report.first_frames] == ["clip_frame_0.png", "clip_frame_1.png"]
    first = np.asarray(Image.open(report.first_frames[0]))
    assert first.shape[0] == H and first.shape[1] > 2 * W    # frame | colours | legend


class _Stops(Source):
    """Three frames, then Ctrl-C (as the main thread would see it in the sequential loop)."""

    def __init__(self, frames):
        self.frames = frames

    def __iter__(self):
        yield from self.frames[:3]
        raise KeyboardInterrupt


def test_interrupt_closes_a_playable_file(model, video, tmp_path):
    _, decoded = video
    stats = segment_stream(Segmenter.load(model), _Stops(decoded), tmp_path / "cut.mkv", pipelined=False)
    assert stats.interrupted and stats.frames == 3
    assert len(read_video(tmp_path / "cut.mkv")) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["cut.mkv"]    # no temporary file left


@pytest.mark.parametrize("source, expected", [
    ("missing.mp4", "does not exist"),
    ("/dev/video99", "no such device"),
    ("udp://127.0.0.1:{port}", "got nothing within 0.5 s"),
    ("garbage.mp4", "could not open"),
])
def test_bad_sources_one_line(model, tmp_path, source, expected):
    (tmp_path / "garbage.mp4").write_bytes(b"not a video" * 50)
    spec = str(tmp_path / source) if source.endswith(".mp4") else source.format(port=free_port(socket.SOCK_DGRAM))
    code, err = run("--model", model, spec, "--out", tmp_path / "out.mp4", "--timeout", "0.5")
    assert code == 2 and expected in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out.mp4").exists()


def test_csi_camera_pipeline_and_missing_opencv(model, tmp_path):
    pipeline = csi_pipeline("csi://1?width=1920&height=1080&flip=2")
    assert pipeline.startswith("nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM), width=1920, height=1080, "
                               "framerate=30/1") and "flip-method=2" in pipeline and "appsink drop=1" in pipeline
    with pytest.raises(FcnsegError, match="csi://0"):
        csi_pipeline("csi://front?fps=30")
    try:
        import cv2  # noqa: F401
        pytest.skip("OpenCV is installed: csi://0 would look for a real camera")
    except ImportError:
        pass
    code, err = run("--model", model, "csi://0", "--out", tmp_path / "out.mp4")
    assert code == 2 and "OpenCV built with GStreamer" in err and len(err.strip().splitlines()) == 1


def test_stream_modules_import_without_pyav():
    code = "import sys, fcnseg.runtime.video.loop, fcnseg.runtime.video.app; print(sorted({'av', 'cv2'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


def test_refuses_to_replace_a_foreign_file(model, video, tmp_path):
    path, _ = video
    (tmp_path / "mine.mp4").write_bytes(b"someone else's")
    code, err = run("--model", model, path, "--out", tmp_path / "mine.mp4")
    assert code == 2 and "--force" in err
    code, err = run("--model", model, path, "--out", path)
    assert code == 2 and "input" in err


def test_mjpeg_preview_serves_jpeg_parts():
    sink = MjpegSink("http://127.0.0.1:0")
    stop = threading.Event()

    def produce():
        i = 0
        while not stop.is_set():
            sink.write(np.full((24, 32, 3), (10 * i) % 255, np.uint8), i)
            i += 1
            stop.wait(0.02)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    try:
        conn = http.client.HTTPConnection(*sink.address, timeout=5)
        conn.request("GET", "/")
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("Content-Type") == f"multipart/x-mixed-replace; boundary={BOUNDARY}"
        images = [_read_part(resp) for _ in range(2)]
    finally:
        stop.set()
        producer.join()
        sink.close()
    assert all(im.format == "JPEG" and im.size == (32, 24) for im in images)
    assert resp.read() == b""    # closing the sink ends the response


def _read_part(resp):
    assert resp.readline().strip() == f"--{BOUNDARY}".encode()
    headers = {}
    while True:
        line = resp.readline().strip()
        if not line:
            break
        key, value = line.decode().split(":", 1)
        headers[key.strip().lower()] = value.strip()
    assert headers["content-type"] == "image/jpeg"
    data = resp.read(int(headers["content-length"]))
    assert resp.readline() == b"\r\n"
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


# --- network streams on 127.0.0.1 -------------------------------------------------------------------------------

def free_port(kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_bound(port, alive=lambda: True, deadline=30.0):
    """Wait until someone listens on UDP ``port`` (our own bind then fails), so no packet is sent into the void."""
    end = time.monotonic() + deadline
    while time.monotonic() < end and alive():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listened on udp port {port}")


def send_ts(path, port, *, pace=0.03, running=lambda: True, loops=1):
    """Stream a video file's packets unchanged (no re-encoding) as MPEG-TS over UDP, paced like a live source.

    With ``loops`` > 1 the file is sent again with shifted timestamps: the receiver's frame i is the file's
    frame i modulo its length (each pass starts at the file's first key frame).
    """
    import av

    with av.open(str(path)) as src:
        packets = [p for p in src.demux(src.streams.video[0]) if p.dts is not None]
        template = src.streams.video[0]
        span = max(p.pts for p in packets) + packets[0].duration - min(p.pts for p in packets)
        with av.open(f"udp://127.0.0.1:{port}?pkt_size=1316", "w", format="mpegts") as out:
            ost = out.add_stream_from_template(template)
            for k in range(loops):
                for packet in packets:
                    if not running():
                        return
                    copy = av.Packet(bytes(packet))
                    copy.pts, copy.dts, copy.duration = packet.pts + k * span, packet.dts + k * span, packet.duration
                    copy.time_base, copy.is_keyframe, copy.stream = packet.time_base, packet.is_keyframe, ost
                    out.mux(copy)
                    time.sleep(pace)


@pytest.fixture(scope="module")
def ts_video(video, tmp_path_factory):
    """36 frames as an MPEG-TS file, and its frames as decoded here (the receiver decodes the same packets)."""
    _, decoded = video
    path = write_video(decoded * 3, tmp_path_factory.mktemp("ts") / "live.ts", fps=30)
    return path, read_video(path)


def fcn_predict(*args):
    cmd = [sys.executable, "-m", "fcnseg.runtime.cli", *map(str, args)]
    return subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_udp_stream_to_http_preview_with_right_masks(model, ts_video, tmp_path):
    path, decoded = ts_video
    udp, http_port, masks = free_port(socket.SOCK_DGRAM), free_port(), tmp_path / "masks"
    proc = fcn_predict("--model", model, f"udp://127.0.0.1:{udp}", "--out", f"http://127.0.0.1:{http_port}",
                       "--save-masks", masks, "--max-frames", 20, "--timeout", 20)
    try:
        resp = _connect(http_port, proc)
        parts = []
        reader = threading.Thread(target=lambda: parts.extend(_read_part(resp) for _ in range(2)), daemon=True)
        reader.start()
        wait_until_bound(udp, alive=lambda: proc.poll() is None)
        send_ts(path, udp, running=lambda: proc.poll() is None, loops=10)
        _, err = proc.communicate(timeout=60)
        reader.join(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert len(parts) == 2 and all(p.format == "JPEG" and p.size[1] == H for p in parts)
    files = sorted(masks.iterdir())
    assert len(files) == 20
    seg = Segmenter.load(model)
    for f in files:   # frames dropped to stay live leave gaps in the numbering
        frame = decoded[int(f.stem) % len(decoded)]
        np.testing.assert_array_equal(np.asarray(Image.open(f)), seg(frame), err_msg=f.name)


def _connect(port, proc, deadline=30.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end and proc.poll() is None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
            conn.request("GET", "/")
            return conn.getresponse()
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"no preview on port {port}: {proc.stderr.read() if proc.poll() is not None else ''}")


@pytest.mark.parametrize("scheme", ["udp", "rtp"])
def test_file_to_network_sink_round_trip(model, video, scheme, tmp_path):
    import av

    path, decoded = video
    port = free_port(socket.SOCK_DGRAM)
    received = []

    url = f"{scheme}://127.0.0.1:{port}"
    if scheme == "rtp":   # H.264 over RTP: the viewer needs the session description
        (tmp_path / "view.sdp").write_text(rtp_sdp(url))
    opts = {"analyzeduration": "500000", "protocol_whitelist": "file,udp,rtp"}

    def receive():
        with av.open(str(tmp_path / "view.sdp") if scheme == "rtp" else url, timeout=(20, 1), options=opts) as c:
            with contextlib_suppress(av.error.ExitError):
                received.extend(f.to_ndarray(format="rgb24") for f in c.decode(video=0))

    receiver = threading.Thread(target=receive, daemon=True)
    receiver.start()
    wait_until_bound(port, alive=receiver.is_alive)
    seg = Segmenter.load(model)
    stats = segment_stream(seg, path, f"{scheme}://127.0.0.1:{port}", visualize="mask", legend=False)
    receiver.join(timeout=30)
    assert stats.frames == N and len(received) == N and received[0].shape == (H, W, 3)
    render = FrameRenderer("mask", legend=False, palette=seg.metadata.palette)
    expected = np.stack([render(f, seg(f)) for f in decoded]).astype(np.int16)
    # H.264 is lossy: each received frame must be nearer its own frame's colour mask than any other frame's
    errors = np.abs(np.stack(received)[:, None].astype(np.int16) - expected[None]).mean(axis=(2, 3, 4))
    assert (errors.argmin(axis=1) == np.arange(N)).all(), errors.round(1)


def test_ctrl_c_closes_a_playable_file(model, ts_video, tmp_path):
    path, _ = ts_video
    udp, out, masks = free_port(socket.SOCK_DGRAM), tmp_path / "live.mp4", tmp_path / "masks"
    proc = fcn_predict("--model", model, f"udp://127.0.0.1:{udp}", "--out", out, "--save-masks", masks)
    try:
        wait_until_bound(udp, alive=lambda: proc.poll() is None)
        sender = threading.Thread(target=send_ts, args=(path, udp), kwargs=dict(pace=0.05, loops=10,
                                  running=lambda: proc.poll() is None), daemon=True)
        sender.start()
        end = time.monotonic() + 30
        while (not masks.is_dir() or len(list(masks.iterdir())) < 3) and time.monotonic() < end:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "interrupted" in err, err
    frames = read_video(out)
    assert len(frames) >= 3 and len(frames) == len(list(masks.iterdir()))
