"""Turning class masks into pictures and files: colours, overlays, legends, and batch prediction on files.

Colour conventions: class ``i`` takes ``palette[i]`` (the VOC colour map by default, extended with VOC
colours past the palette's end); the void label 255 is drawn white. Overlays leave background (0) and
void (255) pixels as the image.
"""

from __future__ import annotations

import io
import os
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence, Tuple, Union
from urllib.parse import urlsplit

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps, PngImagePlugin

from ..core.atomic import atomic_path
from ..core.errors import FcnsegError, one_line
from ..core.output_guard import SOFTWARE, check_output, check_output_dir, check_readable, unique_path
from .artifacts import MASK, OVERLAY
from .preprocess import pil_to_array, to_rgb_uint8
from ..core.classes import IGNORE_INDEX, VOC_CLASSES, voc_palette

PathLike = Union[str, "os.PathLike[str]"]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
URL_TIMEOUT_S = 30.0            # an image URL that sends nothing for this long is an error
URL_MAX_BYTES = 256 << 20       # and one larger than this (a stream, or no image) is refused
VOID_COLOR = (255, 255, 255)


def color_table(palette: Optional[Sequence[Sequence[int]]] = None) -> np.ndarray:
    """A 256x3 uint8 lookup table: ``palette`` first, VOC colours after it, white for void (255)."""
    table = voc_palette(256)
    if palette is not None and len(palette):
        p = np.asarray(palette, dtype=np.int64).reshape(-1, 3)[:256]
        table[: len(p)] = np.clip(p, 0, 255)
    table[IGNORE_INDEX] = VOID_COLOR
    return table


PNG_COMPRESS_LEVEL = 1   # overlays and frames: speed over the last 15 % of file size
OVERLAY_BAND_ROWS = 256   # rows blended at a time: bounded memory at any image size


def colorize(mask: np.ndarray, palette: Optional[Sequence[Sequence[int]]] = None) -> np.ndarray:
    """HxW class mask -> HxWx3 uint8 colour image (VOC palette by default; void 255 is white)."""
    return color_table(palette)[_check_mask(mask)]


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5,
            palette: Optional[Sequence[Sequence[int]]] = None) -> np.ndarray:
    """Blend class colours into the image: ``(1 - alpha) * image + alpha * colour``.

    Background (0) and void (255) pixels are left as the image. ``image`` is any layout ``to_rgb_uint8``
    takes, of the same height and width as ``mask``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise FcnsegError(f"expected alpha in [0, 1], got {alpha}")
    rgb = to_rgb_uint8(image)
    mask = _check_mask(mask)
    if rgb.shape[:2] != mask.shape:
        raise FcnsegError(f"expected a mask of the image's size {rgb.shape[:2]}, got {mask.shape}; "
                          "try resizing the mask with fcnseg.runtime.preprocess.resize_mask")
    table, out = color_table(palette), rgb.copy()
    # In bands of rows: a 6000x4000 photo blended at once would hold several full-size float copies (GBs).
    for top in range(0, mask.shape[0], OVERLAY_BAND_ROWS):
        rows = slice(top, top + OVERLAY_BAND_ROWS)
        m = mask[rows]
        blended = (1.0 - alpha) * rgb[rows] + alpha * table[m].astype(np.float32)
        paint = (m != 0) & (m != IGNORE_INDEX)
        out[rows][paint] = np.rint(blended[paint]).astype(np.uint8)
    return out


def legend(classes: Sequence[str], palette: Optional[Sequence[Sequence[int]]], present_ids: Iterable[int],
           *, row_height: int = 16) -> np.ndarray:
    """A small Hx W x3 uint8 image listing the present classes: a colour swatch and the name per row.

    Ids outside ``classes`` (and void, 255) are left out; with nothing left it says "(no classes)".
    """
    table = color_table(palette)
    ids = sorted({int(i) for i in present_ids if 0 <= int(i) < len(classes)})
    font = ImageFont.load_default()
    names = [str(classes[i]) for i in ids] or ["(no classes)"]
    text_w = max(_text_width(font, n) for n in names)
    swatch = row_height - 4
    img = Image.new("RGB", (swatch + text_w + 14, row_height * len(names) + 4), "white")
    draw = ImageDraw.Draw(img)
    for row, name in enumerate(names):
        y = 2 + row * row_height
        if ids:
            draw.rectangle([4, y + 2, 4 + swatch - 1, y + 1 + swatch], fill=tuple(int(c) for c in table[ids[row]]),
                           outline=(0, 0, 0))
        draw.text((swatch + 10, y + 1), name, fill=(0, 0, 0), font=font)
    return np.asarray(img)


def overlay_with_legend(image: np.ndarray, mask: np.ndarray, *, alpha: float = 0.5,
                        classes: Sequence[str] = VOC_CLASSES,
                        palette: Optional[Sequence[Sequence[int]]] = None) -> np.ndarray:
    """``overlay`` with a legend strip of the present classes on its right (white padding where shorter)."""
    over = overlay(image, mask, alpha, palette)
    strip = legend(classes, palette, np.unique(mask).tolist())
    h = max(over.shape[0], strip.shape[0])
    canvas = np.full((h, over.shape[1] + strip.shape[1], 3), 255, dtype=np.uint8)
    canvas[: over.shape[0], : over.shape[1]] = over
    canvas[: strip.shape[0], over.shape[1]:] = strip
    return canvas


def mask_to_pil(mask: np.ndarray, palette: Optional[Sequence[Sequence[int]]] = None) -> Image.Image:
    """A palette ("P") PIL image: pixel values are the class ids, the palette gives their colours."""
    img = Image.fromarray(_check_mask(mask), mode="P")
    img.putpalette(color_table(palette).reshape(-1).tolist())
    return img


def save_mask(path: PathLike, mask: np.ndarray, *, palette: Optional[Sequence[Sequence[int]]] = None) -> None:
    """Write a mask atomically: ``.npy`` as a uint8 array, anything else as a palette PNG."""
    with atomic_path(path) as tmp:
        if str(path).lower().endswith(".npy"):
            with open(tmp, "wb") as f:  # np.save(path) would append ".npy" to the temporary name
                np.save(f, _check_mask(mask))
        else:
            mask_to_pil(mask, palette).save(tmp, format="PNG", pnginfo=_png_info())


def save_image(path: PathLike, image: np.ndarray) -> None:
    """Write an HxWx3 uint8 image as PNG, atomically.

    zlib level 1: for a 6000x4000 overlay 1.1 s and 21 MiB instead of 3.2 s and 18 MiB at Pillow's default (6).
    """
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG", pnginfo=_png_info(), compress_level=PNG_COMPRESS_LEVEL)


def _png_info() -> PngImagePlugin.PngInfo:
    """The "Software: fcnseg" text chunk by which a later run recognises its own masks and overlays."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", SOFTWARE)
    return info


