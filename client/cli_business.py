"""``parley business ...`` and ``parley admin ...``: business profiles, templates and the
operator's reviews, as sub-commands of the ``parley`` CLI (:mod:`client.cli`).

``parley business profile show [WHO]`` / ``update --name ...`` and ``parley business templates
create|list|show|pause|unpause`` act as the profile's device (a BUSINESS account for all but
reading). ``parley admin pending|approve-name|reject-name|approve-template|reject-template``
act as the operator with ``--admin-token`` (env ``PARLEY_ADMIN_TOKEN``), over the profile's
server connection (``--server``, ``--tls``, ``--ca-file``), and need no registered profile.
Output is for people by default, one JSON object per line with ``--json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Awaitable, Callable
from typing import Any, Final, TextIO

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from parley.v1 import business_pb2 as bpb
from parley.v1 import messaging_pb2 as mpb

from client.api import ParleyClient, RejectedTemplateMessage, RenderedTemplateMessage
from client.business_api import CATEGORIES, VERTICALS, AdminCalls
from client.errors import NotFound

Handler = Callable[[ParleyClient, argparse.Namespace, TextIO], Awaitable[None]]
STATUS: Final = {
    bpb.REVIEW_STATUS_PENDING: "pending review",
    bpb.REVIEW_STATUS_APPROVED: "approved",
    bpb.REVIEW_STATUS_REJECTED: "rejected",
}


def add_parsers(sub: Any, json_flag: argparse.ArgumentParser) -> Any:
    """Add ``business`` and ``admin`` to the CLI's sub-command parsers; return the ``business``
    group's sub-parsers, where other modules add areas of their own (see `run_business`)."""
    business = sub.add_parser(
        "business", help="business profile and message templates (a business account)"
    )
    areas = business.add_subparsers(dest="area", required=True, metavar="AREA")

    profile = areas.add_parser("profile", help="show or update a business profile")
    actions = profile.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = actions.add_parser("show", parents=[json_flag], help="show a business's profile")
    p.add_argument("who", nargs="?", help="phone number (+...) or account id [default: yours]")
    p = actions.add_parser(
        "update",
        parents=[json_flag],
        help="change your profile (only the fields given; a new name goes to review)",
    )
    p.add_argument("--name", help="display name, 1-64 characters (reviewed by the operator)")
    p.add_argument("--about", help="one line, at most 139 characters")
    p.add_argument("--description", help="at most 512 characters")
    p.add_argument("--address", help="postal address")
    p.add_argument("--email", help="contact e-mail address")
    p.add_argument(
        "--website",
        action="append",
        help="http(s) URL; repeat for a second one (replaces the current ones)",
    )
    p.add_argument("--vertical", choices=sorted(VERTICALS), help="line of business")

    templates = areas.add_parser("templates", help="create, list, show, pause message templates")
    actions = templates.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = actions.add_parser("create", parents=[json_flag], help="submit a template for review")
    p.add_argument("name", help="lowercase letters, digits and _, e.g. order_shipped")
    p.add_argument("--language", default="en", help="language tag, e.g. en or pt_BR [en]")
    p.add_argument("--category", required=True, choices=sorted(CATEGORIES))
    p.add_argument("--body", required=True, help="the text, with parameters {{1}}, {{2}}...")
    p.add_argument("--header", default="", help="optional, at most 60 characters")
    p.add_argument("--footer", default="", help="optional, at most 60 characters")
    p.add_argument(
        "--button", action="append", default=[], help="quick-reply label (repeatable, ≤ 10)"
    )
    actions.add_parser("list", parents=[json_flag], help="your templates, in every state")
    p = actions.add_parser(
        "show", parents=[json_flag], help="one template: by id, or --business, NAME, --language"
    )
    p.add_argument("template", help="template id, or its name with --business")
    p.add_argument("--business", help="phone number (+...) or account id of the business")
    p.add_argument("--language", default="en", help="with --business: the language [en]")
    for action in ("pause", "unpause"):
        p = actions.add_parser(action, parents=[json_flag], help=f"{action} an approved template")
        p.add_argument("template", help="template id")
    _add_send_template(areas, json_flag)

    admin = sub.add_parser(
        "admin",
        help="the operator's reviews, top-ups and price tables (needs --admin-token)",
    )
    actions = admin.add_subparsers(dest="action", required=True, metavar="ACTION")
    token = argparse.ArgumentParser(add_help=False)
    token.add_argument(
        "--admin-token",
        default=os.environ.get("PARLEY_ADMIN_TOKEN"),
        help="the server's --admin-token [env PARLEY_ADMIN_TOKEN]",
    )
    actions.add_parser("pending", parents=[json_flag, token], help="what waits for review")
    for verb, what, arg in (
        ("approve-name", "a business's display name", "account"),
        ("reject-name", "a business's display name", "account"),
        ("approve-template", "a template", "template"),
        ("reject-template", "a template", "template"),
    ):
        p = actions.add_parser(
            verb, parents=[json_flag, token], help=f"{verb.split('-')[0]} {what}"
        )
        p.add_argument(arg, help="account id" if arg == "account" else "template id")
        p.add_argument(
            "--reason",
            default="",
            required=verb.startswith("reject"),
            help="why (required to reject; the business sees it)",
        )
    from client import cli_billing  # it imports this module

    cli_billing.add_admin_parsers(actions, json_flag, token)
    return areas


