"""Whether the Hugging Face hub is worth asking for a name that is not a local path.

A mistyped local path without a slash (`mymodel`) looks like a hub name; with the hub
unreachable, the hub clients retry for about 26 s before failing. One short TCP connect decides
first, so such a name fails in well under a second.
"""

from __future__ import annotations

import os
import socket
from functools import cache
from urllib.parse import urlparse

_TRUE = {"1", "true", "yes", "on"}


def hub_offline() -> bool:
    """The user asked for no hub access (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE / HF_DATASETS)."""
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
    return any(os.environ.get(n, "").strip().lower() in _TRUE for n in names)


@cache
def hub_reachable(timeout: float = 2.0) -> bool:
    """True when offline mode is off and the hub's host (or the HTTPS proxy) accepts a TCP
    connection within `timeout` seconds. Asked once per process."""
    if hub_offline():
        return False
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    endpoint = urlparse(proxy or os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
    except (OSError, ValueError):
        return False
    return True
