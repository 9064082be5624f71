"""Board power while benchmarking on a Jetson (``fcn-bench --power``): tegrastats, or the INA3221 rails in sysfs.

A ``PowerMonitor`` samples in a thread from before the first model loads until the benchmark ends, each
sample stamped with ``time.perf_counter()``. The benchmark records the time windows in which each model ran
(``bench_shape(..., power=monitor)``); a model's average power is the mean of the samples inside its
windows, and its energy per image is that power times its windows' length divided by the images it
segmented. Power is the board's input rail where the board has one (``VDD_IN`` on Orin/Xavier NX/TX2,
``POM_5V_IN`` on Nano/TX1), else the sum of the rails (AGX Xavier, AGX Orin). tegrastats writes
``NAME now/avg`` per rail, in mW, with an ``mW`` unit from JetPack 5 on and without one before.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..core.errors import FcnsegError
from ..eval.tables import format_table

INPUT_RAILS = ("VDD_IN", "POM_5V_IN")   # the board's or module's input: its total draw
DEFAULT_INTERVAL_MS = 100
SYSFS_ROOT = "/sys/bus/i2c/drivers"
_RAIL = re.compile(r"(?<![\w@])([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?=\s|$)")


def parse_tegrastats(line: str) -> Dict[str, float]:
    """Instantaneous mW per power rail in one tegrastats line ({} when the line has none)."""
    return {name: float(now) for name, now, _ in _RAIL.findall(line)}


def total_power_mw(rails: Dict[str, float]) -> Tuple[float, str]:
    """(mW, what it is): the input rail where there is one, else the sum of the rails."""
    for name in INPUT_RAILS:
        if name in rails:
            return rails[name], name
    return sum(rails.values()), "sum of " + "+".join(sorted(rails))


@dataclass(frozen=True)
class PowerSample:
    t: float                  # time.perf_counter() when the sample was read
    rails: Dict[str, float]   # mW per rail


class PowerMonitor:
    """Samples power in a background thread until ``close``; a context manager. Subclasses implement ``_run``."""

    source = "power"

    def __init__(self, interval_ms: int = DEFAULT_INTERVAL_MS) -> None:
        if interval_ms < 1:
            raise FcnsegError(f"expected a power sampling interval >= 1 ms, got {interval_ms}; try 100")
        self.interval_ms = int(interval_ms)
        self.samples: List[PowerSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fcnseg-power", daemon=True)
        self._thread.start()

    def _run(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _add(self, rails: Dict[str, float]) -> None:
        if rails:
            self.samples.append(PowerSample(time.perf_counter(), rails))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def __enter__(self) -> "PowerMonitor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def summarize(self, windows: Sequence[Tuple[float, float]], images: int) -> Dict[str, Optional[float]]:
        """Average W, energy per image (mJ), samples and seconds over the (start, end) perf_counter windows."""
        inside = [s for s in list(self.samples) if any(a <= s.t <= b for a, b in windows)]
        seconds = sum(b - a for a, b in windows)
        rate = images / seconds if seconds > 0 else None   # the throughput the energy belongs to (mean, not median)
        if not inside or images <= 0:
            return {"avg_w": None, "energy_mj_per_image": None, "samples": len(inside), "seconds": seconds,
                    "images_per_s": rate, "rail": None}
        watts = [total_power_mw(s.rails)[0] / 1e3 for s in inside]
        avg = sum(watts) / len(watts)
        return {"avg_w": avg, "energy_mj_per_image": avg * seconds / images * 1e3, "samples": len(inside),
                "seconds": seconds, "images_per_s": rate, "rail": total_power_mw(inside[-1].rails)[1]}


class TegrastatsMonitor(PowerMonitor):
    """``tegrastats --interval MS`` read through a pseudo-terminal, so each line arrives when it is printed."""

    source = "tegrastats"

    def __init__(self, executable: str, interval_ms: int = DEFAULT_INTERVAL_MS) -> None:
        import pty

        master, slave = pty.openpty()
        try:
            self._proc = subprocess.Popen([executable, "--interval", str(int(interval_ms))], stdout=slave,
                                          stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, close_fds=True)
        except OSError as e:
            os.close(master)
            raise FcnsegError(f"could not start {executable!r} ({e}); expected JetPack's tegrastats") from None
        finally:
            os.close(slave)
        self._fd = master
        super().__init__(interval_ms)

    def _run(self) -> None:
        buffer = b""
        while not self._stop.is_set():
            try:
                chunk = os.read(self._fd, 4096)
            except OSError:   # EIO: the process ended and the terminal closed
                break
            if not chunk:
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                self._add(parse_tegrastats(line.decode("utf-8", "replace")))

    def close(self) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        super().close()
        os.close(self._fd)


def find_sysfs_rails(root: str = SYSFS_ROOT) -> Dict[str, Callable[[], float]]:
    """INA3221 rails as {name: read mW}: hwmon (JetPack 5+: in*_label, in*_input mV, curr*_input mA) or
    iio (JetPack 4: rail_name_*, in_power*_input mW)."""
    rails: Dict[str, Callable[[], float]] = {}
    for label in sorted(glob.glob(f"{root}/ina3221/*/hwmon/hwmon*/in*_label")):
        path = Path(label)
        n = path.name[2:-len("_label")]
        volts, amps = path.with_name(f"in{n}_input"), path.with_name(f"curr{n}_input")
        if volts.is_file() and amps.is_file():
            rails[path.read_text().strip()] = lambda v=volts, a=amps: _read(v) * _read(a) / 1e3
    for name_file in sorted(glob.glob(f"{root}/ina3221x/*/iio:device*/rail_name_*")):
        path = Path(name_file)
        power = path.with_name("in_power" + path.name[len("rail_name_"):] + "_input")
        if power.is_file():
            rails[path.read_text().strip()] = lambda p=power: _read(p)
    return rails


def _read(path: Path) -> float:
    return float(path.read_text().strip())


class SysfsMonitor(PowerMonitor):
    """Reads the INA3221 rails every interval (when tegrastats is absent, e.g. in a container)."""

    source = "INA3221 sysfs"

    def __init__(self, rails: Dict[str, Callable[[], float]], interval_ms: int = DEFAULT_INTERVAL_MS) -> None:
        self._rails = rails
        super().__init__(interval_ms)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._add({name: read() for name, read in self._rails.items()})
            except (OSError, ValueError):   # a rail that vanished or reads garbage: skip this sample
                pass
            self._stop.wait(self.interval_ms / 1e3)


def open_power_monitor(interval_ms: int = DEFAULT_INTERVAL_MS, *, sysfs_root: str = SYSFS_ROOT) -> PowerMonitor:
    """tegrastats when it is on PATH, else the INA3221 rails in sysfs; FcnsegError where neither exists."""
    executable = shutil.which("tegrastats")
    if executable:
        return TegrastatsMonitor(executable, interval_ms)
    rails = find_sysfs_rails(sysfs_root)
    if rails:
        return SysfsMonitor(rails, interval_ms)
    raise FcnsegError(f"expected tegrastats on PATH or INA3221 power rails under {sysfs_root}/ina3221*, got neither; "
                      "--power measures a Jetson's board power: run it on a Jetson (JetPack ships tegrastats)")


def power_mode() -> str:
    """What ``nvpmodel -q`` reports ("MAXN (mode 0)"), or why it is unknown."""
    exe = shutil.which("nvpmodel")
    if exe is None:
        return "unknown (no nvpmodel)"
    try:
        out = subprocess.run([exe, "-q"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({type(e).__name__})"
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("NV Power Mode")), None)
    mode = next((line for line in lines if line.isdigit()), None)
    return f"{name} (mode {mode})" if name and mode else (name or "unknown")


def power_table(results: Sequence, monitor: PowerMonitor) -> str:
    """Per model: images/s next to average power and energy per image, under a line naming the source.

    "img/s" is the benchmark's (median latency); "img/s all" counts every image over the model's whole blocks,
    the rate the energy per image belongs to (mJ/img = avg W / img/s all).
    """
    rows = []
    for r in results:
        p = r.extra.get("power") or {}
        rows.append([r.label or Path(r.model).name, r.precision, "x".join(map(str, r.shape)), r.batch, r.images_per_s,
                     p.get("images_per_s"), p.get("avg_w"), p.get("energy_mj_per_image"), p.get("samples", 0)])
    rail = next((r.extra["power"]["rail"] for r in results if (r.extra.get("power") or {}).get("rail")), "no samples")
    head = (f"power: {monitor.source} every {monitor.interval_ms} ms, {rail}; nvpmodel: {power_mode()} "
            "(pin clocks with `sudo jetson_clocks` for repeatable figures)")
    table = format_table(["model", "prec", "shape", "batch", "img/s", "img/s all", "avg W", "mJ/img", "samples"], rows)
    few = [row[0] for row in rows if row[-1] < 3]
    note = (f"\nfewer than 3 power samples for {', '.join(few)}: raise --iters or lower --power-interval"
            if few else "")
    return f"{head}\n{table}{note}"
