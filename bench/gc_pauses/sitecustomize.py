"""Log every garbage collection's pause, per process, for benchmark runs.

Put this directory on PYTHONPATH and name a directory in GC_PAUSES_DIR; every Python process
started with both (the benchmark, the worker, the development server) writes
`gc.<pid>.log` there: its command line, then one line per collection of generation 1 or 2,
or of any generation that took 5 ms or more (wall time, generation, milliseconds, objects
collected).

    mkdir -p /tmp/gc && GC_PAUSES_DIR=/tmp/gc PYTHONPATH=bench/gc_pauses \
        .venv/bin/python bench/sync.py --only engine
"""

from __future__ import annotations

import gc
import os
import sys
import time
from typing import Any

_directory = os.environ.get("GC_PAUSES_DIR")
if _directory:
    _log = open(os.path.join(_directory, f"gc.{os.getpid()}.log"), "w", buffering=1)  # noqa: SIM115
    _log.write(" ".join(sys.argv) + "\n")
    _started = [0.0]

    def _pause(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            _started[0] = time.perf_counter()
            return
        pause = time.perf_counter() - _started[0]
        if info["generation"] >= 1 or pause >= 0.005:
            _log.write(
                f"{time.time():.3f} gen{info['generation']} {pause * 1000:.1f}ms"
                f" collected={info['collected']}\n"
            )

    gc.callbacks.append(_pause)
