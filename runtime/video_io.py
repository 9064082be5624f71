"""Frame sources and sinks for ``fcnseg.runtime.stream``: video files, cameras, network streams, image folders.

Sources yield HxWx3 uint8 RGB frames; sinks take them. PyAV (FFmpeg, ``pip install fcnseg[video]``) is
imported only when a video, camera or network source or sink is opened; a Jetson CSI camera goes through
OpenCV's GStreamer backend (as shipped with JetPack). Network sources and cameras are *live*: the stream
loop drops stale frames from them rather than fall behind.
"""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image

from .errors import FcnsegError, first_line
from .outputs import SOFTWARE
from .postprocess import IMAGE_SUFFIXES, find_images, read_image, save_image
from .preprocess import to_rgb_uint8

PathLike = Union[str, "os.PathLike[str]"]
VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".ts", ".mpg", ".mpeg", ".flv", ".sdp")
OUTPUT_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".avi": "avi", ".ts": "mpegts"}
NETWORK_SOURCES = ("rtsp", "rtsps", "rtp", "udp", "tcp", "srt", "rtmp", "http", "https")
NETWORK_SINKS = {"udp": "mpegts", "rtp": "rtp"}   # MPEG-TS over UDP; H.264 over RTP (payload 96), as segnet
DEFAULT_TIMEOUT = 10.0   # seconds a network source may stay silent (at open and between frames)
DEFAULT_FPS = 30.0       # frame rate written when the source does not say
CSI_DEFAULTS = {"width": 1280, "height": 720, "framerate": 30, "flip": 0}


def import_av() -> Any:
    """PyAV, or one line saying how to install it."""
    try:
        import av
    except ImportError as e:
        raise FcnsegError(f"expected PyAV for video, cameras and streams, got an import error ({e}); "
                          "try `pip install fcnseg[video]` (or `pip install av`)") from None
    return av


def is_stream_spec(spec: str) -> bool:
    """True for what only the stream loop reads or writes: URLs, cameras, video files, glob patterns."""
    s = str(spec)
    if "://" in s or s.startswith("/dev/video"):
        return True
    if Path(s).suffix.lower() in VIDEO_SUFFIXES:
        return True
    return glob.has_magic(s) and not Path(s).exists()


