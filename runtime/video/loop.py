"""Segment a video, camera or network stream frame by frame, as jetson-inference's ``segnet`` does.

``segment_stream`` runs decode, inference and encode in three threads joined by small bounded queues, so the
stages overlap; inference takes frames in batches when several are waiting. Live sources (cameras, network
streams) drop stale frames rather than fall behind (latency over completeness); files never drop a frame.
Ctrl-C stops the loop and closes the outputs, so a video file plays up to the last frame written.

Example:
    >>> from fcnseg.runtime import Segmenter
    >>> from fcnseg.runtime.video.loop import segment_stream
    >>> with Segmenter.load("model_int8.onnx") as seg:
    ...     stats = segment_stream(seg, "/dev/video0", "http://0.0.0.0:8080", visualize="side-by-side")
    >>> print(stats.summary())
"""

from __future__ import annotations

import contextlib
import os
import queue
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ...core.errors import FcnsegError
from ..postprocess import save_image
from .render import VISUALIZE, FrameRenderer, StreamOutputs, class_shares  # noqa: F401 (re-exported)
from .sources import Source, open_source, read_video  # noqa: F401 (re-exported)
from .sinks import Sink, open_sink, write_video  # noqa: F401 (re-exported)

PathLike = Union[str, "os.PathLike[str]"]
STAGES = ("decode", "infer", "write", "latency")
MAX_AUTO_BATCH = 8      # most frames batched by default, when the backend declares a batch limit
_END = object()


@dataclass
class StreamStats:
    """What ``segment_stream`` did.

    Attributes:
        frames: frames segmented and written.
        dropped: stale frames of a live source skipped to stay current.
        seconds: wall time from the first frame read to the last written.
        fps: ``frames / seconds``.
        stage_ms: median milliseconds per frame of each stage: decode, infer (a batch's time divided among
            its frames), write (render, encode, masks, statistics) and latency (frame decoded -> written).
        batch / pipelined: how the loop ran.
        interrupted: stopped by Ctrl-C (outputs closed cleanly).
        error: why the source stopped early, when it did after some frames (outputs closed cleanly).
    """

    frames: int = 0
    dropped: int = 0
    seconds: float = 0.0
    fps: float = 0.0
    stage_ms: Dict[str, float] = field(default_factory=dict)
    batch: int = 1
    pipelined: bool = True
    interrupted: bool = False
    error: Optional[str] = None

    def summary(self) -> str:
        """One line: frames, FPS, dropped frames and per-stage medians."""
        stages = ", ".join(f"{k} {v:.1f}" for k, v in self.stage_ms.items())
        return (f"{self.frames} frames in {self.seconds:.1f} s ({self.fps:.1f} FPS, "
                f"{'pipelined' if self.pipelined else 'sequential'}, batch {self.batch}), {self.dropped} dropped; "
                f"median ms per frame: {stages}")


