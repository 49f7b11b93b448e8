"""Whether the Hugging Face hub can be reached, asked once per process with one short
connection attempt. Where it cannot (no network, a firewall), huggingface_hub is switched to
offline mode so that cached models load at once and missing ones fail at once, instead of
five retries per file (45 warning lines over 50 s)."""

from __future__ import annotations

import functools
import logging
import os
import socket
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 3.0


@functools.cache
def hub_reachable() -> bool:
    """True when the hub's host answers a TCP connection."""
    from huggingface_hub import constants

    endpoint = urlsplit(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=PROBE_TIMEOUT):
            return True
    except OSError as exc:
        log.info("%s cannot be reached (%s): hub models load from the local cache only", endpoint.hostname, exc)
        return False


def offline_unless_hub_reachable() -> str | None:
    """Switch huggingface_hub (and so transformers) to its offline mode when the hub cannot be
    reached; None when it is reachable, else why hub models come from the cache only."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if hub_reachable():
        return None
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    return "the Hugging Face hub cannot be reached"
