"""Frame sources for ``fcnseg.runtime.video.loop``: video files, cameras, network streams, image folders.

Sources yield HxWx3 uint8 RGB frames (sinks are in ``video_sinks``). PyAV (FFmpeg, ``pip install fcnseg[video]``) is
imported only when a video, camera or network source or sink is opened; a Jetson CSI camera goes through
OpenCV's GStreamer backend (as shipped with JetPack). Network sources and cameras are *live*: the stream
loop drops stale frames from them rather than fall behind.
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union
from urllib.parse import parse_qs, urlsplit

import numpy as np

from ...core.errors import FcnsegError, import_optional, one_line
from ..postprocess import IMAGE_SUFFIXES, is_image_url, read_image
from ..preprocess import to_rgb_uint8

PathLike = Union[str, "os.PathLike[str]"]
VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".ts", ".mpg", ".mpeg", ".flv", ".sdp")
OUTPUT_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".avi": "avi", ".ts": "mpegts"}
NETWORK_SOURCES = ("rtsp", "rtsps", "rtp", "udp", "tcp", "srt", "rtmp", "http", "https")
DEFAULT_TIMEOUT = 10.0   # seconds a network source may stay silent (at open and between frames)
DEFAULT_FPS = 30.0       # frame rate written when the source does not say
CSI_DEFAULTS = {"width": 1280, "height": 720, "framerate": 30, "flip": 0}


def import_av() -> Any:
    """PyAV, or one line saying how to install it."""
    return import_optional("av", "PyAV for video, cameras and streams",
                           "`pip install fcnseg[video]` (or `pip install av`)")


def is_stream_spec(spec: str) -> bool:
    """True for what only the stream loop reads or writes: URLs, cameras, video files, glob patterns."""
    s = str(spec)
    if is_image_url(s):   # one picture on a web server, not a stream
        return False
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
            raise FcnsegError(f"could not decode {self.name} ({one_line(e, 300)}); expected a video FFmpeg can "
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
        if cv2 is None or not re.search(r"GStreamer:\s*YES", cv2.getBuildInformation()):
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
    if path.is_dir():   # the folder's own images only: outputs often go to sub-folders
        files = sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        return ImageSequenceSource(files, name=s)
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
    reason = getattr(error, "strerror", None) or one_line(error, 300)
    if isinstance(error, FileNotFoundError):
        return f"expected a video file or stream at {url}, got {reason!r}; check the path or address"
    return (f"could not open {url} as a video ({reason}); expected a file or stream FFmpeg can decode "
            "(mp4, mkv, avi, MPEG-TS, RTSP...)")


def read_video(path: PathLike, max_frames: Optional[int] = None) -> List[np.ndarray]:
    """Decode a video file (or stream) into a list of HxWx3 uint8 RGB frames."""
    frames: List[np.ndarray] = []
    with open_source(path) as src:
        for frame in src:
            if max_frames is not None and len(frames) >= max_frames:
                break
            frames.append(frame)
    return frames
