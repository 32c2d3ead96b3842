"""Pilot analytics: what people searched for and what they clicked, as a JSON-lines file.

One line per event (a search or a feedback action), appended under a lock and flushed at once, so a
crash loses at most the line being written and concurrent Gradio workers never interleave lines.
Logging must never break a search: write errors become a warning and the app keeps going.

Query photos are personal data; they are kept only when ``store_photos=True`` (as JPEG files next to
the log, never inside it).

Privacy and safety:

- Sessions are logged as random pseudonyms (``secrets.token_urlsafe``), one per caller-given session
  key for the life of the process: the log never holds Gradio's session hash, which a client picks
  and which keys that client's live event stream.
- ``retention_days`` (``--log-days``): at start and then once a day, events older than that are
  dropped from the log, and query photos and CSV exports next to it older than that are deleted.
- The CSV export escapes cells that a spreadsheet would run as a formula (OWASP CSV injection).
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from .core.io import atomic_write_text

log = logging.getLogger(__name__)

SEARCH = "search"
FEEDBACK = "feedback"
ACTIONS = ("click", "like", "dislike")
CSV_COLUMNS = (
    "timestamp",
    "event",
    "query_id",
    "session",
    "mode",
    "query_text",
    "filters",
    "top_k",
    "threshold",
    "latency_ms",
    "result_ids",
    "top_score",
    "product_id",
    "action",
    "rank",
    "photo_path",
)

# A spreadsheet runs a cell starting with one of these as a formula (OWASP "CSV injection").
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
DEFAULT_RETENTION_DAYS = 30
PRUNE_EVERY_S = 24 * 3600
SESSION_ID_BYTES = 16  # token_urlsafe(16): 22 characters, 128 random bits
_MAX_SESSIONS = 100_000  # pseudonyms remembered per log (oldest forgotten first)

# One lock and one session-pseudonym table per log file, shared by every SearchLog on that file in
# this process.
_LOCKS: dict[Path, threading.Lock] = {}
_SESSIONS: dict[Path, OrderedDict[str, str]] = {}
_LOCKS_GUARD = threading.Lock()


def _lock_for(path: Path) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(path, threading.Lock())


def _sessions_for(path: Path) -> OrderedDict[str, str]:
    with _LOCKS_GUARD:
        return _SESSIONS.setdefault(path, OrderedDict())


def new_session_id() -> str:
    """A random, unguessable session id (128 bits, URL-safe)."""
    return secrets.token_urlsafe(SESSION_ID_BYTES)


def escape_csv_cell(value: Any) -> Any:
    """Prefix a single quote to text a spreadsheet would run as a formula; other values unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


