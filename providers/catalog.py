"""What providers publish about their models: prices (dated) and context windows.

Data, not logic: every figure carries the date it was read (see ../shared/providers.md for
sources). Catalogues churn: config overrides any of it per deployment (`price:`,
`context_window:`). Prices are USD per million tokens.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, date, datetime

PRICES_AS_OF = "2026-11-30"


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD per million tokens; `cached_input_per_mtok` is the prompt-cache hit price."""

    input_per_mtok: float
    output_per_mtok: float
    cached_input_per_mtok: float | None = None


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """A hosted model's list price and context window, as published."""

    price: ModelPrice | None = None
    context_window: int | None = None
    offpeak_price: ModelPrice | None = None
    """DeepSeek: the price outside its peak hours (half the peak price)."""


GROQ: dict[str, ModelFacts] = {
    "openai/gpt-oss-120b": ModelFacts(ModelPrice(0.15, 0.60, 0.075), 131_072),
    "openai/gpt-oss-20b": ModelFacts(ModelPrice(0.075, 0.30, 0.037), 131_072),
    "llama-3.1-8b-instant": ModelFacts(ModelPrice(0.05, 0.08), 131_072),
    "qwen/qwen3-32b": ModelFacts(ModelPrice(0.29, 0.59), 131_072),
    "meta-llama/llama-4-scout-17b-16e-instruct": ModelFacts(ModelPrice(0.11, 0.34), 131_072),
}

CEREBRAS: dict[str, ModelFacts] = {
    # 131K context on paid tiers (65K on the free tier: override `context_window` in config)
    "gpt-oss-120b": ModelFacts(ModelPrice(0.35, 0.75), 131_072),
}

_FLASH = ModelFacts(
    price=ModelPrice(0.30, 1.20, 0.006),
    context_window=1_000_000,
    offpeak_price=ModelPrice(0.15, 0.60, 0.003),
)
DEEPSEEK: dict[str, ModelFacts] = {
    "deepseek-flash": _FLASH,
    "deepseek-v4-flash": _FLASH,  # legacy id, served by V4.1-Flash at Flash price
    "deepseek-v4-pro": ModelFacts(
        price=ModelPrice(0.66 * 2, 1.98 * 2, 0.022 * 2),
        context_window=1_000_000,
        offpeak_price=ModelPrice(0.66, 1.98, 0.022),
    ),
}

# DeepSeek's peak: Mon–Fri 09:00–12:00 and 14:00–18:00 Beijing time = 01:00–04:00, 06:00–10:00 UTC,
# except on China's statutory holidays (and the weekdays given off around them), which are off-peak.
_DEEPSEEK_PEAK_UTC_HOURS = frozenset({1, 2, 3, 6, 7, 8, 9})


def deepseek_is_peak(when: datetime) -> bool:
    """Whether DeepSeek charges its peak price at this instant."""
    utc = when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
    if utc.weekday() >= 5 or utc.hour not in _DEEPSEEK_PEAK_UTC_HOURS:
        return False
    day = utc.date()  # the peak hours fall on the same calendar day in Beijing (UTC+8)
    return day not in chinese_days_off(day.year)


@functools.cache
def chinese_days_off(year: int) -> frozenset[date]:
    """Mainland China's statutory holidays and the substitute days off around them in `year`, from
    python-holidays (the State Council's schedule; its import and a year's table take ~80 ms, so the
    DeepSeek adapter loads the current year when it is made)."""
    import holidays

    return frozenset(holidays.country_holidays("CN", years=year))
