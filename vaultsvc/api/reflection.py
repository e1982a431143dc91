"""Server reflection ``grpc.reflection.v1`` besides ``v1alpha``.

grpcio-reflection only ships ``v1alpha``. The two protocols have the same messages under
another package name, so ``v1`` is served by the same servicer: its descriptor (the
``v1alpha`` file renamed) is added to the default pool so it can be reflected on too, and
its calls are (de)serialized with the ``v1alpha`` classes, identical on the wire.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer

V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
_ALPHA_PACKAGE = "grpc.reflection.v1alpha"
_V1_PACKAGE = "grpc.reflection.v1"


def _register_v1_descriptor() -> None:
    pool = descriptor_pool.Default()
    try:
        pool.FindServiceByName(V1_SERVICE_NAME)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = "grpc/reflection/v1/reflection.proto"
    proto.package = _V1_PACKAGE
    proto.options.Clear()
    prefix, renamed = f".{_ALPHA_PACKAGE}.", f".{_V1_PACKAGE}."
    for message in proto.message_type:
        for field in message.field:
            if field.type_name.startswith(prefix):
                field.type_name = renamed + field.type_name[len(prefix) :]
    for service in proto.service:
        for method in service.method:
            method.input_type = renamed + method.input_type[len(prefix) :]
            method.output_type = renamed + method.output_type[len(prefix) :]
    pool.Add(proto)


def enable_reflection(service_names: Iterable[str], server: Any) -> None:
    """Reflection v1alpha and v1 for ``service_names`` (both reflection services added)."""
    _register_v1_descriptor()
    names = (*service_names, reflection.SERVICE_NAME, V1_SERVICE_NAME)
    servicer = ReflectionServicer(names)  # the asyncio servicer, for both versions
    # Added directly (not via reflection.enable_server_reflection, which picks the
    # servicer by the server's class: the vault passes a registration adapter).
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                V1_SERVICE_NAME,
                {
                    "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                        servicer.ServerReflectionInfo,
                        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
                    )
                },
            ),
        )
    )
