"""Evaluation: the one confusion-matrix metric, backend parity, and ``fcn-eval`` over any model file.

Training, export (INT8 accuracy), the benchmarks and the CLIs share these.
"""
