"""sqlite persistence: per-channel settings (the model each channel uses) survive restarts.

A running bot holds the store's lock file (`<store>.lock`, with its pid) so that a second bot
started on the same store is refused at once, naming the first, instead of both writing one
stats file and racing into "database is locked"."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

from bot.errors import UserFacingError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS channel_settings (
    channel TEXT NOT NULL,
    key     TEXT NOT NULL,
    value   TEXT NOT NULL,
    PRIMARY KEY (channel, key)
)
"""


class StoreInUse(UserFacingError):
    """Another running bot holds this store."""


class StoreLock:
    """An exclusive, non-blocking lock on `<store>.lock`; the kernel drops it when the process
    ends, however it ends, so a crash never leaves the store locked."""

    def __init__(self, store_path: Path):
        import fcntl

        self.path = store_path.with_name(store_path.name + ".lock")
        self._file = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.seek(0)
            holder = self._file.read().strip() or "unknown"
            self._file.close()
            raise StoreInUse(f"another modelbot (pid {holder}) is running on the store {store_path}; stop it "
                             "first, or give this one its own `store:` in the config") from None
        self._file.truncate(0)
        self._file.write(str(os.getpid()))
        self._file.flush()

    def release(self) -> None:
        if not self._file.closed:
            self._file.truncate(0)
            self._file.close()  # closing drops the flock


class Store:
    def __init__(self, path: Path | str, exclusive: bool = False):
        """exclusive: this process is the bot serving the store (`modelbot run`, `console`)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = StoreLock(path) if exclusive else None
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
        """Close the database (sqlite checkpoints the write-ahead log into the file), then the lock."""
        with self._lock:
            self._db.close()
        if self.lock is not None:
            self.lock.release()