def segment_stream(segmenter: Any, source: Union[PathLike, Source], sink: Union[PathLike, Sink, None], *,
                   visualize: str = "overlay", alpha: float = 0.5, legend: bool = True,
                   save_masks: Optional[PathLike] = None, stats: Optional[PathLike] = None,
                   mask_format: str = "png", max_frames: Optional[int] = None, pipelined: bool = True,
                   batch: Optional[int] = None, live: Optional[bool] = None, timeout: Optional[float] = None,
                   progress: Optional[Callable[[StreamStats], None]] = None) -> StreamStats:
    """Segment every frame of ``source`` and write the rendered frames to ``sink``.

    Args:
        segmenter: a ``Segmenter`` (anything mapping a list of images to a list of masks, with ``metadata``).
        source: a ``Source`` or what ``open_source`` takes (video file, /dev/videoN, csi://N, rtsp://, udp://,
            rtp://, image folder or glob).
        sink: a ``Sink``, what ``open_sink`` takes (video file, image folder, udp://, rtp://, http://HOST:PORT),
            or None to write only masks and statistics.
        visualize / alpha / legend: how frames are drawn (see ``FrameRenderer``).
        save_masks: folder for one mask per frame, ``<frame index, 6 digits>.png`` (palette PNG) or ``.npy``.
        stats: JSON-lines file, one ``{"frame": i, "shares": {class: pixel share}}`` per frame.
        mask_format: "png" or "npy" for ``save_masks``.
        max_frames: stop after this many frames.
        pipelined: overlap decode, inference and encode in threads (False: one frame at a time, for comparison).
        batch: frames per inference call; default 1 for live sources, else the backend's batch limit (up to 8)
            or 1 when it has none.
        live: drop stale frames; default: True for cameras and network streams.
        timeout: seconds a network source may stay silent (default ``video_io.DEFAULT_TIMEOUT``).
        progress: called with the running ``StreamStats`` after each frame.

    Returns:
        ``StreamStats``. Sources and sinks given as strings are opened and closed here. Ctrl-C returns with
        ``interrupted`` set; a source that fails after some frames returns with ``error`` set (outputs closed).

    Raises:
        FcnsegError: bad arguments, a source or sink that cannot be opened, a source failing before any frame.
    """
    if mask_format not in ("png", "npy"):
        raise FcnsegError(f"expected mask_format png or npy, got {mask_format!r}")
    meta = getattr(segmenter, "metadata", None)
    renderer = FrameRenderer(visualize, alpha=alpha, legend=legend, classes=getattr(meta, "classes", ()),
                             palette=getattr(meta, "palette", None))
    if (batch is not None and batch < 1) or (max_frames is not None and max_frames < 1):
        raise FcnsegError(f"expected batch and max_frames >= 1, got batch {batch}, max_frames {max_frames}")
    with contextlib.ExitStack() as owned:
        # The sink first: an HTTP preview is up while a camera or stream is still being opened.
        out_sink = sink if sink is None or isinstance(sink, Sink) else owned.enter_context(open_sink(sink))
        src = source if isinstance(source, Source) else open_source(source, timeout=timeout)
        is_live = src.live if live is None else live
        loop = _Loop(segmenter, is_live, batch or (1 if is_live else _auto_batch(segmenter)), max_frames, progress)
        if src is not source:
            # A decoder still inside a blocking read finishes on its own (bounded by the source's timeout):
            # closing its container under it would not be safe.
            owned.callback(lambda: None if loop.decoder_running else src.close())
        if out_sink is not None:
            out_sink.source_rate(src.fps)
        loop.outputs = owned.enter_context(StreamOutputs(out_sink, renderer, save_masks, stats, mask_format))
        result = loop.pipelined(iter(src)) if pipelined else loop.sequential(iter(src))
    if result.error is not None and result.frames == 0:
        raise FcnsegError(result.error)
    return result


@dataclass
class ClipReport:
    """What ``segment_clip`` wrote: the input video, the segmented video, PNGs of its first frames, the stats."""

    source: Path
    output: Path
    first_frames: List[Path]
    stats: StreamStats


def segment_clip(segmenter: Any, frames: Sequence[np.ndarray], out_dir: PathLike, *, fps: float = 10.0,
                 keep: int = 3, visualize: str = "side-by-side") -> ClipReport:
    """Write ``frames`` as a short video, segment it side by side and keep its first frames as PNGs.

    For reports (``make demo``): ``OUT/clip_input.mp4``, ``OUT/clip_segmented.mp4`` (side by side with a legend
    by default), ``OUT/clip_frame_<i>.png`` for the first ``keep`` frames as decoded from the output.
    """
    out = Path(out_dir)
    source = write_video(frames, out / "clip_input.mp4", fps=fps)
    output = out / "clip_segmented.mp4"
    stats = segment_stream(segmenter, source, output, visualize=visualize)
    pngs = []
    for i, frame in enumerate(read_video(output, max_frames=keep)):
        pngs.append(out / f"clip_frame_{i}.png")
        save_image(pngs[-1], frame)
    return ClipReport(source, output, pngs, stats)


