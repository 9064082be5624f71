"""Shared skip fixture for tests that need real TensorRT and a CUDA GPU (marked ``@pytest.mark.tensorrt``)."""

import pytest


@pytest.fixture(scope="session")
def tensorrt_gpu():
    """The real ``tensorrt`` module; skips with the reason when TensorRT, CUDA bindings or a GPU are missing."""
    from fcnseg.runtime.backends.cuda_memory import load_cuda_memory
    from fcnseg.runtime.backends.tensorrt import import_tensorrt
    from fcnseg.runtime.errors import FcnsegError

    try:
        trt = import_tensorrt()
        load_cuda_memory()
    except FcnsegError as e:
        pytest.skip(f"needs TensorRT and a CUDA GPU: {e}")
    return trt