def open_image(path: PathLike, *, exif: bool = True) -> Image.Image:
    """Open and decode an image file: the project's one image reader (prediction, calibration).

    Args:
        path: a JPEG, PNG, BMP, WebP or TIFF file.
        exif: turn the pixels as the EXIF orientation tag says (as ``ImageOps.exif_transpose``), so the mask
            matches the picture users see. Dataset readers pass False: their labels are drawn on the stored
            pixels.

    Raises:
        FcnsegError: unreadable (permission denied), missing or undecodable files.
    """
    check_readable(path, "image")
    try:
        with Image.open(path) as img:
            img.load()
            return ImageOps.exif_transpose(img) if exif and _orientation(img) not in (None, 1) else img.copy()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise FcnsegError(f"could not read {str(path)!r} as an image ({e}); expected a "
                          f"{', '.join(s.lstrip('.').upper() for s in IMAGE_SUFFIXES)} file") from None


def _orientation(img: Image.Image) -> Optional[int]:
    try:
        return img.getexif().get(0x0112)
    except Exception:  # a broken EXIF block: keep the stored pixels
        return None


def read_image(path: PathLike) -> np.ndarray:
    """Read an image file as an array ``Segmenter`` accepts (EXIF orientation applied).

    RGB, RGBA and L stay as they are, 16-bit grayscale stays uint16, float ("F") TIFFs stay float32 (see
    ``to_rgb_uint8`` for how values above 1 are treated); other modes become RGB(A).
    """
    return pil_to_array(open_image(path))


def _text_width(font: ImageFont.ImageFont, text: str) -> int:
    # The default bitmap font has getbbox from Pillow 9.2 and getsize until Pillow 10 (JetPack 5 ships 7.0).
    if hasattr(font, "getbbox"):
        return int(font.getbbox(text)[2])
    return int(font.getsize(text)[0])


