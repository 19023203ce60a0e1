from __future__ import annotations

from kairos.engine.prompts import (
    ProductFacts,
    ad_copy_prompt,
    fallback_product_copy,
    fallback_summary,
    product_copy_prompt,
    summary_prompt,
)
from kairos.engine.safety import SafetyFilter

JEANS = ProductFacts("Slim Fit Jeans", brand="Roadster", colour="Blue", price=1299.4)


def test_product_prompt_carries_facts_and_interests():
    p = product_copy_prompt(JEANS, ["denim", "casual"])
    assert "Brand: Roadster" in p and "Price: 1299 INR" in p
    assert p.endswith("Shopper interests: denim, casual")


def test_interests_are_capped_and_optional():
    assert "interests" not in product_copy_prompt(JEANS)
    p = product_copy_prompt(JEANS, [f"i{k}" for k in range(9)])
    assert "i4" in p and "i5" not in p


def test_chinese_ad_prompt():
    p = ad_copy_prompt(ProductFacts("", attributes="类型#上衣*颜色#白色"), ["白色"], lang="zh")
    assert p.startswith("根据商品属性写一段广告文案") and "顾客偏好：白色" in p


def test_summary_prompt_flattens_whitespace_and_cuts():
    p = summary_prompt("line one\r\n  line two " + "x" * 1000, max_chars=50)
    assert "\r" not in p.split("\n", 1)[1] and len(p.split("\n", 1)[1]) == 50


def test_fallbacks_are_factual_and_pass_the_safety_filter():
    en = fallback_product_copy(JEANS)
    zh = fallback_product_copy(ProductFacts("", attributes="类型#上衣*颜色#白色"), lang="zh")
    assert en == "Roadster Slim Fit Jeans in blue, 1299 INR."
    assert "上衣" in zh
    assert SafetyFilter().check(en).allowed and SafetyFilter().check(zh).allowed
    assert fallback_summary("Great fit. Runs small.") == "Great fit"
