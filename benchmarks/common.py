"""Helpers shared by the benchmarks: the machine's description and markdown tables."""
from __future__ import annotations

import os
import platform
import statistics
from typing import Any, Sequence


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str = "cpu") -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch

    info: dict[str, Any] = {
        "cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    try:
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def describe(info: dict[str, Any]) -> str:
    text = f"{info['cpu']}, {info['cores']} cores, {info['torch_threads']} torch thread(s), " \
           f"Python {info['python']}, torch {info['torch']}"
    if "gpu" in info:
        text += f", GPU {info['gpu']}"
    if "load_avg_1m" in info:
        text += f", load average {info['load_avg_1m']} at start"
    return text


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A markdown table; `align` is one character per column, "l" or "r" (default: first l)."""
    align = align or "l" + "r" * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def finish(results: dict[str, Any], json_path: str | None) -> dict[str, Any]:
    """Write `results` to `json_path` (when given) and return them: every benchmark's last step."""
    if json_path:
        import json

        with open(json_path, "w") as fh:
            json.dump(results, fh, indent=1)
    return results
