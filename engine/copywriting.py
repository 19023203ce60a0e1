"""Personalized copy for recommended items, kept off the hot path.

The hot path only *reads* a :class:`CopyBook` (an in-memory cache keyed by item and interest segment): a hit gives
generated copy, a miss gives the template at once and queues a request. A separate agent turns requests into copy
with :class:`CopyWriter` (generator + safety filter + template fallback) and publishes it; every worker's copy book
is fed from that stream, so no event ever waits for text generation.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kairos.engine.interfaces import TextGenerator
from kairos.engine.product_words import PRODUCT_MODIFIERS
from kairos.engine.prompts import ProductFacts, ad_copy_prompt, fallback_product_copy, product_copy_prompt
from kairos.engine.safety import SafeText, SafetyFilter, SafetyStats, safe_generate

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CopyRequest:
    item_id: str
    segment: str
    name: str
    category: str = ""
    price: float | None = None
    interests: tuple[str, ...] = ()
    lang: str = "en"
    #: "product": copy for a recommended item (keyed by item x segment); "ad": a generated variant of a creative's
    #: headline (``item_id`` = creative id, ``name`` = the headline), which becomes a new bandit arm.
    kind: str = "product"

    def facts(self) -> ProductFacts:
        return ProductFacts(name=self.name, price=self.price, currency="GBP", category=self.category)

    def to_json(self) -> dict:
        return {
            "item_id": self.item_id, "segment": self.segment, "name": self.name, "category": self.category,
            "price": self.price, "interests": list(self.interests), "lang": self.lang, "kind": self.kind,
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: dict) -> "CopyRequest":
        return cls(
            str(data["item_id"]), str(data["segment"]), str(data["name"])[:300], str(data.get("category") or ""),
            data.get("price"), tuple(str(i) for i in data.get("interests") or ())[:5], str(data.get("lang") or "en"),
            "ad" if data.get("kind") == "ad" else "product",
        )  # fmt: skip


def category_interest(category: str) -> str:
    """The word copy names for an interest in ``category``: its id without the source prefix ("or-light" ->
    "light")."""
    return category.split("-", 1)[-1]


def template_copy(
    name: str, category: str = "", interests: Sequence[str] = (), why: str | Callable[[], str] = ""
) -> str:
    """The copy shown until generated copy exists (and when generation is blocked or unavailable): factual, with
    the shopper's interest named when it is one the product answers: the product's own category, or a word of its
    name. A shopper's strongest interest is not said of a product recommended for another reason (cake cases are
    not "picked for your interest in bag"): without an interest it answers, the template says ``why`` instead when
    given (:func:`reason_line`; or a function that gives it, called only when no interest fits), else only the
    name.

    An interest that names no kind of product (a colour, a pack word: "set", "box"; Online Retail's derived
    categories have some) is passed over for the next one.

    >>> template_copy("WHITE HANGING HEART T-LIGHT HOLDER", interests=["holder"])
    'White Hanging Heart T-Light Holder. Picked for your interest in holder.'
    >>> template_copy("REGENCY CAKESTAND 3 TIER", interests=["set", "cakestand"])
    'Regency Cakestand 3 Tier. Picked for your interest in cakestand.'
    >>> template_copy("PACK OF 72 RETRO SPOT CAKE CASES", "or-case", ["bag", "decoration"])
    'Pack Of 72 Retro Spot Cake Cases.'
    >>> template_copy("PACK OF 72 RETRO SPOT CAKE CASES", "or-case", ["bag"], why="Bought by shoppers like you.")
    'Pack Of 72 Retro Spot Cake Cases. Bought by shoppers like you.'
    >>> template_copy("JUMBO BAG RED RETROSPOT", "or-bag", ["cushion", "bag"])
    'Jumbo Bag Red Retrospot. Picked for your interest in bag.'
    >>> template_copy("JUMBO BAG RED RETROSPOT", "or-bag", ["bag"], why=lambda: 1 / 0)  # not called: bag fits
    'Jumbo Bag Red Retrospot. Picked for your interest in bag.'
    """
    line = _template_line(name, category)
    interest = _fitting_interest(name, category, interests) if interests else None
    if interest:
        return f"{line} Picked for your interest in {interest}."
    if callable(why):
        why = why()
    return f"{line} {why}" if why else line


#: What the template says of a product shown for a candidate source's reason (engine/candidates.py) and for no
#: interest of the shopper's: the first reason of the product's with a line here, in the order the sources
#: proposed it. ``co_visit:<item>`` names that item (:func:`reason_line`); ``category:`` reasons are interests.
REASON_LINES = {
    "similar_purchases": "Often bought with what you bought.",
    "similar_shoppers": "Bought by shoppers like you.",
    "similar_products": "Like what you bought.",
    "similar_text": "Close to what you have been browsing.",
    "recently_engaged": "You looked at it recently.",
    "trending": "Trending now.",
    "popular_now": "Popular right now.",
    "popular": "A best seller.",
}


def reason_line(reasons: Sequence[str], name_of: Callable[[str], str | None] = lambda item: None) -> str:
    """The template's line for why a product is shown (``SelectedItem.reasons``), or "" when no reason has one.
    ``name_of`` gives an item's name, for "Often viewed with ..." (a co-visit of an item the shopper viewed).

    >>> reason_line(["co_visit:85123A", "popular"], {"85123A": "WHITE HANGING HEART T-LIGHT HOLDER"}.get)
    'Often viewed with the White Hanging Heart T-Light Holder.'
    >>> reason_line(["category:or-bag", "similar_shoppers"]), reason_line(["co_visit:x"]), reason_line(["other"])
    ('Bought by shoppers like you.', '', '')
    """
    for reason in reasons:
        line = REASON_LINES.get(reason)
        if line is not None:
            return line
        if reason.startswith("co_visit:"):
            name = name_of(reason[len("co_visit:") :])
            if name:
                return f"Often viewed with the {name.rstrip(' .').title()}."
    return ""


def _fitting_interest(name: str, category: str, interests: Sequence[str]) -> str | None:
    """The first of the shopper's interests that the product (its category, a word of its name) answers and that
    names a kind of product, or None. The hot path asks for every item it shows: the per-name, per-category and
    per-interest parts are memoised."""
    own = _category_word(category)
    name_forms = _name_forms(name)
    for interest in interests:
        wanted = _interest_forms(interest)
        if wanted is not None and (wanted[0] == own or not name_forms.isdisjoint(wanted)):
            return interest
    return None


@functools.lru_cache(maxsize=65_536)
def _template_line(name: str, category: str) -> str:
    """The template's first line, the product's name (memoised: the hot path shows the same items again)."""
    return fallback_product_copy(ProductFacts(name=name.title(), category=category))


@functools.lru_cache(maxsize=16_384)
def _category_word(category: str) -> str | None:
    """The interest a category stands for, case-folded; None without a category."""
    return category_interest(category).casefold() if category else None


@functools.lru_cache(maxsize=16_384)
def _interest_forms(interest: str) -> tuple[str, ...] | None:
    """An interest's case-folded forms (the word first), or None for one that names no kind of product."""
    wanted = interest.casefold()
    return None if wanted in _NAME_STOP_WORDS else _forms(wanted)


