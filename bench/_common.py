"""Helpers shared by the benchmark scripts (run as ``python bench/<name>.py``)."""

from __future__ import annotations

import os
from pathlib import Path


def cpu_name() -> str:
    """``"<model name>, N logical CPUs"`` from /proc/cpuinfo (Linux), for naming the device."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} logical CPUs"
    except OSError:
        pass
    return f"unknown CPU, {os.cpu_count()} logical CPUs"