class Source:
    """Frames from somewhere: iterate for HxWx3 uint8 RGB arrays; ``live`` sources are not waited for."""

    name: str = "source"
    live: bool = False
    fps: Optional[float] = None

    def __iter__(self) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the file, camera or connection."""

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AVSource(Source):
    """A video file, V4L2 camera or network stream decoded by PyAV (FFmpeg)."""

    def __init__(self, url: str, *, live: bool, fmt: Optional[str] = None, options: Optional[Dict[str, str]] = None,
                 timeout: Optional[float] = None) -> None:
        av = import_av()
        self.name, self.live, self.timeout = url, live, timeout
        try:
            self._container = av.open(url, format=fmt, options=dict(options or {}),
                                      timeout=(timeout, timeout) if timeout else None)
        except av.error.ExitError:
            raise FcnsegError(f"expected a stream at {url}, got nothing within {timeout:g} s; check that the "
                              "sender is running and the address, or try a longer --timeout") from None
        except (av.error.FFmpegError, OSError) as e:
            raise FcnsegError(_open_message(url, e)) from None
        if not self._container.streams.video:
            self._container.close()
            raise FcnsegError(f"expected a video stream in {url}, got none; try a video file or camera")
        self._stream = self._container.streams.video[0]
        if live:   # frame threads hold frames back: slice threads keep a live picture current
            self._stream.thread_type = "SLICE"
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps = float(rate) if rate else None

    def __iter__(self) -> Iterator[np.ndarray]:
        av = import_av()
        try:
            for frame in self._container.decode(self._stream):
                yield frame.to_ndarray(format="rgb24")
        except av.error.ExitError:
            raise FcnsegError(f"expected more frames from {self.name}, got none for {self.timeout:g} s: the "
                              "stream stopped; try a longer --timeout") from None
        except (av.error.FFmpegError, OSError) as e:
            raise FcnsegError(f"could not decode {self.name} ({first_line(e)}); expected a video FFmpeg can "
                              "decode") from None

    def close(self) -> None:
        self._container.close()


class ImageSequenceSource(Source):
    """Image files read in order (a folder, a glob pattern or a list), as the frames of a video."""

    def __init__(self, files: Sequence[PathLike], name: str, fps: Optional[float] = None) -> None:
        if not files:
            raise FcnsegError(f"expected images ({', '.join(IMAGE_SUFFIXES)}) in {name}, got none")
        self.files, self.name, self.fps = [Path(f) for f in files], name, fps

    def __iter__(self) -> Iterator[np.ndarray]:
        for path in self.files:
            yield to_rgb_uint8(read_image(path))


class CsiSource(Source):
    """A Jetson CSI camera through OpenCV's GStreamer backend (``nvarguscamerasrc``), as on JetPack."""

    def __init__(self, url: str) -> None:
        try:
            import cv2
        except ImportError:
            cv2 = None
        if cv2 is None or "GStreamer:                   YES" not in cv2.getBuildInformation():
            raise FcnsegError(f"expected OpenCV built with GStreamer for {url} (JetPack's python3-opencv), got "
                              f"{'no cv2 module' if cv2 is None else 'an OpenCV without GStreamer'}; try "
                              "`sudo apt install python3-opencv` on the Jetson, or a V4L2 camera /dev/videoN")
        self.name, self.live = url, True
        self.pipeline = csi_pipeline(url)
        self._cap = cv2.VideoCapture(self.pipeline, cv2.CAP_GSTREAMER)
        if not self._cap.isOpened():
            raise FcnsegError(f"expected a CSI camera at {url}, got none from the pipeline {self.pipeline!r}; "
                              "check the ribbon cable and the sensor id (try csi://0 or csi://1)")
        self.fps = float(self._cap.get(cv2.CAP_PROP_FPS)) or None

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            ok, bgr = self._cap.read()
            if not ok:
                raise FcnsegError(f"expected more frames from {self.name}, got none: the camera stopped")
            yield np.ascontiguousarray(bgr[..., ::-1])

    def close(self) -> None:
        self._cap.release()


def csi_pipeline(url: str) -> str:
    """The GStreamer pipeline for ``csi://N[?width=W&height=H&framerate=F&flip=M]`` (nvarguscamerasrc, BGR out)."""
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = sorted(set(query) - set(CSI_DEFAULTS))
    if not parts.netloc.isdigit() or unknown:
        raise FcnsegError(f"expected csi://N[?width=W&height=H&framerate=F&flip=M], got {url!r}; try csi://0")
    try:
        o = {k: int(query.get(k, v)) for k, v in CSI_DEFAULTS.items()}
    except ValueError:
        raise FcnsegError(f"expected whole numbers in {url!r}; try csi://0?width=1280&height=720") from None
    return (f"nvarguscamerasrc sensor-id={parts.netloc} ! video/x-raw(memory:NVMM), width={o['width']}, "
            f"height={o['height']}, framerate={o['framerate']}/1, format=NV12 ! nvvidconv flip-method={o['flip']} "
            "! video/x-raw, format=BGRx ! videoconvert ! video/x-raw, format=BGR ! appsink drop=1 max-buffers=1")


