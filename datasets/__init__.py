"""Datasets on disk: the VOC layout reader, synthetic data in that layout, and the checks run before training.

numpy and Pillow only (no torch): ``fcnseg.train`` wraps these readers in torch datasets, ``fcnseg.export``
calibrates on them and ``fcnseg.eval`` scores on them.
"""
