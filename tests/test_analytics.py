"""Pilot analytics log: privacy default, concurrency, export and summary numbers."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from visual_search.analytics import CSV_COLUMNS, SearchLog


def _search(log: SearchLog, **overrides) -> str:
    args = dict(
        mode="image",
        query_text=None,
        filters={"categories": ("shoes",)},
        top_k=12,
        threshold=None,
        result_ids=["p1", "p2", "p3"],
        scores=[0.9, 0.8, 0.7],
        latency_ms=10.0,
    )
    args.update(overrides)
    return log.log_search(**args)


def _photo() -> Image.Image:
    return Image.new("RGB", (64, 48), (200, 30, 30))


def test_photo_not_stored_by_default(tmp_path: Path) -> None:
    log = SearchLog(tmp_path / "logs" / "events.jsonl")
    qid = _search(log, photo=_photo(), session="s1")
    assert len(qid) == 32 and set(qid) <= set("0123456789abcdef")
    assert not (tmp_path / "logs" / "photos").exists()
    raw = (tmp_path / "logs" / "events.jsonl").read_text(encoding="utf-8")
    assert len(raw) < 1000  # a line of metadata, no pixels
    (record,) = log.records()
    assert record["photo_path"] is None
    assert record["query_id"] == qid
    assert record["event"] == "search"
    assert record["timestamp"].endswith("+00:00")
    assert record["filters"] == {"categories": ["shoes"]}


def test_photo_stored_when_enabled(tmp_path: Path) -> None:
    log = SearchLog(tmp_path / "events.jsonl", store_photos=True)
    qid = _search(log, photo=Image.new("RGBA", (32, 32), (0, 0, 255, 128)))
    text_only = _search(log, mode="text", query_text="red shoes")
    photo = tmp_path / "photos" / f"{qid}.jpg"
    assert photo.is_file()
    with Image.open(photo) as img:
        assert img.format == "JPEG" and img.size == (32, 32)
    records = {r["query_id"]: r for r in log.records()}
    assert records[qid]["photo_path"] == str(photo)
    assert records[text_only]["photo_path"] is None


def test_concurrent_logging_keeps_every_line_intact(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = SearchLog(path)
    threads, per_thread = 8, 50

    def work(t: int) -> None:
        other = SearchLog(path)  # a second instance on the same file shares the lock
        for i in range(per_thread):
            target = log if i % 2 else other
            qid = _search(target, query_text=f"t{t}-{i}" * 20, session=f"s{t}")
            target.log_feedback(query_id=qid, product_id="p1", action="click", rank=1, session=f"s{t}")

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == threads * per_thread * 2
    parsed = [json.loads(line) for line in lines]
    assert len({r["query_id"] for r in parsed if r["event"] == "search"}) == threads * per_thread


def test_export_csv_columns_and_rows(tmp_path: Path) -> None:
    log = SearchLog(tmp_path / "events.jsonl")
    qid = _search(log, session="s1", threshold=0.25)
    log.log_feedback(query_id=qid, product_id="p2", action="like", rank=2, session="s1")
    out = log.export_csv(tmp_path / "out" / "export.csv")
    frame = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert tuple(frame.columns) == CSV_COLUMNS
    assert len(frame) == 2
    search, feedback = frame.iloc[0], frame.iloc[1]
    assert search["event"] == "search" and feedback["event"] == "feedback"
    assert search["result_ids"] == "p1|p2|p3"
    assert float(search["top_score"]) == 0.9
    assert search["threshold"] == "0.25"
    assert json.loads(search["filters"]) == {"categories": ["shoes"]}
    assert feedback["query_id"] == qid and feedback["product_id"] == "p2"
    assert feedback["action"] == "like" and feedback["rank"] == "2"
    assert search["product_id"] == "" and feedback["mode"] == ""


def test_export_of_an_empty_log_is_the_header(tmp_path: Path) -> None:
    log = SearchLog(tmp_path / "never-written.jsonl")
    out = log.export_csv()
    assert out == tmp_path / "never-written.csv"
    assert out.read_text(encoding="utf-8").strip() == ",".join(CSV_COLUMNS)
    assert log.records() == []


def test_summary_numbers(tmp_path: Path) -> None:
    log = SearchLog(tmp_path / "events.jsonl")
    ids = [
        _search(log, mode=mode, latency_ms=latency)
        for mode, latency in [("image", 10), ("image", 20), ("text", 30), ("image+text", 40), ("image", 50)]
    ]
    log.log_feedback(query_id=ids[0], product_id="p1", action="click", rank=1)
    log.log_feedback(query_id=ids[0], product_id="p2", action="click", rank=2)  # same search: counts once
    log.log_feedback(query_id=ids[2], product_id="p1", action="click", rank=1)
    log.log_feedback(query_id=ids[2], product_id="p1", action="like")
    log.log_feedback(query_id=None, product_id="p9", action="dislike")
    log.log_feedback(query_id="not-a-search", product_id="p9", action="click")  # no search: no CTR
    s = log.summary()
    assert s == {
        "searches": 5,
        "searches_by_mode": {"image": 3, "text": 1, "image+text": 1},
        "latency_p50_ms": 30.0,
        "latency_p95_ms": pytest.approx(48.0),
        "clicks": 4,
        "likes": 1,
        "dislikes": 1,
        "click_through_rate": pytest.approx(2 / 5),
    }
    empty = SearchLog(tmp_path / "empty.jsonl").summary()
    assert empty["searches"] == 0 and empty["latency_p50_ms"] is None and empty["click_through_rate"] == 0.0


def test_bad_action_is_rejected(tmp_path: Path) -> None:
    log = SearchLog(tmp_path / "events.jsonl")
    with pytest.raises(ValueError, match="click, like, dislike"):
        log.log_feedback(query_id=None, product_id="p1", action="purchase")
    assert log.records() == []


def test_truncated_line_is_tolerated_and_not_glued_to_the_next(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = SearchLog(path)
    first = _search(log)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('{"event": "search", "query_id": "cut-off-by-a-cra')  # crash mid-line
    assert [r["query_id"] for r in log.records()] == [first]
    second = _search(log)
    assert [r["query_id"] for r in log.records()] == [first, second]
    assert log.summary()["searches"] == 2


def test_write_errors_never_raise(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    log = SearchLog(blocker / "events.jsonl", store_photos=True)
    qid = _search(log, photo=_photo())
    log.log_feedback(query_id=qid, product_id="p1", action="click")
    assert len(qid) == 32
    assert "could not" in caplog.text
