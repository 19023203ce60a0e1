"""CopyWriter: a generated ad variant that only repeats the headline it rewrites is no new variant."""

from kairos.engine.copywriting import CopyRequest, CopyWriter


class EchoGenerator:
    """Answers every prompt with a fixed text per call (a stand-in generator: no model needed for this rule)."""

    name, version = "echo", "1"

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.calls = 0

    def generate(self, prompts, *, max_new_tokens: int = 64, sample: bool = False, cancel=None) -> list[str]:
        self.calls += 1
        return self.texts[: len(prompts)]


def test_a_copy_of_the_headline_falls_back_to_the_headline():
    headline = "You Won't Believe What This Dog Did Next"
    requests = [
        CopyRequest("c1", "ad", headline, kind="ad"),
        CopyRequest("c2", "ad", "A Quiet Story About Bread", kind="ad"),
        CopyRequest("i1", "cat:bread", "SOURDOUGH LOAF"),
    ]
    answers = ["you won't believe what this dog did next!", "Bread, quietly.", "SOURDOUGH LOAF"]
    writer = CopyWriter(EchoGenerator(answers))
    copied, rewritten, product = writer.write(requests)
    assert (copied.text, copied.source, copied.reasons) == (headline, "template", ("duplicate:headline",))
    assert (rewritten.text, rewritten.source) == ("Bread, quietly.", "generated")
    assert (product.text, product.source) == ("SOURDOUGH LOAF", "generated")  # product copy may name the product
    assert writer.generator.calls == 1  # a copy is no safety block: not regenerated (greedy would repeat it)



class BlockedWhenGreedy:
    """Greedy decoding gives a text the safety filter blocks (an absolute claim); sampling gives a clean one."""

    name, version = "greedy-blocked", "1"

    def __init__(self) -> None:
        self.samples: list[bool] = []

    def generate(self, prompts, *, max_new_tokens: int = 64, sample: bool = False, cancel=None) -> list[str]:
        self.samples.append(sample)
        text = "A fresh sourdough loaf, baked this morning." if sample else "Our loaf: the best in the world."
        return [text] * len(prompts)


def test_a_blocked_text_is_regenerated_by_sampling_not_repeated():
    writer = CopyWriter(BlockedWhenGreedy())
    (text,) = writer.write([CopyRequest("i1", "cat:bread", "SOURDOUGH LOAF")])
    assert writer.generator.samples == [False, True], "first try as configured, the retry sampled"
    assert (text.text, text.source) == ("A fresh sourdough loaf, baked this morning.", "regenerated")
    assert writer.stats.regenerated == 1


def _product(n: int, segment: str = "cat:x") -> CopyRequest:
    return CopyRequest(f"i{n}", segment, f"item {n}", "x", None, ())


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_most_missed_keys_are_asked_for_first_and_no_more_than_the_window():
    """Misses are counted, not sent: the window holds ``in_flight`` unanswered keys, and a freed place goes to the
    pending key missed most often since (ties: the one missed first)."""
    from kairos.engine.copywriting import CopyBook

    book = CopyBook(in_flight=2)
    for n, misses in [(1, 1), (2, 3), (3, 2), (4, 3), (5, 1)]:
        for _ in range(misses):
            assert book.lookup(_product(n)) == "Item " + str(n) + "."  # the template meanwhile
    assert [r.item_id for r in book.take_requests()] == ["i2", "i4"]  # 3 misses each, i2 missed first
    book.lookup(_product(5))  # i5: 2 misses now, as many as i3, which was missed first
    assert book.take_requests() == [] and (book.outstanding, book.pending) == (2, 3)
    book.lookup(_product(2))  # asked for already: not counted again
    book.put("i2", "cat:x", "Item two, written for you.")
    assert [r.item_id for r in book.take_requests()] == ["i3"]
    book.settle("i4", "cat:x")
    assert [r.item_id for r in book.take_requests()] == ["i5"]
    assert book.lookup(_product(2)) == "Item two, written for you." and book.hits == 1
    assert book.take_counts() == (1, 12) and book.take_counts() == (0, 0)  # each lookup handed out once


