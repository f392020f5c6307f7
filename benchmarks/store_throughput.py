"""Local store throughput (kept for its command line): `benchmarks.sink_throughput` restricted to
the local sink, without the TensorBoard reference.

    python -m benchmarks.store_throughput [--points 10000 100000 1000000] [--keys 100] [--json OUT]
"""
from __future__ import annotations

import os
import sys
from typing import Any

if not __package__:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import sink_throughput


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    return sink_throughput.main(["--sinks", "local", "--no-reference"] + argv)


if __name__ == "__main__":
    main()
