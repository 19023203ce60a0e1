"""The data-set readers: exact expectations on small generated files, invariants on the real data when present.

The generated files copy the real files' schemas and quirks (two overlapping Online Retail slices with different
integer dtypes, guest orders, cancellations, postage lines, stray Taobao timestamps), so both paths run the real
loading code. The real-data tests run when ``../shared/data`` exists (CI has it beside the checkout).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kairos.engine import datasets
from kairos.engine.datasets import (
    DatasetReport,
    default_data_dir,
    derive_category,
    iter_online_retail,
    iter_taobao,
    load_events,
    load_item_catalog,
    taobao_pseudo_price,
)
from kairos.schemas.codec import decode_event, encode
from kairos.schemas.events import ClickEvent, PurchaseEvent

REAL_DATA = default_data_dir()
needs_real_data = pytest.mark.skipif(
    REAL_DATA is None or not (REAL_DATA / "online_retail").is_dir(), reason="no ../shared/data here"
)


def _retail_row(invoice, code, desc, qty, when, price, customer, country="United Kingdom"):
    return {"InvoiceNo": invoice, "StockCode": code, "Description": desc, "Quantity": qty,
            "InvoiceDate": pd.Timestamp(when), "UnitPrice": price, "CustomerID": customer, "Country": country}


def _write_retail(path: Path, rows: list[dict], quantity_dtype: str) -> None:
    frame = pd.DataFrame(rows)
    frame["Quantity"] = frame["Quantity"].astype(quantity_dtype)
    frame["CustomerID"] = frame["CustomerID"].astype("Float64")
    frame.to_parquet(path)


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory) -> Path:
    """A miniature data directory with every case the readers must handle."""
    root = tmp_path_factory.mktemp("data")
    (root / "online_retail").mkdir()
    (root / "taobao").mkdir()
    overlap = [
        _retail_row("536365", "85123A", "WHITE HANGING HEART T-LIGHT HOLDER", 6, "2010-12-01 08:26", 2.55, 17850.0),
        _retail_row("536365", "85123A", "WHITE HANGING HEART T-LIGHT HOLDER", 6, "2010-12-01 08:26", 2.55, 17850.0),
        _retail_row("536365", "71053", "WHITE METAL LANTERN", 6, "2010-12-01 08:26", 3.39, 17850.0),
    ]
    first = [
        _retail_row("489434", "85048", "15CM CHRISTMAS GLASS BALL 20 LIGHTS", 12, "2009-12-01 07:45", 6.95, 13085.0),
        _retail_row("489434", "79323P", "PINK CHERRY LIGHTS", 12, "2009-12-01 07:45", 6.75, 13085.0),
        _retail_row("489435", "22041", "RECORD FRAME", 48, "2009-12-01 08:00", 2.1, None),  # guest
        _retail_row("C489436", "21232", "STRAWBERRY CERAMIC TRINKET BOX", -2, "2010-07-01 12:00", 1.25, 12345.0),
        _retail_row("489437", "POST", "POSTAGE", 1, "2010-07-02 09:00", 18.0, 12345.0),
        _retail_row("489437", "22064", "PINK DOUGHNUT TRINKET POT", 3, "2010-07-02 09:00", 1.65, 12345.0),
        _retail_row("489437", "22065", "DAMAGED", 3, "2010-07-02 09:00", 0.0, 12345.0),
        *overlap,
    ]
    second = [
        {**row, "Description": row["Description"] + " "} for row in overlap  # the second file pads descriptions
    ] + [
        _retail_row("536366", "22633", "HAND WARMER UNION JACK", 6, "2011-01-04 10:00", 1.85, 17850.0),
        *[
            _retail_row("540000", f"{20000 + n}", f"ITEM {n} MUG", 1, "2011-02-01 10:00", 1.0, 15000.0)
            for n in range(600)
        ],
    ]
    _write_retail(root / "online_retail" / "a_2009-12_2010-12.parquet", first, "Int64")
    _write_retail(root / "online_retail" / "b_2010-12_2011-09.parquet", second, "int64")
    base = datasets.TAOBAO_START_TS
    pd.DataFrame(
        {
            "user_id": [1, 1, 1, 1, 2, 2, 3],
            "item_id": [100, 100, 101, 102, 100, 100, 103],
            "category_id": [7, 7, 7, 8, 7, 7, 9],
            "behavior": ["pv", "cart", "fav", "buy", "pv", "pv", "pv"],
            "ts": [base + 10, base + 20, base + 4000, base + 4100, base + 50, base + 50, 1_505_000_000],
        }
    ).to_parquet(root / "taobao" / "user_behavior.parquet")
    return root


# ---- Online Retail, exact -------------------------------------------------------------------------------------------


def test_online_retail_invoices_become_purchases_in_time_order(sample_dir):
    report = DatasetReport()
    events = list(iter_online_retail(sample_dir, report))
    assert [e.event_id for e in events] == [
        "or-489434", "or-C489436", "or-489437", "or-536365", "or-536366", "or-540000", "or-540000-2"
    ]
    first = events[0]
    assert first.user_id == "13085" and first.order_id == "489434" and not first.is_return
    assert [(l.item_id, l.quantity, l.unit_price, l.currency) for l in first.lines] == [
        ("85048", 12, Decimal("6.95"), "GBP"), ("79323P", 12, Decimal("6.75"), "GBP")
    ]
    assert first.lines[0].name == "15CM CHRISTMAS GLASS BALL 20 LIGHTS" and first.lines[0].category_id == "or-light"
    assert first.ts == datetime(2009, 12, 1, 7, 45, tzinfo=timezone.utc).timestamp()  # GMT in winter


def test_cancellations_are_returns_with_negative_quantities_in_london_time(sample_dir):
    refund = next(e for e in iter_online_retail(sample_dir) if e.order_id == "C489436")
    assert refund.is_return and refund.lines[0].quantity == -2
    assert refund.ts == datetime(2010, 7, 1, 11, 0, tzinfo=timezone.utc).timestamp()  # 12:00 BST


def test_overlapping_files_keep_one_copy_but_repeats_inside_a_file_stay(sample_dir):
    report = DatasetReport()
    order = next(e for e in iter_online_retail(sample_dir, report) if e.order_id == "536365")
    assert [l.item_id for l in order.lines] == ["85123A", "85123A", "71053"]
    assert report.skipped["online_retail.duplicate_line"] == 3


def test_unusable_lines_are_dropped_and_counted(sample_dir):
    report = DatasetReport()
    events = list(iter_online_retail(sample_dir, report))
    assert report.rows_read["online_retail"] == 10 + 604
    assert report.skipped["online_retail.guest_order"] == 1
    assert report.skipped["online_retail.guest_order_invoices"] == 1
    assert report.skipped["online_retail.non_product_code"] == 1
    assert report.skipped["online_retail.non_positive_price"] == 1
    assert [l.item_id for l in next(e for e in events if e.order_id == "489437").lines] == ["22064"]
    assert report.events["purchase"] == len(events) == 7


def test_invoices_over_the_line_limit_are_split_into_parts(sample_dir):
    parts = [e for e in iter_online_retail(sample_dir) if e.order_id == "540000"]
    assert [len(p.lines) for p in parts] == [500, 100]
    assert {l.item_id for p in parts for l in p.lines} == {f"{20000 + n}" for n in range(600)}


# ---- Taobao, exact --------------------------------------------------------------------------------------------------


def test_taobao_behaviours_map_to_clicks_and_purchases(sample_dir):
    report = DatasetReport()
    events = list(iter_taobao(sample_dir, report))
    assert [(type(e).__name__, getattr(e, "action", None)) for e in events] == [
        ("ClickEvent", "view"), ("ClickEvent", "add_to_cart"), ("ClickEvent", "view"), ("ClickEvent", "view"),
        ("ClickEvent", "favourite"), ("PurchaseEvent", None),
    ]
    assert report.skipped["taobao.outside_time_window"] == 1
    assert report.events == {"click": 5, "purchase": 1}
    buy = events[-1]
    assert buy.user_id == "tb-1" and buy.lines[0].item_id == "tb-102" and buy.lines[0].quantity == 1
    assert buy.lines[0].currency == "CNY" and buy.lines[0].unit_price == taobao_pseudo_price(8)


def test_taobao_ids_are_deterministic_and_unique_and_sessions_split_on_gaps(sample_dir):
    events = list(iter_taobao(sample_dir))
    assert [e.event_id for e in events] == [e.event_id for e in iter_taobao(sample_dir)]
    twins = [e.event_id for e in events if e.user_id == "tb-2"]
    assert twins == [f"tb-2-100-pv-{datasets.TAOBAO_START_TS + 50}", f"tb-2-100-pv-{datasets.TAOBAO_START_TS + 50}-2"]
    user1 = [e.session_id for e in events if isinstance(e, ClickEvent) and e.user_id == "tb-1"]
    assert user1 == ["tb-1-s1", "tb-1-s1", "tb-1-s2"]  # 3980 s gap > 30 min


def test_pseudo_price_is_stable_and_in_range():
    prices = [taobao_pseudo_price(c) for c in range(500)]
    low, high = datasets.TAOBAO_PRICE_RANGE_CNY
    assert all(Decimal(str(low)) <= p <= Decimal(str(high)) for p in prices)
    assert taobao_pseudo_price(42) == taobao_pseudo_price("42") and len(set(prices)) > 450


# ---- merged stream, catalog, helpers -------------------------------------------------------------------------------


def test_load_events_merges_sources_in_time_order_with_a_limit(sample_dir):
    report = DatasetReport()
    events = load_events(sample_dir, "all", report=report)
    assert len(events) == 7 + 6 and [e.ts for e in events] == sorted(e.ts for e in events)
    assert set(report.rows_read) == {"online_retail", "taobao"}
    assert [e.event_id for e in load_events(sample_dir, "all", limit=3)] == [e.event_id for e in events[:3]]
    with pytest.raises(ValueError):
        load_events(sample_dir, "nope")


def test_events_survive_the_wire_format(sample_dir):
    for event in load_events(sample_dir, "all"):
        assert decode_event(encode(event)) == event


def test_item_catalog_names_prices_and_categories(sample_dir):
    catalog = load_item_catalog(sample_dir)
    holder = catalog["85123A"]
    assert (holder.name, holder.category_id, holder.price, holder.currency) == (
        "WHITE HANGING HEART T-LIGHT HOLDER", "or-holder", 2.55, "GBP"
    )
    assert catalog["tb-102"].currency == "CNY" and catalog["tb-102"].category_id == "tb-8"
    assert "POST" not in catalog


@pytest.mark.parametrize(
    ("description", "category"),
    [
        ("JUMBO BAG RED RETROSPOT", "or-bag"),
        ("PACK OF 72 RETROSPOT CAKE CASES", "or-case"),
        ("SET OF 3 CAKE TINS PANTRY DESIGN", "or-tin"),
        ("PAPER CHAIN KIT 50'S CHRISTMAS ", "or-kit"),
        ("ASSORTED COLOUR BIRD ORNAMENT", "or-ornament"),
        ("PINK", "or-pink"),  # nothing but modifiers: the last word
        ("", "or-unknown"),
    ],
)
def test_derive_category(description, category):
    assert derive_category(description) == category


def test_default_data_dir_prefers_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    assert default_data_dir() == (tmp_path / "shared" / "data").resolve()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets, "__file__", str(tmp_path / "repo" / "engine" / "datasets.py"))
    assert default_data_dir() is None


# ---- the real data --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_online_retail():
    report = DatasetReport()
    started = time.perf_counter()
    events = list(iter_online_retail(REAL_DATA, report))
    return events, report, time.perf_counter() - started


@needs_real_data
def test_real_online_retail_is_clean_complete_and_fast(real_online_retail):
    events, report, seconds = real_online_retail
    assert seconds < 60, f"{seconds:.1f} s to convert Online Retail"
    assert len(events) > 30_000 and report.rows_read["online_retail"] > 800_000
    assert report.skipped["online_retail.duplicate_line"] > 0  # the two files overlap on 2010-12-01..09
    ts = np.array([e.ts for e in events])
    assert (np.diff(ts) >= 0).all()
    assert len({e.event_id for e in events}) == len(events)
    lines = [l for e in events for l in e.lines]
    assert all(l.unit_price > 0 and (l.quantity < 0) == e.is_return for e in events for l in e.lines)
    line_skips = sum(v for k, v in report.skipped.items() if not k.endswith("_invoices"))
    assert report.rows_read["online_retail"] - line_skips == len(lines)  # every row is a line or a counted skip
    assert len({l.category_id for l in lines}) > 50
    assert all(not e.user_id.endswith(".0") for e in events)


@needs_real_data
def test_real_taobao_stays_in_its_window():
    report = DatasetReport()
    events = list(iter_taobao(REAL_DATA, report))
    assert report.skipped["taobao.outside_time_window"] > 0
    assert report.rows_read["taobao"] == len(events) + sum(report.skipped.values())
    assert all(datasets.TAOBAO_START_TS <= e.ts < datasets.TAOBAO_END_TS for e in events)
    assert len({e.event_id for e in events}) == len(events)
    assert {type(e) for e in events} == {ClickEvent, PurchaseEvent}
