"""The ``capture=`` run option: which automatic capture a run does."""
from __future__ import annotations

from typing import Any, Mapping

NAMES = frozenset({"loss", "optimizer", "timing"})


def parse_capture(value: Any) -> frozenset[str]:
    """The set of capture names `value` asks for.

    None or True: everything ("loss", "optimizer", "timing"). False or an empty collection:
    nothing (no patches, no hooks; `watch` is ignored). A name or a collection of names: those.
    A mapping of names to booleans: everything, with the names mapped to False left out.
    """
    if value is None or value is True:
        return NAMES
    if value is False:
        return frozenset()
    if isinstance(value, str):
        names = {value}
    elif isinstance(value, Mapping):
        for key, on in value.items():
            if not isinstance(on, bool):
                raise TypeError(f"capture: expected {key!r}: True/False, got {on!r}")
        _check(value.keys())
        return frozenset(n for n in NAMES if value.get(n, True))
    else:
        try:
            names = set(value)
        except TypeError:
            raise TypeError(f"capture: expected None, a bool, a name or a collection of names "
                            f"among {sorted(NAMES)}, got {value!r}") from None
    _check(names)
    return frozenset(names)


def _check(names: Any) -> None:
    unknown = sorted(str(n) for n in names if n not in NAMES)
    if unknown:
        raise ValueError(f"capture: unknown name(s) {', '.join(map(repr, unknown))}; "
                         f"expected some of {', '.join(sorted(NAMES))}")