def open_source(spec: Union[PathLike, Sequence[PathLike]], *, timeout: Optional[float] = None,
                options: Optional[Dict[str, str]] = None) -> Source:
    """Open what ``spec`` names as a ``Source``.

    Args:
        spec: a video file; ``/dev/videoN`` (V4L2); ``csi://N`` (Jetson CSI camera); ``rtsp://``, ``rtp://``,
            ``udp://``... (network streams); a folder or glob pattern of images; or a list of image files.
        timeout: seconds a network source may stay silent (default ``DEFAULT_TIMEOUT``).
        options: extra FFmpeg options (e.g. ``{"video_size": "640x480"}`` for a V4L2 camera).
    """
    if isinstance(spec, (list, tuple)):
        return ImageSequenceSource(spec, name=f"{len(spec)} image files")
    s = str(spec)
    wait = DEFAULT_TIMEOUT if timeout is None else timeout
    if s.startswith("csi://"):
        return CsiSource(s)
    if "://" in s:
        return _network_source(s, wait, options)
    if s.startswith("/dev/video"):
        if not Path(s).exists():
            found = sorted(glob.glob("/dev/video*"))
            raise FcnsegError(f"expected a camera at {s}, got no such device; try "
                              + (f"one of {', '.join(found)}" if found else "plugging one in (no /dev/video* here)")
                              + " (v4l2-ctl --list-devices lists them)")
        return AVSource(s, live=True, fmt="v4l2", options=options, timeout=wait)
    path = Path(s)
    if path.is_dir():
        return ImageSequenceSource([f for f, _ in find_images([path])], name=s)
    if glob.has_magic(s) and not path.exists():
        files = sorted(f for f in glob.glob(s) if Path(f).suffix.lower() in IMAGE_SUFFIXES)
        return ImageSequenceSource(files, name=repr(s))
    if not path.is_file():
        raise FcnsegError(f"expected a video file, camera (/dev/videoN, csi://N), stream URL or image folder, "
                          f"got {s!r} which does not exist; check the path")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return ImageSequenceSource([path], name=s)
    extra = {"protocol_whitelist": "file,udp,rtp"} if path.suffix.lower() == ".sdp" else {}
    return AVSource(s, live=bool(extra), options={**extra, **(options or {})}, timeout=wait if extra else None)


def _network_source(url: str, timeout: float, options: Optional[Dict[str, str]]) -> Source:
    scheme = url.split("://", 1)[0].lower()
    if scheme not in NETWORK_SOURCES:
        raise FcnsegError(f"expected a source URL starting with one of {', '.join(s + '://' for s in NETWORK_SOURCES)}"
                          f" or csi://, got {url!r}")
    # Probe briefly (the default 5 s of analysis delays a live picture); RTSP over TCP loses no packets.
    opts = {"analyzeduration": "1000000", "probesize": "1000000"}
    if scheme.startswith("rtsp"):
        opts["rtsp_transport"] = "tcp"
    return AVSource(url, live=True, options={**opts, **(options or {})}, timeout=timeout)


def _open_message(url: str, error: Exception) -> str:
    reason = getattr(error, "strerror", None) or first_line(error)
    if isinstance(error, FileNotFoundError):
        return f"expected a video file or stream at {url}, got {reason!r}; check the path or address"
    return (f"could not open {url} as a video ({reason}); expected a file or stream FFmpeg can decode "
            "(mp4, mkv, avi, MPEG-TS, RTSP...)")


class Sink:
    """Where rendered frames go: ``write(frame, index)`` with HxWx3 uint8 RGB frames, then ``close()``."""

    name: str = "sink"

    def write(self, frame: np.ndarray, index: int) -> None:
        raise NotImplementedError

    def source_rate(self, fps: Optional[float]) -> None:
        """Told the source's frame rate (None: unknown) before the first frame; video sinks record it."""

    def close(self) -> None:
        """Finish the output (flush the encoder, write the trailer); safe to call twice."""

    def __enter__(self) -> "Sink":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FolderSink(Sink):
    """One PNG per frame, ``frame_000000.png`` numbered by the source's frame index."""

    def __init__(self, folder: PathLike) -> None:
        self.folder, self.name = Path(folder), str(folder)
        if self.folder.is_file():
            raise FcnsegError(f"expected an output folder or a video file name, got the existing file "
                              f"{self.name!r}; try a name ending in .mp4 or a folder")

    def write(self, frame: np.ndarray, index: int) -> None:
        save_image(self.folder / f"frame_{index:06d}.png", frame)


