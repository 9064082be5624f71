"""Where a command reads a dataset: its folder, and optionally its layout and class file.

The CLI option layer builds one from ``--data-path``/``--calib-data``, ``--layout`` and ``--classes``
(``cli_args.dataset_options``); ``fcnseg.datasets.open_dataset`` opens a split of it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Union


# The dataset layouts fcnseg reads (fcnseg.datasets.layouts; docs/datasets.md): cvat is VOC with a labelmap.
LAYOUTS = ("voc", "cvat", "cityscapes", "ade20k", "folder")


@dataclass(frozen=True)
class DataSource:
    """A dataset folder; ``layout`` None: detected; ``classes`` None: the layout's own class map."""

    root: str
    layout: Optional[str] = None
    classes: Optional[str] = None

    def __str__(self) -> str:
        return self.root

    def __fspath__(self) -> str:
        return self.root


SourceLike = Union[str, "os.PathLike[str]", DataSource]


def as_source(value: SourceLike) -> DataSource:
    """A ``DataSource`` from a path (layout detected, the layout's classes) or one as it is."""
    return value if isinstance(value, DataSource) else DataSource(os.fspath(value))
