"""Server settings: defaults, overridden by PARLEY_* environment variables, overridden by flags.

`OPTIONS` is the single table of settings; the argument parser is built from it and the README's
configuration table is checked against it by a test.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from server import watchdog
from server.domain.accounts import AccountPolicy
from server.domain.keys import KeyPolicy
from server.domain.messaging_policy import MessagingPolicy
from server.domain.ratelimit import Rate
from server.domain.sending import SendingPolicy, parse_tiers
from server.storage.backend import parse_database


def _test_numbers(text: str) -> dict[str, str]:
    """ "+15550001111=123456,+15550002222=654321" -> {number: code}."""
    out: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        number, sep, code = item.partition("=")
        if not sep:
            raise ValueError(f"test number {item!r} must look like +15550001111=123456")
        out[number.strip()] = code.strip()
    return out


def _public_url(text: str) -> str:
    url = text.strip().rstrip("/")
    if not (url.startswith("https://") or url.startswith("http://")) or " " in url:
        raise ValueError(f"{text!r} is not a base URL like https://chat.example.com")
    return url


def _http_port(text: str) -> int | None:
    """ "off" -> None (no HTTP listener), else a port (0 picks a free one)."""
    if text.strip().lower() == "off":
        return None
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError(f"{text!r} is not a port: use 0-65535, or off")
    return port


def _on_off(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("on", "off"):
        raise ValueError(f"{text!r} is not on or off")
    return value == "on"


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"{text!r} is not a log level; use one of {', '.join(LOG_LEVELS)}")
    return level


@dataclass(frozen=True)
class Settings:
    host: str = "localhost"
    port: int = 50051
    # A SQLite file (Path) or a PostgreSQL URL (str): server.storage.backend.
    database: Path | str = Path("parley.db")
    tls_cert: Path | None = None
    tls_key: Path | None = None
    test_numbers: Mapping[str, str] = field(default_factory=dict)
    log_level: str = "INFO"
    log_format: str = "json"
    # The account, key and messaging rules' defaults live in their policy classes, beside
    # their reasons.
    code_ttl: float = AccountPolicy.code_ttl
    verification_rate: Rate = AccountPolicy.verification_rate
    verification_ip_rate: Rate = AccountPolicy.verification_ip_rate
    verification_global_rate: Rate = AccountPolicy.verification_global_rate
    verification_attempt_ip_rate: Rate = AccountPolicy.verification_attempt_ip_rate
    lookup_rate: Rate = AccountPolicy.lookup_rate
    linking_code_ttl: float = AccountPolicy.linking_code_ttl
    max_devices: int = AccountPolicy.max_devices
    bundle_rate: Rate = KeyPolicy.bundle_rate
    bundle_pair_rate: Rate = KeyPolicy.bundle_pair_rate
    prekey_low_watermark: int = KeyPolicy.low_watermark
    max_envelope_bytes: int = MessagingPolicy.max_envelope_bytes
    max_devices_per_send: int = MessagingPolicy.max_devices_per_send
    max_batch: int = MessagingPolicy.max_batch
    send_rate: Rate = MessagingPolicy.send_rate
    envelope_ttl: float = MessagingPolicy.envelope_ttl
    idempotency_window: float = MessagingPolicy.idempotency_window
    # How often expired envelopes are swept: a minute past the TTL is close enough, and a
    # sweep of nothing costs one indexed read.
    expiry_interval: float = 60.0
    keepalive_interval: float = MessagingPolicy.keepalive_interval
    stream_buffer_bytes: int = MessagingPolicy.stream_buffer_bytes
    max_request_bytes: int = 16 * 1024 * 1024
    sqlite_synchronous: str = "FULL"
    max_database_mb: int = 0
    # What holds the server up longer than this is logged (server.watchdog, database rule 9).
    stall_warning_ms: int = round(watchdog.STALL_S * 1000)
    shutdown_grace: float = 5.0
    # The operator's bearer token for AdminService; None disables every admin RPC.
    admin_token: str | None = None
    # The sending rules of businesses (server.domain.sending, where the reasons are).
    business_tiers: tuple[int | None, ...] = SendingPolicy.tiers
    marketing_per_user: int = SendingPolicy.marketing_per_user
    business_send_rate: Rate = SendingPolicy.business_send_rate
    # Click-to-chat's landing pages (server.http): off unless asked for, since a gRPC-only
    # deployment should not open a second port it does not know about.
    http_port: int | None = None
    # The base of every chat link; "" means http://<host>:<bound HTTP port>, right for a test
    # and wrong behind a proxy, where the operator sets the public https:// address.
    public_url: str = ""
    # Metered delivery (server.domain.billing): on, a business pays for each message delivered
    # to a person from its prepaid balance; off, nothing is priced or reserved, for a
    # deployment that charges nobody.
    billing: bool = True
    # The operator's price table (TOML, the format of server/domain/default_prices.toml), read
    # and checked at start-up; None: the shipped table.
    price_file: Path | None = None

    def account_policy(self) -> AccountPolicy:
        return AccountPolicy(
            code_ttl=self.code_ttl,
            verification_rate=self.verification_rate,
            verification_ip_rate=self.verification_ip_rate,
            verification_global_rate=self.verification_global_rate,
            verification_attempt_ip_rate=self.verification_attempt_ip_rate,
            lookup_rate=self.lookup_rate,
            linking_code_ttl=self.linking_code_ttl,
            max_devices=self.max_devices,
            test_numbers=dict(self.test_numbers),
        )

    def messaging_policy(self) -> MessagingPolicy:
        return MessagingPolicy(
            max_envelope_bytes=self.max_envelope_bytes,
            max_devices_per_send=self.max_devices_per_send,
            max_batch=self.max_batch,
            send_rate=self.send_rate,
            envelope_ttl=self.envelope_ttl,
            idempotency_window=self.idempotency_window,
            keepalive_interval=self.keepalive_interval,
            stream_buffer_bytes=self.stream_buffer_bytes,
        )

    def sending_policy(self) -> SendingPolicy:
        return SendingPolicy(
            tiers=self.business_tiers,
            marketing_per_user=self.marketing_per_user,
            business_send_rate=self.business_send_rate,
        )

    def key_policy(self) -> KeyPolicy:
        return KeyPolicy(
            bundle_rate=self.bundle_rate,
            bundle_pair_rate=self.bundle_pair_rate,
            low_watermark=self.prekey_low_watermark,
        )

    @property
    def stall_warning_s(self) -> float:
        """`stall_warning_ms` in seconds, as the watchers take it (0: never)."""
        return self.stall_warning_ms / 1000


@dataclass(frozen=True)
class Option:
    name: str  # Settings field; flag is --name-with-dashes, env PARLEY_NAME
    parse: Callable[[str], Any]
    help: str
    repeatable: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "PARLEY_" + self.name.upper()


OPTIONS: tuple[Option, ...] = (
    Option("host", str, "interface to listen on (0.0.0.0 for all)"),
    Option("port", int, "TCP port; 0 picks a free one (the log says which)"),
    Option(
        "database",
        parse_database,
        "SQLite file (created) or postgresql://user@host/db URL; migrated on start",
    ),
    Option("tls_cert", Path, "PEM certificate chain; with --tls-key serves TLS"),
    Option("tls_key", Path, "PEM private key for --tls-cert"),
    Option(
        "test_numbers",
        _test_numbers,
        "demo number with a fixed code, NUMBER=CODE (flag repeatable; env comma-separated)",
        repeatable=True,
    ),
    Option("log_level", _log_level, "DEBUG, INFO, WARNING or ERROR"),
    Option("log_format", str.lower, "json (one object per line) or text"),
    Option("code_ttl", float, "seconds a verification code stays valid"),
    Option("verification_rate", Rate.parse, "verification codes per number, e.g. 5/h"),
    Option(
        "verification_ip_rate",
        Rate.parse,
        "verification codes per client address (IPv4 address or IPv6 /64), e.g. 20/h",
    ),
    Option(
        "verification_global_rate",
        Rate.parse,
        "verification codes the whole server sends, all clients together, e.g. 1000/h",
    ),
    Option(
        "verification_attempt_ip_rate",
        Rate.parse,
        "failed CompleteVerification attempts per client address, all numbers, e.g. 60/h",
    ),
    Option("lookup_rate", Rate.parse, "LookupAccount calls per account, e.g. 100/min"),
    Option("linking_code_ttl", float, "seconds a device-linking code stays valid"),
    Option("max_devices", int, "devices per account, the primary included"),
    Option("bundle_rate", Rate.parse, "GetPreKeyBundles calls per account, e.g. 600/min"),
    Option(
        "bundle_pair_rate",
        Rate.parse,
        "GetPreKeyBundles calls per (caller account, target account) pair, e.g. 30/h",
    ),
    Option(
        "prekey_low_watermark", int, "one-time keys left below which a device is told to upload"
    ),
    Option("max_envelope_bytes", int, "largest ciphertext per device in a send, in bytes"),
    Option("max_devices_per_send", int, "device ciphertexts in one send"),
    Option("max_batch", int, "sends per SendMessages call and ids per AcknowledgeMessages call"),
    Option("send_rate", Rate.parse, "messages a device may send, e.g. 6000/min (bursts too)"),
    Option("envelope_ttl", float, "seconds an undelivered envelope is kept before it fails"),
    Option(
        "idempotency_window",
        float,
        "seconds a send's request_id is remembered after the send: a retry within it gets the "
        "first answer",
    ),
    Option("expiry_interval", float, "seconds between sweeps for expired envelopes"),
    Option("keepalive_interval", float, "seconds of silence before a stream gets a keep-alive"),
    Option(
        "stream_buffer_bytes",
        int,
        "bytes of envelopes held in memory per connected device; past that it reads the database",
    ),
    Option("max_request_bytes", int, "largest request message accepted, in bytes"),
    Option("sqlite_synchronous", str.upper, "FULL (fsync every commit) or NORMAL"),
    Option(
        "stall_warning_ms",
        int,
        "log a WARNING when something holds the server up longer than this (a group commit, a"
        " checkpoint, the event loop, a garbage collection); 0: never",
    ),
    Option(
        "max_database_mb",
        int,
        "largest database file in MiB, 0 for no limit; past it sends get RESOURCE_EXHAUSTED "
        "while acknowledgements still free room",
    ),
    Option("shutdown_grace", float, "seconds in-flight calls get to finish on SIGTERM"),
    Option(
        "admin_token",
        str,
        "operator token for AdminService (reviews of business names and templates); unset "
        "disables every admin RPC. Use a long random secret, e.g. from `openssl rand -hex 32`",
    ),
    Option(
        "business_tiers",
        parse_tiers,
        "unique users a business may start conversations with per 24 h, step by step, e.g. "
        "250,2000,10000,100000,unlimited",
    ),
    Option("marketing_per_user", int, "marketing templates one business may send a user per 24 h"),
    Option("business_send_rate", Rate.parse, "messages one business may send, e.g. 80/s"),
    Option(
        "http_port",
        _http_port,
        "port of the click-to-chat landing pages (/c/CODE, /p/NUMBER, /healthz); 0 picks a "
        "free one; off (the default) serves no HTTP",
    ),
    Option(
        "public_url",
        _public_url,
        "base URL of chat links, e.g. https://chat.example.com; unset: http://HOST:HTTP-PORT",
    ),
    Option(
        "billing",
        _on_off,
        "on: businesses pay per message delivered to a person, from a prepaid balance; off: "
        "nothing is priced, reserved or charged",
    ),
    Option(
        "price_file",
        Path,
        "the price table (TOML, as server/domain/default_prices.toml), checked at start-up and "
        "in force from then on when it differs; unset: the shipped table",
    ),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="parley-server",
        description="Parley gRPC server. Every flag can also be set as PARLEY_<NAME>.",
    )
    defaults = Settings()
    for opt in OPTIONS:
        default = getattr(defaults, opt.name)
        parser.add_argument(
            opt.flag.replace("test-numbers", "test-number") if opt.repeatable else opt.flag,
            dest=opt.name,
            action="append" if opt.repeatable else "store",
            default=None,
            metavar=opt.env.removeprefix("PARLEY_"),
            help=f"{opt.help} [env {opt.env}; default {default!s}]",
        )
    return parser


def load(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from defaults < environment < command line; errors name the bad source."""
    environ = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    values: dict[str, Any] = {}
    for opt in OPTIONS:
        raw_env = environ.get(opt.env)
        raw_arg = getattr(args, opt.name)
        try:
            if raw_arg is not None:
                raw = ",".join(raw_arg) if opt.repeatable else raw_arg
                values[opt.name] = opt.parse(raw)
            elif raw_env is not None and raw_env != "":
                values[opt.name] = opt.parse(raw_env)
        except ValueError as exc:
            source = opt.flag if raw_arg is not None else opt.env
            raise SystemExit(f"parley-server: invalid {source}: {exc}") from None
    settings = replace(Settings(), **values)
    _check(settings)
    return settings


def _check(s: Settings) -> None:
    if (s.tls_cert is None) != (s.tls_key is None):
        raise SystemExit("parley-server: --tls-cert and --tls-key go together")
    if s.log_format not in ("json", "text"):
        raise SystemExit("parley-server: --log-format must be json or text")
    if s.sqlite_synchronous not in ("FULL", "NORMAL", "EXTRA"):
        raise SystemExit("parley-server: --sqlite-synchronous must be FULL, NORMAL or EXTRA")
    if not 0 <= s.port <= 65535:
        raise SystemExit("parley-server: --port must be between 0 and 65535")
    if s.http_port and s.http_port == s.port:
        raise SystemExit("parley-server: --http-port must differ from --port (gRPC)")
    if s.max_database_mb < 0:
        raise SystemExit("parley-server: --max-database-mb must be 0 (no limit) or more")
    if s.stall_warning_ms < 0:
        raise SystemExit("parley-server: --stall-warning-ms must be 0 (never) or more")
    if s.marketing_per_user < 1:
        raise SystemExit("parley-server: --marketing-per-user must be 1 or more")


def setting_names() -> list[str]:
    return [f.name for f in fields(Settings)]
