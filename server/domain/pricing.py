"""The price of a delivered business message: the table, the free-of-charge rules, the quote.

A business pays per *delivered* message, priced by category and the recipient's country from
the table in force **when the message was sent** (a price change never reprices a message
already on its way). Every rule that makes a message free is data in the table, not code: an
operator who wants marketing free inside click-to-chat entry windows edits the file, not
Parley. The quote says why it came out as it did, so a business never has to keep its own rate
table to guess its bill.

The order of the rules, first match wins:
1. a free window: the message was sent inside a window the table lists for its category (the
   24-hour customer-service window, the 72-hour entry window of a click-to-chat link);
2. the monthly allowance: the first N messages of a category in a calendar month (UTC) are free;
3. a volume tier of (category, country): the price for the n-th message of the month;
4. the price row of (category, country), else the category's default row `"*"`.

Pure: no storage, no clock. The caller gathers the facts (which windows are open, how many
messages the month has seen) in the send's transaction and applies the quote there.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from importlib import resources
from typing import Any

from server.domain.model import MessageCategory
from server.domain.money import AmountError, currency_code, format_amount, parse_amount

# The categories a table prices, by the names the file uses.
CATEGORIES: dict[str, MessageCategory] = {
    c.name: c for c in MessageCategory if c is not MessageCategory.UNSPECIFIED
}
# The key of a category's default row, used for every country without a row of its own.
DEFAULT_COUNTRY = "*"
# ISO 3166-1 alpha-2, plus "ZZ" (unknown region, e.g. test numbers).
_COUNTRY = re.compile(r"[A-Z]{2}")
_TOP_KEYS = frozenset({"currency", "effective_at", "prices", "free", "allowances", "tiers"})


class PriceTableError(ValueError):
    """A price table that cannot be used; the message names the key and how to fix it."""


class Window(StrEnum):
    """The windows a free rule can name, by their name in the price file."""

    # The 24-hour customer-service window: the user wrote to the business.
    SERVICE = "service_window"
    # The 72-hour free entry window: the user started the chat from a click-to-chat link.
    ENTRY = "entry_window"


class FreeReason(IntEnum):
    """Why a message costs what it costs (0: it is billable)."""

    BILLABLE = 0
    SERVICE_WINDOW = 1
    ENTRY_WINDOW = 2
    ALLOWANCE = 3


_WINDOW_REASON = {Window.SERVICE: FreeReason.SERVICE_WINDOW, Window.ENTRY: FreeReason.ENTRY_WINDOW}
_WINDOW_TEXT = {
    Window.SERVICE: "inside the 24-hour customer-service window",
    Window.ENTRY: "inside the 72-hour free entry window of a click-to-chat link",
}


@dataclass(frozen=True)
class FreeRule:
    """Messages of `categories` sent while `window` is open cost nothing."""

    window: Window
    categories: frozenset[MessageCategory]


@dataclass(frozen=True)
class Tier:
    """From the `start`-th message of the month (1-based) on, each message costs `price`."""

    start: int
    price: int


@dataclass(frozen=True)
class PriceTable:
    """One version of the price list. `effective_at` (seconds since the epoch) is when it
    takes over from the version before it."""

    currency: str
    # category -> country (or "*") -> micro-units per delivered message
    prices: Mapping[MessageCategory, Mapping[str, int]]
    free: tuple[FreeRule, ...] = ()
    # category -> messages per calendar month that are free
    allowances: Mapping[MessageCategory, int] = field(default_factory=dict)
    # (category, country) -> tiers, by increasing start, the first starting at 1
    tiers: Mapping[tuple[MessageCategory, str], tuple[Tier, ...]] = field(default_factory=dict)
    effective_at: float = 0.0

    def row(self, category: MessageCategory, country: str) -> tuple[int, str]:
        """The listed price for (category, country) and the row it came from."""
        rows = self.prices[category]
        if country in rows:
            return rows[country], country
        return rows[DEFAULT_COUNTRY], DEFAULT_COUNTRY

    def to_dict(self) -> dict[str, Any]:
        """The table in the file's shape (amounts as decimal strings): JSON for the store and
        the API, and what `from_dict` reads back exactly."""
        return {
            "currency": self.currency,
            "effective_at": _iso(self.effective_at),
            "prices": {
                c.name: {k: format_amount(v) for k, v in sorted(rows.items())}
                for c, rows in sorted(self.prices.items())
            },
            "free": [
                {"window": r.window.value, "categories": sorted(c.name for c in r.categories)}
                for r in self.free
            ],
            "allowances": {c.name: n for c, n in sorted(self.allowances.items())},
            "tiers": [
                {
                    "category": c.name,
                    "country": country,
                    "steps": [{"from": t.start, "price": format_amount(t.price)} for t in steps],
                }
                for (c, country), steps in sorted(self.tiers.items())
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class SendFacts:
    """What the quote depends on, gathered at send time."""

    category: MessageCategory
    # The recipient's country (ISO 3166 alpha-2, "ZZ" when unknown).
    country: str
    # The windows open between the business and the recipient when the message is sent.
    windows: frozenset[Window] = frozenset()
    # Messages of this category the business was charged for or given free by the allowance
    # earlier this calendar month (the allowance counts these).
    month_count: int = 0
    # The same, to this country only (the volume tiers count these).
    month_count_country: int = 0


@dataclass(frozen=True)
class Quote:
    """The price of one message and why."""

    amount: int
    currency: str
    reason: FreeReason
    category: MessageCategory
    country: str
    # When the table that priced it took effect.
    table_effective_at: float
    explanation: str

    @property
    def billable(self) -> bool:
        return self.reason is FreeReason.BILLABLE


def quote(table: PriceTable, facts: SendFacts) -> Quote:
    """Price one message by the rules of the module docstring, first match wins."""
    category, country = facts.category, facts.country
    if category not in table.prices:
        raise PriceTableError(f"the price table has no row for category {category.name}")

    def made(amount: int, reason: FreeReason, why: str) -> Quote:
        return Quote(amount, table.currency, reason, category, country, table.effective_at, why)

    for rule in table.free:
        if rule.window in facts.windows and category in rule.categories:
            return made(
                0,
                _WINDOW_REASON[rule.window],
                f"free: a {category.name} message {_WINDOW_TEXT[rule.window]}",
            )
    allowance = table.allowances.get(category, 0)
    if facts.month_count < allowance:
        return made(
            0,
            FreeReason.ALLOWANCE,
            f"free: {category.name} message {facts.month_count + 1:,} of the {allowance:,} "
            "free this month",
        )
    steps = table.tiers.get((category, country))
    nth = facts.month_count_country + 1
    if steps:
        level = max(i for i, t in enumerate(steps) if t.start <= nth)
        tier = steps[level]
        return made(
            tier.price,
            FreeReason.BILLABLE,
            f"{category.name} to {country}: {format_amount(tier.price, table.currency)}, "
            f"volume tier {level + 1} (from message {tier.start:,} of the month; this is "
            f"{nth:,})",
        )
    price, row = table.row(category, country)
    where = country if row == country else f"{country} (default row)"
    return made(
        price,
        FreeReason.BILLABLE,
        f"{category.name} to {where}: {format_amount(price, table.currency)}",
    )


class PriceSchedule:
    """Every version of the table, so a message is priced by the one in force at its send
    time, whenever the price is computed."""

    def __init__(self, tables: Sequence[PriceTable]) -> None:
        self._tables = sorted(tables, key=lambda t: t.effective_at)

    def in_force(self, at: float) -> PriceTable:
        """The newest table whose effective time is not after `at`."""
        found: PriceTable | None = None
        for table in self._tables:
            if table.effective_at > at:
                break
            found = table
        if found is None:
            raise PriceTableError(f"no price table is in force at {_iso(at)}")
        return found


# -- reading a table ------------------------------------------------------------------------


def default_table() -> PriceTable:
    """The shipped table (`server/domain/default_prices.toml`), in force since always."""
    text = resources.files("server.domain").joinpath("default_prices.toml").read_text("utf-8")
    return parse_toml(text)


def parse_toml(text: str, *, effective_at: float | None = None) -> PriceTable:
    """A table from the operator's TOML file (see the shipped default for the format).
    `effective_at` overrides the file's own `effective_at`."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PriceTableError(f"the price file is not valid TOML: {exc}") from None
    return from_dict(data, effective_at=effective_at)