def test_an_unanswered_request_frees_its_place_after_the_timeout_and_waits_again():
    from kairos.engine.copywriting import CopyBook

    clock = Clock()
    book = CopyBook(in_flight=1, answer_timeout_s=60.0, clock=clock)
    book.lookup(_product(1))
    book.lookup(_product(2))
    assert [r.item_id for r in book.take_requests()] == ["i1"]
    clock.now += 59.0
    assert book.take_requests() == []  # the copy agent still has time
    clock.now += 2.0
    book.lookup(_product(2))  # i2: 2 misses; i1 goes back to the pending keys with one
    assert [r.item_id for r in book.take_requests()] == ["i2"]
    clock.now += 61.0
    assert [r.item_id for r in book.take_requests()] == ["i1"]
    assert book.outstanding == 1 and book.pending == 1  # i2 timed out in turn


def test_pending_keys_stay_bounded_and_the_most_missed_survive_a_trim():
    """Past ``max_pending`` keys waiting, the least missed half is dropped; a busy stream of one-off keys never
    pushes out the keys storefronts show most."""
    from kairos.engine.copywriting import CopyBook

    book = CopyBook(in_flight=1, max_pending=8)
    book.lookup(_product(0))
    book.take_requests()  # the window is full from here on
    for _ in range(3):
        book.lookup(_product(1, "cat:hot"))
    for n in range(100, 140):  # one-off keys
        book.lookup(_product(n))
        book.take_requests()
        assert book.pending <= 8
    book.put("i0", "cat:x", "Item zero.")
    assert [(r.item_id, r.segment) for r in book.take_requests()] == [("i1", "cat:hot")]


def test_a_key_answered_on_another_workers_request_leaves_the_pending_keys():
    from kairos.engine.copywriting import CopyBook

    book = CopyBook(in_flight=1)
    book.lookup(_product(1))
    book.lookup(_product(2))
    book.take_requests()
    book.put("i2", "cat:x", "Item two.")  # another worker asked; every worker's feed reads the copies topic
    assert book.pending == 0 and book.outstanding == 1


class DriftsWhenGreedy:
    """Greedy decoding describes another product (a small generator drifting to its training data); sampling, on
    the second call, names the one asked for, or drifts again with ``always_drift``."""

    name, version = "drifts", "1"

    def __init__(self, always_drift: bool = False) -> None:
        self.always_drift = always_drift
        self.calls = 0

    def generate(self, prompts, *, max_new_tokens: int = 64, sample: bool = False, cancel=None) -> list[str]:
        self.calls += 1
        on_topic = sample and not self.always_drift
        return ["Stack these tins on a kitchen shelf." if on_topic else "A pair of jeans with two pockets."] * len(prompts)


def test_copy_about_another_product_is_regenerated_then_replaced_by_the_template():
    tins = CopyRequest("i1", "cat:tin", "SET/3 RUSSIAN DOLL STACKING TINS", interests=("tin",))
    writer = CopyWriter(DriftsWhenGreedy())
    (text,) = writer.write([tins])
    assert (text.text, text.source, text.reasons) == ("Stack these tins on a kitchen shelf.", "regenerated", ("off_product",))
    assert (writer.stats.blocked, writer.stats.regenerated, writer.stats.reasons) == (1, 1, {"off_product": 1})

    stubborn = CopyWriter(DriftsWhenGreedy(always_drift=True))
    (text,) = stubborn.write([tins])
    assert text.source == "template" and "Russian Doll Stacking Tins" in text.text
    assert text.reasons == ("off_product", "off_product") and stubborn.stats.fallbacks == 1


def test_ad_headline_variants_are_not_held_to_the_product_rule():
    writer = CopyWriter(EchoGenerator(["Nobody saw this bread coming."]))
    (variant,) = writer.write([CopyRequest("c1", "ad", "A Quiet Story About Bread", kind="ad")])
    assert (variant.text, variant.source) == ("Nobody saw this bread coming.", "generated")


