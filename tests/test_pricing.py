"""The price table, its free-of-charge rules and the quote (pure domain, no server)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.domain.model import MessageCategory
from server.domain.money import (
    MAX_AMOUNT_MICROS,
    AmountError,
    format_amount,
    parse_amount,
)
from server.domain.pricing import (
    FreeReason,
    PriceSchedule,
    PriceTableError,
    SendFacts,
    Window,
    default_table,
    from_json,
    parse_toml,
    quote,
)

M = MessageCategory

SMALL = """
currency = "USD"
effective_at = 2026-12-01T00:00:00Z
[prices.MARKETING]
"*" = "0.02"
DE = "0.08"
[prices.UTILITY]
"*" = "0.01"
[prices.AUTHENTICATION]
"*" = "0.01"
[prices.SERVICE]
"*" = "0.005"
"""


def test_amounts_are_exact_micro_units() -> None:
    assert parse_amount("0.005") == 5_000
    assert parse_amount("0.09") == 90_000
    assert parse_amount("12") == 12_000_000
    assert parse_amount(3) == 3_000_000
    assert format_amount(5_000, "USD") == "0.005 USD"
    assert format_amount(1_500_000) == "1.50"
    assert format_amount(-12_500) == "-0.0125"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (0.1, "decimal string"),
        ("0.0000001", "more than 6 decimal places"),
        ("-1", "negative"),
        ("abc", "not a decimal amount"),
        ("NaN", "not a finite amount"),
        (str(MAX_AMOUNT_MICROS), "above the largest amount"),
    ],
)
def test_amounts_that_are_not_exact_are_refused(text: object, says: str) -> None:
    with pytest.raises(AmountError, match=says):
        parse_amount(text)  # type: ignore[arg-type]


@given(st.integers(min_value=0, max_value=MAX_AMOUNT_MICROS))
def test_format_then_parse_gives_the_same_micros(micros: int) -> None:
    assert parse_amount(format_amount(micros)) == micros
    assert Decimal(format_amount(micros)) * 1_000_000 == micros


def test_the_shipped_table_prices_every_category_between_half_a_cent_and_nine_cents() -> None:
    table = default_table()
    assert table.currency == "USD"
    for category in (M.MARKETING, M.UTILITY, M.AUTHENTICATION, M.SERVICE):
        rows = table.prices[category]
        assert "*" in rows
        assert all(5_000 <= v <= 90_000 for v in rows.values()), category
    for steps in table.tiers.values():
        assert all(5_000 <= t.price <= 90_000 for t in steps)


def test_rows_and_the_default_row() -> None:
    table = parse_toml(SMALL)
    de = quote(table, SendFacts(M.MARKETING, "DE"))
    assert (de.amount, de.reason, de.billable) == (80_000, FreeReason.BILLABLE, True)
    assert de.explanation == "MARKETING to DE: 0.08 USD"
    us = quote(table, SendFacts(M.MARKETING, "US"))
    assert us.amount == 20_000
    assert "US (default row)" in us.explanation


def test_free_windows_come_first_and_say_why() -> None:
    table = default_table()
    inside = frozenset({Window.SERVICE})
    service = quote(table, SendFacts(M.SERVICE, "DE", windows=inside))
    assert (service.amount, service.reason) == (0, FreeReason.SERVICE_WINDOW)
    assert "24-hour customer-service window" in service.explanation
    utility = quote(table, SendFacts(M.UTILITY, "DE", windows=inside))
    assert (utility.amount, utility.reason) == (0, FreeReason.SERVICE_WINDOW)
    # Marketing is not free in the service window, whatever the allowance of other categories.
    marketing = quote(table, SendFacts(M.MARKETING, "DE", windows=inside))
    assert (marketing.amount, marketing.reason) == (89_000, FreeReason.BILLABLE)
    entry = quote(table, SendFacts(M.MARKETING, "DE", windows=frozenset({Window.ENTRY})))
    assert (entry.amount, entry.reason) == (0, FreeReason.ENTRY_WINDOW)


def test_the_monthly_allowance_then_the_price() -> None:
    table = default_table()
    last_free = quote(table, SendFacts(M.SERVICE, "ZZ", month_count=999))
    assert (last_free.amount, last_free.reason) == (0, FreeReason.ALLOWANCE)
    assert "1,000 of the 1,000 free" in last_free.explanation
    first_paid = quote(table, SendFacts(M.SERVICE, "ZZ", month_count=1000))
    assert (first_paid.amount, first_paid.reason) == (5_000, FreeReason.BILLABLE)


def test_volume_tiers_by_the_count_of_the_month_in_that_country() -> None:
    table = default_table()
    prices = [
        quote(table, SendFacts(M.MARKETING, "IN", month_count_country=n)).amount
        for n in (0, 249_999, 250_000, 1_999_999, 2_000_000, 10**9)
    ]
    assert prices == [10_700, 10_700, 10_000, 10_000, 9_000, 9_000]
    # Another country has no tiers: its row applies at any volume.
    assert quote(table, SendFacts(M.MARKETING, "US", month_count_country=10**9)).amount == 25_000


def test_a_message_is_priced_by_the_table_in_force_when_it_was_sent() -> None:
    old = parse_toml(SMALL, effective_at=1_000.0)
    new = parse_toml(SMALL.replace('DE = "0.08"', 'DE = "0.05"'), effective_at=2_000.0)
    schedule = PriceSchedule([new, old])
    assert quote(schedule.in_force(1_999.9), SendFacts(M.MARKETING, "DE")).amount == 80_000
    assert quote(schedule.in_force(2_000.0), SendFacts(M.MARKETING, "DE")).amount == 50_000
    with pytest.raises(PriceTableError, match="no price table is in force"):
        schedule.in_force(999.0)


def test_the_file_time_or_the_given_time() -> None:
    assert parse_toml(SMALL).effective_at == 1_796_083_200.0  # 2026-12-01T00:00:00Z
    assert parse_toml(SMALL, effective_at=5.0).effective_at == 5.0


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (("[prices.SERVICE]", "[prices.SERVCE]"), "unknown category 'SERVCE'"),
        (('"*" = "0.005"', 'US = "0.005"'), "prices.SERVICE has no default row"),
        (('DE = "0.08"', 'Germany = "0.08"'), "'Germany' is not a country"),
        (('DE = "0.08"', "DE = 0.08"), "decimal string"),
        (('currency = "USD"', 'currency = "dollars"'), "ISO 4217"),
        (('currency = "USD"', 'currency = "USD"\nprice = 1'), "unknown key"),
        (("[prices.UTILITY]", "[prices.UTILITY]\n"), None),
        (("effective_at = 2026-12-01T00:00:00Z", 'effective_at = "soon"'), "is not a time"),
        (("[prices.MARKETING]", "[prices.MARKETING"), "not valid TOML"),
    ],
)
def test_mistakes_in_the_file_name_their_key(edit: tuple[str, str], says: str | None) -> None:
    text = SMALL.replace(*edit)
    if says is None:
        parse_toml(text)
        return
    with pytest.raises(PriceTableError, match=says):
        parse_toml(text)


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ('[[free]]\nwindow = "night"\ncategories = ["SERVICE"]', "window 'night' is not one of"),
        ('[[free]]\nwindow = "entry_window"\ncategories = []', "non-empty list"),
        ("[allowances]\nSERVICE = -1", "whole number of messages"),
        (
            '[[tiers]]\ncategory = "MARKETING"\ncountry = "DE"\n'
            'steps = [{from = 2, price = "0.01"}]',
            "start from message 1",
        ),
        (
            '[[tiers]]\ncategory = "MARKETING"\ncountry = "*"\n'
            'steps = [{from = 1, price = "0.01"}]',
            "tiers are per country",
        ),
    ],
)
def test_mistakes_in_the_rules_name_their_key(extra: str, says: str) -> None:
    with pytest.raises(PriceTableError, match=says):
        parse_toml(SMALL + "\n" + extra)


def test_a_table_without_every_category_is_refused() -> None:
    text = SMALL.split("[prices.SERVICE]")[0]
    with pytest.raises(PriceTableError, match="no table for SERVICE"):
        parse_toml(text)


def test_json_round_trip_of_the_shipped_table() -> None:
    table = default_table()
    assert from_json(table.to_json()) == table


_FACTS = st.builds(
    SendFacts,
    category=st.sampled_from([M.MARKETING, M.UTILITY, M.AUTHENTICATION, M.SERVICE]),
    country=st.sampled_from(["DE", "IN", "US", "ZZ", "BR"]),
    windows=st.frozensets(st.sampled_from(list(Window))),
    month_count=st.integers(min_value=0, max_value=3_000_000),
    month_count_country=st.integers(min_value=0, max_value=3_000_000),
)


@given(_FACTS)
def test_a_quote_is_free_exactly_when_a_rule_says_so(facts: SendFacts) -> None:
    table = default_table()
    q = quote(table, facts)
    assert q.currency == "USD"
    if q.billable:
        assert 5_000 <= q.amount <= 90_000
    else:
        assert q.amount == 0 and q.explanation.startswith("free: ")
    # An open entry window makes everything free under the shipped rules.
    if Window.ENTRY in facts.windows:
        assert q.reason in (FreeReason.ENTRY_WINDOW, FreeReason.SERVICE_WINDOW)
