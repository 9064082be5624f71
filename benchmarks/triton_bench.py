"""Load on a Triton server, perf_analyzer style: throughput and p50/p90/p99 latency at 1, 4, 16 clients.

Each concurrency level runs ``clients`` threads, each with its own ``tritonclient`` connection, sending
``requests`` requests one after another (closed loop, as ``perf_analyzer --concurrency-range`` does);
latency is per request, throughput is the requests answered divided by the wall time of the level.
The same images go through an in-process ``Segmenter`` (one caller, one image per call) in the same run,
so the server's throughput is also reported as a ratio to it. Images are sent as the served model asks:
UINT8 HxWx3 arrays (``fcn-serve``'s Python-backend model) or encoded PNG bytes (the ``_image`` ensemble).
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple

import click
import numpy as np

from ..core.errors import FcnsegError, import_optional, one_line
from .bench import BENCH_JSON, Stats
from ..runtime import Segmenter
from ..core import output_guard as outputs
from ..core.shapes import parse_hw
from .report import write_json

CONCURRENCY = (1, 4, 16)
REQUESTS_PER_CLIENT = 20
PROTOCOLS = ("http", "grpc")


@dataclass
class LoadResult:
    """One concurrency level against the server: ``model`` is "URL/name", ``e2e`` the request latency (ms),
    throughput in images/s."""

    model: str
    concurrency: int
    requests: int
    failed: int
    seconds: float
    throughput: float
    e2e: Stats
    inprocess: Optional[float] = None
    first_error: str = ""

    @property
    def ratio(self) -> Optional[float]:
        """Server throughput / in-process Segmenter throughput on the same images."""
        return self.throughput / self.inprocess if self.inprocess else None

    def to_dict(self) -> dict:
        return {**asdict(self), "ratio": self.ratio}


def synthetic_images(shapes: Sequence[Tuple[int, int]], count: int = 4, seed: int = 0) -> List[np.ndarray]:
    """``count`` random HxWx3 uint8 images per shape."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes for _ in range(count)]


def _client_module(protocol: str) -> Any:
    if protocol not in PROTOCOLS:
        raise FcnsegError(f"expected a protocol in {PROTOCOLS}, got {protocol!r}")
    return import_optional(f"tritonclient.{protocol}", "tritonclient for the Triton benchmark",
                           "`pip install 'tritonclient[http,grpc]'` (fcnseg's `triton` extra)")


def request_maker(url: str, model: str, protocol: str = "http") -> Callable[[Any, np.ndarray], List[Any]]:
    """A function (module, image) -> the request inputs, in the form the served model's first input takes."""
    module = _client_module(protocol)
    client = module.InferenceServerClient(url)
    try:
        meta = client.get_model_metadata(model, **({"as_json": True} if protocol == "grpc" else {}))
    except Exception as e:  # tritonclient raises its own exception types for refused connections and 404s
        raise FcnsegError(f"expected a Triton server serving {model!r} at {url}, got: {one_line(e, 300)}; "
                          "try fcn-serve --model MODEL, or --triton-model NAME") from None
    finally:
        client.close()
    first = meta["inputs"][0]
    name, dtype = first["name"], first["datatype"]
    if dtype not in ("UINT8", "BYTES"):
        raise FcnsegError(f"expected a model taking images (UINT8 HxWx3 or BYTES), got input {name!r} of type "
                          f"{dtype}; try the model fcn-serve serves, or the _image ensemble of fcn-export triton")

    def make(mod: Any, image: np.ndarray) -> List[Any]:
        data = image[None] if dtype == "UINT8" else np.array([[_png(image)]], dtype=object)
        inp = mod.InferInput(name, list(data.shape), dtype)
        inp.set_data_from_numpy(data)
        return [inp]
    return make


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def run_load(url: str, model: str, images: Sequence[np.ndarray], *, concurrency: int,
             requests: int = REQUESTS_PER_CLIENT, protocol: str = "http", timeout: float = 120.0) -> LoadResult:
    """``concurrency`` closed-loop clients, ``requests`` each, cycling through ``images``."""
    module = _client_module(protocol)
    make = request_maker(url, model, protocol)
    latencies: List[float] = []
    errors: List[str] = []
    lock, barrier = threading.Lock(), threading.Barrier(concurrency + 1)

    def client_loop(index: int) -> None:
        client = module.InferenceServerClient(url, **({"network_timeout": timeout} if protocol == "http" else {}))
        payloads = [make(module, images[(index + i) % len(images)]) for i in range(requests)]
        barrier.wait()
        try:
            for inputs in payloads:
                t0 = time.perf_counter()
                try:
                    client.infer(model, inputs, **({"client_timeout": timeout} if protocol == "grpc" else {}))
                    with lock:
                        latencies.append(time.perf_counter() - t0)
                except Exception as e:  # a failed request is counted and reported, not fatal
                    with lock:
                        errors.append(one_line(e, 300))
        finally:
            client.close()

    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    return LoadResult(f"{url}/{model}", concurrency, len(latencies) + len(errors), len(errors), seconds,
                      len(latencies) / seconds, Stats.of(latencies or [float("nan")]),
                      first_error=errors[0] if errors else "")


