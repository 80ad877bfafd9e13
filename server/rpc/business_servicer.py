"""BusinessService: one servicer assembled from one mixin per area (consent here)."""

from __future__ import annotations

from parley.v1 import business_pb2_grpc

from server.domain.consent import ConsentBook
from server.rpc.consent_rpcs import ConsentRpcs


class BusinessServicer(ConsentRpcs, business_pb2_grpc.BusinessServiceServicer):
    def __init__(self, *, consent: ConsentBook) -> None:
        self._consent = consent