def from_json(text: str) -> PriceTable:
    return from_dict(json.loads(text))


def from_dict(data: Mapping[str, Any], *, effective_at: float | None = None) -> PriceTable:
    """Validate and build a table; every mistake names its key."""
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise PriceTableError(
            f"unknown key(s) {', '.join(sorted(unknown))}; a price table has "
            f"{', '.join(sorted(_TOP_KEYS))}"
        )
    try:
        currency = currency_code(str(data.get("currency", "USD")))
        when = effective_at if effective_at is not None else _seconds(data.get("effective_at"))
        prices = _prices(data.get("prices"))
        free = tuple(_free_rule(i, r) for i, r in enumerate(_list(data, "free")))
        allowances = _allowances(data.get("allowances", {}))
        tiers = _tiers(_list(data, "tiers"))
    except AmountError as exc:
        raise PriceTableError(str(exc)) from None
    return PriceTable(currency, prices, free, allowances, tiers, when)


def _list(data: Mapping[str, Any], key: str) -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise PriceTableError(f"{key} must be a list ([[{key}]] tables in TOML)")
    return value


def _category(name: object, where: str) -> MessageCategory:
    if not isinstance(name, str) or name.upper() not in CATEGORIES:
        raise PriceTableError(
            f"{where}: unknown category {name!r}; use one of {', '.join(CATEGORIES)}"
        )
    return CATEGORIES[name.upper()]


