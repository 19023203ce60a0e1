"""Keep shoppers' ids and operators' secrets out of logs and metric labels.

- :class:`Pseudonymizer`: a keyed hash (HMAC-SHA256 with ``Settings.pseudonymize_key``) of a user id, short and
  stable, so logs of one shopper can still be correlated without storing who they are. Without the key the
  mapping cannot be reversed or recomputed from a guessed id list (unlike a plain hash).
- :class:`RedactSecrets`: a logging filter that removes configured secret values (API token, SASL password,
  Redis password, the pseudonymization key) and well-known secret shapes (``Authorization: Bearer ...``,
  ``redis://user:password@``) from every record before it is formatted.

>>> p = Pseudonymizer("a-long-enough-key")
>>> p("u1") == p("u1"), p("u1") != p("u2"), p("u1").startswith("u_")
(True, True, True)
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

REDACTED = "[REDACTED]"

_SECRET_SHAPES = (
    # Authorization headers and bearer tokens, wherever they are quoted.
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1" + REDACTED),
    # Credentials inside URLs: redis://user:password@host, rediss://:password@host, kafka SASL URLs.
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@"), r"\1" + REDACTED + "@"),
    # key=value / "key": "value" pairs whose key says it is secret.
    (
        re.compile(r"(?i)((?:password|passwd|secret|token|api[_-]?key|pseudonymize_key)['\"]?\s*[:=]\s*['\"]?)[^'\"\s,}]+"),
        r"\1" + REDACTED,
    ),
)


class Pseudonymizer:
    """Keyed, truncated hash of an identifier: ``u_`` + 16 hex digits (64 bits: collisions are negligible for
    log correlation at millions of users)."""

    def __init__(self, key: str) -> None:
        if len(key) < 8:
            raise ValueError("the pseudonymization key must have at least 8 characters")
        self._key = key.encode()

    def __call__(self, user_id: str) -> str:
        digest = hmac.new(self._key, user_id.encode(), hashlib.sha256).hexdigest()
        return "u_" + digest[:16]


def redis_password(url: str | None) -> str | None:
    """The password inside a Redis URL, if any (so it can be redacted by value too)."""
    if not url:
        return None
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def secrets_of(settings) -> list[str]:
    """Every secret value held by the settings object (only non-empty ones)."""
    candidates = [
        settings.api_token,
        settings.kafka_sasl_password,
        settings.pseudonymize_key,
        redis_password(settings.redis_url),
    ]
    return [value for value in candidates if value]


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Remove secret values and secret-shaped substrings.

    >>> redact("connecting to redis://:hunter22@db:6379 with token=abc123", ["hunter22"])
    'connecting to redis://:[REDACTED]@db:6379 with token=[REDACTED]'
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    for pattern, replacement in _SECRET_SHAPES:
        text = pattern.sub(replacement, text)
    return text


class RedactSecrets(logging.Filter):
    """Logging filter: rewrites each record's message (arguments merged in) and exception text, redacted.

    Attach it to handlers (not loggers) so records from every library pass through it.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # Longest first, so a secret containing another is removed whole.
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg = redact(message, self.secrets)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        return True


def install_log_redaction(settings, logger: logging.Logger | None = None) -> RedactSecrets:
    """Add a :class:`RedactSecrets` filter to every handler of ``logger`` (default: the root logger)."""
    target = logger or logging.getLogger()
    flt = RedactSecrets(secrets_of(settings))
    for handler in target.handlers:
        handler.addFilter(flt)
    return flt
