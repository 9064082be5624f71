"""Datasets on disk: the layouts users bring (VOC, CVAT, Cityscapes, ADE20K, folder pairs) read through one API,
synthetic data, conversion from polygon annotations, and the checks run before training.

numpy and Pillow only (no torch): ``fcnseg.train`` wraps these readers in torch datasets, ``fcnseg.export``
calibrates on them and ``fcnseg.eval`` scores on them.
"""

from ..core.class_map import ClassMap
from ..core.data_source import DataSource
from .layouts import LAYOUTS, PairDataset, detect_layout, for_model, open_dataset, take

__all__ = ["ClassMap", "DataSource", "LAYOUTS", "PairDataset", "detect_layout", "for_model", "open_dataset", "take"]
