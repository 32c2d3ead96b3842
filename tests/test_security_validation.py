"""Issue 7, finding 8: validation lived in the UI only.

Reproduced before the fix: CLI ``--min-price nan`` ended in a Rust panic traceback, ``--top-k -1``
returned 13 results, ``--top-k 0``, min above max and ``--threshold nan`` silently returned nothing,
and the engine took a NaN or infinite threshold. Now SearchFilters and check_query_options are the
one place that validates, with one ``InvalidQueryError`` line that the CLI prints with exit code 2.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visual_search.catalog import read_catalog
from visual_search.cli import main as cli
from visual_search.core.errors import InvalidQueryError, VisualSearchError
from visual_search.core.query_options import MAX_TOP_K, check_query_options
from visual_search.core.types import SearchFilters
from visual_search.engine import SearchEngine
from visual_search.store import open_store

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_catalog" / "catalog.csv"
NAN, INF = float("nan"), float("inf")


# ---------------------------------------------------------------------------------------------
# SearchFilters
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_price": NAN}, "The minimum price must be a finite number, not nan."),
        ({"max_price": NAN}, "The maximum price must be a finite number, not nan."),
        ({"min_price": INF}, "The minimum price must be a finite number, not inf."),
        ({"max_price": -INF}, "The maximum price must be a finite number, not -inf."),
        ({"min_price": -1}, "The minimum price cannot be negative (got -1)."),
        ({"max_price": -0.5}, "The maximum price cannot be negative (got -0.5)."),
        (
            {"min_price": 50, "max_price": 10},
            "The minimum price (50) is above the maximum (10); swap them or clear one.",
        ),
        ({"min_price": "cheap"}, "The minimum price must be a number, not 'cheap'."),
        ({"max_price": True}, "The maximum price must be a number, not True."),
        ({"min_price": [1]}, "The minimum price must be a number, not [1]."),
    ],
)
def test_search_filters_refuse_bad_prices(kwargs, message):
    with pytest.raises(InvalidQueryError) as err:
        SearchFilters(**kwargs)
    assert str(err.value) == message
    assert isinstance(err.value, ValueError) and isinstance(err.value, VisualSearchError)


def test_search_filters_accept_and_normalise_good_values():
    f = SearchFilters(categories="Shoes", brands=["a", "b"], min_price=np.float32(5), max_price="5")
    assert f.categories == ("Shoes",) and f.brands == ("a", "b")
    assert (f.min_price, f.max_price) == (5.0, 5.0) and type(f.min_price) is float
    assert SearchFilters(min_price=0).min_price == 0.0
    assert SearchFilters().describe() == "no filters"


# ---------------------------------------------------------------------------------------------
# check_query_options (the engine's one check)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"top_k": 0}, f"top_k must be between 1 and {MAX_TOP_K}, got 0."),
        ({"top_k": -1}, f"top_k must be between 1 and {MAX_TOP_K}, got -1."),
        ({"top_k": 10**9}, f"top_k must be between 1 and {MAX_TOP_K}, got 1000000000."),
        ({"top_k": 2.5}, "top_k must be a whole number, not 2.5."),
        ({"top_k": NAN}, "top_k must be a whole number, not nan."),
        ({"top_k": "ten"}, "top_k must be a whole number, not 'ten'."),
        ({"top_k": None}, "top_k must be a whole number, not None."),
        ({"top_k": True}, "top_k must be a whole number, not True."),
        ({"score_threshold": NAN}, "The score threshold must be a finite number, not nan."),
        ({"score_threshold": INF}, "The score threshold must be a finite number, not inf."),
        (
            {"score_threshold": 1.5},
            "The score threshold must be between -1 and 1 (cosine similarity), got 1.5.",
        ),
        (
            {"score_threshold": -2},
            "The score threshold must be between -1 and 1 (cosine similarity), got -2.",
        ),
        ({"score_threshold": "high"}, "The score threshold must be a number, not 'high'."),
        ({"text_weight": NAN}, "The text weight must be a finite number, not nan."),
        ({"text_weight": 1.5}, "The text weight must be between 0 and 1, got 1.5."),
        ({"text_weight": -0.1}, "The text weight must be between 0 and 1, got -0.1."),
    ],
)
def test_query_options_refuse_bad_values(kwargs, message):
    with pytest.raises(InvalidQueryError) as err:
        check_query_options(**kwargs)
    assert str(err.value) == message


def test_query_options_accept_and_normalise_good_values():
    opts = check_query_options(5.0, "0.25", None)
    assert (opts.top_k, opts.score_threshold, opts.text_weight) == (5, 0.25, 0.5)
    assert type(opts.top_k) is int
    assert check_query_options(np.int64(MAX_TOP_K), -1, 0).top_k == MAX_TOP_K
    assert check_query_options(3, None, 1).score_threshold is None
    assert check_query_options(3, max_top_k=48).top_k == 3
    with pytest.raises(InvalidQueryError, match="between 1 and 48, got 49"):
        check_query_options(49, max_top_k=48)


def test_query_options_accept_exactly_the_photo_pipelines_modes():
    """Validation normalises every mode the pipeline runs and refuses any other by name."""
    from visual_search.core.query_options import DEFAULT_BACKGROUND
    from visual_search.query_views import MODES

    assert DEFAULT_BACKGROUND in MODES
    for mode in MODES:
        assert check_query_options(background=f" {mode.upper()} ").background == mode
    with pytest.raises(InvalidQueryError, match="background must be one of auto, off, on, not 'blur'"):
        check_query_options(background="blur")


# ---------------------------------------------------------------------------------------------
# The engine refuses before touching the store
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tiny_encoder, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("validation")
    folder = tmp / "cat"
    (folder / "images").mkdir(parents=True)
    lines = ["product_id,image,title,category,price"]
    for product in read_catalog(SAMPLE).products[:8]:
        src = Path(product.images[0].source)
        shutil.copy(src, folder / "images" / src.name)
        lines.append(
            f"{product.product_id},images/{src.name},{product.title},{product.category},{product.price}"
        )
    (folder / "catalog.csv").write_text("\n".join(lines) + "\n")
    eng = SearchEngine(tiny_encoder, open_store(tmp / "data", None, None))
    eng.index_catalog(folder / "catalog.csv")
    yield eng
    eng.close()


class _NoStoreCalls:
    """Proxy store that fails the test if a refused query reaches Qdrant."""

    def __init__(self, inner):
        self.inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if name in ("search", "recommend", "get_vectors"):
            self.calls.append(name)
        return attr


@pytest.mark.parametrize(
    "kwargs",
    [
        {"top_k": 0},
        {"top_k": -1},
        {"top_k": 10**6},
        {"score_threshold": NAN},
        {"score_threshold": INF},
        {"score_threshold": 7},
        {"text_weight": NAN, "text": "mug"},
        {"text_weight": 2.0, "text": "mug"},
    ],
)
def test_engine_search_refuses_bad_options_before_the_store(engine, kwargs):
    photo = Image.new("RGB", (64, 64), (200, 30, 30))
    real, engine.store = engine.store, _NoStoreCalls(engine.store)
    try:
        with pytest.raises(InvalidQueryError):
            engine.search(image=photo, **kwargs)
        with pytest.raises(InvalidQueryError):
            engine.search_by_text("mug", **{k: v for k, v in kwargs.items() if k != "text"})
        calls = engine.store.calls
    finally:
        engine.store = real
    assert calls == []


@pytest.mark.parametrize(
    "kwargs", [{"top_k": 0}, {"top_k": -1}, {"score_threshold": NAN}, {"score_threshold": -INF}]
)
def test_more_like_this_and_recommend_refuse_bad_options(engine, kwargs):
    pid = read_catalog(SAMPLE).products[0].product_id
    with pytest.raises(InvalidQueryError):
        engine.more_like_this(pid, **kwargs)
    with pytest.raises(InvalidQueryError):
        engine.recommend([pid], [], **kwargs)


def test_engine_still_answers_good_edge_values(engine):
    assert len(engine.search(text="mug", top_k=1).results) == 1
    assert len(engine.search(text="mug", top_k=MAX_TOP_K).results) == 8
    assert all(r.score >= 1.0 - 1e-6 for r in engine.search(text="mug", score_threshold=1.0).results)
    assert engine.search(text="mug", score_threshold=-1.0, top_k=8).results
    resp = engine.search(image=Image.new("RGB", (32, 32)), text="mug", text_weight=0)
    assert resp.text_weight == 0.0 and resp.mode == "image+text"


# ---------------------------------------------------------------------------------------------
# CLI: one line, exit 2, no traceback, no Rust panic
# ---------------------------------------------------------------------------------------------

CLI_CASES = [
    (["--min-price", "nan"], "error: The minimum price must be a finite number, not nan."),
    (["--max-price", "inf"], "error: The maximum price must be a finite number, not inf."),
    (["--min-price", "-5"], "error: The minimum price cannot be negative (got -5)."),
    (
        ["--min-price", "50", "--max-price", "10"],
        "error: The minimum price (50) is above the maximum (10); swap them or clear one.",
    ),
    (["--top-k", "0"], f"error: top_k must be between 1 and {MAX_TOP_K}, got 0."),
    (["--top-k", "-1"], f"error: top_k must be between 1 and {MAX_TOP_K}, got -1."),
    (["--top-k", "99999999"], f"error: top_k must be between 1 and {MAX_TOP_K}, got 99999999."),
    (["--threshold", "nan"], "error: The score threshold must be a finite number, not nan."),
    (["--threshold=-inf"], "error: The score threshold must be a finite number, not -inf."),
    (["--threshold", "3"], "error: The score threshold must be between -1 and 1 (cosine similarity), got 3."),
    (["--text-weight", "nan"], "error: The text weight must be a finite number, not nan."),
    (["--text-weight", "5"], "error: The text weight must be between 0 and 1, got 5."),
]


@pytest.mark.parametrize(("flags", "expected"), CLI_CASES, ids=[" ".join(f) for f, _ in CLI_CASES])
def test_cli_main_prints_one_line_and_exits_2(flags, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VS_MODEL", "test:tiny")
    monkeypatch.setenv("VS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("QDRANT_URL", raising=False)
    assert cli.main(["search", "--text", "mug", *flags]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().splitlines() == [expected]


def test_cli_subprocess_nan_price_and_negative_top_k_no_panic(tmp_path):
    """The exact commands from the report, as a user runs them: no traceback, no Rust panic."""
    env = {**os.environ, "VS_MODEL": "test:tiny", "VS_DATA_DIR": str(tmp_path / "data"), "VS_DEVICE": "cpu"}
    env.pop("QDRANT_URL", None)
    expected = dict((tuple(flags), line) for flags, line in CLI_CASES)
    for flags in (["--min-price", "nan"], ["--top-k", "-1"], ["--threshold", "nan"]):
        out = subprocess.run(
            [sys.executable, "-m", "visual_search", "search", "--text", "mug", *flags],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 2, out.stderr
        assert out.stderr.strip().splitlines() == [expected[tuple(flags)]], out.stderr
        assert out.stdout == ""
