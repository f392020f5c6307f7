"""Secrets never leave the process: config keys that name secrets, values in well-known key
formats, and every literal secret seen once are replaced by ``***`` before anything is stored."""
from __future__ import annotations

import re
from typing import Any, Iterable

MASK = "***"

# Key segments (split on _ - . / and camelCase) that always mark a secret.
_SECRET_WORDS = {
    "password", "passwd", "pwd", "passphrase", "secret", "secrets", "token", "apikey",
    "credential", "credentials", "auth", "authorization", "cookie", "bearer", "privatekey",
    "secretkey", "accesskey", "sessionkey", "clientsecret", "dsn",
}
# A segment "key"/"keys" preceded by one of these marks a secret ("api_key", "access_key").
_KEY_PREFIXES = {"api", "access", "secret", "private", "auth", "encryption", "signing", "ssh",
                 "client", "session", "license", "master", "service"}

# Well-known secret formats inside any string value.
VALUE_PATTERNS = [re.compile(p) for p in (
    r"\bsk-[A-Za-z0-9_-]{8,}",                        # OpenAI-style
    r"\b(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{8,}",  # Stripe
    r"\bAKIA[0-9A-Z]{16}\b",                          # AWS access key id
    r"\bgh[pousr]_[A-Za-z0-9]{20,}",                  # GitHub tokens
    r"\bgithub_pat_[A-Za-z0-9_]{20,}",
    r"\bxox[abprs]-[A-Za-z0-9-]{10,}",                # Slack
    r"\bAIza[0-9A-Za-z_-]{35}",                       # Google API key
    r"\bhf_[A-Za-z0-9]{20,}",                         # Hugging Face
    r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+",  # JWT
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)",
)]
# scheme://user:password@host -> keep the user and host, mask the password.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]+:)(?P<pw>[^\s@/]+)(?=@)")
# --api-key VALUE / --password=VALUE on a command line.
_FLAG = re.compile(r"^--?(?P<name>[A-Za-z0-9_.-]+)(?:=(?P<value>.*))?$")

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SPLIT = re.compile(r"[^A-Za-z0-9]+")


def _segments(key: str) -> list[str]:
    return [s.lower() for s in _SPLIT.split(_CAMEL.sub("_", key)) if s]


def key_is_secret(key: str) -> str | None:
    """How surely the last component of a (dotted) config key names a secret.

    "strong" ("password", "api_key", "hf_token"): any value but booleans is masked;
    "weak" (any other "..._key", e.g. "openai_key"): string values are masked; None: not a secret.
    """
    segs = _segments(str(key).rsplit(".", 1)[-1])
    if any(s in _SECRET_WORDS for s in segs) or any(a + b in _SECRET_WORDS for a, b in zip(segs, segs[1:])):
        return "strong"
    for i, seg in enumerate(segs):
        if seg in ("key", "keys") and i > 0 and segs[i - 1] in _KEY_PREFIXES:
            return "strong"
    if segs and segs[-1] in ("key", "keys"):
        return "weak"
    return None


class Redactor:
    """Masks secrets in config dicts and strings; remembers each secret it masked so the same
    literal is masked wherever it shows up later (a command line, an exception message)."""

    def __init__(self, extra: Iterable[Any] = ()) -> None:
        self.extra = []
        for pattern in extra:
            if isinstance(pattern, str):
                pattern = re.compile(pattern, re.IGNORECASE)
            if not hasattr(pattern, "search"):
                raise TypeError(f"redact: expected regular expressions (str or re.Pattern), got {pattern!r}")
            self.extra.append(pattern)
        self.literals: set[str] = set()

    def key_matches(self, key: str, value: Any = "") -> bool:
        """Whether the value under `key` must be masked."""
        if value is None or isinstance(value, bool):
            return False
        if any(p.search(key) for p in self.extra):
            return True
        strength = key_is_secret(key)
        return strength == "strong" or (strength == "weak" and isinstance(value, (str, bytes)))

    def _remember(self, value: Any) -> None:
        if isinstance(value, str) and len(value) >= 6:
            self.literals.add(value)

    def text(self, value: str) -> str:
        """`value` with every known secret literal and well-known key format masked."""
        if not isinstance(value, str) or not value:
            return value
        for literal in sorted(self.literals, key=len, reverse=True):
            if literal in value:
                value = value.replace(literal, MASK)
        for pattern in VALUE_PATTERNS:
            value = pattern.sub(MASK, value)
        return _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, value)

    def config(self, flat: dict[str, Any]) -> dict[str, Any]:
        """A copy of a flattened config with secret keys and secret-looking values masked."""
        out: dict[str, Any] = {}
        for key, value in flat.items():
            if self.key_matches(key, value):
                if isinstance(value, str) and value in ("", MASK):
                    out[key] = value
                    continue
                self._remember(value)
                out[key] = MASK
            else:
                out[key] = value
        for key, value in out.items():
            if isinstance(value, str):
                out[key] = self.text(value)
            elif isinstance(value, list):
                out[key] = [self.text(v) if isinstance(v, str) else v for v in value]
        return out

    def argv(self, argv: list[str]) -> list[str]:
        """A command line with the values of secret-named flags masked."""
        out, mask_next = [], False
        for arg in argv:
            if mask_next:
                self._remember(arg)
                out.append(MASK)
                mask_next = False
                continue
            m = _FLAG.match(arg)
            if m and self.key_matches(m.group("name")):
                if m.group("value") is None:
                    mask_next = True
                    out.append(arg)
                else:
                    self._remember(m.group("value"))
                    out.append(arg.split("=", 1)[0] + "=" + MASK)
                continue
            out.append(arg)
        return [self.text(a) for a in out]

    def deep(self, value: Any) -> Any:
        """Strings inside nested dicts/lists masked (for meta)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.deep(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.deep(v) for v in value]
        return value
