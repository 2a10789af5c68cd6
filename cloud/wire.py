"""Registering SpeechService with a deserializer that cannot fail.

grpcio's generated registration parses requests before the servicer runs; bytes
that are not a protobuf message then get grpcio's own ``INTERNAL "Exception
deserializing request!"``. Here a request that does not parse becomes an
:class:`Undecodable` marker, and the servicer answers it ``INVALID_ARGUMENT``
with a message that says what was wrong, like every other bad input.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError

from pasu.v1 import speech_service_pb2 as pb

SERVICE = "pasu.v1.SpeechService"


@dataclass(frozen=True)
class Undecodable:
    """A request whose bytes are not a valid message of ``type_name``."""

    type_name: str
    error: str
    request_id: str = ""  # so code that reads the id first still works

    def ByteSize(self) -> int:  # noqa: N802 (protobuf's name)
        return 0


def _parser(cls):
    def parse(data: bytes):
        try:
            return cls.FromString(data)
        except (DecodeError, ValueError, RuntimeError) as e:
            return Undecodable(cls.DESCRIPTOR.full_name, str(e) or type(e).__name__)

    return parse


def add_speech_service(servicer, server: grpc.Server) -> None:
    """``add_SpeechServiceServicer_to_server``, with the safe request parser."""
    handlers = {
        "Offload": grpc.stream_unary_rpc_method_handler(
            servicer.Offload,
            request_deserializer=_parser(pb.OffloadRequest),
            response_serializer=pb.OffloadResponse.SerializeToString,
        ),
        "Recognize": grpc.unary_unary_rpc_method_handler(
            servicer.Recognize,
            request_deserializer=_parser(pb.RecognizeRequest),
            response_serializer=pb.RecognizeResponse.SerializeToString,
        ),
        "StreamingRecognize": grpc.stream_stream_rpc_method_handler(
            servicer.StreamingRecognize,
            request_deserializer=_parser(pb.StreamingRecognizeRequest),
            response_serializer=pb.StreamingRecognizeResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