class AVSink(Sink):
    """A video file (written under a temporary name, renamed when closed) or a UDP/RTP MPEG-TS stream.

    The size is taken from the first frame (padded to even sides for 4:2:0); later frames of another size
    are resized to it. Closing always finishes the file, so what was written before an error or Ctrl-C plays.
    """

    def __init__(self, target: str, *, fps: Optional[float] = None, codec: Optional[str] = None) -> None:
        self.av = import_av()
        self.name, self.fps, self._fps_given = target, _rate(fps), fps is not None
        scheme = target.split("://", 1)[0].lower() if "://" in target else ""
        self.network = bool(scheme)
        if scheme and scheme not in NETWORK_SINKS:
            raise FcnsegError(f"expected an output URL udp://HOST:PORT, rtp://HOST:PORT or http://HOST:PORT, got "
                              f"{target!r}; RTSP needs a server: send rtp:// to it (or to the viewer) instead")
        suffix = Path(target).suffix.lower()
        self.format = NETWORK_SINKS[scheme] if scheme else OUTPUT_FORMATS.get(suffix)
        if self.format is None:
            raise FcnsegError(f"expected a video file ending in {', '.join(OUTPUT_FORMATS)}, got {target!r}")
        self.codec = codec or ("libx264" if "libx264" in self.av.codecs_available else "mpeg4")
        self._container: Any = None
        self._tmp: Optional[str] = None
        self.frames = 0

    def source_rate(self, fps: Optional[float]) -> None:
        if not self._fps_given and self._container is None:
            self.fps = _rate(fps)

    def write(self, frame: np.ndarray, index: int) -> None:
        if self._container is None:
            self._open(frame.shape[0] + frame.shape[0] % 2, frame.shape[1] + frame.shape[1] % 2)
        stream = self._stream
        if frame.shape[:2] != (stream.height, stream.width):
            frame = _fit(frame, stream.height, stream.width)
        vf = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        vf.pts = self.frames
        self._mux(stream.encode(vf))
        self.frames += 1

    def _open(self, height: int, width: int) -> None:
        url = self.name
        if self.network:
            if "pkt_size" not in url:   # MPEG-TS packets (7 x 188 bytes) that fit one UDP datagram
                url += ("&" if "?" in url else "?") + "pkt_size=1316"
        else:
            target = Path(self.name)
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, self._tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=target.suffix, dir=target.parent)
            os.close(fd)
            url = self._tmp
        try:
            self._container = self.av.open(url, "w", format=self.format)
            # Network: no encoder delay, and SPS/PPS with every key frame (once a second) for late viewers.
            opts = {"preset": "ultrafast", "tune": "zerolatency", "x264-params": "repeat-headers=1"} \
                if self.network else {"preset": "veryfast"}
            self._stream = self._container.add_stream(self.codec, rate=self.fps,
                                                      options=opts if self.codec == "libx264" else {})
        except (self.av.error.FFmpegError, OSError, ValueError) as e:
            self.abort()
            raise FcnsegError(f"could not open {self.name} for writing ({first_line(e)}); check the path or "
                              "address") from None
        if not self.network:
            self._container.metadata["comment"] = SOFTWARE   # lets a later run recognise its own output
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, "yuv420p"
        self._stream.time_base = Fraction(1) / self.fps
        if self.network:
            self._stream.gop_size = max(1, round(self.fps))

    def _mux(self, packets: Any) -> None:
        try:
            self._container.mux(packets)
        except (self.av.error.FFmpegError, OSError) as e:
            raise FcnsegError(f"could not write to {self.name} ({first_line(e)})") from None

    def close(self) -> None:
        if self._container is None:
            return
        try:
            self._mux(self._stream.encode(None))
        finally:
            container, self._container = self._container, None
            container.close()
            if self._tmp is not None:
                os.replace(self._tmp, self.name)
                self._tmp = None

    def abort(self) -> None:
        """Close without keeping a file output (nothing is left behind)."""
        if self._container is not None:
            container, self._container = self._container, None
            with contextlib.suppress(Exception):
                container.close()
        if self._tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp)
            self._tmp = None


