"""Connection strings in messages and logs: hosts shown, passwords never."""

from __future__ import annotations

import re
from urllib.parse import unquote

__all__ = ["hosts_of", "mask_password", "redact_uri"]


_SECRET_OPTIONS = re.compile(
    r"(?i)(?P<name>[?&][^=&]*(?:password|authmechanismproperties)[^=&]*=)[^&]*"
)


def _split_credentials(uri: str) -> tuple[str, str, str | None, str] | None:
    """``(scheme, user, password, after)`` of a connection string with credentials.

    The credentials end at the last ``@``: a password may hold an unescaped ``@``, ``/`` or
    ``?``. Should an option after the hosts hold an ``@``, more is hidden than needed, never
    less.
    """
    scheme, separator, rest = uri.partition("://")
    at = rest.rfind("@")
    if not separator or at < 0:
        return None
    user, colon, password = rest[:at].partition(":")
    return scheme, user, (password if colon else None), rest[at + 1 :]


def redact_uri(uri: str) -> str:
    """A connection string safe to print: passwords, in the credentials or options, are ``***``."""
    parts = _split_credentials(uri)
    if parts is not None and parts[2] is not None:
        scheme, user, _, after = parts
        uri = f"{scheme}://{user}:***@{after}"
    return _SECRET_OPTIONS.sub(r"\g<name>***", uri)


def uri_password(uri: str) -> str | None:
    """The password in a connection string, to keep out of anything printed."""
    parts = _split_credentials(uri)
    return None if parts is None else parts[2]


def hosts_of(uri: str) -> str:
    """The hosts of a connection string, for messages: never its credentials."""
    parts = _split_credentials(uri)
    after = parts[3] if parts is not None else uri.partition("://")[2]
    return after.split("/", 1)[0].split("?", 1)[0] or "localhost"


def mask_password(text: str, uri: str | None) -> str:
    """``text`` with the passwords of ``uri`` (as written, and percent-decoded) masked."""
    if not uri:
        return text
    text = text.replace(uri, redact_uri(uri))
    password = uri_password(uri)
    for form in {password, unquote(password)} if password else ():
        if form:
            text = text.replace(form, "***")
    return text