def inprocess_throughput(seg: Callable[[np.ndarray], Any], images: Sequence[np.ndarray], *,
                         iters: int = 20) -> float:
    """Images per second of one caller running ``seg`` (a loaded ``Segmenter``) on ``images`` one at a time
    (after one warm-up)."""
    seg(images[0])
    start = time.perf_counter()
    for i in range(iters):
        seg(images[i % len(images)])
    return iters / (time.perf_counter() - start)


def bench_triton(url: str, images: Sequence[np.ndarray], *, model: str = "fcnseg",
                 concurrency: Sequence[int] = CONCURRENCY, requests: int = REQUESTS_PER_CLIENT,
                 protocol: str = "http", local_model: Optional[str] = None) -> List[LoadResult]:
    """One warm-up, then each concurrency level; with ``local_model``, the in-process throughput alongside.

    The in-process figure is measured between the levels' runs (before and after, averaged) so that a
    machine's drift in speed hits both sides alike.
    """
    run_load(url, model, images, concurrency=1, requests=2, protocol=protocol)
    results = []
    with (Segmenter.load(local_model) if local_model else contextlib.nullcontext()) as seg:   # loaded once
        for c in concurrency:
            before = inprocess_throughput(seg, images) if seg is not None else None
            result = run_load(url, model, images, concurrency=c, requests=requests, protocol=protocol)
            after = inprocess_throughput(seg, images) if seg is not None else None
            result.inprocess = (before + after) / 2 if before and after else None
            results.append(result)
    return results


def triton_table(results: Sequence[LoadResult]) -> str:
    """Markdown table: clients, requests, failed, images/s, p50/p90/p99 ms, in-process images/s, ratio."""
    rows = ["| clients | requests | failed | images/s | p50 ms | p90 ms | p99 ms | in-process images/s | ratio |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        local = f"{r.inprocess:.1f}" if r.inprocess else "-"
        ratio = f"{r.ratio:.2f}x" if r.ratio else "-"
        rows.append(f"| {r.concurrency} | {r.requests} | {r.failed} | {r.throughput:.1f} | {r.e2e.median:.1f} | "
                    f"{r.e2e.p90:.1f} | {r.e2e.p99:.1f} | {local} | {ratio} |")
    errors = [f"{r.concurrency} clients: {r.first_error}" for r in results if r.first_error]
    return "\n".join(rows + ([f"first errors: {'; '.join(errors)}"] if errors else []))


@dataclass(frozen=True)
class TritonLoad:
    """A load on a Triton server (``fcn-bench --triton``): where, which model, how many clients and requests."""

    url: str
    model: str = "fcnseg"
    concurrency: Sequence[int] = (1, 4, 16)
    requests: int = 20
    protocol: str = "http"


def run_triton_cli(load: TritonLoad, local_models: Sequence[str], shapes: Sequence[Sequence[int]],
                   json_path: Optional[str], force: bool = False) -> None:
    """``fcn-bench --triton URL``: the table on stdout, the results as JSON with ``--json``."""
    if json_path:
        outputs.check_output(json_path, BENCH_JSON, inputs=local_models, force=force, option="--json")

    if len(local_models) > 1:
        raise FcnsegError(f"expected at most one --model to time in-process next to the server, got "
                          f"{len(local_models)}; try the model file the server serves")
    images = synthetic_images([parse_hw(s) for s in shapes])
    results = bench_triton(load.url, images, model=load.model, concurrency=load.concurrency, requests=load.requests,
                           protocol=load.protocol, local_model=local_models[0] if local_models else None)
    click.echo(triton_table(results))
    if json_path:
        write_json(json_path, [r.to_dict() for r in results])
