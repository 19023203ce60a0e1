"""Content safety for generated copy: banned claims and words, and what to do with a blocked text.

Every generated text passes :meth:`SafetyFilter.check`. A blocked text is regenerated (a bounded number of times)
and then replaced by a template (:func:`safe_generate`); both outcomes are counted in :class:`SafetyStats` for the
metrics module.

The default rules cover three families:

- absolute superlatives forbidden in Chinese advertising (广告法 Art. 9: 最, 第一, 国家级, 顶级, 极品 ...)
  and their English counterparts ("best in the world", "No. 1", "100% guaranteed");
- medical or health claims for ordinary products (cures, treats, heals, 治疗, 疗效, 药用 ...);
- profanity.

Rules are plain data (:class:`SafetyRules`), so deployments can extend or replace them from configuration.

>>> f = SafetyFilter()
>>> f.check("这款连衣裙是全网最好看的").allowed
False
>>> f.check("A soft cotton tee for easy weekends.").allowed
True
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

#: Chinese absolute terms. "最" alone is banned as a prefix of an adjective (最好, 最佳, 最低价 ...); compounds that
#: are not claims (最近 "recently", 最后 "finally", 最初 "at first") are allowed.
ZH_ABSOLUTES = (
    "第一", "唯一", "国家级", "世界级", "顶级", "极品", "首选", "独一无二", "全网第一", "销量冠军", "史无前例",
    "万能", "百分之百", "绝对", "永久", "王牌", "领袖品牌",
)
ZH_ZUI_ALLOWED_NEXT = "近后初终先"  # 最近 最后 最初 最终 最先 are not superlative claims
ZH_MEDICAL = ("治疗", "治愈", "疗效", "药用", "医用", "消炎", "抗癌", "防癌", "减肥", "根治", "包治", "药到病除")
EN_ABSOLUTES = (
    r"\bbest in the world\b", r"\bworld'?s best\b", r"\bno\.? ?1\b", r"\bnumber one\b", r"(?<!\w)#1\b",
    r"\b100% (guaranteed|safe|effective)\b", r"\bguaranteed results?\b", r"\bunbeatable\b", r"\bperfect for everyone\b",
)
EN_MEDICAL = (
    r"\bcures?\b", r"\bcured\b", r"\btreats? (acne|eczema|cancer|arthritis|diabetes|pain|disease)\b",
    r"\bheals?\b", r"\bclinically proven\b", r"\bfda[- ]approved\b", r"\bprevents? (cancer|disease|covid)\b",
    r"\bweight loss\b", r"\bdetox(es|ifies)?\b", r"\banti-?cancer\b",
)
PROFANITY = (r"\bfuck\w*", r"\bshit\w*", r"\bbitch\w*", r"\basshole\w*", r"\bbastard\w*", r"\bdamn\b", r"\bcunt\w*",
             "他妈的", "操你", "傻逼", "妈的")


@dataclass(frozen=True)
class SafetyRules:
    """Banned patterns by reason. Plain strings match as substrings; strings containing a regex backslash
    sequence are regular expressions (case-insensitive, matched on NFKC-normalised text)."""

    absolutes: tuple[str, ...] = ZH_ABSOLUTES + EN_ABSOLUTES
    medical: tuple[str, ...] = ZH_MEDICAL + EN_MEDICAL
    profanity: tuple[str, ...] = PROFANITY
    ban_zui: bool = True  # the Chinese superlative prefix 最
    extra: tuple[str, ...] = ()  # deployment-specific banned words

    def compiled(self) -> list[tuple[str, re.Pattern]]:
        groups = (("absolute", self.absolutes), ("medical", self.medical), ("profanity", self.profanity),
                  ("banned", self.extra))
        return [(reason, _compile(p)) for reason, patterns in groups for p in patterns]


def _compile(pattern: str) -> re.Pattern:
    is_regex = "\\" in pattern
    return re.compile(pattern if is_regex else re.escape(pattern), re.IGNORECASE)


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reasons: tuple[str, ...] = ()  # "absolute:第一", "medical:cures" ...


class SafetyFilter:
    """Checks texts against :class:`SafetyRules`."""

    def __init__(self, rules: SafetyRules = SafetyRules()):
        self.rules = rules
        self._patterns = rules.compiled()
        allowed_next = re.escape(ZH_ZUI_ALLOWED_NEXT)
        self._zui = re.compile(f"最(?![{allowed_next}])") if rules.ban_zui else None

    def check(self, text: str) -> Verdict:
        """Every rule the text breaks (empty reasons: allowed)."""
        norm = unicodedata.normalize("NFKC", text)
        reasons = [f"{reason}:{m.group(0)}" for reason, pattern in self._patterns if (m := pattern.search(norm))]
        if self._zui is not None and self._zui.search(norm):
            reasons.append("absolute:最")
        return Verdict(not reasons, tuple(reasons))


@dataclass
class SafetyStats:
    """Counts for the metrics module: texts checked, blocked attempts, regenerations, template fallbacks."""

    checked: int = 0
    blocked: int = 0
    regenerated: int = 0
    fallbacks: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def record(self, verdict: Verdict) -> None:
        self.checked += 1
        if not verdict.allowed:
            self.blocked += 1
            for r in verdict.reasons:
                key = r.split(":", 1)[0]
                self.reasons[key] = self.reasons.get(key, 0) + 1


@dataclass(frozen=True)
class SafeText:
    text: str
    source: str  # "generated" | "regenerated" | "template"
    reasons: tuple[str, ...] = ()  # why earlier attempts were blocked


def safe_generate(
    generate: Callable[[Sequence[str]], list[str]],
    prompts: Sequence[str],
    fallbacks: Sequence[str],
    safety: SafetyFilter,
    stats: SafetyStats | None = None,
    retries: int = 1,
    grounded: Callable[[int, str], str | None] | None = None,
    final: Collection[str] = (),
) -> list[SafeText]:
    """Generate for every prompt; blocked rows are regenerated (only those rows) up to ``retries`` times, then
    replaced by their template fallback. ``generate`` should sample (not greedy) for a retry to differ.
    ``grounded(row, text)``, when given, returns why an allowed text does not fit its row (e.g. it is about another
    product), or None: such a text is treated as blocked with that reason. A row blocked for a reason in ``final``
    gets its fallback at once: a retry would not mend it.

    >>> out = safe_generate(lambda ps: ["最好的裙子" for _ in ps], ["p"], ["优雅连衣裙，欢迎选购。"], SafetyFilter())
    >>> out[0].text, out[0].source
    ('优雅连衣裙，欢迎选购。', 'template')
    """
    stats = stats if stats is not None else SafetyStats()
    results: list[SafeText | None] = [None] * len(prompts)
    reasons: list[tuple[str, ...]] = [()] * len(prompts)
    pending, done = list(range(len(prompts))), []
    final_reasons = frozenset(final)
    for attempt in range(retries + 1):
        if not pending:
            break
        if attempt:
            stats.regenerated += len(pending)
        texts = generate([prompts[i] for i in pending])
        still = []
        for i, text in zip(pending, texts):
            verdict = safety.check(text)
            if verdict.allowed and grounded is not None and (why := grounded(i, text)) is not None:
                verdict = Verdict(False, (why,))
            stats.record(verdict)
            if verdict.allowed and text.strip():
                results[i] = SafeText(text, "regenerated" if attempt else "generated", reasons[i])
            else:
                reasons[i] = reasons[i] + verdict.reasons
                (still if final_reasons.isdisjoint(verdict.reasons) else done).append(i)
        pending = still
    for i in pending + done:
        stats.fallbacks += 1
        results[i] = SafeText(fallbacks[i], "template", reasons[i])
    return results  # type: ignore[return-value]
