"""The cloud worker process: gRPC server, health, reflection, metrics, lifecycle.

Start-up order matters for orchestrators: the port is bound and health answers
NOT_SERVING *before* the model loads (seconds to minutes), then SERVING. On
shutdown health turns NOT_SERVING first (optionally for ``drain_s`` so load
balancers move traffic away), then the server stops accepting calls and gives
in-flight ones ``grace_s`` to finish, and only then does the batcher stop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from pasu.cloud.auth import BearerTokenInterceptor
from pasu.cloud.batcher import Batcher
from pasu.cloud.config import WorkerConfig
from pasu.cloud.metrics import WorkerMetrics
from pasu.cloud.service import SERVICE_NAME, SpeechService, WorkerState
from pasu.cloud.wire import add_speech_service
from pasu.models import LoadedModel, load_model, token_list_id
from pasu.v1 import hypothesis_pb2

log = logging.getLogger(__name__)

ModelSource = str | Path | Callable[[], LoadedModel] | LoadedModel
HEALTH_NAMES = ("", SERVICE_NAME)
LOADER_JOIN_S = 120.0  # how long stop() lets a model load in progress finish


def server_credentials(config: WorkerConfig) -> grpc.ServerCredentials:
    """TLS credentials; with a client CA, clients must present a certificate it signed."""
    assert config.tls_cert is not None and config.tls_key is not None
    key = Path(config.tls_key).read_bytes()
    cert = Path(config.tls_cert).read_bytes()
    ca = Path(config.tls_client_ca).read_bytes() if config.tls_client_ca else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


class CloudWorker:
    """One worker: ``start()`` binds and returns the port; the model loads in the background."""

    def __init__(self, config: WorkerConfig, model: ModelSource) -> None:
        self.config = config
        self._model_source = model
        self.metrics = WorkerMetrics()
        self.service = SpeechService(config, self.metrics)
        self.health = health.HealthServicer(
            experimental_non_blocking=True, experimental_thread_pool=ThreadPoolExecutor(max_workers=1)
        )
        self.server: grpc.Server | None = None
        self.batcher: Batcher | None = None
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.load_error: BaseException | None = None
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self._loader: threading.Thread | None = None

    # -- start -----------------------------------------------------------
    def start(self, wait: bool = False, timeout: float | None = None) -> int:
        """Bind, serve health (NOT_SERVING) and load the model; returns the gRPC port."""
        cfg = self.config
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if cfg.metrics_port is not None:
            self.metrics_port = self.metrics.serve(cfg.metrics_port, cfg.host)
        interceptors: list[grpc.ServerInterceptor] = []
        if cfg.bearer_tokens:
            interceptors.append(BearerTokenInterceptor(cfg.bearer_tokens))
        server = grpc.server(
            ThreadPoolExecutor(max_workers=cfg.max_workers, thread_name_prefix="pasu-grpc"),
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", cfg.grpc_receive_limit),
                ("grpc.max_send_message_length", cfg.grpc_receive_limit),
                ("grpc.so_reuseport", 0),  # two workers on one port is a mistake, not a feature
            ],
        )
        add_speech_service(self.service, server)  # requests that do not parse: INVALID_ARGUMENT
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server,
        )
        address = f"{cfg.host}:{cfg.port}"
        if cfg.tls:
            port = server.add_secure_port(address, server_credentials(cfg))
        else:
            port = server.add_insecure_port(address)
        if port == 0:
            raise OSError(f"cannot bind {address}")
        server.start()
        self.server, self.port = server, port
        log.info(
            "listening",
            extra={
                "address": f"{cfg.host}:{port}",
                "tls": cfg.tls,
                "mtls": cfg.tls_client_ca is not None,
                "auth": bool(cfg.bearer_tokens),
            },
        )
        self._loader = threading.Thread(target=self._load, name="pasu-model-load", daemon=True)
        self._loader.start()
        if wait:
            self.wait_ready(timeout)
        return port

    def _set_health(self, status) -> None:
        for name in HEALTH_NAMES:
            self.health.set(name, status)

    def _load(self) -> None:
        try:
            t = time.monotonic()
            src = self._model_source
            if isinstance(src, LoadedModel):
                model = src
            elif callable(src):
                model = src()
            else:
                model = load_model(src, self.config.device)
            if self.config.lm_weight > 0 and model.lm is None:
                raise ValueError(f"lm_weight {self.config.lm_weight} but {model.name} came with no LM (its lm/ folder)")
            batcher = Batcher(model, self.config, self.metrics)
            batcher.start()
            tid = token_list_id(model.token_list)
            info = hypothesis_pb2.ModelInfo(name=model.name, version=model.version, token_list_id=tid)
            with self._stop_lock:
                if self._stopped.is_set():
                    batcher.stop()
                    return
                self.batcher = batcher
                self.service.state = WorkerState(model=model, batcher=batcher, model_info=info, token_list_id=tid)
                self._set_health(health_pb2.HealthCheckResponse.SERVING)
            log.info(
                "model ready",
                extra={"model": model.name, "version": model.version, "load_s": round(time.monotonic() - t, 3)},
            )
        except BaseException as e:  # stays NOT_SERVING; wait_ready() re-raises
            self.load_error = e
            log.exception("model failed to load")
        finally:
            self._ready.set()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the model is loaded; raise if loading failed or took too long."""
        if not self._ready.wait(timeout):
            raise TimeoutError(f"model not loaded after {timeout} s")
        if self.load_error is not None:
            raise RuntimeError(f"model failed to load: {self.load_error}") from self.load_error

    # -- stop ------------------------------------------------------------
    def stop(self, grace: float | None = None, drain: float | None = None) -> None:
        """Graceful shutdown: NOT_SERVING, (drain), stop accepting, finish in-flight calls."""
        grace = self.config.grace_s if grace is None else grace
        drain = self.config.drain_s if drain is None else drain
        with self._stop_lock:
            if self._stopped.is_set():
                return
            self._stopped.set()
        log.info("draining", extra={"grace_s": grace, "drain_s": drain})
        self.health.enter_graceful_shutdown()
        if drain > 0:
            time.sleep(drain)
        if self.server is not None:
            self.server.stop(grace).wait()
        if self._loader is not None and self._loader is not threading.current_thread():
            # A process that exits while the loader is inside torch's C++ code aborts
            # (glibc: "FATAL: exception not rethrown", exit -6 on SIGTERM). Let a load
            # in progress finish: it then sees _stopped and stops its own batcher.
            self._loader.join(timeout=LOADER_JOIN_S)
            if self._loader.is_alive():
                log.warning("model still loading after %.0f s; stopping anyway", LOADER_JOIN_S)
        if self.batcher is not None:
            self.batcher.stop(timeout=grace + 5)
        self.metrics.stop()
        log.info("stopped")

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)