# --- output ---------------------------------------------------------------------------------


def _data(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


def _emit(args: argparse.Namespace, human: str, message: Message, out: TextIO) -> None:
    from client.cli import _emit as emit  # client.cli imports this module

    emit(args, human, _data(message), out)


def _profile_text(p: bpb.BusinessProfile) -> str:
    f = p.fields
    mark = "✓ verified" if p.name_verified else "not verified"
    lines = [f"{f.display_name} ({mark}) — account {p.account_id}"]
    if p.HasField("name_review"):
        r = p.name_review
        review = f"name {r.display_name!r}: {STATUS.get(r.status, 'unknown')}"
        lines.append(review + (f" — {r.reason}" if r.reason else ""))
    for label, value in (
        ("about", f.about),
        ("description", f.description),
        ("address", f.address),
        ("email", f.email),
        ("websites", ", ".join(f.websites)),
        ("vertical", bpb.BusinessVertical.Name(f.vertical).removeprefix("BUSINESS_VERTICAL_")),
    ):
        if value and value != "UNSPECIFIED":
            lines.append(f"  {label}: {value}")
    return "\n".join(lines)


def _template_text(t: bpb.Template) -> str:
    category = mpb.MessageCategory.Name(t.category).removeprefix("MESSAGE_CATEGORY_").lower()
    state = STATUS.get(t.status, "unknown")
    if t.reason:
        state += f" ({t.reason})"
    if t.paused:
        state += f", paused by {t.pause_reason}"
    lines = [f"{t.name} [{t.language}, {category}] {state} — id {t.template_id}"]
    c = t.content
    for label, value in (("header", c.header), ("body", c.body), ("footer", c.footer)):
        if value:
            lines.append(f"  {label}: {value}")
    if c.buttons:
        lines.append(f"  buttons: {' | '.join(c.buttons)}")
    return "\n".join(lines)


# --- business ---------------------------------------------------------------------------------


async def _profile_show(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    account = await client.resolve(args.who) if args.who else client.account_id
    profile = await client.business.profile(account)
    _emit(args, _profile_text(profile), profile, out)


async def _profile_update(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    try:
        current = await client.business.profile(client.account_id)
        fields = bpb.BusinessProfileFields()
        fields.CopyFrom(current.fields)
        fields.display_name = current.name_review.display_name or current.fields.display_name
    except NotFound:  # no profile yet: this update creates it
        fields = bpb.BusinessProfileFields()
    for option in ("name", "about", "description", "address", "email"):
        value = getattr(args, option)
        if value is not None:
            setattr(fields, "display_name" if option == "name" else option, value)
    if args.website is not None:
        fields.ClearField("websites")
        fields.websites.extend(w for w in args.website if w)
    if args.vertical is not None:
        fields.vertical = VERTICALS[args.vertical]
    profile = await client.business.update_profile(fields)
    _emit(args, _profile_text(profile), profile, out)


async def _template_create(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    template = await client.business.create_template(
        args.name,
        args.language,
        CATEGORIES[args.category],
        args.body,
        header=args.header,
        footer=args.footer,
        buttons=args.button,
    )
    _emit(args, _template_text(template), template, out)


async def _template_list(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    for template in await client.business.templates():
        _emit(args, _template_text(template), template, out)


async def _template_show(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    if args.business:
        business = await client.resolve(args.business)
        template = await client.business.template(
            business_account_id=business, name=args.template, language=args.language
        )
    else:
        template = await client.business.template(args.template)
    _emit(args, _template_text(template), template, out)


async def _template_pause(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    pause = args.action == "pause"
    call = client.business.pause_template if pause else client.business.unpause_template
    template = await call(args.template)
    _emit(args, _template_text(template), template, out)


BUSINESS: Final[dict[tuple[str, str], Handler]] = {
    ("profile", "show"): _profile_show,
    ("profile", "update"): _profile_update,
    ("templates", "create"): _template_create,
    ("templates", "list"): _template_list,
    ("templates", "show"): _template_show,
    ("templates", "pause"): _template_pause,
    ("templates", "unpause"): _template_pause,
}


async def run_business(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    # Areas without actions, each added by the module that owns it: `record-opt-in`
    # (cli_consent), `window` and `status` (cli_sending), `agents`, `queue`, `claim`,
    # `transfer` and `close` (cli_support), `send-template` (below), `balance`, `usage`,
    # `invoice`, `events` and `quote` (cli_billing).
    from client import cli_billing, cli_consent, cli_sending, cli_support

    for commands in (
        cli_billing.BUSINESS_COMMANDS,
        cli_consent.BUSINESS_COMMANDS,
        cli_sending.BUSINESS_COMMANDS,
        cli_support.BUSINESS_COMMANDS,
        SEND_COMMANDS,
    ):
        if args.area in commands:
            await commands[args.area](client, args, out)
            return
    await BUSINESS[(args.area, args.action)](client, args, out)


# --- send-template ----------------------------------------------------------------------------
# `parley business send-template`: a message made from an approved template (client.templates
# says what the recipient's client checks before it shows one).


def _add_send_template(areas: Any, json_flag: argparse.ArgumentParser) -> None:
    p = areas.add_parser(
        "send-template",
        parents=[json_flag],
        help="send a message made from one of your approved templates",
    )
    p.add_argument("to", metavar="NUMBER", help="phone number (+...) or account id")
    p.add_argument("template", metavar="TEMPLATE", help="template id, or its name with --language")
    p.add_argument(
        "--language", default="", help="with a template name: its language, e.g. en or pt_BR"
    )
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="VALUE",
        help="the value of {{1}}, then {{2}}... (repeat, in order; one line, ≤ 256 characters)",
    )


async def _send_template(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    sent = await client.send_template(args.to, args.template, args.param, language=args.language)
    devices = ", ".join(str(d) for d in sent.device_ids)
    from client.cli import _emit as emit  # client.cli imports this module

    emit(
        args,
        f"sent template {args.template} to {client.display_name(sent.recipient_account_id)}"
        f" (devices {devices})",
        dataclasses.asdict(sent),
        out,
    )


SEND_COMMANDS: Final[dict[str, Handler]] = {"send-template": _send_template}


def template_event_text(
    client: ParleyClient,
    event: RenderedTemplateMessage | RejectedTemplateMessage,
    when: Callable[[float], str],
) -> str:
    """How ``parley listen`` shows a template message: who sent it (the verified business name
    first, when there is one), the category and template, then the rendered text indented;
    or, for a refused one, that it is not shown and why."""
    at = when(event.server_time or event.timestamp_ms / 1000)
    who = client.display_name(event.sender_account_id)
    if isinstance(event, RejectedTemplateMessage):
        claimed = f" claiming category {event.category}" if event.category else ""
        return (
            f"[{at}] REFUSED a business message from {who} (device {event.sender_device_id})"
            f"{claimed}, not shown: {event.reason}: {event.detail}"
        )
    sender = f"{event.business_name} ✓ ({who})" if event.business_name else who
    lines = [
        f"[{at}] {sender} (device {event.sender_device_id}), {event.category} template"
        f" {event.template_name} [{event.language}]:"
    ]
    lines.extend(f"  {line}" for line in event.text.splitlines())
    return "\n".join(lines)


# --- admin ------------------------------------------------------------------------------------


def _admin(client: ParleyClient, args: argparse.Namespace) -> AdminCalls:
    from client.cli import CliError  # client.cli imports this module

    if not args.admin_token:
        raise CliError(
            "operator commands need the server's admin token: pass --admin-token TOKEN or set "
            "PARLEY_ADMIN_TOKEN"
        )
    return client.admin(args.admin_token)


async def run_admin(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    from client.cli_billing import ADMIN_COMMANDS  # top-up, prices set

    if args.action in ADMIN_COMMANDS:
        await ADMIN_COMMANDS[args.action](client, args, out)
        return
    admin = _admin(client, args)
    if args.action == "pending":
        pending = await admin.pending()
        for profile in pending.names:
            _emit(args, "name: " + _profile_text(profile), profile, out)
        for template in pending.templates:
            _emit(args, "template: " + _template_text(template), template, out)
        if not args.json and not pending.names and not pending.templates:
            out.write("nothing waits for review\n")
        return
    approve = args.action.startswith("approve")
    if args.action.endswith("name"):
        profile = await admin.review_name(args.account, approve, args.reason)
        _emit(args, _profile_text(profile), profile, out)
    else:
        template = await admin.review_template(args.template, approve, args.reason)
        _emit(args, _template_text(template), template, out)


COMMANDS: Final[dict[str, Handler]] = {"business": run_business, "admin": run_admin}
