"""Prompt templates for generated copy: personalized product copy, ad copy and one-line summaries (en / zh).

The same functions build the fine-tuning prompts (``kairos.onnx_export``) and the serving prompts, so the model sees
at serving time exactly the format it was trained on. Prompts are plain user messages; the generator wraps them in
its chat format. The template fallbacks are used when the generator is missing or a text is blocked by the safety
filter (``kairos.engine.safety``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ProductFacts:
    """What the copy may talk about: nothing here is invented by the template."""

    name: str
    brand: str = ""
    colour: str = ""
    price: float | None = None
    currency: str = "INR"
    category: str = ""
    attributes: str = ""  # AdvertiseGen style "类型#上衣*颜色#白色" or free text


def _interests(interests: Sequence[str], lang: str) -> str:
    shown = [i for i in interests if i][:5]
    if not shown:
        return ""
    if lang == "zh":
        return f"\n顾客偏好：{'、'.join(shown)}"
    return f"\nShopper interests: {', '.join(shown)}"


def _facts_en(p: ProductFacts) -> str:
    parts = [f"Product: {p.name}"]
    if p.brand:
        parts.append(f"Brand: {p.brand}")
    if p.colour:
        parts.append(f"Colour: {p.colour}")
    if p.price is not None:
        parts.append(f"Price: {p.price:.0f} {p.currency}")
    if p.attributes:
        parts.append(f"Details: {p.attributes}")
    return "\n".join(parts)


def product_copy_prompt(product: ProductFacts, interests: Sequence[str] = (), lang: str = "en") -> str:
    """Prompt for a short personalized product description.

    >>> print(product_copy_prompt(ProductFacts("Slim Fit Jeans", brand="Roadster", colour="Blue", price=1299),
    ...                           ["denim", "casual"]))
    Write a short product description for this shopper.
    Product: Slim Fit Jeans
    Brand: Roadster
    Colour: Blue
    Price: 1299 INR
    Shopper interests: denim, casual
    """
    if lang == "zh":
        return f"请为这位顾客写一段商品介绍。\n商品：{product.name}\n属性：{product.attributes}" + _interests(interests, lang)
    return "Write a short product description for this shopper.\n" + _facts_en(product) + _interests(interests, lang)


def ad_copy_prompt(product: ProductFacts, interests: Sequence[str] = (), lang: str = "zh") -> str:
    """Prompt for ad copy; Chinese prompts carry an AdvertiseGen attribute string.

    >>> print(ad_copy_prompt(ProductFacts("", attributes="类型#上衣*颜色#白色")))
    根据商品属性写一段广告文案。
    属性：类型#上衣*颜色#白色
    """
    if lang == "zh":
        return f"根据商品属性写一段广告文案。\n属性：{product.attributes}" + _interests(interests, lang)
    return "Write a one-sentence ad for this shopper.\n" + _facts_en(product) + _interests(interests, lang)


def summary_prompt(text: str, lang: str = "en", max_chars: int = 600) -> str:
    """Prompt for a one-line summary of a long description or a review (input cut to ``max_chars``)."""
    body = " ".join(text.split())[:max_chars]
    if lang == "zh":
        return f"用一句话概括：\n{body}"
    return f"Summarize in one line:\n{body}"


# --- template fallbacks: safe, factual, never generated ---


def fallback_product_copy(product: ProductFacts, lang: str = "en") -> str:
    """A plain factual line used when generation is unavailable or blocked.

    >>> fallback_product_copy(ProductFacts("Slim Fit Jeans", brand="Roadster", colour="Blue", price=1299))
    'Roadster Slim Fit Jeans in blue, 1299 INR.'
    >>> fallback_product_copy(ProductFacts("Red Woolly Hottie White Heart."))  # a catalogue name with its own stop
    'Red Woolly Hottie White Heart.'
    """
    if lang == "zh":
        return f"{product.name or product.attributes.replace('*', '，').replace('#', '：')}，欢迎选购。"
    words = " ".join(w for w in (product.brand, product.name.rstrip(" .,;:")) if w)
    colour = f" in {product.colour.lower()}" if product.colour else ""
    price = f", {product.price:.0f} {product.currency}" if product.price is not None else ""
    return f"{words}{colour}{price}."


def fallback_summary(text: str, max_chars: int = 80) -> str:
    """First sentence of ``text``, cut to ``max_chars``."""
    first = text.strip().split(". ")[0].split("。")[0]
    return first[:max_chars].rstrip() + ("…" if len(first) > max_chars else "")
