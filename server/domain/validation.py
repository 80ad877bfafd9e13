"""Input checks shared by every domain service; each failure says how to fix the input."""

from __future__ import annotations

import re
import unicodedata
import uuid
from collections.abc import Collection

import phonenumbers

from server.domain.errors import InvalidArgument

MAX_NAME_CHARS = 64
# E.164: '+', a country code that does not start with 0, at most 15 digits in all.
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")


def phone_number(value: str, *, field: str = "phone_number", allow: Collection[str] = ()) -> str:
    """Return the E.164 form of `value`, or raise InvalidArgument.

    Numbers in `allow` (operator-configured test numbers) need only be well-formed E.164, so
    demo numbers such as +1 555 01xx work although no carrier serves them.
    """
    if not value:
        raise InvalidArgument(f"{field} is required, in E.164 form such as +14155550123")
    if not _E164.fullmatch(value):
        shown = value if len(value) <= 32 else value[:32] + "…"
        raise InvalidArgument(
            f"{field} {shown!r} is not in E.164 form: + then the country code and number, "
            "digits only, at most 15, e.g. +14155550123"
        )
    try:
        parsed = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException as exc:
        raise InvalidArgument(f"{field} {value!r} is not a phone number: {exc}") from None
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    if e164 in allow:
        return e164
    if not phonenumbers.is_valid_number(parsed):
        raise InvalidArgument(
            f"{field} {value!r} is not a valid number in any numbering plan; check the country "
            "code and the number of digits"
        )
    return e164


def country_of(e164: str) -> str:
    """ISO 3166 region of a number ("US", "DE"), or "ZZ" when unknown (e.g. test numbers)."""
    region = phonenumbers.region_code_for_number(phonenumbers.parse(e164, None))
    return region or "ZZ"


def uuid_string(value: str, *, field: str) -> str:
    """The canonical (lowercase, hyphenated) form of a UUID."""
    if _CANONICAL_UUID.fullmatch(value):  # the usual case, without building a UUID object
        return value
    if not value:
        raise InvalidArgument(f"{field} is required")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidArgument(
            f"{field} {value[:64]!r} is not a UUID like 3f2c1a9e-8b4d-4c1e-9f7a-2b6d5e4c3a10"
        ) from None


def display_name(value: str, *, field: str) -> str:
    """A short human-readable name: 1-64 characters, no control characters."""
    value = value.strip()
    if not value:
        raise InvalidArgument(f"{field} is required (1-{MAX_NAME_CHARS} characters)")
    if len(value) > MAX_NAME_CHARS:
        raise InvalidArgument(
            f"{field} is {len(value)} characters long; at most {MAX_NAME_CHARS} are allowed"
        )
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn") for ch in value):
        raise InvalidArgument(f"{field} must not contain control or unassigned characters")
    return value


def digits(value: str, *, field: str, length: int) -> str:
    if len(value) != length or not value.isascii() or not value.isdigit():
        raise InvalidArgument(f"{field} must be exactly {length} digits")
    return value


def device_id(value: int, *, field: str = "device_id") -> int:
    if value <= 0:
        raise InvalidArgument(f"{field} is required (device ids start at 1)")
    return value