def _auto_batch(segmenter: Any) -> int:
    limit = getattr(getattr(segmenter, "backend", None), "max_batch", None)
    return max(1, min(int(limit), MAX_AUTO_BATCH)) if isinstance(limit, int) else 1


class _Loop:
    """The frame loop, sequential or as three threads, with its timings."""

    def __init__(self, segmenter: Any, live: bool, batch: int, max_frames: Optional[int],
                 progress: Optional[Callable[[StreamStats], None]]) -> None:
        self.segmenter, self.live, self.max_frames = segmenter, live, max_frames
        self.outputs: Optional[StreamOutputs] = None
        self.decoder_running = False
        self.progress = progress
        self.stats = StreamStats(batch=batch)
        self.times: Dict[str, List[float]] = {k: [] for k in STAGES}
        self.stop = threading.Event()
        self.taken = 0
        self._start = self._last_write = 0.0

    def sequential(self, frames: Iterator[np.ndarray]) -> StreamStats:
        self.stats.pipelined = False
        try:
            for item in self._decode(frames):
                self._write(self._infer([item])[0])
                if self._enough():
                    break
        except KeyboardInterrupt:
            self.stats.interrupted = True
        except FcnsegError as e:
            self.stats.error = str(e)
        return self._finish()

    def pipelined(self, frames: Iterator[np.ndarray]) -> StreamStats:
        n = self.stats.batch
        decoded: "queue.Queue[Any]" = queue.Queue(maxsize=n if self.live else 2 * n)
        inferred: "queue.Queue[Any]" = queue.Queue(maxsize=2 * n)
        errors: List[BaseException] = []
        written = threading.Event()   # set when the writer has returned

        def write_stage(q: "queue.Queue[Any]") -> None:
            try:
                self._write_stage(q)
            finally:
                written.set()

        # A source error does not stop the other stages: the frames decoded before it are still written.
        stages = [threading.Thread(target=_guard(fn, errors, self.stop if name != "decode" else None), args=args,
                                   daemon=True, name=f"fcnseg-{name}")
                  for name, fn, args in (("decode", self._decode_stage, (frames, decoded)),
                                         ("infer", self._infer_stage, (decoded, inferred)),
                                         ("write", write_stage, (inferred,)))]
        for t in stages:
            t.start()
        # Waiting on an Event, not Thread.join: a Ctrl-C that interrupts join() on CPython 3.11 can mark the
        # writer as stopped while it still runs (seen: the video kept a frame whose mask was never written).
        try:
            while not written.wait(0.1):
                pass
        except KeyboardInterrupt:
            self.stats.interrupted = True
            self.stop.set()
            written.wait()
        stages[2].join()
        stages[1].join()
        self.stop.set()
        stages[0].join(timeout=1.0)   # may sit in a blocking read; bounded by the source's own timeout
        self.decoder_running = stages[0].is_alive()
        bug = next((e for e in errors if not isinstance(e, FcnsegError)), None)
        if bug is not None:
            raise bug
        if errors:
            self.stats.error = str(errors[0])
        return self._finish()

    def _decode(self, frames: Iterator[np.ndarray]) -> Iterator[Tuple[int, np.ndarray, float]]:
        """(index, frame, time decoded), timing each read."""
        self._start = time.perf_counter()
        index = 0
        while not self.stop.is_set():
            t0 = time.perf_counter()
            frame = next(frames, None)
            if frame is None:
                return
            t1 = time.perf_counter()
            self.times["decode"].append(t1 - t0)
            yield index, frame, t1
            index += 1

    def _decode_stage(self, frames: Iterator[np.ndarray], decoded: "queue.Queue[Any]") -> None:
        try:
            for item in self._decode(frames):
                if self.live:
                    self._put_latest(decoded, item)
                else:
                    _put(decoded, item, self.stop)
        finally:
            _put(decoded, _END, self.stop)

    def _put_latest(self, q: "queue.Queue[Any]", item: Any) -> None:
        """Queue a live frame, dropping the oldest waiting one when the queue is full."""
        while True:
            try:
                q.put_nowait(item)
                return
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    q.get_nowait()
                    self.stats.dropped += 1

    def _infer_stage(self, decoded: "queue.Queue[Any]", inferred: "queue.Queue[Any]") -> None:
        try:
            done = False
            while not done and not self.stop.is_set() and not self._enough_taken():
                items = [_get(decoded, self.stop)]
                while len(items) < self.stats.batch and items[-1] is not _END:
                    try:
                        items.append(decoded.get_nowait())
                    except queue.Empty:
                        break
                done = items[-1] is _END
                items = [it for it in items if it is not _END]
                if self.max_frames is not None:
                    items = items[: self.max_frames - self.taken]
                self.taken += len(items)
                for result in self._infer(items) if items else []:
                    _put(inferred, result, self.stop)
        finally:
            _drain(decoded)   # unblock the decoder so it can see the stop
            _put(inferred, _END, self.stop)

    def _write_stage(self, inferred: "queue.Queue[Any]") -> None:
        while True:
            item = inferred.get()
            if item is _END:
                return
            self._write(item)

    def _infer(self, items: List[Tuple[int, np.ndarray, float]]) -> List[Tuple[int, np.ndarray, np.ndarray, float]]:
        t0 = time.perf_counter()
        masks = self.segmenter([frame for _, frame, _ in items])
        per_frame = (time.perf_counter() - t0) / len(items)
        self.times["infer"] += [per_frame] * len(items)
        return [(i, frame, mask, t) for (i, frame, t), mask in zip(items, masks)]

    def _write(self, item: Tuple[int, np.ndarray, np.ndarray, float]) -> None:
        index, frame, mask, decoded_at = item
        t0 = time.perf_counter()
        assert self.outputs is not None
        self.outputs.write(index, frame, mask)
        t1 = time.perf_counter()
        self.times["write"].append(t1 - t0)
        self.times["latency"].append(t1 - decoded_at)
        self.stats.frames += 1
        self._last_write = t1
        if self.progress is not None:
            self.progress(self._snapshot(t1))

    def _enough(self) -> bool:
        return self.max_frames is not None and self.stats.frames >= self.max_frames

    def _enough_taken(self) -> bool:
        return self.max_frames is not None and self.taken >= self.max_frames

    def _snapshot(self, now: float) -> StreamStats:
        s = self.stats
        s.seconds = now - self._start
        s.fps = s.frames / s.seconds if s.seconds > 0 else 0.0
        return s

    def _finish(self) -> StreamStats:
        self.stop.set()
        s = self._snapshot(self._last_write) if self.stats.frames else self.stats   # not counting a final timeout
        s.stage_ms = {k: round(1000 * statistics.median(v), 2) for k, v in self.times.items() if v}
        return s


def _guard(fn: Callable[..., None], errors: List[BaseException],
           stop: Optional[threading.Event]) -> Callable[..., None]:
    """Run a stage; on an error, keep it for the caller (and stop the other stages when ``stop`` is given)."""
    def run(*args: Any) -> None:
        try:
            fn(*args)
        except BaseException as e:  # noqa: B902 (re-raised in the caller's thread)
            errors.append(e)
            if stop is not None:
                stop.set()
    return run


def _put(q: "queue.Queue[Any]", item: Any, stop: threading.Event) -> None:
    """Blocking put that gives up once ``stop`` is set; the end marker is never given up: once stopped, room is
    made for it by discarding what the next stage has not taken."""
    while True:
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            if stop.is_set():
                if item is not _END:
                    return
                _drain(q)


def _get(q: "queue.Queue[Any]", stop: threading.Event) -> Any:
    """Blocking get that returns the end marker once ``stop`` is set."""
    while not stop.is_set():
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            pass
    return _END


def _drain(q: "queue.Queue[Any]") -> None:
    with contextlib.suppress(queue.Empty):
        while True:
            q.get_nowait()
