"""Stable journal MESSAGE_IDs of session events, so operators can filter on them
(``journalctl MESSAGE_ID=...``) whatever the wording of a message becomes."""

from __future__ import annotations

LISTENING = "6540c44fd54c4c1fac8f1b3c20caa8c1"
SESSION_UP = "75cb9ea05cbb4e62a4ae9dad78c21915"
SESSION_LOST = "adebaff0d6344f5f9222411177da90a0"
CONNECT_FAILED = "2373bd9a391a48daa2bb6b0161eddfc1"
RECONNECTING = "b1d6ef3137b241b48640047022df56a1"
EXCHANGE_OK = "43636d846c2149e29f4c190bd096b175"
STARTED = "51d0864c366a4b7390bac614e9715d60"
STOPPED = "32631e2a99f14c5998c059e9e12b6885"


def event(message_id: str) -> dict[str, str]:
    """``extra=`` for a log call: the journal handler sends it as the MESSAGE_ID field."""
    return {"MESSAGE_ID": message_id}
