"""Text that leaves curate for a terminal or a log: secrets masked, control characters made visible.

Every message the CLI prints, and every log record, goes through ``safe`` (README, "Trust"):

- ``redact`` masks the secrets this process knows (the Label Studio key, registered by the configuration when it
  is read, and the environment's key variables) and the credentials of any URL (``scheme://user:***@host``, up to
  the *last* ``@``, so that a password with an unencoded ``@`` is not half-printed);
- ``printable`` writes control characters (ESC, CR, LF, ...), Unicode bidirectional overrides and undecodable
  bytes as escapes, so that a file name, a task's data or a server's error body cannot recolour the terminal,
  split a table row or fake a line of output.
"""

from __future__ import annotations

import re
import threading
import unicodedata

SECRET_ENV_VARS = ("LABEL_STUDIO_API_KEY", "CURATE_LABEL_STUDIO__API_KEY")
MASK = "***"
_MIN_SECRET = 4  # shorter values would mask ordinary words; keys are far longer
_secrets: set[str] = set()
_lock = threading.Lock()
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)(\S+)")
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u2028\u2029")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def register_secret(value: str | None) -> None:
    """Mask ``value`` (and its whitespace-stripped form) in everything printed from now on."""
    if not value:
        return
    with _lock:
        for form in (value, value.strip()):
            if len(form) >= _MIN_SECRET:
                _secrets.add(form)


def register_secrets_from_env(environ: dict[str, str] | None = None) -> None:
    """The key variables are secrets even when the configuration that would validate them fails to load."""
    import os

    env = os.environ if environ is None else environ
    for name in SECRET_ENV_VARS:
        register_secret(env.get(name))


def redact(text: str) -> str:
    """``text`` with known secrets and URL credentials masked."""
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return _URL.sub(_mask_userinfo, text)


def _mask_userinfo(match: re.Match[str]) -> str:
    scheme, rest = match.group(1), match.group(2)
    at = rest.rfind("@")
    if at < 0:
        return match.group(0)
    userinfo = rest[:at]
    user, colon, _ = userinfo.partition(":")
    if "/" in user:  # the '@' is in the path or query, not in credentials
        return match.group(0)
    masked = f"{user}:{MASK}" if colon else MASK
    return f"{scheme}{masked}{rest[at:]}"


def printable(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with control characters, bidi overrides and undecodable bytes (lone surrogates) escaped."""
    out: list[str] = []
    for ch in text:
        code = ord(ch)
        if keep_newlines and ch in "\n\t":
            out.append(ch)
        elif ch in _NAMED:
            out.append(_NAMED[ch])
        elif code < 0x20 or 0x7F <= code < 0xA0:
            out.append(f"\\x{code:02x}")
        elif ch in _BIDI or unicodedata.category(ch) == "Cs":
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def safe(text: object, *, keep_newlines: bool = False) -> str:
    """What may be printed of ``text``: ``redact``, then ``printable``."""
    return printable(redact(str(text)), keep_newlines=keep_newlines)
