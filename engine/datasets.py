"""Turn the real data sets under ``shared/data`` into time-ordered Kairos events.

Two sources of shopper behaviour (see ``docs/data.md`` for the full mapping and credits):

- **Online Retail** (UCI, a UK gift shop, GBP): every invoice becomes one :class:`PurchaseEvent` with its lines;
  cancellations (``C`` invoices) become ``is_return=True`` events with negative quantities.
- **Taobao UserBehavior** (Alibaba Tianchi, CNY): ``pv`` / ``cart`` / ``fav`` become :class:`ClickEvent` s,
  ``buy`` becomes a one-line :class:`PurchaseEvent`.

Everything is deterministic: the same files give the same events with the same ids, so a replay can be repeated and
the engine's idempotence on event ids can be relied upon. What is dropped is counted in a :class:`DatasetReport`.

>>> derive_category("WHITE HANGING HEART T-LIGHT HOLDER")
'or-holder'
>>> derive_category("JUMBO BAG RED RETROSPOT")
'or-bag'
"""

from __future__ import annotations

import hashlib
import heapq
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import islice
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from kairos.engine.product_words import PRODUCT_MODIFIERS
from kairos.schemas.events import MAX_ORDER_LINES, ClickEvent, PurchaseEvent

Source = Literal["online_retail", "taobao", "all"]

ONLINE_RETAIL_DIR = "online_retail"
TAOBAO_FILE = Path("taobao") / "user_behavior.parquet"
MYNTRA_FILE = Path("catalog") / "myntra_products.parquet"

#: The shop trades in London: invoice times are local wall-clock times.
ONLINE_RETAIL_TZ = "Europe/London"
#: Product stock codes start with five digits (``85123A``); the rest are postage, fees, discounts, manual
#: adjustments, samples and gift vouchers (``POST``, ``DOT``, ``M``, ``D``, ``BANK CHARGES``, ``gift_0001_20``...).
PRODUCT_CODE = r"^\d{5}"
#: Tianchi documents the set as 2017-11-25 .. 2017-12-03, China Standard Time (UTC+8): [start, end).
TAOBAO_START_TS = 1_511_539_200  # 2017-11-25T00:00:00+08:00
TAOBAO_END_TS = 1_512_316_800  # 2017-12-04T00:00:00+08:00
#: Taobao has no sessions; a gap this long between two of a user's events starts a new one (the usual web convention).
SESSION_GAP_S = 30 * 60
#: Taobao has no prices: a category gets a pseudo-price, log-uniform in this range (CNY), from a hash of its id.
TAOBAO_PRICE_RANGE_CNY = (5.0, 500.0)

_TAOBAO_ACTIONS = {"pv": "view", "cart": "add_to_cart", "fav": "favourite"}


@dataclass
class DatasetReport:
    """What a reader saw: rows read per source, events made per kind, rows skipped per reason.

    Reasons are prefixed by their source (``online_retail.guest_order``) so one report can cover a merged stream.
    """

    rows_read: Counter = field(default_factory=Counter)
    events: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)

    def skip(self, source: str, reason: str, count: int) -> None:
        if count:
            self.skipped[f"{source}.{reason}"] += int(count)

    def summary(self) -> str:
        """One line, for logs and the replay summary."""
        rows = ", ".join(f"{k}={v:,}" for k, v in sorted(self.rows_read.items()))
        events = ", ".join(f"{k}={v:,}" for k, v in sorted(self.events.items()))
        skipped = ", ".join(f"{k}={v:,}" for k, v in sorted(self.skipped.items())) or "none"
        return f"rows read: {rows or 'none'}; events: {events or 'none'}; skipped: {skipped}"


@dataclass(frozen=True)
class CatalogItem:
    """What a storefront would display for an item."""

    item_id: str
    name: str
    category_id: str
    price: float
    currency: str


def default_data_dir() -> Path | None:
    """``../shared/data`` from the working directory, else beside the repository; None when neither exists."""
    candidates = (Path.cwd() / "../shared/data", Path(__file__).resolve().parents[1] / "../shared/data")
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    return None


# --------------------------------------------------------------------------------------------------------------------
# Derived categories (Online Retail has none; Myntra names use the same rule; the modifiers: engine/product_words.py)


