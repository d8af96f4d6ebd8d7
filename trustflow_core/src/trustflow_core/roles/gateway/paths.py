"""Request targets the gateway routes: only paths that no normaliser would change.

Routing decides which route (and so whether ``require_jwe``) applies; the app behind the
gateway decides which resource is served. If the two read a target differently (the app
removes ``.``/``..`` segments, merges slashes, decodes ``%2e`` or ``%2F``, treats ``\\`` as
``/``, or drops ``;params`` as Tomcat does), a request routed to a plaintext route can reach a
``require_jwe`` resource. The gateway therefore refuses (400) every target whose path, after
percent-decoding, is not already in normal form, and routes on the decoded path while
forwarding the target unchanged: on a normal path every such normalisation is the identity, so
the app serves the path the gateway routed.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from ...errors import TrustflowError

_BACKSLASH_OR_CONTROL = re.compile(r"[\x00-\x1f\x7f\\]")


class BadTarget(TrustflowError, ValueError):
    """The request target is not a normal origin-form path; ``str()`` is the client message."""


def routing_path(raw_target: str) -> str:
    """The percent-decoded path of an origin-form ``raw_target`` (``/path?query``), or
    :class:`BadTarget` naming why it is refused: not origin-form, an empty segment (``//``), a
    dot segment (``.``, ``..``, also percent-encoded or followed by ``;params``), a backslash,
    an encoded slash, or a control character."""
    raw_path = raw_target.partition("?")[0].partition("#")[0]
    if not raw_path.startswith("/"):
        raise BadTarget("the request target must be a path starting with '/' (origin-form)")
    if "%" in raw_path:
        lowered = raw_path.lower()
        if "%2f" in lowered or "%5c" in lowered:
            raise BadTarget("encoded '/' or '\\' in the request path")
        path = unquote(raw_path, errors="replace")
    else:
        path = raw_path
    if _BACKSLASH_OR_CONTROL.search(path):
        raise BadTarget("backslash or control character in the request path")
    if "//" in path or "/." in path:  # else neither check below can fail
        segments = path.split("/")[1:]
        for i, segment in enumerate(segments):
            if segment == "" and i < len(segments) - 1:
                raise BadTarget("empty segment ('//') in the request path")
            if segment.partition(";")[0] in (".", ".."):
                raise BadTarget("dot segment ('.' or '..') in the request path")
    return path
