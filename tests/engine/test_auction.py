"""Auction pricing on hand-computed cases (issue 4: "auction pricing ... correct on hand-computed cases")."""

import pytest

from kairos.engine.auction import Bid, expected_value, rank_bids, run_auction, run_gsp


def bid(campaign, pctr, cpc, creative=None, variant="v0"):
    return Bid(campaign, creative or f"cr-{campaign}", variant, pctr=pctr, bid_per_click=cpc)


def test_expected_value_is_pctr_times_bid():
    assert expected_value(0.04, 2.5) == pytest.approx(0.1)


def test_winner_pays_second_ev_over_own_pctr():
    # EVs: a = 0.1 * 1.0 = 0.10, b = 0.05 * 1.6 = 0.08, c = 0.2 * 0.2 = 0.04
    result = run_auction([bid("a", 0.1, 1.0), bid("b", 0.05, 1.6), bid("c", 0.2, 0.2)], reserve_ev=0.01)
    assert result.winner.campaign_id == "a"
    assert result.clearing_ev == pytest.approx(0.08)
    assert result.price_per_click == pytest.approx(0.8)  # 0.08 / 0.1


def test_reserve_sets_price_when_above_runner_up():
    # a EV 0.10, b EV 0.03; reserve 0.05 > 0.03 -> pays 0.05 / 0.1 = 0.5 per click
    result = run_auction([bid("a", 0.1, 1.0), bid("b", 0.03, 1.0)], reserve_ev=0.05)
    assert result.winner.campaign_id == "a"
    assert result.clearing_ev == pytest.approx(0.05)
    assert result.price_per_click == pytest.approx(0.5)


def test_single_bidder_pays_reserve():
    result = run_auction([bid("a", 0.2, 1.0)], reserve_ev=0.02)
    assert result.price_per_click == pytest.approx(0.1)  # 0.02 / 0.2


def test_no_winner_below_reserve():
    result = run_auction([bid("a", 0.01, 1.0), bid("b", 0.02, 0.4)], reserve_ev=0.05)
    assert result.winner is None and not result.won
    assert result.price_per_click == 0.0


def test_bid_exactly_at_reserve_wins_and_pays_its_bid():
    result = run_auction([bid("a", 0.1, 0.5)], reserve_ev=0.05)
    assert result.winner.campaign_id == "a"
    assert result.price_per_click == pytest.approx(0.5)


def test_zero_ev_never_wins():
    assert run_auction([bid("a", 0.0, 3.0)]).winner is None


def test_ties_broken_by_pctr_then_ids_regardless_of_order():
    # all EV 0.1: "b" has the higher pCTR; "c" and "a" tie on pCTR too -> "a" before "c"
    bids = [bid("c", 0.1, 1.0), bid("b", 0.2, 0.5), bid("a", 0.1, 1.0)]
    assert [b.campaign_id for b in rank_bids(bids)] == ["b", "a", "c"]
    for order in (bids, bids[::-1]):
        result = run_auction(order)
        assert result.winner.campaign_id == "b"
        # equal EV -> the winner pays exactly its own bid
        assert result.price_per_click == pytest.approx(0.5)


def test_campaign_does_not_set_its_own_price():
    # a has two variants (EV 0.10 and 0.09); the price comes from b (EV 0.04), not from a's second variant
    bids = [bid("a", 0.1, 1.0, variant="x"), bid("a", 0.09, 1.0, variant="y"), bid("b", 0.04, 1.0)]
    result = run_auction(bids)
    assert result.winner.variant_id == "x"
    assert result.price_per_click == pytest.approx(0.4)


def test_gsp_prices_each_slot_from_the_next():
    # EVs: a 0.12, b 0.08, c 0.05; reserve 0.06 excludes c
    bids = [bid("a", 0.12, 1.0), bid("b", 0.04, 2.0), bid("c", 0.05, 1.0)]
    first, second, third = run_gsp(bids, n_slots=3, reserve_ev=0.06)
    assert (first.winner.campaign_id, first.price_per_click) == ("a", pytest.approx(0.08 / 0.12))
    assert (second.winner.campaign_id, second.price_per_click) == ("b", pytest.approx(0.06 / 0.04))
    assert third.winner is None


def test_invalid_bids_rejected():
    with pytest.raises(ValueError):
        bid("a", 1.5, 1.0)
    with pytest.raises(ValueError):
        bid("a", 0.5, -1.0)


def test_scored_creative_record_from_auction_and_validation():
    from pydantic import ValidationError

    from kairos.schemas.ads import AdRequest, ScoredCreative

    request = AdRequest(request_id="req-1", user_id="u1", slot="home", ts=100.0)
    award = run_auction([bid("a", 0.1, 1.0), bid("b", 0.05, 1.6)], reserve_ev=0.01)
    w = award.winner
    record = ScoredCreative(
        request_id=request.request_id, user_id=request.user_id, creative_id=w.creative_id,
        campaign_id=w.campaign_id, variant_id=w.variant_id, pctr=w.pctr, bid=w.bid_per_click,
        expected_value=w.expected_value, clearing_price=award.price_per_click, reserve=award.reserve_ev,
        won=True, propensity=1.0, reasons=["auction:won"], produced_at=101.0,
    )
    assert record.schema_version == 1 and record.clearing_price == pytest.approx(0.8)
    fields = record.model_dump()
    for bad in ({"pctr": 1.2}, {"bid": -1.0}, {"creative_id": ""}, {"clearing_price": 2.0}, {"extra": 1},
                {"won": False}):
        with pytest.raises(ValidationError):
            ScoredCreative(**{**fields, **bad})
    with pytest.raises(ValidationError):
        AdRequest(request_id="r", user_id="u", slot="s", ts=-1.0)
