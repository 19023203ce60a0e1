from __future__ import annotations

import pytest

from kairos.engine.safety import SafetyFilter, SafetyRules, SafetyStats, safe_generate

BLOCKED = [
    ("这是全网最好看的连衣裙", "absolute"),
    ("销量第一的牛仔裤", "absolute"),
    ("国家级工艺打造", "absolute"),
    ("顶级面料，舒适透气", "absolute"),
    ("这款面霜可以治疗痘痘", "medical"),
    ("穿上就能减肥", "medical"),
    ("The best in the world for your feet", "absolute"),
    ("The No. 1 jacket of the season", "absolute"),
    ("Our #1 pick", "absolute"),
    ("This balm cures eczema overnight", "medical"),
    ("Clinically proven comfort", "medical"),
    ("This shit is amazing", "profanity"),
    ("他妈的好看", "profanity"),
    ("Ｎｏ．１ rated tote", "absolute"),  # full-width forms are NFKC-normalised first
]

ALLOWED = [
    "A soft cotton tee for easy weekends.",
    "100% cotton, machine washable.",
    "最近很流行的小白鞋，百搭又舒适",  # 最近 = "recently": not a superlative
    "简约白色衬衫，通勤休闲两相宜。",
    "Cushioned heel and toe for all-day comfort.",
    "Number of pockets: two.",
]


@pytest.mark.parametrize("text,reason", BLOCKED)
def test_banned_claims_are_blocked_with_their_reason(text, reason):
    verdict = SafetyFilter().check(text)
    assert not verdict.allowed
    assert any(r.startswith(reason) for r in verdict.reasons), verdict.reasons


@pytest.mark.parametrize("text", ALLOWED)
def test_ordinary_copy_is_allowed(text):
    assert SafetyFilter().check(text).allowed, SafetyFilter().check(text).reasons


def test_rules_are_configurable():
    rules = SafetyRules(extra=("cheap",), ban_zui=False)
    f = SafetyFilter(rules)
    assert not f.check("So cheap!").allowed
    assert f.check("最好看的裙子").allowed  # the 最 rule switched off


def test_blocked_row_is_regenerated_then_falls_back_and_counted():
    calls = []
    outputs = iter([["最好的裙子", "Nice linen shirt."], ["Elegant dress."]])

    def generate(prompts):
        calls.append(list(prompts))
        return next(outputs)

    stats = SafetyStats()
    out = safe_generate(generate, ["p0", "p1"], ["fallback0", "fallback1"], SafetyFilter(), stats, retries=1)
    assert calls == [["p0", "p1"], ["p0"]]  # only the blocked row is regenerated
    assert [o.source for o in out] == ["regenerated", "generated"]
    assert out[0].text == "Elegant dress." and out[0].reasons == ("absolute:最",)
    assert (stats.checked, stats.blocked, stats.regenerated, stats.fallbacks) == (3, 1, 1, 0)


def test_persistently_blocked_text_falls_back_to_template():
    stats = SafetyStats()
    out = safe_generate(lambda ps: ["It cures everything" for _ in ps], ["p"], ["Plain template."], SafetyFilter(),
                        stats, retries=2)
    assert out[0].text == "Plain template." and out[0].source == "template"
    assert stats.blocked == 3 and stats.fallbacks == 1 and stats.reasons == {"medical": 3}


def test_empty_generation_falls_back():
    out = safe_generate(lambda ps: ["  " for _ in ps], ["p"], ["T"], SafetyFilter(), retries=0)
    assert out[0].source == "template"
