"""Bearer-token authentication as a gRPC server interceptor.

Tokens are compared in constant time and never logged. Health checks are
exempt: load balancers and orchestrators probe them without credentials.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable

import grpc

log = logging.getLogger(__name__)

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)


def _abort_handler(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that answers UNAUTHENTICATED."""

    def deny(request, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kw = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny, **kw)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny, **kw)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny, **kw)
    return grpc.unary_unary_rpc_method_handler(deny, **kw)


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Requires ``authorization: Bearer <token>`` with one of ``tokens``."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._tokens = [t.encode() for t in tokens]
        if not self._tokens:
            raise ValueError("BearerTokenInterceptor needs at least one token")

    def _check(self, metadata) -> str | None:
        """None if authorized, else why not (without the token)."""
        values = [v for k, v in (metadata or ()) if k == "authorization"]
        if not values:
            return "missing 'authorization: Bearer <token>' metadata"
        scheme, _, token = str(values[0]).partition(" ")
        if scheme.lower() != "bearer" or not token:
            return "the authorization metadata must be 'Bearer <token>'"
        given = token.strip().encode()
        ok = False
        for t in self._tokens:  # compare with all, in constant time each
            ok |= hmac.compare_digest(given, t)
        return None if ok else "invalid bearer token"

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method.startswith(EXEMPT_PREFIXES):
            return continuation(handler_call_details)
        why = self._check(handler_call_details.invocation_metadata)
        if why is None:
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        log.warning("unauthenticated call", extra={"rpc": method, "reason": why})
        return _abort_handler(handler, why)