class SearchLog:
    """Append-only event log for a pilot; cheap enough to call on every search."""

    def __init__(self, path: Path, store_photos: bool = False, retention_days: int | None = None) -> None:
        """``retention_days``: keep events, photos and exports this many days (None or 0: forever)."""
        self.path = Path(path).expanduser().resolve()
        self.store_photos = bool(store_photos)
        self.photos_dir = self.path.parent / "photos"
        if retention_days is not None and (isinstance(retention_days, bool) or int(retention_days) < 0):
            raise ValueError(f"retention_days must be a whole number >= 0, got {retention_days!r}")
        self.retention_days = int(retention_days) if retention_days else None
        self._lock = _lock_for(self.path)
        self._sessions = _sessions_for(self.path)
        self._next_prune = 0.0
        self._maybe_prune()

    # ------------------------------------------------------------ sessions

    def session_id(self, session: str | None) -> str | None:
        """The random pseudonym logged for a caller's session key (same key, same pseudonym)."""
        if session is None:
            return None
        with self._lock:
            pseudonym = self._sessions.get(session)
            if pseudonym is None:
                pseudonym = self._sessions[session] = new_session_id()
                while len(self._sessions) > _MAX_SESSIONS:
                    self._sessions.popitem(last=False)
            else:
                self._sessions.move_to_end(session)
            return pseudonym

    # ------------------------------------------------------------ retention

    def _maybe_prune(self) -> None:
        if self.retention_days is None or time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + PRUNE_EVERY_S
        try:
            self.prune()
        except OSError as exc:  # retention must never break logging either
            log.warning("Analytics: retention clean-up of %s failed (%s)", self.path, exc)

    def prune(self, now: datetime | None = None) -> int:
        """Apply ``retention_days`` now: drop older events from the log (rewritten atomically),
        delete older query photos and CSV exports next to the log. Returns the events dropped.
        Events without a readable timestamp are kept (this log only writes dated events)."""
        if self.retention_days is None:
            return 0
        now = now or datetime.now(timezone.utc)
        cutoff = now - timedelta(days=self.retention_days)
        self._delete_older(self.photos_dir.glob("*.jpg"), cutoff)
        self._delete_older(self.path.parent.glob(f"{self.path.stem}*.csv"), cutoff)
        with self._lock:
            try:
                raw = self.path.read_bytes()
            except FileNotFoundError:
                return 0
            kept: list[str] = []
            dropped = 0
            for line in raw.decode("utf-8", errors="replace").splitlines():
                if not line.strip():
                    continue
                stamp = _timestamp(line)
                if stamp is not None and stamp < cutoff:
                    dropped += 1
                else:
                    kept.append(line)
            if dropped:
                _write_lines_atomic(self.path, kept)
        if dropped:
            log.info("Analytics: dropped %d events older than %d days", dropped, self.retention_days)
        return dropped

    @staticmethod
    def _delete_older(paths: Any, cutoff: datetime) -> None:
        limit = cutoff.timestamp()
        for path in paths:
            with contextlib.suppress(OSError):
                if path.is_file() and path.stat().st_mtime < limit:
                    path.unlink()

    # ------------------------------------------------------------ writing

    def log_search(
        self,
        *,
        mode: str,
        query_text: str | None,
        filters: Mapping[str, Any] | str,
        top_k: int,
        threshold: float | None,
        result_ids: list[str],
        scores: list[float],
        latency_ms: float,
        photo: Image.Image | None = None,
        session: str | None = None,
    ) -> str:
        """Record one search; returns its query_id so clicks on its results can refer to it."""
        query_id = secrets.token_hex(16)
        photo_path = self._save_photo(query_id, photo) if (photo is not None and self.store_photos) else None
        self._append(
            {
                "timestamp": _now(),
                "event": SEARCH,
                "query_id": query_id,
                "session": self.session_id(session),
                "mode": mode,
                "query_text": query_text,
                "filters": _plain_filters(filters),
                "top_k": int(top_k),
                "threshold": None if threshold is None else float(threshold),
                "latency_ms": round(float(latency_ms), 3),
                "result_ids": [str(r) for r in result_ids],
                "scores": [round(float(s), 6) for s in scores],
                "photo_path": photo_path,
            }
        )
        return query_id

    def log_feedback(
        self,
        *,
        query_id: str | None,
        product_id: str,
        action: str,
        rank: int | None = None,
        session: str | None = None,
    ) -> None:
        """Record a click / like / dislike on a result (query_id None: outside a search, e.g. a link)."""
        if action not in ACTIONS:
            raise ValueError(f"action must be one of {', '.join(ACTIONS)}, got {action!r}")
        self._append(
            {
                "timestamp": _now(),
                "event": FEEDBACK,
                "query_id": query_id,
                "session": self.session_id(session),
                "product_id": str(product_id),
                "action": action,
                "rank": None if rank is None else int(rank),
            }
        )

    def _append(self, record: dict[str, Any]) -> None:
        self._maybe_prune()
        try:
            line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
            with self._lock:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "a+b") as fh:
                    # A crash mid-write leaves a line without its newline; start on a fresh line so the
                    # broken line does not swallow this one.
                    if fh.seek(0, 2) > 0:
                        fh.seek(-1, 2)
                        if fh.read(1) != b"\n":
                            fh.write(b"\n")
                    fh.write(line.encode("utf-8"))
                    fh.flush()
        except (OSError, TypeError, ValueError) as exc:
            log.warning("Analytics: could not write to %s (%s); the event is lost", self.path, exc)

    def _save_photo(self, query_id: str, photo: Image.Image) -> str | None:
        target = self.photos_dir / f"{query_id}.jpg"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            rgb = photo if photo.mode == "RGB" else photo.convert("RGB")
            rgb.save(target, format="JPEG", quality=85)
        except (OSError, ValueError) as exc:
            log.warning("Analytics: could not save the query photo to %s (%s)", target, exc)
            return None
        return str(target)

    # ------------------------------------------------------------ reading

    def records(self) -> list[dict[str, Any]]:
        """Every intact event, oldest first; a broken line (e.g. cut off by a crash) is skipped."""
        try:
            with self._lock:
                raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            log.warning("Analytics: cannot read %s (%s)", self.path, exc)
            return []
        out: list[dict[str, Any]] = []
        for number, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                log.warning("Analytics: skipping unreadable line %d of %s", number, self.path)
                continue
            if isinstance(record, dict):
                out.append(record)
        return out

    def export_csv(self, out_path: Path | None = None) -> Path:
        """All events as one CSV for a spreadsheet (default: next to the log, same name, .csv)."""
        out = Path(out_path) if out_path is not None else self.path.with_suffix(".csv")
        rows = [{k: escape_csv_cell(v) for k, v in _csv_row(r).items()} for r in self.records()]
        frame = pd.DataFrame(rows, columns=list(CSV_COLUMNS), dtype=object)  # keeps 3 as 3, not 3.0
        out.parent.mkdir(parents=True, exist_ok=True)
        # CRLF rows (RFC 4180): the csv module then quotes any cell holding a CR or LF, so a query text
        # with a bare CR cannot split a row in two.
        frame.to_csv(out, index=False, lineterminator="\r\n")
        return out

    def summary(self) -> dict[str, Any]:
        """Pilot headline numbers.

        Keys: searches, searches_by_mode, latency_p50_ms, latency_p95_ms (None without searches),
        clicks, likes, dislikes, click_through_rate (searches with at least one click / searches;
        0.0 without searches).
        """
        events = self.records()
        searches = [r for r in events if r.get("event") == SEARCH]
        feedback = [r for r in events if r.get("event") == FEEDBACK]
        actions = Counter(r.get("action") for r in feedback)
        latencies = [float(r["latency_ms"]) for r in searches if r.get("latency_ms") is not None]
        search_ids = {r.get("query_id") for r in searches}
        clicked = {r.get("query_id") for r in feedback if r.get("action") == "click"} & search_ids
        return {
            "searches": len(searches),
            "searches_by_mode": dict(Counter(str(r.get("mode")) for r in searches).most_common()),
            "latency_p50_ms": float(np.percentile(latencies, 50)) if latencies else None,
            "latency_p95_ms": float(np.percentile(latencies, 95)) if latencies else None,
            "clicks": actions["click"],
            "likes": actions["like"],
            "dislikes": actions["dislike"],
            "click_through_rate": len(clicked) / len(searches) if searches else 0.0,
        }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _timestamp(line: str) -> datetime | None:
    """The event time of one log line (timezone-aware), or None when it has none readable."""
    try:
        record = json.loads(line)
        stamp = datetime.fromisoformat(str(record["timestamp"]))
    except (ValueError, KeyError, TypeError):
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)