def test_an_ad_variant_about_something_else_falls_back_to_the_headline_without_a_retry():
    """What the fine-tuned SmolLM2 wrote for Upworthy headlines (2026-12-05): praise of nothing, and a product
    description. A variant must share a content word with the headline it rewrites; one that does not is no arm."""
    from kairos.engine.copywriting import on_headline

    cases = {  # (headline, variant): on the headline?
        ("The Most Anti-Gay Airline In The Entire World Has A New Safety Video", "Anti Gay airliner safety video!"): True,
        ("A Pastor Asks A Politician Why He Supports Gay Marriage", "Gay marriage is not just about religion"): True,
        ("What A Cheery 13-Year-Old Girl Said To Matt Damon Devastated Him", "Love it!"): False,
        ("Here's An F-Word That's Okay To Say Around Children", "A pair of sneakers that has long sleeves"): False,
        ("You've Never Heard Of This Woman", "You will never forget this one"): False,  # common words only
    }
    assert {case: on_headline(*case) for case in cases} == cases

    headline = "What A Cheery 13-Year-Old Girl Said To Matt Damon Devastated Him"
    generator = Writes("Love it!", "A cheery girl, a devastated Matt Damon.")
    writer = CopyWriter(generator)
    (variant,) = writer.write([CopyRequest("c1", "ad", headline, kind="ad")])
    assert (variant.text, variant.source, variant.reasons) == (headline, "template", ("off_headline",))
    assert (writer.stats.regenerated, writer.stats.fallbacks) == (0, 1)


class Broken:
    """A generator that fails, or, once ``cancel`` is set, raises as a cancelled ONNX generator does."""

    name, version = "broken", "1"

    def generate(self, prompts, *, max_new_tokens: int = 64, sample: bool = False, cancel=None) -> list[str]:
        raise RuntimeError("cancelled" if cancel is not None and cancel.is_set() else "onnxruntime failed")


def test_a_failing_generator_gives_templates_and_a_cancelled_one_gives_nothing():
    import threading

    import pytest

    requests = [CopyRequest("i1", "cat:bread", "SOURDOUGH LOAF", "bread"), CopyRequest("c1", "ad", "A Quiet Story", kind="ad")]
    writer = CopyWriter(Broken())
    product, ad = writer.write(requests)
    assert (product.source, product.reasons) == ("template", ("generator_error",)) and "Sourdough" in product.text
    assert (ad.text, ad.source) == ("A Quiet Story", "template")  # an ad keeps its own headline
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(RuntimeError, match="cancelled"):  # the agent publishes nothing of a cancelled batch
        writer.write(requests, cancel=cancel)


class Writes:
    """Writes one text when decoding greedily (a first try) and another when sampling (the retry)."""

    name, version = "writes", "1"

    def __init__(self, greedy: str, sampled: str) -> None:
        self.greedy, self.sampled = greedy, sampled

    def generate(self, prompts, *, max_new_tokens: int = 64, sample: bool = False, cancel=None) -> list[str]:
        return [self.sampled if sample else self.greedy] * len(prompts)


