"""``fcn-predict``: segment image files and folders with an exported model (or a checkpoint).

Exit codes: 0 all images done, 1 some images could not be read (each reported on stderr and skipped),
2 usage errors and ``FcnsegError`` (one line on stderr via ``cli_errors``, no traceback).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Tuple

import click

from ..core.cli_args import (BackendChoice, OneLineCommand, backend_options, classes_option, force_option, mode_options,
                             size_option)
from ..core.errors import cli_errors
from .postprocess import predict_files
from .segmenter import Segmenter
from .video.app import StreamOptions, run_stream, stream_options


@click.command(cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inputs", nargs=-1, required=True, type=str)
# readable=False: fcnseg's own check says "permission denied" (click's would say "is not readable; try -h")
@click.option("--model", "-m", required=True, type=click.Path(path_type=Path, readable=False),
              help="Model file: .onnx, .plan/.engine (TensorRT) or .pth (PyTorch checkpoint).")
@click.option("--out", "-o", required=True, type=str,
              help="Output folder (mirrors sub-folders of input folders); for streams a video file, folder or URL.")
@click.option("--overlay", "with_overlay", is_flag=True, help="Also write <name>_overlay.png with a legend.")
@click.option("--alpha", default=0.5, show_default=True, type=click.FloatRange(0.0, 1.0),
              help="Overlay opacity of the class colours.")
@click.option("--format", "fmt", default="png", show_default=True, type=click.Choice(["png", "npy"]),
              help="png: palette PNG of class ids; npy: uint8 array.")
@size_option("Shorter side fed to the network [default: the model's metadata; 0: no resizing, each image's "
             "shorter side within the model's declared range].", no_resize=True)
@mode_options
@classes_option()
@backend_options()
@force_option("Replace files in --out that fcnseg did not write (never an input).")
@stream_options
@cli_errors
def predict_main(inputs: Tuple[str, ...], model: Path, out: str, with_overlay: bool, alpha: float, fmt: str,
                 size: Optional[int], mode: dict, classes: Optional[str], backend: BackendChoice, force: bool,
                 stream: StreamOptions) -> None:
    """Segment INPUTS (images, or folders walked for .jpg/.jpeg/.png/.bmp/.webp/.tif) and write masks to --out.

    Streams, as jetson-inference's segnet: INPUTS may be one video file, V4L2 camera (/dev/video0), Jetson CSI
    camera (csi://0), network stream (rtsp://, rtp://, udp://) or glob/folder of frames, and --out a video file
    (.mp4, .mkv, .avi), a folder of frames, udp://HOST:PORT or rtp://HOST:PORT (MPEG-TS) or http://HOST:PORT (a
    live MJPEG preview for a browser). Decoding, inference and encoding overlap; live sources (cameras, network)
    drop stale frames rather than fall behind (latency over completeness), files never drop a frame. Ctrl-C
    closes the output cleanly; exit 1 when the source stops early (what was written still plays).
    """
    from tqdm import tqdm

    def report(path: Path, reason: str) -> None:
        tqdm.write(f"fcn-predict: skipped {path}: {reason}", file=sys.stderr)

    with Segmenter.load(model, backend=backend.backend, size=size, classes=classes, **backend.load_options(),
                        **mode) as seg:
        if stream.applies(inputs, out):   # video, camera, network: the frame loop of fcnseg.runtime.video.loop
            sys.exit(run_stream(seg, inputs, out, stream, alpha=alpha, fmt=fmt, force=force))
        m = seg.metadata
        summary = predict_files(seg, inputs, out, fmt=fmt, with_overlay=with_overlay, alpha=alpha,
                                classes=m.classes, palette=m.palette, on_error=report, force=force,
                                progress=lambda files: tqdm(files, unit="img", file=sys.stderr, disable=None))
    for note in summary.notes:
        click.echo(f"fcn-predict: note: {note}", err=True)
    for wanted, used in summary.renamed:
        click.echo(f"fcn-predict: wrote {used} instead of {wanted} (another output of this run has that name)",
                   err=True)
    click.echo(f"fcn-predict: wrote {len(summary.written)} files to {out}"
               + (f"; skipped {len(summary.failed)} unreadable images" if summary.failed else ""), err=True)
    sys.exit(1 if summary.failed else 0)


if __name__ == "__main__":
    predict_main()
