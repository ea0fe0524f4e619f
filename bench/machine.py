"""What a benchmark ran on: the machine, its load, the versions, the durability setting."""

from __future__ import annotations

import os
import platform
import sqlite3
import time
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("ffrtmp", "fastapi", "uvicorn", "httpx", "SQLAlchemy", "psycopg", "huey", "procrastinate",
            "matplotlib")
SQLITE_DURABILITY = "WAL, synchronous=NORMAL (survives a process crash; the last commits may be lost on power loss)"
PG_DURABILITY = "PostgreSQL defaults: fsync=on, synchronous_commit=on"


def load() -> dict[str, float]:
    """The 1, 5 and 15 minute load averages."""
    one, five, fifteen = os.getloadavg()
    return {"1m": round(one, 2), "5m": round(five, 2), "15m": round(fifteen, 2)}


def cpu_seconds() -> float:
    """CPU time (user + system) of every process on the machine so far, from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = sum(int(v) for v in fields[:3]) + sum(int(v) for v in fields[5:8])  # user nice system irq softirq steal
    return ticks / os.sysconf("SC_CLK_TCK")


def busy_cores(began_cpu: float, began_wall: float) -> float:
    """Cores kept busy on average since (`cpu_seconds()`, `time.monotonic()`) were taken."""
    wall = time.monotonic() - began_wall
    return round((cpu_seconds() - began_cpu) / wall, 2) if wall > 0 else 0.0


def versions() -> dict[str, str]:
    """Versions of Python, SQLite and the packages that matter here."""
    found = {"python": platform.python_version(), "sqlite": sqlite3.sqlite_version}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def describe() -> dict[str, Any]:
    """The machine: cores, memory, platform, CPU model."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return {"cpus": os.cpu_count(), "cpu": model, "memory_gib": round(pages / 2**30, 1),
            "platform": platform.platform()}


def rss_kib(pid: int) -> dict[str, int]:
    """Current (VmRSS) and peak (VmHWM) resident memory of a process, in KiB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    return {"rss_kib": found.get("VmRSS", 0), "peak_rss_kib": found.get("VmHWM", 0)}


def process_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process and its reaped children used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")
