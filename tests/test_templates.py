"""The recipient's template checks and the rendering (client/templates.py), one refusal at a time.

Pure functions, so each case builds its record, message and envelope label by hand: a valid
message first (it renders), then exactly one thing wrong per case.
"""

from __future__ import annotations

import dataclasses

import pytest
from parley.v1 import business_pb2 as bpb
from parley.v1 import content_pb2 as cpb
from parley.v1 import messaging_pb2 as mpb

from client.templates import (
    MAX_PARAMETER_LENGTH,
    EnvelopeLabel,
    Refusal,
    Rendered,
    TemplateRecord,
    TemplateRefused,
    category_name,
    check_free_text,
    check_parameters,
    check_template_message,
    render,
)

BUSINESS = "11111111-1111-4111-8111-111111111111"
OTHER = "22222222-2222-4222-8222-222222222222"
TEMPLATE_ID = "33333333-3333-4333-8333-333333333333"
UTILITY = mpb.MESSAGE_CATEGORY_UTILITY

RECORD = TemplateRecord(
    template_id=TEMPLATE_ID,
    business_account_id=BUSINESS,
    name="order_shipped",
    language="en",
    category=UTILITY,
    status=bpb.REVIEW_STATUS_APPROVED,
    paused=False,
    parameter_count=2,
    body="Hello {{1}}, order {{2}} has shipped. Thanks, {{1}}!",
    header="Shipping update",
    footer="Reply STOP to opt out",
    buttons=("Track", "Help"),
)
LABEL = EnvelopeLabel(category=UTILITY, template_id=TEMPLATE_ID, template_name="order_shipped")


def message(**changes: object) -> cpb.TemplateMessage:
    fields: dict[str, object] = {
        "template_id": TEMPLATE_ID,
        "language": "en",
        "parameters": ["Ada", "A-42"],
        "timestamp_ms": 1,
    }
    fields.update(changes)
    return cpb.TemplateMessage(**fields)  # type: ignore[arg-type]


def refusal(
    record: TemplateRecord | None = RECORD,
    msg: cpb.TemplateMessage | None = None,
    *,
    sender: str = BUSINESS,
    label: EnvelopeLabel = LABEL,
) -> TemplateRefused:
    with pytest.raises(TemplateRefused) as caught:
        check_template_message(record, msg or message(), sender_account_id=sender, label=label)
    return caught.value


def test_a_valid_message_renders_from_the_approved_text() -> None:
    rendered = check_template_message(RECORD, message(), sender_account_id=BUSINESS, label=LABEL)
    assert rendered == Rendered(
        body="Hello Ada, order A-42 has shipped. Thanks, Ada!",
        header="Shipping update",
        footer="Reply STOP to opt out",
        buttons=("Track", "Help"),
    )
    assert rendered.text == (
        "Shipping update\nHello Ada, order A-42 has shipped. Thanks, Ada!\n"
        "Reply STOP to opt out\n[Track] [Help]"
    )


def test_the_envelope_may_name_the_template_by_id_or_by_name_alone() -> None:
    for label in (
        EnvelopeLabel(category=UTILITY, template_id=TEMPLATE_ID),
        EnvelopeLabel(category=UTILITY, template_name="order_shipped"),
    ):
        check_template_message(RECORD, message(), sender_account_id=BUSINESS, label=label)


def test_a_paused_template_still_renders() -> None:
    # Pausing stops new sends at the server; a message queued before the pause is genuine.
    paused = dataclasses.replace(RECORD, paused=True)
    check_template_message(paused, message(), sender_account_id=BUSINESS, label=LABEL)


def test_substitution_is_one_pass() -> None:
    rendered = render(RECORD, ["{{2}}", "x"])
    assert rendered.body == "Hello {{2}}, order x has shipped. Thanks, {{2}}!"


def test_unknown_template() -> None:
    assert refusal(None).reason is Refusal.UNKNOWN_TEMPLATE
    other_id = dataclasses.replace(RECORD, template_id=OTHER)
    assert refusal(other_id).reason is Refusal.UNKNOWN_TEMPLATE


@pytest.mark.parametrize("status", [bpb.REVIEW_STATUS_PENDING, bpb.REVIEW_STATUS_REJECTED])
def test_not_approved(status: bpb.ReviewStatus.ValueType) -> None:
    refused = refusal(dataclasses.replace(RECORD, status=status))
    assert refused.reason is Refusal.NOT_APPROVED
    assert "not approved" in refused.message


def test_a_template_of_another_business() -> None:
    refused = refusal(sender=OTHER)
    assert refused.reason is Refusal.OTHER_BUSINESS
    assert BUSINESS in refused.message and OTHER in refused.message


def test_the_envelope_names_another_template_id() -> None:
    label = dataclasses.replace(LABEL, template_id=OTHER)
    refused = refusal(label=label)
    assert refused.reason is Refusal.TEMPLATE_MISMATCH
    assert OTHER in refused.message