def _rate(fps: Optional[float]) -> Fraction:
    return Fraction(fps if fps and 0 < fps < 1000 else DEFAULT_FPS).limit_denominator(1001)


def _fit(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pad a frame one pixel short of even sides by repeating its edge; resize anything else."""
    h, w = frame.shape[:2]
    if height - h in (0, 1) and width - w in (0, 1):
        return np.pad(frame, ((0, height - h), (0, width - w), (0, 0)), mode="edge")
    return np.asarray(Image.fromarray(frame).resize((width, height), Image.BILINEAR))


def rtp_sdp(url: str, payload: int = 96) -> str:
    """The SDP description a viewer (VLC, ffplay, ``open_source("x.sdp")``) needs for an ``rtp://HOST:PORT`` sink."""
    parts = urlsplit(url)
    if parts.scheme != "rtp" or not parts.hostname or not parts.port:
        raise FcnsegError(f"expected rtp://HOST:PORT, got {url!r}")
    return (f"v=0\r\no=- 0 0 IN IP4 {parts.hostname}\r\ns=fcnseg\r\nc=IN IP4 {parts.hostname}\r\nt=0 0\r\n"
            f"m=video {parts.port} RTP/AVP {payload}\r\na=rtpmap:{payload} H264/90000\r\n"
            f"a=fmtp:{payload} packetization-mode=1\r\n")


def open_sink(spec: PathLike, *, fps: Optional[float] = None, codec: Optional[str] = None,
              quality: int = 80) -> Sink:
    """Open what ``spec`` names as a ``Sink``.

    Args:
        spec: a video file (.mp4, .mkv, .avi, .mov, .ts); ``udp://HOST:PORT`` (MPEG-TS over UDP);
            ``rtp://HOST:PORT`` (H.264 over RTP, payload 96; viewers need ``rtp_sdp``); ``http://HOST:PORT`` (live MJPEG preview for a browser);
            anything else is a folder of numbered PNG frames.
        fps: frame rate recorded in video outputs (default: the source's, told by ``source_rate``, else
            ``DEFAULT_FPS``).
        codec: FFmpeg encoder (default libx264, else mpeg4).
        quality: JPEG quality of the HTTP preview.
    """
    s = str(spec)
    if s.lower().startswith("http://"):
        from .mjpeg import MjpegSink
        return MjpegSink(s, quality=quality)
    if "://" in s or Path(s).suffix.lower() in OUTPUT_FORMATS:
        return AVSink(s, fps=fps, codec=codec)
    if Path(s).suffix.lower() in VIDEO_SUFFIXES:
        raise FcnsegError(f"expected a video file ending in {', '.join(OUTPUT_FORMATS)}, got {s!r}; try .mp4")
    return FolderSink(s)


def write_video(frames: Sequence[np.ndarray], path: PathLike, fps: float = 10.0) -> Path:
    """Write HxWx3 uint8 RGB frames to a video file (H.264 where available), e.g. for a report.

    Returns:
        The path written (atomically: under a temporary name until the last frame is in).
    """
    sink = AVSink(str(path), fps=fps)
    try:
        for i, frame in enumerate(frames):
            sink.write(to_rgb_uint8(np.asarray(frame)), i)
    except BaseException:
        sink.abort()
        raise
    sink.close()
    return Path(path)


def is_fcnseg_video(path: PathLike) -> bool:
    """True for a video file fcnseg wrote (its container comment says so)."""
    try:
        av = import_av()
        with av.open(str(path)) as container:
            return any(str(v) == SOFTWARE for k, v in container.metadata.items() if k.lower() == "comment")
    except Exception:  # unreadable, not a video, no PyAV: not ours
        return False


def read_video(path: PathLike, max_frames: Optional[int] = None) -> List[np.ndarray]:
    """Decode a video file (or stream) into a list of HxWx3 uint8 RGB frames."""
    frames: List[np.ndarray] = []
    with open_source(path) as src:
        for frame in src:
            if max_frames is not None and len(frames) >= max_frames:
                break
            frames.append(frame)
    return frames
