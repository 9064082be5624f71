"""``fcn-serve``: one model on the bundled Triton Inference Server, on one machine, until Ctrl-C."""

from __future__ import annotations

import signal
import sys
from typing import Any, Callable, Dict, Optional

import click

from ..core.cli_args import OneLineCommand, classes_option, force_option, mode_options, packed, precision_hint_option
from ..core.errors import FcnsegError, cli_errors
from .server import TritonInstall, TritonServer, serve_model

CTX = {"help_option_names": ["-h", "--help"], "show_default": True}
PORT = click.IntRange(min=0, max=65535)


def port_options(fn: Callable) -> Callable:
    """``--host`` and the three ports, passed as one ``ports`` dict of ``TritonServer``'s keyword arguments."""
    fn = packed("ports", lambda **p: p, ("host", "http_port", "grpc_port", "metrics_port"))(fn)
    fn = click.option("--metrics-port", type=PORT, default=8002, help="Prometheus metrics port (0: a free one)")(fn)
    fn = click.option("--grpc-port", type=PORT, default=8001, help="gRPC port (0: a free one)")(fn)
    fn = click.option("--port", "http_port", type=PORT, default=8000, help="HTTP port (0: a free one)")(fn)
    return click.option("--host", default="127.0.0.1", help="address every endpoint binds to")(fn)


@click.command(cls=OneLineCommand, context_settings=CTX)
@click.option("--model", "model", type=click.Path(dir_okay=False), help="model file (.onnx, .plan, .pth), "
              "served through fcnseg's Segmenter on Triton's Python backend")
@click.option("--repo", type=click.Path(file_okay=False), help="repository folder: written for --model (kept), "
              "or served as it is without --model [default with --model: a temporary folder]")
@click.option("--name", default="fcnseg", help="model name clients call")
@port_options
@click.option("--max-batch", type=int, default=None, help="largest batch Triton forms [default: 8]")
@click.option("--instances", type=int, default=1, help="model instances (processes)")
@click.option("--max-queue-delay-us", type=int, default=None, help="how long a request waits for a batch "
              "[default: 500]")
@force_option("replace a model folder of that name in --repo")
@mode_options
@precision_hint_option()
@classes_option()
@click.option("--triton-env", type=click.Path(file_okay=False), help="Python environment with nvidia-pytriton "
              "[default: $FCNSEG_TRITON_ENV, the project's .venv-triton, this Python]")
@click.option("--timeout", type=float, default=120.0, help="seconds to wait for the server to be ready")
@cli_errors
def main(model: Optional[str], repo: Optional[str], name: str, ports: Dict[str, Any], max_batch: Optional[int],
         instances: int, max_queue_delay_us: Optional[int], force: bool, mode: Dict[str, Any],
         precision_hint: Optional[str], classes: Optional[str], triton_env: Optional[str], timeout: float) -> None:
    """Serve MODEL over HTTP and gRPC with Triton (dynamic batching, Prometheus metrics) until Ctrl-C.

    \b
    fcn-serve --model model.onnx                      # HTTP :8000, gRPC :8001, metrics :8002
    fcn-serve --repo triton_repo                      # a repository written by fcn-export triton
    """
    if not model and not repo:
        raise FcnsegError("expected --model FILE or --repo DIR, got neither; try fcn-serve -h")
    given = [o for o, v in (("--precision-hint", precision_hint), ("--classes", classes)) if v]
    if given and not model:   # a repository is served as written: its models carry their own settings
        raise FcnsegError(f"expected {' and '.join(given)} with --model FILE, got them with --repo alone; try "
                          f"fcn-serve --model MODEL {' '.join(given)} --repo {repo}")
    ports = dict(ports, install=TritonInstall.find(triton_env), log=sys.stderr)
    if model:
        server = serve_model(model, repo=repo, name=name, max_batch=max_batch, instances=instances,
                             max_queue_delay_us=max_queue_delay_us, force=force, view=mode,
                             precision_hint=precision_hint, classes=classes, **ports)
    else:
        server = TritonServer(repo, **ports)
    for signum in (signal.SIGINT, signal.SIGTERM):   # SIGINT too: a shell starts background jobs ignoring it
        signal.signal(signum, lambda *_: _interrupt())
    try:
        server.start()
        server.wait_ready(timeout)
        click.echo(f"serving {server.repo} on http://{server.http_url} (gRPC {server.grpc_url}, metrics "
                   f"{server.metrics_url}); Ctrl-C stops", err=True)
        code = server.process.wait() if server.process is not None else 1
        raise FcnsegError(f"expected tritonserver to keep running, got exit status {code}; see its log above")
    except KeyboardInterrupt:
        click.echo("stopping", err=True)
    finally:
        server.stop()


def _interrupt() -> None:
    raise KeyboardInterrupt