def derive_category(description: str | None, prefix: str = "or") -> str:
    """A coarse, deterministic category from a product description: its main noun, singular, lower case.

    The last word (letters only, three or more) that is not a modifier, with a simple English singular rule.

    >>> derive_category("PACK OF 72 RETROSPOT CAKE CASES")
    'or-case'
    >>> derive_category("SET OF 3 CAKE TINS PANTRY DESIGN")
    'or-tin'
    >>> derive_category(None)
    'or-unknown'
    """
    words = [w for w in re.findall(r"[A-Z]+", (description or "").upper()) if len(w) >= 3]
    if not words:
        return f"{prefix}-unknown"
    nouns = [w for w in words if w not in PRODUCT_MODIFIERS]
    return f"{prefix}-{_singular(nouns[-1] if nouns else words[-1]).lower()}"


def _singular(word: str) -> str:
    if word.endswith("IES") and len(word) > 4:
        return word[:-3] + "Y"
    if word.endswith(("XES", "SHES", "CHES", "SSES")):
        return word[:-2]
    if word.endswith("S") and not word.endswith(("SS", "US", "IS")) and len(word) > 3:
        return word[:-1]
    return word


# --------------------------------------------------------------------------------------------------------------------
# Online Retail

_RETAIL_COLUMNS = ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID"]
#: Two copies of one invoice line agree on all of these (descriptions differ in spacing/case between the files).
_RETAIL_LINE_KEY = ["InvoiceNo", "StockCode", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID"]


def iter_online_retail(data_dir: Path | str, report: DatasetReport | None = None) -> Iterator[PurchaseEvent]:
    """Every invoice of every ``online_retail/*.parquet`` file as a :class:`PurchaseEvent`, in time order.

    Guest orders (no customer id), non-product lines (postage, fees...), lines with a non-positive price, zero
    quantity or a quantity whose sign disagrees with the invoice type are dropped and counted in ``report``.
    Invoices over :data:`MAX_ORDER_LINES` lines are split into parts ``or-<invoice>``, ``or-<invoice>-2``...
    """
    report = report if report is not None else DatasetReport()
    lines = online_retail_lines(data_dir, report)
    for event in _invoice_events(lines):
        report.events["purchase"] += 1
        yield event


def online_retail_lines(data_dir: Path | str, report: DatasetReport | None = None) -> pd.DataFrame:
    """The cleaned invoice lines of all Online Retail files, one row per kept line, sorted by (ts, invoice).

    Columns: invoice, user_id, item_id, name, quantity, unit_price, category_id, ts, is_return.
    """
    report = report if report is not None else DatasetReport()
    files = sorted(Path(data_dir, ONLINE_RETAIL_DIR).rglob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no parquet files under {Path(data_dir, ONLINE_RETAIL_DIR)}")
    raw = pd.concat([_read_retail_file(path, n) for n, path in enumerate(files)], ignore_index=True)
    report.rows_read["online_retail"] += len(raw)
    lines = _drop_overlap_duplicates(raw, report)
    lines = _drop_unusable_lines(lines, report)
    return _to_line_frame(lines)


def _read_retail_file(path: Path, file_no: int) -> pd.DataFrame:
    frame = pd.read_parquet(path, columns=_RETAIL_COLUMNS)
    frame = frame.assign(
        InvoiceNo=frame["InvoiceNo"].astype(str).str.strip(),
        StockCode=frame["StockCode"].astype(str).str.strip(),
        Description=frame["Description"].astype(object).where(frame["Description"].notna(), None),
        Quantity=pd.to_numeric(frame["Quantity"]).astype("Int64").fillna(0).astype("int64"),
        UnitPrice=pd.to_numeric(frame["UnitPrice"]).astype("float64"),
        CustomerID=pd.to_numeric(frame["CustomerID"]).astype("float64"),
        InvoiceDate=pd.to_datetime(frame["InvoiceDate"]),
    )
    # A line repeated inside one file is a real repeat (scanned twice); the n-th copy of a line in one file is the
    # same line as the n-th copy in another file that covers the same days.
    frame["_copy"] = frame.groupby(_RETAIL_LINE_KEY, dropna=False, sort=False).cumcount()
    frame["_file"] = file_no
    return frame


def _drop_overlap_duplicates(raw: pd.DataFrame, report: DatasetReport) -> pd.DataFrame:
    kept = raw.drop_duplicates(subset=_RETAIL_LINE_KEY + ["_copy"], keep="first")
    report.skip("online_retail", "duplicate_line", len(raw) - len(kept))
    return kept


def _drop_unusable_lines(lines: pd.DataFrame, report: DatasetReport) -> pd.DataFrame:
    is_return = lines["InvoiceNo"].str.startswith("C")
    guest = lines["CustomerID"].isna()
    report.skip("online_retail", "guest_order_invoices", lines.loc[guest, "InvoiceNo"].nunique())
    checks = [  # (reason, rows to drop), in order: a row is counted under the first reason that applies
        ("guest_order", guest),
        ("non_product_code", ~lines["StockCode"].str.match(PRODUCT_CODE)),
        ("non_positive_price", ~(lines["UnitPrice"] > 0)),
        ("zero_quantity", lines["Quantity"] == 0),
        ("quantity_sign_mismatch", (lines["Quantity"] < 0) != is_return),
        ("absurd_quantity", lines["Quantity"].abs() > 100_000),
    ]
    dropped = pd.Series(False, index=lines.index)
    for reason, bad in checks:
        report.skip("online_retail", reason, int((bad & ~dropped).sum()))
        dropped |= bad
    return lines.loc[~dropped]


def _to_line_frame(lines: pd.DataFrame) -> pd.DataFrame:
    local = lines["InvoiceDate"].dt.tz_localize(ONLINE_RETAIL_TZ, ambiguous=True, nonexistent="shift_forward")
    ts = (local - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)  # independent of the datetime resolution
    descriptions = lines["Description"]
    categories = {d: derive_category(d) for d in pd.unique(descriptions)}
    frame = pd.DataFrame(
        {
            "invoice": lines["InvoiceNo"].to_numpy(),
            "user_id": lines["CustomerID"].astype("int64").astype(str).to_numpy(),
            "item_id": lines["StockCode"].to_numpy(),
            "name": descriptions.fillna(lines["StockCode"]).str.strip().to_numpy(),
            "quantity": lines["Quantity"].to_numpy(),
            "unit_price": lines["UnitPrice"].round(4).to_numpy(),
            "category_id": descriptions.map(categories).to_numpy(),
            "ts": ts.to_numpy(dtype="float64"),
            "is_return": lines["InvoiceNo"].str.startswith("C").to_numpy(),
            "_file": lines["_file"].to_numpy(),
            "_row": np.arange(len(lines)),
        }
    )
    # One invoice, one time: its earliest line's (the few multi-minute invoices keep their lines together).
    frame["ts"] = frame.groupby("invoice", sort=False)["ts"].transform("min")
    frame = frame.sort_values(["ts", "invoice", "_file", "_row"], kind="stable", ignore_index=True)
    return frame.drop(columns=["_file", "_row"])


def _invoice_events(lines: pd.DataFrame) -> Iterator[PurchaseEvent]:
    columns = {c: lines[c].tolist() for c in ("invoice", "user_id", "item_id", "name", "quantity", "category_id")}
    prices = lines["unit_price"].tolist()
    decimals = {p: Decimal(repr(p)) for p in set(prices)}
    ts, is_return = lines["ts"].tolist(), lines["is_return"].tolist()
    invoices = lines["invoice"].to_numpy()
    starts = np.flatnonzero(np.r_[True, invoices[1:] != invoices[:-1]]).tolist() + [len(lines)]
    for start, stop in zip(starts[:-1], starts[1:]):
        for part, part_start in enumerate(range(start, stop, MAX_ORDER_LINES), start=1):
            rows = range(part_start, min(part_start + MAX_ORDER_LINES, stop))
            invoice = columns["invoice"][start]
            yield PurchaseEvent.model_validate(
                {
                    "event_id": f"or-{invoice}" if part == 1 else f"or-{invoice}-{part}",
                    "user_id": columns["user_id"][start],
                    "ts": ts[start],
                    "order_id": invoice,
                    "is_return": is_return[start],
                    "lines": [
                        {
                            "item_id": columns["item_id"][j],
                            "quantity": columns["quantity"][j],
                            "unit_price": decimals[prices[j]],
                            "currency": "GBP",
                            "category_id": columns["category_id"][j],
                            "name": columns["name"][j][:500],
                        }
                        for j in rows
                    ],
                }
            )


# --------------------------------------------------------------------------------------------------------------------
# Taobao


def iter_taobao(data_dir: Path | str, report: DatasetReport | None = None) -> Iterator[ClickEvent | PurchaseEvent]:
    """Taobao UserBehavior rows as events, in time order.

    Ids are prefixed ``tb-`` (users, items, categories) so they never collide with Online Retail ids in a merged
    stream. ``buy`` rows become one-line orders at the category's :func:`taobao_pseudo_price`.
    """
    report = report if report is not None else DatasetReport()
    rows = taobao_rows(data_dir, report)
    prices = {c: taobao_pseudo_price(c) for c in pd.unique(rows["category_id"])}
    columns = [rows[c].tolist() for c in ("event_id", "user_id", "item_id", "category_id", "behavior", "ts")]
    sessions = rows["session_id"].tolist()
    for (event_id, user, item, category, behavior, ts), session in zip(zip(*columns), sessions):
        if behavior == "buy":
            report.events["purchase"] += 1
            yield _taobao_purchase(event_id, user, item, category, ts, prices[category])
        else:
            report.events["click"] += 1
            yield ClickEvent(
                event_id=event_id,
                user_id=f"tb-{user}",
                item_id=f"tb-{item}",
                category_id=f"tb-{category}",
                action=_TAOBAO_ACTIONS[behavior],
                ts=float(ts),
                session_id=session,
            )


def _taobao_purchase(event_id: str, user: int, item: int, category: int, ts: int, price: Decimal) -> PurchaseEvent:
    line = {"item_id": f"tb-{item}", "quantity": 1, "unit_price": price, "currency": "CNY"}
    return PurchaseEvent.model_validate(
        {
            "event_id": event_id,
            "user_id": f"tb-{user}",
            "ts": float(ts),
            "order_id": event_id,
            "lines": [line | {"category_id": f"tb-{category}"}],
        }
    )


def taobao_rows(data_dir: Path | str, report: DatasetReport | None = None) -> pd.DataFrame:
    """The Taobao rows inside the documented window, sorted by time, with event and session ids added."""
    report = report if report is not None else DatasetReport()
    columns = ["user_id", "item_id", "category_id", "behavior", "ts"]
    frame = pd.read_parquet(Path(data_dir, TAOBAO_FILE), columns=columns)
    report.rows_read["taobao"] += len(frame)
    frame = frame.assign(behavior=frame["behavior"].astype(str).str.strip().str.lower())
    outside = (frame["ts"] < TAOBAO_START_TS) | (frame["ts"] >= TAOBAO_END_TS)
    unknown = ~frame["behavior"].isin(["pv", "cart", "fav", "buy"]) & ~outside
    report.skip("taobao", "outside_time_window", int(outside.sum()))
    report.skip("taobao", "unknown_behavior", int(unknown.sum()))
    frame = frame.loc[~outside & ~unknown].sort_values("ts", kind="stable", ignore_index=True)
    frame["event_id"] = _taobao_event_ids(frame)
    frame["session_id"] = _taobao_session_ids(frame)
    return frame


def _taobao_event_ids(frame: pd.DataFrame) -> pd.Series:
    """``tb-<user>-<item>-<behavior>-<ts>``, with ``-<n>`` on the n-th exact repeat of a row (n >= 2)."""
    key = ["user_id", "item_id", "behavior", "ts"]
    base = "tb-" + frame["user_id"].astype(str)
    for column in key[1:]:
        base = base + "-" + frame[column].astype(str)
    copy = frame.groupby(key, sort=False).cumcount()
    return base.where(copy == 0, base + "-" + (copy + 1).astype(str))


def _taobao_session_ids(frame: pd.DataFrame) -> pd.Series:
    by_user = frame.sort_values(["user_id", "ts"], kind="stable")
    gap = by_user.groupby("user_id")["ts"].diff()
    number = (gap.isna() | (gap > SESSION_GAP_S)).groupby(by_user["user_id"]).cumsum()
    ids = "tb-" + by_user["user_id"].astype(str) + "-s" + number.astype(str)
    return ids.reindex(frame.index)


def taobao_pseudo_price(category_id: int | str) -> Decimal:
    """A stable price (CNY) for every item of a category: log-uniform in :data:`TAOBAO_PRICE_RANGE_CNY`.

    >>> taobao_pseudo_price(2520377) == taobao_pseudo_price("2520377")
    True
    """
    digest = hashlib.blake2b(f"taobao-price:{category_id}".encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2**64
    low, high = (math.log(p) for p in TAOBAO_PRICE_RANGE_CNY)
    return Decimal(f"{math.exp(low + u * (high - low)):.2f}")


# --------------------------------------------------------------------------------------------------------------------
# Merged streams and the catalog


def load_events(
    data_dir: Path | str,
    source: Source = "all",
    limit: int | None = None,
    report: DatasetReport | None = None,
) -> list[ClickEvent | PurchaseEvent]:
    """The events of one source, or both merged, in time order (ties: Online Retail first), at most ``limit``."""
    streams: list[Iterable] = []
    if source in ("online_retail", "all"):
        streams.append(iter_online_retail(data_dir, report))
    if source in ("taobao", "all"):
        streams.append(iter_taobao(data_dir, report))
    if not streams:
        raise ValueError(f"unknown source {source!r}: expected online_retail, taobao or all")
    merged = heapq.merge(*streams, key=lambda event: event.ts)
    return list(islice(merged, limit))


def load_item_catalog(data_dir: Path | str, source: Source = "all") -> dict[str, CatalogItem]:
    """item id -> :class:`CatalogItem` for display.

    Online Retail: the item's most frequent description and its median sale price (GBP). Taobao (anonymised, no
    names or prices): a placeholder name and the category's pseudo-price (CNY).
    """
    catalog: dict[str, CatalogItem] = {}
    if source in ("online_retail", "all"):
        catalog.update(_online_retail_catalog(online_retail_lines(data_dir)))
    if source in ("taobao", "all"):
        catalog.update(_taobao_catalog(taobao_rows(data_dir)))
    return catalog


def _online_retail_catalog(lines: pd.DataFrame) -> dict[str, CatalogItem]:
    sales = lines.loc[~lines["is_return"]]
    names = sales.groupby(["item_id", "name"]).size().sort_values(ascending=False, kind="stable")
    top_name = names.reset_index().drop_duplicates("item_id").set_index("item_id")["name"]
    price = sales.groupby("item_id")["unit_price"].median()
    return {
        item: CatalogItem(item, name, derive_category(name), round(float(price[item]), 2), "GBP")
        for item, name in top_name.items()
    }


def _taobao_catalog(rows: pd.DataFrame) -> dict[str, CatalogItem]:
    pairs = rows.drop_duplicates("item_id")[["item_id", "category_id"]]
    return {
        f"tb-{item}": CatalogItem(
            f"tb-{item}", f"Taobao item {item} (category {category})", f"tb-{category}",
            float(taobao_pseudo_price(category)), "CNY",
        )
        for item, category in zip(pairs["item_id"].tolist(), pairs["category_id"].tolist())
    }


def load_myntra_products(data_dir: Path | str) -> pd.DataFrame:
    """The Myntra fashion catalog as ``name, category, price_inr`` (category derived from the name, ``my-`` prefix).

    Used by the simulator to give simulated items real-looking names; the products are real, the shoppers are not.
    """
    frame = pd.read_parquet(Path(data_dir, MYNTRA_FILE), columns=["ProductName", "Price (INR)"])
    names = frame["ProductName"].astype(str).str.strip()
    return pd.DataFrame(
        {
            "name": names,
            "category": names.map(lambda n: derive_category(n, prefix="my")),
            "price_inr": pd.to_numeric(frame["Price (INR)"]).astype("float64"),
        }
    )