def _country(code: object, where: str) -> str:
    if code == DEFAULT_COUNTRY:
        return DEFAULT_COUNTRY
    if not isinstance(code, str) or not _COUNTRY.fullmatch(code.upper()):
        raise PriceTableError(
            f'{where}: {code!r} is not a country; use an ISO 3166 code such as "DE", or '
            f'"{DEFAULT_COUNTRY}" for the default row'
        )
    return code.upper()


def _prices(value: object) -> dict[MessageCategory, dict[str, int]]:
    if not isinstance(value, Mapping):
        raise PriceTableError("prices is required: a [prices.CATEGORY] table per category")
    out: dict[MessageCategory, dict[str, int]] = {}
    for name, rows in value.items():
        category = _category(name, "prices")
        if not isinstance(rows, Mapping):
            raise PriceTableError(f"prices.{name} must map countries to amounts")
        out[category] = {
            _country(k, f"prices.{name}"): parse_amount(v, field=f"prices.{name}.{k}")
            for k, v in rows.items()
        }
        if DEFAULT_COUNTRY not in out[category]:
            raise PriceTableError(
                f'prices.{name} has no default row: add "{DEFAULT_COUNTRY}" = "0.01" (the '
                "price for every country without a row of its own)"
            )
    missing = [c.name for c in CATEGORIES.values() if c not in out]
    if missing:
        raise PriceTableError(f"prices has no table for {', '.join(missing)}")
    return out


def _free_rule(index: int, value: object) -> FreeRule:
    where = f"free[{index}]"
    if not isinstance(value, Mapping) or set(value) != {"window", "categories"}:
        raise PriceTableError(f"{where} must have exactly: window, categories")
    try:
        window = Window(value["window"])
    except ValueError:
        names = ", ".join(w.value for w in Window)
        raise PriceTableError(
            f"{where}: window {value['window']!r} is not one of {names}"
        ) from None
    names = value["categories"]
    if not isinstance(names, list) or not names:
        raise PriceTableError(f'{where}: categories must be a non-empty list (or ["*"])')
    if names == [DEFAULT_COUNTRY]:
        categories = frozenset(CATEGORIES.values())
    else:
        categories = frozenset(_category(n, where) for n in names)
    return FreeRule(window, categories)


def _allowances(value: object) -> dict[MessageCategory, int]:
    if not isinstance(value, Mapping):
        raise PriceTableError("allowances must map categories to monthly counts")
    out: dict[MessageCategory, int] = {}
    for name, count in value.items():
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise PriceTableError(f"allowances.{name} must be a whole number of messages ≥ 0")
        out[_category(name, "allowances")] = count
    return out


def _tiers(value: list[Any]) -> dict[tuple[MessageCategory, str], tuple[Tier, ...]]:
    out: dict[tuple[MessageCategory, str], tuple[Tier, ...]] = {}
    for i, entry in enumerate(value):
        where = f"tiers[{i}]"
        if not isinstance(entry, Mapping) or set(entry) != {"category", "country", "steps"}:
            raise PriceTableError(f"{where} must have exactly: category, country, steps")
        key = (_category(entry["category"], where), _country(entry["country"], where))
        if key[1] == DEFAULT_COUNTRY:
            raise PriceTableError(f'{where}: tiers are per country; name one, not "*"')
        if key in out:
            raise PriceTableError(f"{where}: a second tier list for {key[0].name} in {key[1]}")
        steps = entry["steps"]
        if not isinstance(steps, list) or not steps:
            raise PriceTableError(f"{where}: steps must be a non-empty list")
        tiers: list[Tier] = []
        for j, step in enumerate(steps):
            if not isinstance(step, Mapping) or set(step) != {"from", "price"}:
                raise PriceTableError(f"{where}.steps[{j}] must have exactly: from, price")
            start = step["from"]
            if not isinstance(start, int) or isinstance(start, bool) or start < 1:
                raise PriceTableError(f"{where}.steps[{j}].from must be a message number ≥ 1")
            tiers.append(Tier(start, parse_amount(step["price"], field=f"{where}.steps[{j}]")))
        starts = [t.start for t in tiers]
        if starts[0] != 1 or starts != sorted(set(starts)):
            raise PriceTableError(
                f"{where}: steps must start from message 1 and go strictly upwards"
            )
        out[key] = tuple(tiers)
    return out


def _seconds(value: object) -> float:
    """The file's effective time: a TOML datetime, an ISO 8601 string, or absent (0: since
    always)."""
    if value is None:
        return 0.0
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise PriceTableError(
                f"effective_at {value!r} is not a time such as 2026-12-01T00:00:00Z"
            ) from None
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise PriceTableError(
            "effective_at must be a time with its offset, e.g. 2026-12-01T00:00:00Z"
        )
    return value.timestamp()


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")
