#!/usr/bin/env python3
"""gRPC health probe for the pasu cloud worker (``grpc.health.v1.Health/Check``).

A stand-in for the ``grpc_health_probe`` binary, with nothing but grpcio and
grpcio-health-checking (both already in the image): Docker's HEALTHCHECK,
Compose and Kubernetes exec probes (when the port speaks TLS, which the
kubelet's native gRPC probe cannot) run it.

Exit status: 0 SERVING; 1 anything else (NOT_SERVING while the model loads or
the worker drains, UNKNOWN service, connection refused, timeout); 2 bad usage.

Every flag has an environment default (``PASU_HEALTH_*``) because Kubernetes
does not expand ``$(VAR)`` in exec probe commands. Health checks need no bearer
token (the worker exempts them), but a mutual-TLS port needs a client
certificate (``--tls-cert``/``--tls-key``).
"""

from __future__ import annotations

import argparse
import os
import sys

DEFAULT_SERVICE = "pasu.v1.SpeechService"  # "" asks about the whole server


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"PASU_HEALTH_{name}", default)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pasu-healthcheck", description=__doc__.split("\n\n")[0])
    p.add_argument("--addr", default=_env("ADDR", "127.0.0.1:50051"), help="HOST:PORT (env PASU_HEALTH_ADDR)")
    p.add_argument(
        "--service",
        default=_env("SERVICE", DEFAULT_SERVICE),
        help=f"health service name (default {DEFAULT_SERVICE!r}; '' = the server)",
    )
    p.add_argument("--timeout", type=float, default=float(_env("TIMEOUT", "3")), help="seconds (default 3)")
    p.add_argument(
        "--tls",
        action="store_true",
        default=_env("TLS", "") not in ("", "0", "false"),
        help="use TLS (implied by --tls-ca)",
    )
    p.add_argument("--tls-ca", default=_env("TLS_CA"), help="CA certificate (PEM) that signed the server's")
    p.add_argument("--tls-cert", default=_env("TLS_CERT"), help="client certificate (PEM), for mutual TLS")
    p.add_argument("--tls-key", default=_env("TLS_KEY"), help="client key (PEM), for mutual TLS")
    p.add_argument(
        "--tls-server-name",
        default=_env("TLS_SERVER_NAME"),
        help="name to verify in the server certificate (default: the host of --addr)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    return p.parse_args(argv)


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


def check(args: argparse.Namespace) -> tuple[int, str]:
    """(exit status, one-line message)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    options = [("grpc.enable_retries", 0)]
    if args.tls or args.tls_ca:
        if bool(args.tls_cert) != bool(args.tls_key):
            return 2, "--tls-cert and --tls-key go together"
        try:
            creds = grpc.ssl_channel_credentials(
                root_certificates=_read(args.tls_ca),
                private_key=_read(args.tls_key),
                certificate_chain=_read(args.tls_cert),
            )
        except OSError as e:
            return 2, f"cannot read a TLS file: {e}"
        if args.tls_server_name:
            options.append(("grpc.ssl_target_name_override", args.tls_server_name))
        channel = grpc.secure_channel(args.addr, creds, options=options)
    else:
        channel = grpc.insecure_channel(args.addr, options=options)
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
        )
    except grpc.RpcError as e:
        return 1, f"{args.addr} service={args.service!r}: {e.code().name}: {e.details()}"
    finally:
        channel.close()
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    ok = reply.status == health_pb2.HealthCheckResponse.SERVING
    return (0 if ok else 1), f"{args.addr} service={args.service!r}: {name}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    status, message = check(args)
    if not args.quiet:
        print(message, file=sys.stdout if status == 0 else sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
