"""Where a run ran: recorded in each run's ``metrics.json``.

Results on a CPU depend on more than the seed: the torch thread count changes the order of
floating-point reductions (the README's 0.8-sparsity digits run gives 96.11% with one thread and
95.83% with two), and the CPU model changes kernel choices. A benchmark table collected from runs
trained in several sittings can only say which settings produced it if every run records its own.
"""
from __future__ import annotations

import os
import platform
from typing import Any, Dict

import torch


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_environment(device: Any = "cpu") -> Dict[str, Any]:
    """The settings of this process that can change a run's numbers (CPU, threads, versions)."""
    env: Dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
    }
    if str(device).startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env
