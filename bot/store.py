"""sqlite persistence: per-channel settings (the model each channel uses) survive restarts."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS channel_settings (
    channel TEXT NOT NULL,
    key     TEXT NOT NULL,
    value   TEXT NOT NULL,
    PRIMARY KEY (channel, key)
)
"""


class Store:
    def __init__(self, path: Path | str):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Writes are tiny and rare; one connection guarded by a lock is enough.
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)
        self._lock = threading.Lock()

    def get(self, channel: str, key: str) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT value FROM channel_settings WHERE channel = ? AND key = ?", (channel, key)
            ).fetchone()
        return row[0] if row else None

    def set(self, channel: str, key: str, value: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO channel_settings (channel, key, value) VALUES (?, ?, ?) "
                "ON CONFLICT (channel, key) DO UPDATE SET value = excluded.value",
                (channel, key, value),
            )

    def delete(self, channel: str, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM channel_settings WHERE channel = ? AND key = ?", (channel, key))

    def close(self) -> None:
        with self._lock:
            self._db.close()
