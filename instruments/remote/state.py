"""What the instrument server must not forget when it is killed and restarted.

``ServerState`` is one SQLite file (WAL, ``synchronous=FULL``: a committed row survives a
kill or power loss) in the server's state directory, holding

- ``responses``: the idempotency cache, the answer to each ``X-Request-Id`` (status,
  headers, body) with the request's fingerprint, so a client that retries after a restart
  gets the first answer instead of a second acquisition; the oldest beyond ``size`` are
  dropped;
- ``acquisitions``: the metadata of every acquisition the server made (run-store contract:
  ``record``, ``dose_e``, field or position), which the server's ``SafeMicroscope`` charges
  against its limits on start, so a restart never resets the dose a sample has received.

The answer is written in the same transaction as the acquisition it answers.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

FILE = "server-state.sqlite"


def default_state_dir(port: int) -> Path:
    """The user's state directory for the server on ``port``."""
    import platformdirs

    return platformdirs.user_state_path("autoscope") / f"instrument-server-{port}"


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine only (names are resolved)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    request_id TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    status INTEGER NOT NULL,
    headers TEXT NOT NULL,
    media_type TEXT NOT NULL,
    body BLOB NOT NULL,
    stored_s REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS acquisitions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT,
    event TEXT NOT NULL
);
"""


class ServerState:
    """The server's idempotency cache and acquisition ledger in ``directory/server-state.sqlite``."""

    def __init__(self, directory: str | Path | None, *, size: int = 4096) -> None:
        """``directory`` None: kept in memory only (lost with the process)."""
        self.dir = None if directory is None else Path(directory)
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
        self.path = ":memory:" if self.dir is None else str(self.dir / FILE)
        self.size = int(size)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        if self.dir is not None:
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def get(self, request_id: str) -> tuple[str, int, dict[str, str], str, bytes] | None:
        """(fingerprint, status, headers, media type, body) of a stored answer, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT fingerprint, status, headers, media_type, body FROM responses WHERE request_id = ?",
                (request_id,),
            ).fetchone()
        if row is None:
            return None
        fp, status, headers, media, body = row
        return fp, int(status), json.loads(headers), media, bytes(body)

    def put(
        self,
        request_id: str,
        fingerprint: str,
        status: int,
        headers: dict[str, str],
        media_type: str,
        body: bytes,
        acquisition: dict[str, Any] | None = None,
    ) -> None:
        """Store an answer (and the acquisition it reports) in one committed transaction."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (request_id, fingerprint, status, json.dumps(headers), media_type, body, time.time()),
                )
                if acquisition is not None:
                    self._insert_acquisition(request_id, acquisition)
                self._db.execute(
                    "DELETE FROM responses WHERE request_id IN (SELECT request_id FROM responses "
                    "ORDER BY stored_s DESC LIMIT -1 OFFSET ?)",
                    (self.size,),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def add_acquisition(self, event: dict[str, Any], request_id: str | None = None) -> None:
        """Record an acquisition that has no request id to cache it under."""
        with self._lock:
            self._insert_acquisition(request_id, event)

    def _insert_acquisition(self, request_id: str | None, event: dict[str, Any]) -> None:
        self._db.execute(
            "INSERT INTO acquisitions (request_id, event) VALUES (?, ?)",
            (request_id, json.dumps(event, allow_nan=False)),
        )

    def history(self) -> list[dict[str, Any]]:
        """Every acquisition the server made, oldest first (for ``SafeMicroscope(history=...)``)."""
        with self._lock:
            rows = self._db.execute("SELECT event FROM acquisitions ORDER BY seq").fetchall()
        return [json.loads(r[0]) for r in rows]

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
