"""fcnseg's serving stage: run exported models on a real Triton Inference Server.

``TritonServer`` starts the ``tritonserver`` that the ``nvidia-pytriton`` wheel bundles (with its Python
backend) on a model repository written by ``fcnseg.export.triton``, waits until it is ready and stops it;
``serve_model`` writes a repository for one model and returns the server (``fcn-serve`` is its CLI).
pytriton pins numpy < 2, so it lives in its own environment (``.venv-triton``, made by ``make test``);
``TritonInstall.find`` locates it. Only the standard library is imported here.

Example:
    >>> from fcnseg.serve import serve_model
    >>> with serve_model("model.onnx") as server:      # 127.0.0.1, free ports
    ...     server.wait_ready()
    ...     print(server.http_url)
"""

from .server import TritonInstall, TritonServer, free_port, serve_model

__all__ = ["TritonInstall", "TritonServer", "free_port", "serve_model"]
