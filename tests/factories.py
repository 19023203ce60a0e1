"""Event factories with sensible defaults (tests/ is on sys.path through rootdir conftest imports)."""

from __future__ import annotations

import itertools

from kairos.schemas.events import ClickEvent, ImpressionEvent, OrderLine, PurchaseEvent, ShownItem

T0 = 1_700_000_000.0
_ids = itertools.count()


def click(user="u1", item="i1", category="c1", action="view", ts=T0, event_id=None, **extra) -> ClickEvent:
    return ClickEvent(
        event_id=event_id or f"c{next(_ids)}", user_id=user, item_id=item, category_id=category, action=action, ts=ts, **extra
    )


def purchase(user="u1", items=(("i1", "c1", 2.5),), ts=T0, event_id=None, is_return=False) -> PurchaseEvent:
    sign = -1 if is_return else 1
    lines = [OrderLine(item_id=i, quantity=sign, unit_price=p, category_id=c, name=f"name of {i}") for i, c, p in items]
    eid = event_id or f"p{next(_ids)}"
    return PurchaseEvent(event_id=eid, user_id=user, order_id=f"o-{eid}", ts=ts, lines=lines, is_return=is_return)


def impression(user="u1", items=("i1", "i2"), rec_id="r1", ts=T0, event_id=None) -> ImpressionEvent:
    shown = [ShownItem(item_id=i, position=n) for n, i in enumerate(items, start=1)]
    return ImpressionEvent(event_id=event_id or f"m{next(_ids)}", user_id=user, rec_id=rec_id, items=shown, ts=ts)
