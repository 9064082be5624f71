"""Frame sinks for ``fcnseg.runtime.video.loop``: video files, folders of frames, UDP/RTP streams (PyAV, imported lazily).

The HTTP MJPEG preview lives in ``fcnseg.runtime.video.mjpeg``; ``open_sink`` picks one from a path or URL.
"""

from __future__ import annotations

import contextlib
import os
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional, Sequence, Union
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from ...core.atomic import commit_temp, temp_path
from ...core.errors import FcnsegError, one_line
from ...core.output_guard import SOFTWARE
from ..postprocess import save_image
from ..preprocess import to_rgb_uint8
from .sources import DEFAULT_FPS, OUTPUT_FORMATS, VIDEO_SUFFIXES, Sink, import_av
from .mjpeg import MjpegSink

PathLike = Union[str, "os.PathLike[str]"]
NETWORK_SINKS = {"udp": "mpegts", "rtp": "rtp"}   # MPEG-TS over UDP; H.264 over RTP (payload 96), as segnet


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
            self._tmp = str(temp_path(self.name, keep_suffix=True))
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
            raise FcnsegError(f"could not open {self.name} for writing ({one_line(e, 300)}); check the path or "
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
            raise FcnsegError(f"could not write to {self.name} ({one_line(e, 300)})") from None

    def close(self) -> None:
        if self._container is None:
            return
        try:
            self._mux(self._stream.encode(None))
        finally:
            container, self._container = self._container, None
            container.close()
            if self._tmp is not None:
                commit_temp(self._tmp, self.name)
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
