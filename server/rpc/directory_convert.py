"""Proto <-> domain conversions for business profiles and templates (Business/AdminService)."""

from __future__ import annotations

from parley.v1 import business_pb2 as bpb
from parley.v1 import messaging_pb2

from server.domain.directory_model import ProfileFields, TemplateContent, TemplateRow
from server.domain.profiles import ProfileView, fields_from
from server.rpc.convert import timestamp


def profile_fields_from_proto(f: bpb.BusinessProfileFields) -> ProfileFields:
    return fields_from(
        f.display_name, f.about, f.description, f.address, f.email, f.websites, f.vertical
    )


def profile_to_proto(v: ProfileView) -> bpb.BusinessProfile:
    f = v.row.fields
    out = bpb.BusinessProfile(
        account_id=v.row.account_id,
        fields=bpb.BusinessProfileFields(
            display_name=v.shown_name,
            about=f.about,
            description=f.description,
            address=f.address,
            email=f.email,
            websites=f.websites,
            vertical=int(f.vertical),  # type: ignore[arg-type]
        ),
        name_verified=v.name_verified,
        updated_at=timestamp(v.row.updated_at),
    )
    if v.with_review:
        out.name_review.CopyFrom(
            bpb.NameReview(
                display_name=f.display_name,
                status=int(v.row.name_status),  # type: ignore[arg-type]
                reason=v.row.name_reason,
                submitted_at=timestamp(v.row.name_submitted_at),
            )
        )
    return out


def content_from_proto(c: bpb.TemplateContent) -> TemplateContent:
    return TemplateContent(c.header, c.body, c.footer, tuple(c.buttons))


def template_to_proto(t: TemplateRow) -> bpb.Template:
    out = bpb.Template(
        template_id=t.template_id,
        business_account_id=t.business_account_id,
        name=t.name,
        language=t.language,
        category=messaging_pb2.MessageCategory.ValueType(t.category),
        content=bpb.TemplateContent(
            header=t.content.header,
            body=t.content.body,
            footer=t.content.footer,
            buttons=t.content.buttons,
        ),
        status=int(t.status),  # type: ignore[arg-type]
        reason=t.reason,
        paused=t.paused,
        pause_reason=t.pause_reason,
        parameter_count=t.parameter_count,
        created_at=timestamp(t.created_at),
    )
    if t.reviewed_at is not None:
        out.reviewed_at.CopyFrom(timestamp(t.reviewed_at))
    return out