def test_run_on_sentences_and_clothing_parts_on_other_goods_are_regenerated_then_replaced():
    """What the fine-tuned SmolLM2 wrote for Online Retail products (2026-12-04): feature lists run together
    without spaces, and sleeves for gift tags. Both are blocked; a clothing product may have sleeves."""
    from kairos.engine.copywriting import garment_parts_on_other_goods, glued_sentences, separate_glued_sentences

    run_on = "White hanging lamp, has rear lightingSynthetic fiber woven fabricWarranty available"
    assert glued_sentences(run_on) and not glued_sentences("An iPhone case by McQueen. Fits well.")
    assert separate_glued_sentences(run_on) == "White hanging lamp, has rear lighting. Synthetic fiber woven fabric. Warranty available"
    assert garment_parts_on_other_goods("PACK OF 6 BIRDY GIFT TAGS", "tag", "Gift tags, has a clip closure and long sleeves")
    assert garment_parts_on_other_goods("LUNCH BAG SPACEBOY DESIGN", "bag", "Lunch box design, has an open neck")
    assert not garment_parts_on_other_goods("Roadster Men Navy T-shirt", "", "Navy T-shirt, has a round neck, short sleeves")
    assert not garment_parts_on_other_goods("Puma Men Running Shoes", "", "Running shoes with a cushioned footbed")
    assert not garment_parts_on_other_goods("PACK OF 6 BIRDY GIFT TAGS", "tag", "Six birdy gift tags for your parcels.")

    tags = CopyRequest("t1", "cat:tag", "PACK OF 6 BIRDY GIFT TAGS", "tag", interests=("tag",))
    writer = CopyWriter(Writes("Gift tags, has a clip closure and long sleeves", "Six birdy gift tags for your parcels."))
    (text,) = writer.write([tags])
    assert (text.text, text.source, text.reasons) == ("Six birdy gift tags for your parcels.", "regenerated", ("off_product",))
    writer = CopyWriter(Writes(run_on, run_on.replace("lamp", "heart holder")))
    lamp = CopyRequest("h1", "cat:holder", "WHITE HANGING HEART T-LIGHT HOLDER", "holder")
    (text,) = writer.write([lamp])
    assert text.source == "template" and text.reasons == ("glued_sentences", "glued_sentences")
    assert writer.stats.reasons == {"glued_sentences": 2}


def test_the_template_names_an_interest_that_is_a_kind_of_product():
    from kairos.engine.copywriting import template_copy

    assert template_copy("REGENCY CAKESTAND 3 TIER", interests=("set", "box", "cakestand")).endswith("interest in cakestand.")
    assert template_copy("REGENCY CAKESTAND 3 TIER", interests=("set",)) == template_copy("REGENCY CAKESTAND 3 TIER")
    assert "interest" not in template_copy("REGENCY CAKESTAND 3 TIER", interests=("red", "box"))  # a colour, a box


def test_copy_must_say_what_the_product_is_and_hold_no_markup():
    """A text that shares only a modifier with the name ("coffee" for coffee mugs) is off the product; one with
    scraped field separators is markup. Each is regenerated once, then replaced by the template."""

    mugs = CopyRequest("m1", "cat:mug", "RETRO COFFEE MUGS ASSORTED", "mug", interests=("mug",))
    writer = CopyWriter(Writes("Coffee, served with vanilla pudding.", "Four retro mugs for your morning coffee."))
    (text,) = writer.write([mugs])
    assert (text.text, text.source) == ("Four retro mugs for your morning coffee.", "regenerated")
    assert text.reasons == ("off_product",)

    card = CopyRequest("g1", "cat:card", "GREETING CARD, THE BLACK CAT", "card")
    writer = CopyWriter(Writes("A greeting card||greetcard:||cat%", "Black cat card||cat"))
    (text,) = writer.write([card])
    assert text.source == "template" and text.reasons == ("markup", "markup")
    assert writer.stats.reasons == {"markup": 2}


class KnowsWords(Writes):
    """``Writes`` with the vocabulary check a real generator has (``OnnxGenerator.whole_word``)."""

    def __init__(self, greedy: str, sampled: str, words: set[str]) -> None:
        super().__init__(greedy, sampled)
        self.words = words

    def whole_word(self, word: str) -> bool:
        return word in self.words


def test_a_garbled_name_is_regenerated_unless_the_generator_knows_the_word():
    """What the fine-tuned SmolLM2 wrote (`kairos demo`, 2026-12-04): "Hangling" for HANGING. A word one letter
    from a name word is garbled unless the generator's vocabulary holds it whole ("strong" for STRING is a word,
    and copy may say it); a longer form of a name word ("lighting" for LIGHTS) is no misspelling."""
    holder = CopyRequest("h1", "cat:holder", "HANGING HEART ZINC T-LIGHT HOLDER", "holder")
    writer = CopyWriter(KnowsWords("Hangling heart holder for a tea light.", "A hanging zinc heart holder.", {"hanging"}))
    (text,) = writer.write([holder])
    assert (text.text, text.source, text.reasons) == ("A hanging zinc heart holder.", "regenerated", ("garbled_name",))

    lights = CopyRequest("l1", "cat:light", "STRING OF FAIRY LIGHTS", "light")
    greedy = "Strong string of fairy lights for soft lighting."
    (text,) = CopyWriter(KnowsWords(greedy, "unused", {"strong"})).write([lights])
    assert (text.text, text.source, text.reasons) == (greedy, "generated", ())
    (text,) = CopyWriter(Writes(greedy, "A string of fairy lights.")).write([lights])  # no vocabulary to ask
    assert text.source == "regenerated" and text.reasons == ("garbled_name",)