@functools.lru_cache(maxsize=65_536)
def _name_forms(name: str) -> frozenset[str]:
    """The words of a product name and their singulars (memoised: the hot path asks for every item it shows)."""
    return frozenset(form for w in re.findall(r"[a-z]{3,}", name.casefold()) for form in _forms(w))


class CopyBook:
    """Bounded LRU of (item, segment) -> text, and the misses to ask the copy agent for, most wanted first.

    Generation is far slower than the hot path misses (a text or two a second on a CPU, against hundreds of new keys a
    second), and few keys carry most of the traffic: in 6,000 events of the real data, the 200 most shown keys of
    15,711 were 25% of the lookups and 9,604 keys were shown once. So a miss is counted, not sent: at most
    ``in_flight`` product requests are outstanding (asked for, not answered yet), and each freed place goes to the
    pending key missed most often (:meth:`take_requests`). The copy agent's queue stays short, and what it writes
    first is what storefronts show most (docs/selection.md, "Which copy is generated first").
    """

    def __init__(
        self, capacity: int = 200_000, max_pending: int = 4_096, in_flight: int = 32, answer_timeout_s: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        if in_flight < 1 or max_pending < 2:
            raise ValueError("need in_flight >= 1 and max_pending >= 2")
        self.capacity = capacity
        self.max_pending = max_pending
        self.in_flight = in_flight
        self.answer_timeout_s = answer_timeout_s
        self._clock = clock
        self._texts: OrderedDict[tuple[str, str], str] = OrderedDict()
        #: Missed product keys not asked for yet -> [misses, the first request]. Past ``max_pending`` keys the
        #: least missed half is dropped (a dropped key starts again from its next miss).
        self._pending: dict[tuple[str, str], list] = {}
        #: Product keys asked for and not answered -> (when, the request), oldest first. One unanswered for
        #: ``answer_timeout_s`` (a copy agent that is down or lost the request) frees its place and is pending again.
        self._asked: OrderedDict[tuple[str, str], tuple[float, CopyRequest]] = OrderedDict()
        #: Ad-variant requests (one per creative, sent at once, outside the window) and the keys already sent.
        self._direct: dict[tuple[str, str], CopyRequest] = {}
        self._direct_sent: OrderedDict[tuple[str, str], None] = OrderedDict()
        self.max_direct_sent = 10 * max_pending
        self.hits = 0
        self.misses = 0
        self._counted = (0, 0)  # hits and misses already handed out by :meth:`take_counts`
        #: Keys the copy agent answered with the template (no generator, or every try blocked): not asked for
        #: again, and shown with the hot path's own template, which can say why the product is shown.
        self._settled: OrderedDict[tuple[str, str], None] = OrderedDict()
        #: creative id -> generated variant id -> headline text (filled from the copies topic)
        self.ad_variants: dict[str, dict[str, str]] = {}

    def lookup(
        self, request: CopyRequest, reasons: Sequence[str] = (), name_of: Callable[[str], str | None] = lambda item: None
    ) -> str:
        """Generated copy if known, else the template; the miss counts towards asking for the key (unless it is
        asked for already, or the copy agent answered it with the template). ``reasons`` / ``name_of``: why the
        product is shown, for the template (:func:`reason_line`)."""
        key = (request.item_id, request.segment)
        text = self._texts.get(key)
        if text is not None:
            self.hits += 1
            return text
        self.misses += 1
        pending = self._pending.get(key)
        if pending is not None:
            pending[0] += 1
        elif key not in self._asked and key not in self._settled:
            self._pending[key] = [1, request]
        return template_copy(request.name, request.category, request.interests, lambda: reason_line(reasons, name_of))

    def request(self, request: CopyRequest) -> None:
        """Ask for a key at the next :meth:`take_requests`, once, outside the window (ad-copy variants: one per
        creative, answered by a new arm rather than by text for this book)."""
        key = (request.item_id, request.segment)
        if key not in self._direct_sent and len(self._direct) < self.max_pending:
            self._direct.setdefault(key, request)

    def add_ad_variant(self, creative_id: str, variant_id: str, text: str) -> None:
        self.ad_variants.setdefault(creative_id, {})[variant_id] = text

    def settle(self, item_id: str, segment: str) -> None:
        """The copy agent answered (item, segment) with the template: the hot path keeps writing its own."""
        key = (item_id, segment)
        self._answered(key)
        self._settled[key] = None
        self._settled.move_to_end(key)
        while len(self._settled) > self.capacity:
            self._settled.popitem(last=False)

    def put(self, item_id: str, segment: str, text: str) -> None:
        key = (item_id, segment)
        self._texts[key] = text
        self._texts.move_to_end(key)
        self._answered(key)
        self._settled.pop(key, None)
        while len(self._texts) > self.capacity:
            self._texts.popitem(last=False)

    def _answered(self, key: tuple[str, str]) -> None:
        self._asked.pop(key, None)
        self._pending.pop(key, None)  # answered on another worker's request

    def take_counts(self) -> tuple[int, int]:
        """Hits and misses since the last call (for the metrics: whoever exports them counts each lookup once)."""
        counted, self._counted = self._counted, (self.hits, self.misses)
        return self.hits - counted[0], self.misses - counted[1]

    @property
    def pending(self) -> int:
        """Missed keys waiting for a place in the window."""
        return len(self._pending)

    @property
    def outstanding(self) -> int:
        """Product keys asked for and not answered yet."""
        return len(self._asked)

    def take_requests(self) -> list[CopyRequest]:
        """The requests to send now: ad variants asked for since the last call, then, for each free place in the
        window, the pending key missed most often (ties: the one missed first). Cheap when the window is full,
        which is most calls: the pending keys are only sorted when places are free."""
        requests = list(self._direct.values())
        if requests:
            for key in self._direct:
                self._direct_sent[key] = None
            while len(self._direct_sent) > self.max_direct_sent:
                self._direct_sent.popitem(last=False)
            self._direct.clear()
        asked, pending = self._asked, self._pending
        now = self._clock()
        while asked and now - next(iter(asked.values()))[0] > self.answer_timeout_s:
            key, (_, request) = asked.popitem(last=False)
            pending.setdefault(key, [0, request])[0] += 1
        free = self.in_flight - len(asked)
        if free > 0 and pending:
            for key in heapq.nlargest(free, pending, key=lambda k: pending[k][0]):
                request = pending.pop(key)[1]
                requests.append(request)
                asked[key] = (now, request)
        if len(pending) > self.max_pending:
            kept = set(heapq.nlargest(self.max_pending // 2, pending, key=lambda k: pending[k][0]))
            self._pending = {key: entry for key, entry in pending.items() if key in kept}
        return requests


class RecentAnswers:
    """What one copy agent answered lately, so that a request for a key it has just written is not written again.

    Each worker's copy book asks for the keys its storefronts miss most, and the popular (item, segment) keys are
    the same on every worker: before the first answer reaches them, several workers ask for the same key. Requests
    are keyed by item, so they reach the same agent, which writes the key once: its answer on the copies topic
    clears the key in every worker's copy book. A key answered longer ago than ``horizon_s`` is written again: the
    worker asking has lost the text (its copy book's LRU dropped it), not raced another worker.
    """

    def __init__(self, horizon_s: float = 120.0, capacity: int = 200_000, clock: Callable[[], float] = time.monotonic):
        self.horizon_s = horizon_s
        self.capacity = capacity
        self._clock = clock
        self._when: OrderedDict[tuple[str, str, str], float] = OrderedDict()  # oldest answer first

    def fresh(self, requests: Sequence[CopyRequest]) -> list[CopyRequest]:
        """``requests`` without the keys answered within the horizon and without repeats of one key."""
        when, now = self._when, self._clock()
        while when and now - next(iter(when.values())) > self.horizon_s:
            when.popitem(last=False)
        kept, seen = [], set()
        for request in requests:
            key = (request.kind, request.item_id, request.segment)
            if key not in when and key not in seen:
                seen.add(key)
                kept.append(request)
        return kept

    def answered(self, requests: Sequence[CopyRequest]) -> None:
        """``requests`` were published (generated copy or the template)."""
        now = self._clock()
        for request in requests:
            key = (request.kind, request.item_id, request.segment)
            self._when[key] = now
            self._when.move_to_end(key)
        while len(self._when) > self.capacity:
            self._when.popitem(last=False)


class CopyWriter:
    """Writes copy for a batch of requests: one batched generator call, safety filter on every text, one
    regeneration for blocked rows (sampled: a greedy retry repeats the blocked text), the template when still
    blocked or when there is no generator.

    ``min_logprob``: product copy whose tokens the generator itself gave a mean log-probability below this is
    ``unlikely`` and gets the template without a retry (a generator without ``generate_scored`` is not scored;
    None: no such check). On the fine-tuned SmolLM2 the texts of its sampled retries that passed every other check
    scored -4.4 to -3.0 and were all rambling; the greedy ones -2.2 to -1.6 (docs/selection.md, "Made-up shapes
    and parts; unlikely copy").
    """

    def __init__(self, generator: TextGenerator | None, safety: SafetyFilter | None = None, max_new_tokens: int = 48,
                 min_logprob: float | None = -2.5):  # fmt: skip
        self.generator = generator
        self.safety = safety or SafetyFilter()
        self.stats = SafetyStats()
        self.max_new_tokens = max_new_tokens
        self.min_logprob = min_logprob

    @property
    def version(self) -> str:
        return f"{self.generator.name}@{self.generator.version}" if self.generator else "template"

    def write(self, requests: Sequence[CopyRequest], cancel: threading.Event | None = None) -> list[SafeText]:
        """Copy for every request. ``cancel``: handed to the generator, which raises once it is set (the agent
        that asked is stopping and publishes nothing from this batch)."""
        fallbacks = [r.name if r.kind == "ad" else template_copy(r.name, r.category, r.interests) for r in requests]
        if self.generator is None:
            return [SafeText(text, "template") for text in fallbacks]
        prompts = [_prompt(r) for r in requests]
        generator = self.generator
        is_word = getattr(generator, "whole_word", None)  # optional: a generator that knows its vocabulary
        scored = getattr(generator, "generate_scored", None) if self.min_logprob is not None else None
        likelihood: dict[str, float] = {}  # text -> the mean log-probability its generator gave its tokens

        attempts = itertools.count()

        def generate(batch: Sequence[str]) -> list[str]:
            # The first try decodes as configured (greedy); a retry of blocked rows samples, or it would repeat them.
            sample = next(attempts) > 0
            if scored is None:
                return generator.generate(batch, max_new_tokens=self.max_new_tokens, sample=sample, cancel=cancel)
            texts, means = scored(batch, max_new_tokens=self.max_new_tokens, sample=sample, cancel=cancel)
            likelihood.update(zip(texts, means))
            return texts

        def grounded(row: int, text: str) -> str | None:
            request = requests[row]
            if glued_sentences(text):
                return "glued_sentences"
            if markup_debris(text):
                return "markup"
            if request.kind == "ad":
                return None if on_headline(request.name, text) else "off_headline"
            if scored is not None and likelihood.get(text, 0.0) < self.min_logprob:
                return "unlikely"
            if garbled_name(request.name, text, is_word):
                return "garbled_name"
            if not names_product(request.name, text) or garment_parts_on_other_goods(request.name, request.category, text):
                return "off_product"
            if invented_form(request.name, request.category, text):
                return "invented_detail"
            return None

        try:
            # A made-up shape or part, an unlikely text and an ad variant about something else are not
            # regenerated: sampling, which a retry needs to differ from the greedy first try, makes up more and
            # scores lower (docs/selection.md, "Made-up shapes and parts; unlikely copy"). An ad's fallback is its
            # own headline: no new arm.
            texts = safe_generate(generate, prompts, fallbacks, self.safety, self.stats, grounded=grounded,
                                  final=("invented_detail", "unlikely", "off_headline"))
        except Exception:
            if cancel is not None and cancel.is_set():
                raise  # cancelled: nothing of this batch is published
            # A generator that fails on a batch gives templates, not a dead copy agent that would fail again on
            # the same batch after every restart.
            log.exception("the copy generator failed on a batch of %d requests: templates instead", len(requests))
            return [SafeText(text, "template", ("generator_error",)) for text in fallbacks]
        return [_no_repeated_headline(r, t) for r, t in zip(requests, texts)]


#: Words of a product name that say nothing about which product it is: colours, sizes, patterns, materials, packs.
_NAME_STOP_WORDS = frozenset(word.casefold() for word in PRODUCT_MODIFIERS) | {"set", "box", "sets", "boxes"}
_CJK = re.compile(r"[\u3400-\u9fff]")


#: Where an English product name goes on to what the product holds, comes with or is for: the product is named
#: before it ("LUNCHBOX WITH CUTLERY FAIRY CAKES", "PIZZA PLATE IN BOX", "GREETING CARD, THE BLACK CAT").
_NAME_TAIL = re.compile(r"\s(?:with|in|for|on)\s|,")
#: A head word this long is also found inside a compound the copy writes apart or together ("cake stand" for
#: CAKESTAND); a shorter one only as a word ("mat" is in "format", "pot" in "spot").
_COMPOUND_HEAD_MIN = 6


def product_head(name: str) -> str | None:
    """The word of an English product name that says what the product is: the last content word (three letters
    or more, not a colour, size, pattern, material or pack word) before any "with" / "in" / "for" / "on" / comma
    part; None when there is none (a code, a Chinese name).

    >>> [product_head(n) for n in ("RETRO COFFEE MUGS ASSORTED", "LUNCHBOX WITH CUTLERY FAIRY CAKES",
    ...                             "SET OF 3 BLACK FLYING DUCKS", "REGENCY CAKESTAND 3 TIER", "86B")]
    ['mugs', 'lunchbox', 'ducks', 'cakestand', None]
    """
    for part in _NAME_TAIL.split(name.casefold()):
        content = [w for w in re.findall(r"[a-z]{3,}", part) if w not in _NAME_STOP_WORDS]
        if content:
            return content[-1]
    return None


def names_product(name: str, text: str) -> bool:
    """Whether copy ``text`` names the product ``name`` describes: for an English name, it says the name's head
    word (:func:`product_head`; plural ``s`` / ``es`` ignored), not merely another word of the name ("Coffee,
    served with vanilla pudding" for coffee mugs names a drink); for a Chinese name, it shares two adjacent
    characters with it. A small generator that drifts to another product ("pliers and screws" for stacking tins,
    a dessert for a doormat) fails it, and its copy is regenerated once, then replaced by the template. A name
    with nothing to match passes.

    >>> names_product("SET/3 RUSSIAN DOLL STACKING TINS", "Stack these tins in a row for a playful kitchen shelf.")
    True
    >>> names_product("SET/3 RUSSIAN DOLL STACKING TINS", "Set of three pliers and two screws with an adjustable head.")
    False
    >>> names_product("纯棉宽松连衣裙", "这款连衣裙柔软透气。"), names_product("86B", "Anything at all.")
    (True, True)
    >>> names_product("RED SPOTTY COIR DOORMAT", "Red spotcoat, has long sleeves and high collar.")
    False
    >>> names_product("PEACE WOODEN BLOCK LETTERS", "Spell out a name with these letter blocks.")
    True
    >>> names_product("RETRO COFFEE MUGS ASSORTED", "Coffee, has an orange peel texture and is served with pudding.")
    False
    >>> names_product("FANCY FONT HOME SWEET HOME DOORMAT", "Fantastic home dessert!")
    False
    >>> names_product("REGENCY CAKESTAND 3 TIER", "A three-tier cake stand for afternoon tea.")
    True
    """
    cjk = "".join(_CJK.findall(name))
    if cjk:
        return any(cjk[i : i + 2] in text for i in range(len(cjk) - 1)) if len(cjk) > 1 else cjk in text
    head = product_head(name)
    if head is None:
        return True
    lowered = text.casefold()
    said = {form for w in re.findall(r"[a-z]{3,}", lowered) for form in _forms(w)}
    if not said.isdisjoint(_forms(head)):
        return True
    return len(head) >= _COMPOUND_HEAD_MIN and head in re.sub(r"[^a-z]", "", lowered)


#: Name words this long (and text words) are checked for a garbled spelling; shorter ones have too many real
#: neighbours one letter away ("card" / "care", "light" / "night").
_GARBLE_MIN = 6


def garbled_name(name: str, text: str, is_word: Callable[[str], bool] | None = None) -> bool:
    """Whether ``text`` misspells a word of the product's name: a word one letter away from a name word of six
    letters or more (one letter added, dropped, changed, or two neighbours swapped), starting with the same two
    letters, neither word a form (``_forms``) or a longer form of the other ("plated" for PLATES, "lighting" for
    LIGHTS pass), and not a word ``is_word`` knows (the generator's :meth:`whole_word`: its tokenizer holds it
    whole). The generator garbles names it has never seen ("Hangling Heart T-Light Holder"). ``is_word`` keeps
    real words one letter from a name word ("strong" for STRING, "gentlemen" for GENTLEMAN) and the right spelling
    of a name the catalogue misspells ("miniature" for MINATURE); without it every such word counts.

    >>> garbled_name("HANGING HEART ZINC T-LIGHT HOLDER", "Hangling Heart T-Light Holder with a zinc frame")
    True
    >>> garbled_name("SILVER PLATES", "Silver plated dishes"), garbled_name("CHERRY LIGHTS", "Soft lighting")
    (False, False)
    >>> garbled_name("STRING OF LIGHTS", "A strong string"), garbled_name("STRING", "Strong", {"strong"}.__contains__)
    (True, False)
    """
    name_words = {w for w in re.findall(r"[a-z]+", name.casefold()) if len(w) >= _GARBLE_MIN}
    if not name_words:
        return False
    for word in set(re.findall(r"[a-z]+", text.casefold())):
        if len(word) < _GARBLE_MIN or word in name_words:
            continue
        for known in name_words:
            if word[:2] == known[:2] and _one_edit_apart(word, known) and not _related(word, known):
                if is_word is None or not is_word(word):
                    return True
    return False


def _one_edit_apart(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` differ by one added, dropped or changed letter, or two swapped neighbours."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) > len(b):
        a, b = b, a
    i = 0
    while i < len(a) and a[i] == b[i]:
        i += 1
    if len(a) < len(b):
        return a[i:] == b[i + 1 :]
    if a[i + 1 :] == b[i + 1 :]:
        return True
    return i + 1 < len(a) and a[i] == b[i + 1] and a[i + 1] == b[i] and a[i + 2 :] == b[i + 2 :]


def _related(a: str, b: str) -> bool:
    """Whether one word is a form of the other or begins with one of its forms ("plated" and "plates")."""
    return any(y.startswith(x) or x.startswith(y) for x in _forms(a) for y in _forms(b))


#: A sentence run into the next without a space ("...detailsWarranty available"): 38% of the Myntra descriptions the
#: generator is fine-tuned on were scraped that way (onnx_export/generator_train.py now separates them), and a
#: model trained on them writes such run-on feature lists. Two lower-case letters first, so "iPhone" and "McQueen"
#: pass (in the Myntra descriptions every run with two found this way was two sentences: "Rim", "Best suited for").
GLUED = re.compile(r"(?<=[a-z]{2})(?=[A-Z][a-z])")


def glued_sentences(text: str) -> bool:
    """Whether ``text`` runs a sentence into the next one without a space.

    >>> glued_sentences("White lamp, has rear lightingSynthetic fiber woven fabric"), glued_sentences("iPhone case")
    (True, False)
    """
    return GLUED.search(text) is not None


#: Characters of markup, code or scraped field separators, never of shop copy: a generator that writes them has
#: left prose ("GREETS card ...||greetcard:||cat%||black_dog|||CATEGORIE"). A per cent sign counts unless it follows
#: a number ("20% off"). A web address counts too: the generator has none to give, so it is one made up or
#: remembered from its training text ("... from http://www20studiojones...").
MARKUP = re.compile(r"[|_{}<>\\=~^\[\]]|(?<![0-9 ])%|(?<=[^0-9] )%|\bhttps?://|\bwww\.")


def markup_debris(text: str) -> bool:
    """Whether ``text`` holds markup or separator debris instead of prose.

    >>> markup_debris("GREETS card has a patch?||greetcard:||cat%"), markup_debris("Save 20% on three mugs.")
    (True, False)
    >>> markup_debris("Blue bowls from http://www20studio"), markup_debris("Blue bowls for the www-less kitchen")
    (True, False)
    """
    return MARKUP.search(text) is not None


def separate_glued_sentences(text: str) -> str:
    """``text`` with a full stop and a space where a sentence runs into the next.

    >>> separate_glued_sentences("secured with a TSA lockOne handle on the top")
    'secured with a TSA lock. One handle on the top'
    """
    return GLUED.sub(". ", text)


#: Parts only clothes and shoes have. The generator learned its product copy from a fashion catalogue (Myntra) and
#: gives them to anything ("Gift tags, has an attached clip closure and long sleeves").
_GARMENT_PARTS = re.compile(
    r"\b(sleeves?|sleeveless|necklines?|collars?|cuffs?|hemlines?|waistbands?|footbeds?|outsoles?|insoles?"
    r"|(?:round|v|open|crew|boat|high|polo|elasticated|mock|scoop)[- ]neck)\b"
)
#: Words that make a product clothing, shoes or an accessory worn on the body (a name or category holding one may
#: have the parts above), in the singular: a name's words are matched with their singulars (``_forms``).
_WEARABLE = frozenset(
    "shirt tshirt tee top dress kurta kurti saree blouse jacket coat blazer sweater sweatshirt hoodie cardigan jumper"
    " pullover trousers pants jeans shorts skirt leggings jumpsuit suit tunic shoe sneaker boot sandal heels flats"
    " loafers slippers socks gown romper playsuit nightdress nightwear pyjamas pajamas apparel clothing garment vest"
    " bra lingerie churidar dupatta sherwani lehenga polo poncho kimono robe".split()
)


def garment_parts_on_other_goods(name: str, category: str, text: str) -> bool:
    """Whether ``text`` gives clothing parts (sleeves, a collar, a V-neck, an outsole) to a product whose name and
    category say it is not something worn.

    >>> garment_parts_on_other_goods("PACK OF 6 BIRDY GIFT TAGS", "tag", "Gift tags with a clip and long sleeves")
    True
    >>> garment_parts_on_other_goods("Roadster Men Blue Slim Fit Shirt", "", "Blue shirt, has a spread collar")
    False
    """
    if _GARMENT_PARTS.search(text.casefold()) is None:
        return False
    return _given_words(name, category).isdisjoint(_WEARABLE)


#: A claim about how a product is made: what follows "has", "have", "features" or "comes with" up to the end of
#: the sentence. The generator learned it from the fashion catalogue's "has a round neck, short sleeves".
_FORM_CLAIM = re.compile(r"\b(?:has|have|having|features?|comes with)\b([^.;!?]*)")
#: Shapes and parts it then gives to any product, in the singular: "Cat bowl, has an oval shape and curved sides",
#: "Water bottle, has an elastic neck and curved handle". Nothing in a product's facts here says any of them.
_FORM_PARTS = frozenset(
    "shape side corner edge leg wing neck handle spout lid rim base tail ear feet strap knob hinge".split()
)


def invented_form(name: str, category: str, text: str) -> bool:
    """Whether ``text`` claims a shape or a part (an oval shape, curved sides, long legs, a handle) for a product
    whose name and category do not give it, where it can only have been made up. Clothing and shoes are left
    to :func:`garment_parts_on_other_goods`: their parts are what the generator learned to describe.

    >>> invented_form("CAT BOWL", "bowl", "Bowl, has an oval shape and curved sides")
    True
    >>> invented_form("RED RETROSPOT TEA CUP WITH HANDLE", "cup", "A tea cup that has a sturdy handle")
    False
    >>> invented_form("CAT BOWL", "bowl", "A bowl with a cat on its side")   # no claim of form: "with", not "has"
    False
    """
    claims = _FORM_CLAIM.findall(text.casefold())
    if not claims:
        return False
    given = _given_words(name, category)
    if not given.isdisjoint(_WEARABLE):
        return False
    for claim in claims:
        for word in re.findall(r"[a-z]+", claim):
            forms = _forms(word)
            if not _FORM_PARTS.isdisjoint(forms) and given.isdisjoint(forms):
                return True
    return False


#: Words too common to show what a headline is about.
_HEADLINE_STOP_WORDS = frozenset(
    "about after again also been before being both could does doesn each even ever every from have having here"
    " into just like make many more most much never only other over really same should some such than that their"
    " them then there these they this those very want were what when where which while will with would your you're"
    " it's that's what's here's".split()
)


def on_headline(headline: str, variant: str) -> bool:
    """Whether an ad variant shares a content word with the headline it rewrites: a word of four letters or more
    that is not a common one, matched by its stem ("introducing" matches "introduce", "airliner" "airline"). A
    variant that shares none is about something else or nothing ("Love it!"; "A pair of sneakers ... and long
    sleeves" for a headline about a word children hear), and would become a bandit arm no shopper should see. A
    headline with no such word (another script, or only common words) is not judged.

    >>> on_headline("She Was Going To Introduce President Obama", "President Obama will be introducing next week!")
    True
    >>> on_headline("What A Cheery 13-Year-Old Girl Said To Matt Damon Devastated Him", "Love it!")
    False
    >>> on_headline("夏季新款连衣裙", "清爽一夏")   # no Latin-script content words in the headline: not judged
    True
    """
    headline_words = _content_words(headline)
    if not headline_words:
        return True
    return any(_same_stem(a, b) for a in headline_words for b in _content_words(variant))


def _content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z][a-z']+", text.casefold()) if len(w) >= 4 and w not in _HEADLINE_STOP_WORDS}


def _same_stem(a: str, b: str) -> bool:
    """One word begins with the other, or both share their first five letters ("introduce", "introducing")."""
    return a.startswith(b) or b.startswith(a) or (len(a) >= 5 and len(b) >= 5 and a[:5] == b[:5])


def _given_words(name: str, category: str) -> set[str]:
    """The words of a product's name and category with their singulars (``_forms``): what its facts say."""
    return {form for w in re.findall(r"[a-z]+", f"{name} {category}".casefold()) for form in _forms(w)}


def _forms(word: str) -> tuple[str, ...]:
    """The word and its singulars ("glasses" -> "glasse", "glass"), so "glass" in a name matches "glasses"."""
    forms = [word]
    if word.endswith("s") and len(word) > 3:
        forms.append(word[:-1])
        if word.endswith("es") and len(word) > 4:
            forms.append(word[:-2])
    return tuple(forms)


def _no_repeated_headline(request: CopyRequest, text: SafeText) -> SafeText:
    """An ad "variant" that only repeats the headline it rewrites (small models often copy their prompt) is no new
    arm: it would split one headline's traffic over two arms. It becomes the fallback (the headline itself).

    >>> _no_repeated_headline(CopyRequest("c1", "ad", "You Won't Believe It", kind="ad"),
    ...                       SafeText("you won't believe it.", "generated")).source
    'template'
    """
    if request.kind != "ad" or text.source == "template" or _words(text.text) != _words(request.name):
        return text
    return SafeText(request.name, "template", text.reasons + ("duplicate:headline",))


def _words(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.casefold()))


def _prompt(request: CopyRequest) -> str:
    if request.kind == "ad":
        return ad_copy_prompt(ProductFacts(name=request.name), request.interests, lang="en")
    return product_copy_prompt(request.facts(), request.interests, request.lang)
