"""What every result file records about itself: the command, the machine and when it ran."""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import torch

import relist


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def stamp(result: dict) -> dict:
    """``result`` with the command line, machine, relist version and finishing time in front."""
    return {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "machine": machine(),
            "relist": relist.__version__, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **result}


def write_stamped(result: dict, path: str | Path) -> Path:
    """Write ``stamp(result)`` as JSON to ``path`` (parents made): what every `relist eval ...` leaves behind."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stamp(result), indent=2, default=float))
    return path