def test_a_key_answered_with_the_template_is_not_asked_again_and_the_hot_path_says_why():
    """The copy agent answers with the template when it has no generator or every try was blocked: the copy book
    settles the key (no new request), and the hot path's template says why the product is shown; generated copy
    arriving later replaces it."""
    from kairos.engine.copywriting import CopyBook

    book = CopyBook()
    cases = CopyRequest("21212", "cat:or-bag", "PACK OF 72 RETRO SPOT CAKE CASES", "or-case", 0.55, ("bag",))
    names = {"85123A": "WHITE HANGING HEART T-LIGHT HOLDER"}.get
    assert book.lookup(cases, ("similar_shoppers",)) == "Pack Of 72 Retro Spot Cake Cases. Bought by shoppers like you."
    assert [r.item_id for r in book.take_requests()] == ["21212"]
    book.settle("21212", "cat:or-bag")
    shown = book.lookup(cases, ("co_visit:85123A", "popular"), names)
    assert shown == "Pack Of 72 Retro Spot Cake Cases. Often viewed with the White Hanging Heart T-Light Holder."
    assert book.take_requests() == []  # answered: not asked again
    book.put("21212", "cat:or-bag", "Seventy-two cake cases for a party.")
    assert book.lookup(cases, ("similar_shoppers",)) == "Seventy-two cake cases for a party."


def test_recent_answers_skip_repeats_within_the_horizon_only():
    """A copy agent writes a key once when workers race for it; a key asked for again after the horizon is written
    again (the worker asking lost its text)."""
    from kairos.engine.copywriting import RecentAnswers

    clock = Clock()
    recent = RecentAnswers(horizon_s=60.0, capacity=2, clock=clock)
    a, b, c = _product(1), _product(2), _product(3)
    assert recent.fresh([a, a, b]) == [a, b]  # a repeat within one batch
    recent.answered([a, b])
    clock.now += 30.0
    assert recent.fresh([a, c]) == [c]
    recent.answered([c])  # capacity 2: a, the oldest answer, is forgotten
    assert recent.fresh([a, b]) == [a]
    clock.now += 31.0  # b is past the horizon
    assert recent.fresh([b, c]) == [b]
    assert recent.fresh([CopyRequest("i3", "cat:x", "headline", kind="ad")])  # an ad variant is another key


def test_made_up_shapes_and_parts_get_the_template_without_a_retry():
    """What the fine-tuned SmolLM2 wrote for Online Retail goods (2026-12-05): shapes and parts nothing in the
    product's facts gives. Sampling a retry made up more, so the template comes at once; a part the name gives,
    and a garment's parts, stay allowed."""
    from kairos.engine.copywriting import invented_form

    cases = {  # (name, category, text): made up?
        ("SCOTTIE DOG HOT WATER BOTTLE", "bottle", "Water Bottle, has an elastic neck and curved handle"): True,
        ("SET OF 3 BLACK FLYING DUCKS", "duck", "Set of three black flying ducks, has long necks and curved wings"): True,
        ("RED RETROSPOT TEA CUP WITH HANDLE", "cup", "A tea cup that has a sturdy handle"): False,  # the name gives it
        ("Roadster Men Navy T-shirt", "", "Navy T-shirt, has a round neck and a curved hem"): False,  # clothing
        ("CHRISTMAS CRAFT HEART DECORATIONS", "decoration", "Crafted Heart Decorations"): False,
    }
    assert {case: invented_form(*case) for case in cases} == cases

    bowl = CopyRequest("b1", "cat:bowl", "CAT BOWL", "bowl", interests=("bowl",))
    generator = Writes("Bowl, has an oval shape and curved sides", "A cat bowl for a hungry cat.")
    writer = CopyWriter(generator)
    (text,) = writer.write([bowl])
    assert text.source == "template" and text.reasons == ("invented_detail",) and "Cat Bowl" in text.text
    assert (writer.stats.regenerated, writer.stats.fallbacks, writer.stats.reasons) == (0, 1, {"invented_detail": 1})