def _write_lines_atomic(path: Path, lines: list[str]) -> None:
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def _plain_filters(filters: Any) -> Any:
    """JSON-friendly filters: a dict or string as given, a SearchFilters as its one-line description."""
    if filters is None or isinstance(filters, str):
        return filters
    if isinstance(filters, Mapping):
        return {str(k): list(v) if isinstance(v, (tuple, set, frozenset)) else v for k, v in filters.items()}
    if hasattr(filters, "describe"):
        return filters.describe()
    if is_dataclass(filters) and not isinstance(filters, type):
        return asdict(filters)
    return str(filters)


def _csv_row(record: dict[str, Any]) -> dict[str, Any]:
    filters = record.get("filters")
    if isinstance(filters, dict):
        filters = json.dumps(filters, ensure_ascii=False, sort_keys=True)
    scores = record.get("scores") or []
    ids = record.get("result_ids")
    return {
        "timestamp": record.get("timestamp"),
        "event": record.get("event"),
        "query_id": record.get("query_id"),
        "session": record.get("session"),
        "mode": record.get("mode"),
        "query_text": record.get("query_text"),
        "filters": filters,
        "top_k": record.get("top_k"),
        "threshold": record.get("threshold"),
        "latency_ms": record.get("latency_ms"),
        "result_ids": "|".join(str(i) for i in ids) if isinstance(ids, list) else ids,
        "top_score": max(scores) if scores else None,
        "product_id": record.get("product_id"),
        "action": record.get("action"),
        "rank": record.get("rank"),
        "photo_path": record.get("photo_path"),
    }
