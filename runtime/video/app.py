"""The stream half of ``fcn-predict``: its options, when they apply, and the call into ``segment_stream``.

``fcn-predict`` segments image files as before; a video file, camera, stream URL or glob as SOURCE, a video
file or URL as ``--out``, or any of the options below switches it to the frame loop of
``fcnseg.runtime.video.loop``.
"""

from __future__ import annotations

import functools
import glob
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Set

import click

from ...core.errors import FcnsegError
from ...core.output_guard import ArtifactKind, check_output, check_writable_parent
from ..artifacts import MASK, OVERLAY
from ..postprocess import IMAGE_SUFFIXES
from .loop import VISUALIZE, StreamStats, segment_stream
from .sources import OUTPUT_FORMATS, is_stream_spec
from .sinks import is_fcnseg_video

VIDEO = ArtifactKind("fcnseg video", is_fcnseg_video)
FRAME = ArtifactKind("fcnseg frame", OVERLAY.is_ours)   # what FolderSink writes: PNGs with fcnseg's Software chunk
EXIT_STOPPED, EXIT_INTERRUPTED = 1, 130


def _is_stats(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:   # unreadable: not known to be ours
        return False
    return head in (b"", b'{"frame":')


STATS = ArtifactKind("fcnseg stream statistics file", _is_stats)


@dataclass
class StreamOptions:
    """The stream options of ``fcn-predict`` (None: not given)."""

    visualize: Optional[str] = None
    legend: bool = True
    save_masks: Optional[str] = None
    stats: Optional[str] = None
    max_frames: Optional[int] = None
    timeout: Optional[float] = None
    batch: Optional[int] = None
    sequential: bool = False

    def applies(self, inputs: Sequence[str], out: str) -> bool:
        """True when the frame loop should run instead of the image-file mode."""
        given = (self.visualize, self.save_masks, self.stats, self.max_frames, self.timeout, self.batch)
        return (any(v is not None for v in given) or self.sequential or not self.legend
                or any(is_stream_spec(i) for i in inputs) or "://" in out
                or Path(out).suffix.lower() in OUTPUT_FORMATS)


_OPTIONS = [
    click.option("--visualize", type=click.Choice(VISUALIZE), default=None,
                 help="Stream output: the frame with class colours (overlay), the colours alone (mask), or the "
                      "frame and the colours next to each other (side-by-side) [default: overlay]."),
    click.option("--legend/--no-legend", default=True, show_default=True, help="Stream output: a class legend."),
    click.option("--save-masks", type=str, default=None, metavar="DIR",
                 help="Stream: also write one mask per frame, DIR/<frame number>.png (or .npy with --format)."),
    click.option("--stats", type=str, default=None, metavar="FILE",
                 help="Stream: per-frame pixel share of each class, as JSON lines."),
    click.option("--max-frames", type=click.IntRange(min=1), default=None, help="Stream: stop after N frames."),
    click.option("--timeout", type=click.FloatRange(min=0.1), default=None,
                 help="Stream: seconds a network source or camera may stay silent [default: 10]."),
    click.option("--batch", type=click.IntRange(min=1), default=None,
                 help="Stream: frames per inference call [default: 1 for live sources; for files the engine's batch "
                      "limit, at most 8, when it has one (TensorRT), else 1]."),
    click.option("--sequential", is_flag=True, help="Stream: one frame at a time, no overlap (for comparison)."),
]


def stream_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add the stream options to a click command; they reach it as one ``stream: StreamOptions`` argument."""
    names = [f.name for f in fields(StreamOptions)]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        stream = StreamOptions(**{n: kwargs.pop(n) for n in names})
        return fn(*args, stream=stream, **kwargs)

    for option in reversed(_OPTIONS):
        wrapper = option(wrapper)
    return wrapper


def run_stream(segmenter: Any, inputs: Sequence[str], out: str, opts: StreamOptions, *, alpha: float,
               fmt: str = "png", force: bool = False) -> int:
    """Check the outputs, run ``segment_stream`` with a progress line, report; returns the exit status."""
    source = _source(inputs)
    _check_outputs(out, opts, inputs=inputs, force=force)
    progress = _Progress()
    stats = segment_stream(segmenter, source, out, visualize=opts.visualize or "overlay", alpha=alpha,
                           legend=opts.legend, save_masks=opts.save_masks, stats=opts.stats, mask_format=fmt,
                           max_frames=opts.max_frames, pipelined=not opts.sequential, batch=opts.batch,
                           timeout=opts.timeout, progress=progress)
    progress.done()
    click.echo(f"fcn-predict: {stats.summary()}; wrote {out}", err=True)
    if stats.interrupted:
        click.echo(f"fcn-predict: interrupted; {out} closed after {stats.frames} frames", err=True)
        return EXIT_INTERRUPTED
    if stats.error is not None:
        click.echo(f"error: {stats.error}", err=True)
        return EXIT_STOPPED
    return 0


def _source(inputs: Sequence[str]) -> Any:
    if len(inputs) == 1:
        return inputs[0]
    odd = [i for i in inputs if Path(i).suffix.lower() not in IMAGE_SUFFIXES or not Path(i).is_file()]
    if odd:
        raise FcnsegError(f"expected one SOURCE (or image files as frames), got {len(inputs)} inputs including "
                          f"{odd[0]!r}; try one video, camera or URL per run")
    return list(inputs)


def _check_outputs(out: str, opts: StreamOptions, *, inputs: Sequence[str], force: bool) -> None:
    """Refuse outputs over inputs or over files fcnseg did not write, before the first frame."""
    folders = _input_folders(inputs)
    files = [i for i in inputs if Path(i).is_file()]
    if "://" not in out:
        if Path(out).suffix.lower() in OUTPUT_FORMATS:
            check_output(out, VIDEO, inputs=files, force=force, option="--out")
        elif Path(out).is_file():
            raise FcnsegError(f"expected --out to be a video file ({', '.join(OUTPUT_FORMATS)}), a folder or a URL, "
                              f"got {out!r} which is another kind of file; try out.mp4")
        else:
            _check_folder(out, "--out", "frame_*.png", FRAME, input_folders=folders, force=force)
    if opts.stats is not None:
        check_output(opts.stats, STATS, inputs=files, force=force, option="--stats")
    if opts.save_masks is not None:
        _check_folder(opts.save_masks, "--save-masks", "[0-9]*.*", MASK, input_folders=folders, force=force)


def _check_folder(folder: str, option: str, pattern: str, kind: ArtifactKind, *, input_folders: Set[Path],
                  force: bool) -> None:
    """Refuse an input's folder, an unwritable one, or one holding ``pattern`` files fcnseg did not write."""
    if "://" not in folder and Path(folder).resolve() in input_folders:
        raise FcnsegError(f"expected {option} apart from the input frames, got the input folder {folder!r}; "
                          f"try another {option} folder")
    check_writable_parent(Path(folder) / "frame", option=option)
    if force:
        return
    clash = next((p for p in sorted(Path(folder).glob(pattern)) if not kind.is_ours(p)), None)
    if clash is not None:
        raise FcnsegError(f"expected {option} to hold only {kind.name}s, got {str(clash)!r}; pass --force "
                          "to replace such files, or try another folder")


def _input_folders(inputs: Sequence[str]) -> Set[Path]:
    """The folders the inputs live in: a folder itself, a file's folder, a glob pattern's and its matches'."""
    folders: Set[Path] = set()
    for spec in inputs:
        path = Path(spec)
        if path.is_dir():
            folders.add(path.resolve())
        elif path.is_file():
            folders.add(path.resolve().parent)
        elif "://" not in spec and glob.has_magic(spec):
            folders.update(Path(f).resolve().parent for f in glob.glob(spec))
            if not glob.has_magic(str(path.parent)):
                folders.add(path.parent.resolve())
    return folders


class _Progress:
    """A live progress line on a terminal (none when stderr is a file or a pipe)."""

    def __init__(self, every: float = 0.5) -> None:
        self.tty, self.every, self.last = sys.stderr.isatty(), every, 0.0

    def __call__(self, stats: StreamStats) -> None:
        now = time.monotonic()
        if self.tty and now - self.last >= self.every:
            self.last = now
            sys.stderr.write(f"\rfcn-predict: {stats.frames} frames, {stats.fps:.1f} FPS, {stats.dropped} dropped ")
            sys.stderr.flush()

    def done(self) -> None:
        if self.tty and self.last:
            sys.stderr.write("\n")