def test_a_final_reason_skips_the_retry_only_for_its_own_rows():
    from kairos.engine.safety import SafetyFilter, SafetyStats, safe_generate

    calls = []

    def generate(prompts):
        calls.append(list(prompts))
        return ["made up" if p == "a" else ("off" if len(calls) == 1 else "fine") for p in prompts]

    def grounded(row, text):
        return {"made up": "invented", "off": "off_product"}.get(text)

    stats = SafetyStats()
    out = safe_generate(generate, ["a", "b"], ["A.", "B."], SafetyFilter(), stats, grounded=grounded, final=("invented",))
    assert [(t.text, t.source, t.reasons) for t in out] == [("A.", "template", ("invented",)),
                                                            ("fine", "regenerated", ("off_product",))]
    assert calls == [["a", "b"], ["b"]] and (stats.regenerated, stats.fallbacks) == (1, 1)


class Scored(Writes):
    """``Writes`` that also scores its texts as a real generator does (``OnnxGenerator.generate_scored``)."""

    def __init__(self, greedy: str, sampled: str, greedy_logprob: float, sampled_logprob: float) -> None:
        super().__init__(greedy, sampled)
        self.logprobs = {greedy: greedy_logprob, sampled: sampled_logprob}
        self.calls = 0

    def generate_scored(self, prompts, *, max_new_tokens: int = 64, sample: bool = False, cancel=None):
        self.calls += 1
        texts = self.generate(prompts, max_new_tokens=max_new_tokens, sample=sample, cancel=cancel)
        return texts, [self.logprobs[t] for t in texts]


def test_unlikely_product_copy_gets_the_template_without_a_retry():
    """Scores as the fine-tuned SmolLM2 gave them (2026-12-05): its greedy copy -2.2 to -1.6 nats per token, the
    rambling texts of its sampled retries -4.4 to -3.0."""
    frame = CopyRequest("f1", "cat:frame", "CLASSIC WHITE FRAME", "frame", interests=("frame",))
    rambling = "Classic white frame. Rooftops!!! Pickups and collection reviews, warranty by the brand"
    generator = Scored("A classic white frame for a favourite photo.", rambling, -1.8, -3.4)
    (text,) = CopyWriter(generator).write([frame])
    assert (text.text, text.source) == ("A classic white frame for a favourite photo.", "generated")

    # An off-product first try is regenerated; the sampled retry rambles and scores low: the template.
    generator = Scored("A pair of jeans with two pockets.", rambling, -1.9, -3.4)
    writer = CopyWriter(generator)
    (text,) = writer.write([frame])
    assert text.source == "template" and text.reasons == ("off_product", "unlikely") and generator.calls == 2
    # An unlikely first try is not retried; without the check (or an unscored generator) it is published.
    generator = Scored(rambling, "A classic white frame for a favourite photo.", -3.1, -1.8)
    (text,) = CopyWriter(generator).write([frame])
    assert (text.source, text.reasons, generator.calls) == ("template", ("unlikely",), 1)
    (text,) = CopyWriter(Scored(rambling, "", -3.1, -1.8), min_logprob=None).write([frame])
    assert (text.text, text.source) == (rambling, "generated")
    (text,) = CopyWriter(Writes(rambling, "")).write([frame])
    assert (text.text, text.source) == (rambling, "generated")
    # Ad headline variants are not scored against it (measured on product copy only).
    (variant,) = CopyWriter(Scored("Nobody saw this bread coming.", "", -3.5, -1.0)).write(
        [CopyRequest("c1", "ad", "A Quiet Story About Bread", kind="ad")])
    assert variant.source == "generated"
