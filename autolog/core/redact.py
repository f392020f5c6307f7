"""Secrets never leave the process. The rule, in one place (the README's "Secrets" says the same):

1. Config: a value is masked (``***``) when any part of its key path names a secret: the last
   part ("password", "api_key", "hf_token"...: any value but booleans and None; a weak name
   such as "openai_key" or "db_pass": strings only), or any parent part (``creds.credentials.pass``,
   ``secrets.db``, ``tokens.0.value``: the whole subtree under "credentials", "secrets",
   "tokens"), or a key matching a ``redact=`` pattern. Command-line flags named like secrets
   (``--api-key X``, ``--password=X``) are masked the same way.
2. Every literal masked once (strings of any length, integers of 6 digits or more; under a name
   that is secret only by ending in "key", like "sort_key", strings of 6 characters or more) is scrubbed
   from every text autolog writes afterwards: exception messages and tracebacks, texts
   (`log_text`), meta (sink and capture errors included), the console summary and what autolog
   prints on stderr. Literals of 4 characters or more are replaced wherever they occur; shorter
   ones where they stand as a word (so that a 2-character secret does not erase every "ab").
3. In any text: well-known key formats (OpenAI/Stripe/AWS/GitHub/Slack/Google/Hugging Face keys,
   JWTs, PEM private keys) and the password of a URL (``scheme://user:pass@host`` ->
   ``scheme://user:***@host``) are masked.
"""
from __future__ import annotations

import re
import threading
import weakref
from typing import Any, Iterable

from autolog.core.validate import clean_text

MASK = "***"

# Key segments (split on _ - . / and camelCase) that always mark a secret.
_SECRET_WORDS = {
    "password", "passwd", "pwd", "passphrase", "secret", "secrets", "token", "apikey",
    "credential", "credentials", "auth", "authorization", "cookie", "bearer", "privatekey",
    "secretkey", "accesskey", "sessionkey", "clientsecret", "dsn", "creds", "cred",
}
# Weak words: string values are masked ("db_pass", "pass").
_WEAK_WORDS = {"pass", "pw"}
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
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)(?P<pw>[^\s@/]+)(?=@)")
# --api-key VALUE / --password=VALUE on a command line.
_FLAG = re.compile(r"^--?(?P<name>[A-Za-z0-9_.-]+)(?:=(?P<value>.*))?$")

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SPLIT = re.compile(r"[^A-Za-z0-9]+")


def _segments(key: str) -> list[str]:
    return [s.lower() for s in _SPLIT.split(_CAMEL.sub("_", key)) if s]


def key_is_secret(key: str) -> str | None:
    """How surely the last component of a (dotted) config key names a secret.

    "strong" ("password", "api_key", "hf_token", "tokens"): any value but booleans is masked;
    "weak" (any other "..._key", e.g. "openai_key", or "db_pass"): string values are masked;
    None: not a secret.
    """
    return _component_is_secret(str(key).rsplit(".", 1)[-1])


def _component_is_secret(component: str) -> str | None:
    segs = _segments(component)
    if any(s in _SECRET_WORDS for s in segs) or any(a + b in _SECRET_WORDS for a, b in zip(segs, segs[1:])):
        return "strong"
    if len(segs) == 1 and segs[0].endswith("s") and segs[0][:-1] in _SECRET_WORDS:  # "tokens", "passwords"
        return "strong"
    for i, seg in enumerate(segs):
        if seg in ("key", "keys") and i > 0 and segs[i - 1] in _KEY_PREFIXES:
            return "strong"
    if segs and (segs[-1] in ("key", "keys") or segs[-1] in _WEAK_WORDS):
        return "weak"
    return None


def parent_is_secret(key: str) -> bool:
    """Whether a parent part of the dotted key path names a secret (its whole subtree is masked)."""
    parts = str(key).split(".")[:-1]
    return any(_component_is_secret(p) == "strong" for p in parts)


# Every live Redactor (one per open run): `scrub` applies them all to text bound for stderr.
_live: "weakref.WeakSet[Redactor]" = weakref.WeakSet()


def scrub(text: str) -> str:
    """`text` with every open run's secrets masked, and URL passwords; for messages autolog
    prints (stderr) or stores from places that do not know the run. Never raises."""
    try:
        for redactor in list(_live):
            text = redactor.text(text)
        return _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, text)
    except Exception:  # noqa: BLE001 -- a message is better shortened than lost with an error
        return "<message withheld: it could not be scrubbed of secrets>"


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
        self._lock = threading.Lock()
        self._short: re.Pattern[str] | None = None  # literals under 4 characters, as words
        self._long: list[str] = []  # the others, longest first
        _live.add(self)

    def key_matches(self, key: str, value: Any = "") -> bool:
        """Whether the value under `key` (a dotted path) must be masked."""
        if value is None or isinstance(value, bool):
            return False
        if any(p.search(key) for p in self.extra):
            return True
        if parent_is_secret(key):
            return True
        strength = key_is_secret(key)
        return strength == "strong" or (strength == "weak" and isinstance(value, (str, bytes)))

    def _loose_key(self, key: str) -> bool:
        """A key masked only because it ends in "key" ("sort_key"): its short values ("name")
        are masked in the config but not scrubbed from other texts."""
        return key_is_secret(key) == "weak" and _segments(str(key).rsplit(".", 1)[-1])[-1] in ("key", "keys") \
            and not parent_is_secret(key) and not any(p.search(key) for p in self.extra)

    def _remember(self, value: Any) -> None:
        """Scrub `value` (a masked secret) from every later text."""
        if isinstance(value, (list, tuple)):
            for item in value:
                self._remember(item)
            return
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 100000:
            value = str(value)
        if not isinstance(value, str) or not value or value == MASK or value in self.literals:
            return
        with self._lock:
            self.literals.add(value)
            self._long = sorted((x for x in self.literals if len(x) >= 4), key=len, reverse=True)
            short = sorted((x for x in self.literals if len(x) < 4), key=len, reverse=True)
            self._short = re.compile("(?<![A-Za-z0-9])(?:" + "|".join(map(re.escape, short)) + ")(?![A-Za-z0-9])") \
                if short else None

    def text(self, value: str) -> str:
        """`value` with every known secret literal, URL password and well-known key format masked
        (and made storable text: `clean_text`)."""
        if not isinstance(value, str) or not value:
            return value
        value = clean_text(value)
        for literal in self._long:
            if literal in value:
                value = value.replace(literal, MASK)
        if self._short is not None:
            value = self._short.sub(MASK, value)
        for pattern in VALUE_PATTERNS:
            value = pattern.sub(MASK, value)
        return _URL_PASSWORD.sub(self._url_password, value)

    def _url_password(self, match: re.Match[str]) -> str:
        if match.group("pw") != MASK:
            self._remember(match.group("pw"))
        return match.group("head") + MASK

    def config(self, flat: dict[str, Any]) -> dict[str, Any]:
        """A copy of a flattened config with secret keys and secret-looking values masked."""
        out: dict[str, Any] = {}
        for key, value in flat.items():
            if self.key_matches(key, value):
                if isinstance(value, str) and value in ("", MASK):
                    out[key] = value
                    continue
                if len(str(value)) >= 6 or not self._loose_key(key):
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

    def deep(self, value: Any, depth: int = 0) -> Any:
        """Strings inside nested dicts/lists masked (for meta)."""
        if isinstance(value, str):
            return self.text(value)
        if depth > 20:
            return value
        if isinstance(value, dict):
            return {k: self.deep(v, depth + 1) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.deep(v, depth + 1) for v in value]
        return value