def test_the_envelope_names_another_template_name() -> None:
    for label in (
        dataclasses.replace(LABEL, template_name="welcome"),
        EnvelopeLabel(category=UTILITY, template_name="welcome"),
    ):
        refused = refusal(label=label)
        assert refused.reason is Refusal.TEMPLATE_MISMATCH
        assert "'welcome'" in refused.message


def test_the_envelope_names_no_template() -> None:
    refused = refusal(label=EnvelopeLabel(category=UTILITY))
    assert refused.reason is Refusal.TEMPLATE_MISMATCH
    assert "no template" in refused.message


@pytest.mark.parametrize(
    "claimed",
    [
        mpb.MESSAGE_CATEGORY_UNSPECIFIED,
        mpb.MESSAGE_CATEGORY_MARKETING,
        mpb.MESSAGE_CATEGORY_AUTHENTICATION,
        mpb.MESSAGE_CATEGORY_SERVICE,
    ],
)
def test_the_envelope_claims_another_category(claimed: mpb.MessageCategory.ValueType) -> None:
    refused = refusal(label=dataclasses.replace(LABEL, category=claimed))
    assert refused.reason is Refusal.CATEGORY_MISMATCH
    assert f"category {category_name(claimed)}" in refused.message
    assert "is utility" in refused.message


def test_a_marketing_template_claimed_as_utility() -> None:
    marketing = dataclasses.replace(RECORD, category=mpb.MESSAGE_CATEGORY_MARKETING)
    refused = refusal(marketing)
    assert refused.reason is Refusal.CATEGORY_MISMATCH
    assert "says category utility but template 'order_shipped' is marketing" in refused.message


def test_another_language() -> None:
    refused = refusal(msg=message(language="de"))
    assert refused.reason is Refusal.LANGUAGE_MISMATCH


@pytest.mark.parametrize("values", [[], ["Ada"], ["Ada", "A-42", "extra"]])
def test_wrong_parameter_count(values: list[str]) -> None:
    refused = refusal(msg=message(parameters=values))
    assert refused.reason is Refusal.PARAMETER_COUNT
    assert f"takes 2 parameter(s) ({{{{1}}}}..), {len(values)} given" in refused.message


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("", "is empty"),
        ("   ", "is empty"),
        ("x" * (MAX_PARAMETER_LENGTH + 1), f"at most {MAX_PARAMETER_LENGTH}"),
        ("two\nlines", "line break"),
        ("a\ttab", "line break, tab"),
        ("bell\x07", "control character"),
    ],
)
def test_invalid_parameter(value: str, why: str) -> None:
    refused = refusal(msg=message(parameters=["Ada", value]))
    assert refused.reason is Refusal.PARAMETER_INVALID
    assert "parameter {{2}}" in refused.message and why in refused.message


def test_the_longest_parameter_and_unicode_pass() -> None:
    check_parameters(RECORD, ["x" * MAX_PARAMETER_LENGTH, "Zoë 👩‍💻 No. 7"])


def test_a_template_without_parameters_takes_none() -> None:
    plain = dataclasses.replace(RECORD, parameter_count=0, body="Your code expired.")
    check_parameters(plain, [])
    with pytest.raises(TemplateRefused) as caught:
        check_parameters(plain, ["smuggled text"])
    assert caught.value.reason is Refusal.PARAMETER_COUNT


@pytest.mark.parametrize(
    "category",
    [
        mpb.MESSAGE_CATEGORY_MARKETING,
        mpb.MESSAGE_CATEGORY_UTILITY,
        mpb.MESSAGE_CATEGORY_AUTHENTICATION,
    ],
)
def test_free_text_in_a_template_category_is_refused(
    category: mpb.MessageCategory.ValueType,
) -> None:
    with pytest.raises(TemplateRefused) as caught:
        check_free_text(EnvelopeLabel(category=category))
    assert caught.value.reason is Refusal.FREE_TEXT
    assert category_name(category) in caught.value.message


@pytest.mark.parametrize(
    "category", [mpb.MESSAGE_CATEGORY_UNSPECIFIED, mpb.MESSAGE_CATEGORY_SERVICE]
)
def test_free_text_from_a_person_or_a_service_reply_is_shown(
    category: mpb.MessageCategory.ValueType,
) -> None:
    check_free_text(EnvelopeLabel(category=category))


def test_a_record_from_the_server_proto() -> None:
    proto = bpb.Template(
        template_id=TEMPLATE_ID,
        business_account_id=BUSINESS,
        name="order_shipped",
        language="en",
        category=UTILITY,
        status=bpb.REVIEW_STATUS_APPROVED,
        parameter_count=2,
        content=bpb.TemplateContent(
            header="Shipping update",
            body=RECORD.body,
            footer="Reply STOP to opt out",
            buttons=["Track", "Help"],
        ),
    )
    assert TemplateRecord.from_proto(proto) == RECORD
    envelope = mpb.Envelope(
        business=mpb.BusinessMetadata(
            category=UTILITY, template_id=TEMPLATE_ID, template_name="order_shipped"
        )
    )
    assert EnvelopeLabel.from_proto(envelope) == LABEL
    assert category_name(99) == "unknown (99)"