def _check_mask(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise FcnsegError(f"expected an HxW class mask, got shape {m.shape}")
    if m.dtype != np.uint8:
        if not np.issubdtype(m.dtype, np.integer) or (m.size and (m.min() < 0 or m.max() > 255)):
            raise FcnsegError(f"expected class ids in 0..255, got dtype {m.dtype}; try mask.astype(np.uint8)")
        m = m.astype(np.uint8)
    return np.ascontiguousarray(m)


@dataclass
class PredictSummary:
    """What ``predict_files`` did: files written, inputs skipped (path, reason), renamed outputs (wanted, used)
    and notes on inputs read only in part (an animated image's first frame)."""

    written: List[Path] = field(default_factory=list)
    failed: List[Tuple[Path, str]] = field(default_factory=list)
    renamed: List[Tuple[Path, Path]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)


def image_header(path: PathLike) -> Optional[Tuple[Tuple[int, int], int]]:
    """((H, W), frames) of an image file from its header, nothing decoded (an animated GIF, WebP or multi-page
    TIFF has several frames); None when it cannot be read (the read itself then says why)."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            return (int(height), int(width)), int(getattr(img, "n_frames", 1))
    except (OSError, ValueError):
        return None


def is_image_url(spec: PathLike) -> bool:
    """An http(s) URL naming one picture (its path ends in an image suffix), not a video stream."""
    parts = urlsplit(str(spec))
    return parts.scheme in ("http", "https") and Path(parts.path).suffix.lower() in IMAGE_SUFFIXES


def single_mask_path(url: str, out: PathLike, fmt: str) -> Path:
    """Where one URL's mask goes: ``--out`` itself when it names a .png/.npy file, else ``OUT/<url name>.<fmt>``."""
    target = Path(out)
    if target.suffix.lower() in (".png", ".npy"):
        return target
    return target / f"{Path(urlsplit(url).path).stem or 'image'}.{fmt}"


def read_image_url(url: str, *, timeout: float = URL_TIMEOUT_S, max_bytes: int = URL_MAX_BYTES) -> np.ndarray:
    """Download one picture (at most ``max_bytes``) and read it as ``read_image`` reads files."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:   # noqa: S310 (http/https only)
            data = response.read(max_bytes + 1)
    except (OSError, ValueError) as e:
        raise FcnsegError(f"expected to download the image {url!r}, got {one_line(e)}; check the URL") from None
    if len(data) > max_bytes:
        raise FcnsegError(f"expected an image of at most {max_bytes >> 20} MiB at {url!r}, got more; try "
                          "downloading it and passing the file")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (OSError, ValueError) as e:
        raise FcnsegError(f"expected an image at {url!r}, got {len(data)} bytes that are not one ({one_line(e)})") \
            from None
    return pil_to_array(ImageOps.exif_transpose(img) or img)


def find_images(inputs: Sequence[PathLike], *, exclude: Optional[PathLike] = None) -> List[Tuple[Path, Path]]:
    """Expand files and folders (walked recursively for .jpg/.jpeg/.png/.bmp) into (path, output stem) pairs.

    The output stem mirrors a file's place under the folder given (``dir/a/x.jpg`` -> ``a/x``); a name
    seen twice gets its extension appended (``x.jpg`` and ``x.png`` -> ``x`` and ``x_png``). Files under
    ``exclude`` (the output folder) are skipped so that earlier results are not read back as inputs.
    """
    skip = Path(exclude).resolve() if exclude is not None else None
    found: List[Tuple[Path, Path]] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files = sorted(f for f in item.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if skip is not None and skip != item.resolve():
                files = [f for f in files if skip not in f.resolve().parents]
            found += [(f, f.relative_to(item).with_suffix("")) for f in files]
        elif item.is_file():
            found.append((item, Path(item.stem)))
        else:
            raise FcnsegError(f"expected an image file or a folder, got {str(item)!r} which does not exist")
    return _unique_stems(found)


def _unique_stems(found: List[Tuple[Path, Path]]) -> List[Tuple[Path, Path]]:
    seen: set = set()
    out = []
    for path, stem in found:
        key = stem
        if str(key).lower() in seen:
            key = stem.with_name(f"{stem.name}_{path.suffix.lstrip('.').lower()}")
        n = 1
        while str(key).lower() in seen:
            key, n = stem.with_name(f"{stem.name}_{n}"), n + 1
        seen.add(str(key).lower())
        out.append((path, key))
    return out


def predict_files(predict: Callable[[np.ndarray], np.ndarray], inputs: Sequence[PathLike], out_dir: PathLike, *,
                  fmt: str = "png", with_overlay: bool = False, alpha: float = 0.5,
                  classes: Sequence[str] = VOC_CLASSES, palette: Optional[Sequence[Sequence[int]]] = None,
                  progress: Optional[Callable[[List], Iterable]] = None,
                  on_error: Optional[Callable[[Path, str], None]] = None, force: bool = False) -> PredictSummary:
    """Segment image files and write ``OUT/<stem>.png`` (palette PNG) or ``.npy`` masks, optionally overlays.

    Every output path is decided before the first image: an output never replaces an input (refused), nor
    another output of the same run (renamed ``<name>_1.png``, listed in ``renamed``), nor an existing file
    that is not an fcnseg mask/overlay (refused unless ``force``).

    Args:
        predict: image array -> HxW mask at the image's size (a ``Segmenter``).
        inputs: image files and folders (see ``find_images``).
        out_dir: output folder; overlays go to ``<stem>_overlay.png`` with a legend strip.
        fmt: "png" or "npy".
        with_overlay / alpha: also write overlays, blended with this alpha.
        classes / palette: names and colours for PNG masks and legends.
        progress: wrapper such as ``tqdm`` around the list of files.
        on_error: called with (path, reason) for each unreadable image, which is then skipped.
        force: replace existing files in ``out_dir`` that fcnseg did not write.
    """
    if fmt not in ("png", "npy"):
        raise FcnsegError(f"expected format png or npy, got {fmt!r}")
    if len(inputs) == 1 and is_image_url(inputs[0]):   # one picture on a web server: one mask (and overlay)
        out_file = single_mask_path(str(inputs[0]), out_dir, fmt)
        fmt = out_file.suffix[1:]
        targets = [check_output(out_file, MASK, force=force, option="--out")]
        if with_overlay:
            targets.append(check_output(out_file.with_name(f"{out_file.stem}_overlay.png"), OVERLAY, force=force,
                                        option="--out"))
        image = read_image_url(str(inputs[0]))
        return PredictSummary(written=_write_outputs(targets, image, predict(image), alpha, classes, palette))
    out = check_output_dir(out_dir, "--out")
    files = find_images(inputs, exclude=out)
    if not files:
        raise FcnsegError(f"expected images ({', '.join(IMAGE_SUFFIXES)}) in {[str(i) for i in inputs]}, got none")
    # Each file's header once, before the first image is segmented: sizes a Segmenter must refuse (--size 0,
    # --mode whole) and frame counts (an animated image is segmented on its first frame).
    headers = {path: image_header(path) for path, _ in files}
    check_size = getattr(predict, "check_image_size", None)
    if check_size is not None:
        for hw, _ in filter(None, headers.values()):
            check_size(hw)
    summary = PredictSummary()
    plan = plan_outputs(files, out, fmt, with_overlay, force=force, renamed=summary.renamed)
    for path, targets in (progress(plan) if progress else plan):
        try:
            image = read_image(path)
            mask = predict(image)
            frames = headers[path][1] if headers[path] else 1
            if frames > 1:
                summary.notes.append(f"{path} has {frames} frames; segmented the first (split the frames into "
                                     "images, or convert it to a video, to segment every one)")
        except FcnsegError as e:
            summary.failed.append((path, str(e)))
            if on_error:
                on_error(path, str(e))
            continue
        summary.written += _write_outputs(targets, image, mask, alpha, classes, palette)
    return summary


def plan_outputs(files: List[Tuple[Path, Path]], out: Path, fmt: str, with_overlay: bool, *, force: bool = False,
                 renamed: Optional[List[Tuple[Path, Path]]] = None) -> List[Tuple[Path, List[Path]]]:
    """(input, [mask path, overlay path]) per image, checked and made unique (see ``predict_files``)."""
    sources = {str(p.resolve()).lower() for p, _ in files}
    taken: set = set()
    plan = []
    for path, stem in files:
        base = out / stem
        targets = []
        for name, kind in [(f"{base.name}.{fmt}", MASK)] + ([(f"{base.name}_overlay.png", OVERLAY)] * with_overlay):
            wanted = base.with_name(name)
            if str(wanted.resolve()).lower() in sources:
                raise FcnsegError(f"expected outputs apart from the inputs, got {str(wanted)!r} as both; "
                                  "try another --out folder")
            target = unique_path(wanted, taken)
            if target != wanted and renamed is not None:
                renamed.append((wanted, target))
            taken.add(str(target).lower())
            check_output(target, kind, force=force, option="--out")
            targets.append(target)
        plan.append((path, targets))
    return plan


def _write_outputs(targets: List[Path], image: np.ndarray, mask: np.ndarray, alpha: float,
                   classes: Sequence[str], palette: Optional[Sequence[Sequence[int]]]) -> List[Path]:
    written: List[Path] = []
    try:
        save_mask(targets[0], mask, palette=palette)
        written.append(targets[0])
        if len(targets) > 1:
            save_image(targets[1], overlay_with_legend(image, mask, alpha=alpha, classes=classes, palette=palette))
            written.append(targets[1])
    except OSError as e:
        raise FcnsegError(f"could not write {str(targets[len(written)])!r} ({e}); try another --out folder") from None
    return written
