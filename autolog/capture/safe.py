"""Never break the host: capture code runs through `Guard.call`, which catches, reports once,
and turns the failed feature off for the rest of the run. The host's own exceptions (from the
wrapped call) always propagate, because the wrapped call never runs inside a guard."""
from __future__ import annotations

import sys
from typing import Any, Callable

from autolog.core import user_warnings
from autolog.core.redact import scrub
from autolog.core.user_warnings import flush_warnings, warn_user  # noqa: F401 -- capture's API
from autolog.core.validate import clean_text, safe_str


class Guard:
    """Per-run kill switches, one per feature name."""

    def __init__(self, meta: dict[str, Any] | None = None,
                 on_fail: Callable[[str], None] | None = None) -> None:
        self.off: set[str] = set()
        self.meta = meta  # the run's meta: failures are recorded under "capture_errors"
        self.on_fail = on_fail  # told the name of a feature that just turned off

    def call(self, feature: str, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)`, or None when the feature is off or `fn` raises (which turns it off)."""
        if user_warnings.deferred:
            flush_warnings()
        if feature in self.off:
            return None
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 -- instrumentation must never break training
            self.fail(feature, exc)
            return None

    def fail(self, feature: str, exc: BaseException) -> None:
        if feature in self.off:
            return
        self.off.add(feature)
        detail = scrub(clean_text(f"{type(exc).__name__}: {safe_str(exc)}"))
        if self.meta is not None:
            self.meta.setdefault("capture_errors", {})[feature] = detail
        print(f"autolog: automatic capture of {feature} failed and is off for this run; "
              f"training goes on. {detail}", file=sys.stderr)
        if self.on_fail is not None:
            self.on_fail(feature)
