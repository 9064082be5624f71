"""The one step runner and the one report writer of the pipeline (demo, GPU report, CPU benchmark).

Each step is recorded as ok / skipped / error and none stops the others; ``<name>.md`` and
``<name>.json`` are rewritten atomically after every step, so an interrupted run still leaves a readable
report. Steps write their charts (PNG) beside it with ``write_chart``; the Markdown links them. A step
that cannot run here (no TensorRT, no GPU, an earlier step failed) raises ``SkipStage``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..core.atomic import write_bytes, write_text
from ..core.errors import FcnsegError, one_line
from ..core.jsonio import to_jsonable, write_json  # noqa: F401 (re-exported)
from ..eval.tables import format_table


class SkipStage(Exception):
    """A step that cannot run here (no TensorRT, no CUDA, an earlier step failed): recorded as skipped."""


def need(value: Any, what: str) -> Any:
    """``value`` when an earlier step produced it; SkipStage otherwise."""
    if not value:
        raise SkipStage(f"needs {what}, which an earlier step did not produce")
    return value


@dataclass
class StageRecord:
    """How one step went: status "ok", "skipped" or "error", its time and (for errors) the traceback."""

    name: str
    status: str = "running"
    seconds: float = 0.0
    message: str = ""
    traceback: str = ""


@dataclass
class Report:
    """Everything a run found: step records, JSON data per step, readable tables and images.

    Attributes:
        name: file stem of the report (``report``, ``gpu_report``, ``cpu_speed``).
        title: the Markdown title; ``intro`` lines follow it.
        failures: what makes the run fail besides an erroring step (e.g. models outside parity tolerance).
    """

    name: str
    title: str
    config: Dict[str, Any] = field(default_factory=dict)
    intro: List[str] = field(default_factory=list)
    started: str = field(default_factory=lambda: datetime.datetime.now().isoformat(timespec="seconds"))
    stages: List[StageRecord] = field(default_factory=list)
    data: Dict[str, Any] = field(default_factory=dict)
    tables: List[Tuple[str, str, str]] = field(default_factory=list)   # (step, title, text)
    images: List[Tuple[str, str, str]] = field(default_factory=list)   # (step, alt, path relative to the report)
    failures: List[str] = field(default_factory=list)

    def add(self, stage: str, data: Any = None, tables: Sequence[Tuple[str, str]] = (),
            images: Sequence[Tuple[str, str]] = ()) -> None:
        """Record a step's data (JSON side), tables and images (readable side)."""
        if data is not None:
            self.data[stage] = data
        self.tables += [(stage, title, text) for title, text in tables]
        self.images += [(stage, alt, path) for alt, path in images]

    @property
    def exit_code(self) -> int:
        """1 when something failed (see ``failures``) or a step raised, else 0."""
        return int(bool(self.failures) or any(s.status == "error" for s in self.stages))

    def to_dict(self) -> Dict[str, Any]:
        return {"config": self.config, "started": self.started, "exit_code": self.exit_code,
                "failures": self.failures, "stages": [dataclasses.asdict(s) for s in self.stages],
                "data": self.data}


Step = Tuple[str, Callable[..., None]]


def run_steps(steps: Sequence[Step], cfg: Any, art: Any, report: Report, out: Path) -> Report:
    """The one step runner: each ``fn(cfg, art, report)`` in order, recorded, the report rewritten after each."""
    out.mkdir(parents=True, exist_ok=True)
    for i, (name, fn) in enumerate(steps, 1):
        rec = StageRecord(name)
        report.stages.append(rec)
        prefix = f"[{i}/{len(steps)}] "
        echo(f"{prefix}{name} ...")
        t0 = time.perf_counter()
        try:
            fn(cfg, art, report)
            rec.status = "ok"
        except SkipStage as e:
            rec.status, rec.message = "skipped", str(e)
        except Exception as e:  # any failure: recorded, and the other steps still run
            rec.status, rec.message, rec.traceback = "error", error_message(e), traceback.format_exc()
        finally:
            rec.seconds = time.perf_counter() - t0
            echo(f"{prefix}{name}: {rec.status} ({rec.seconds:.1f} s){': ' + rec.message if rec.message else ''}")
            write_report(report, out)
    return report


def error_message(e: BaseException) -> str:
    """A step's error on one line: our own messages as they are, others with their type."""
    return one_line(e) if isinstance(e, FcnsegError) else f"{type(e).__name__}: {one_line(e)}"


def render_markdown(report: Report) -> str:
    """The report as Markdown: the step summary, then each step's tables and images."""
    lines = [f"# {report.title}", "", *report.intro, f"started {report.started}; exit code {report.exit_code}", "",
             "```text", format_table(["step", "status", "s", "note"],
                                     [[s.name, s.status, s.seconds, s.message[:120]] for s in report.stages]), "```"]
    if report.failures:
        lines += ["", "**Failed:** " + ", ".join(report.failures)]
    for s in report.stages:
        lines += ["", f"## {s.name}: {s.status} ({s.seconds:.1f} s)"]
        if s.message:
            lines += ["", f"> {s.message}"]
        lines += [part for stage, title, text in report.tables if stage == s.name
                  for part in ("", f"{title}:", "", "```text", text, "```")]
        lines += [part for stage, alt, path in report.images if stage == s.name for part in ("", f"![{alt}]({path})")]
    lines += ["", "## configuration", "", "```json", json.dumps(to_jsonable(report.config), indent=2), "```", ""]
    return "\n".join(lines)


def write_report(report: Report, out_dir: Path) -> Tuple[Path, Path]:
    """Write ``<name>.md`` and ``<name>.json`` in ``out_dir``, each atomically."""
    out = Path(out_dir)
    md, js = out / f"{report.name}.md", out / f"{report.name}.json"
    write_json(js, report.to_dict())
    write_text(md, render_markdown(report))
    return md, js


def write_chart(out_dir: Path, name: str, png: bytes) -> str:
    """Write a chart (``fcnseg.eval.plots``) atomically into the report's folder; returns the path the report
    links, relative to it, for ``Report.add(images=...)``."""
    write_bytes(Path(out_dir) / name, png)
    return name


def echo(text: str) -> None:
    """Progress on stderr, above any tqdm bar."""
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr)


def parse_list(text: str, parse: Callable[[str], Any], what: str) -> tuple:
    """``"a,b"`` -> ``(parse("a"), parse("b"))``; FcnsegError naming ``what`` when an item does not parse."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        return tuple(parse(t) for t in items)
    except ValueError:
        raise FcnsegError(f"expected a comma-separated list of {what}, got {text!r}") from None


def optional_path(value: Optional[str]) -> Optional[Path]:
    return Path(value) if value else None
