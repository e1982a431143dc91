"""The gRPC boundary: thin servicers (one module per service) mapping protos to
:mod:`vaultsvc.vault` and back, the interceptor every call passes through, and the one
table turning domain errors into ``google.rpc.Status``."""
