"""PyTorch backend (found by the runtime through the ``fcnseg.backends`` entry point): the training checkpoint itself, as the reference the exported models are compared with.

Not for deployment (it needs torch and torchvision). One lock serialises ``infer``: an ``nn.Module``
may be called from several threads, but the timing record and CUDA synchronisation are simpler to reason
about one call at a time, and a reference backend need not be fast.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Dict, Optional, Union

import numpy as np

import torch

from ..runtime.backends.base import BaseBackend
from .checkpoint import model_from_checkpoint


class PyTorchBackend(BaseBackend):
    """Runs ``model(x)["out"]`` of a checkpoint written by ``fcn-train`` (CUDA when available).

    Args:
        checkpoint: a ``.pth`` file readable by ``fcnseg.train.checkpoint.model_from_checkpoint``.
        device: "cpu", "cuda", ...; None picks CUDA when available.
        num_threads: ``torch.set_num_threads`` (process-wide) when given.
    """

    name = "pytorch"
    thread_safe = False

    def __init__(self, checkpoint: Union[str, "os.PathLike[str]"], *, device: Optional[str] = None,
                 num_threads: Optional[int] = None) -> None:
        super().__init__()
        if num_threads:
            torch.set_num_threads(int(num_threads))
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model, ckpt = model_from_checkpoint(checkpoint)
        self.model = model.to(self.device).eval()
        metadata = ckpt.metadata()
        metadata.argmax = False
        self.metadata = metadata
        self._lock = threading.Lock()

    def _infer(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        """Run one checked NCHW float32 batch; return ``{"logits": (N, C, h, w) float32}``."""
        with self._lock, torch.inference_mode():
            t0 = time.perf_counter()
            x = torch.from_numpy(batch).to(self.device)
            self._sync()
            t1 = time.perf_counter()
            out = self.model(x)["out"]
            self._sync()
            t2 = time.perf_counter()
            logits = out.float().cpu().numpy()
            t3 = time.perf_counter()
            on_gpu = self.device.type != "cpu"
            # On the CPU there is no transfer; report 0 as the other CPU backends do.
            self._set_timing(h2d=t1 - t0 if on_gpu else 0.0, infer=t2 - t1, d2h=t3 - t2 if on_gpu else 0.0)
        return {"logits": logits}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _close(self) -> None:
        """Drop the model and return cached CUDA memory."""
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
