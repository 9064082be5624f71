"""Stand-ins for libraries that need a GPU (TensorRT, CUDA), shaped after the real APIs, not after our calls.

Each module says which real sources it mirrors. Test modules import them as ``tests.fakes.<name>`` (pytest's
importlib mode registers the ``tests`` package); code outside pytest loads them by file path.
"""
