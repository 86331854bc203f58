"""A tiny OTLP/HTTP metrics receiver for tests: decodes each pushed protobuf request
(opentelemetry-proto) and keeps it, with the request's headers (names in lower case), for the test to read."""

from __future__ import annotations

import gzip
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

if TYPE_CHECKING:
    from collections.abc import Callable


class OtlpReceiver:
    """Listens on a free loopback port; ``endpoint`` is what an exporter is given."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], ExportMetricsServiceRequest]] = []
        self._arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportMetricsServiceRequest()
                request.ParseFromString(body)
                answer = ExportMetricsServiceResponse().SerializeToString()
                self.send_response(200 if self.path == "/v1/metrics" else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)
                with receiver._arrived:
                    receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, request))
                    receiver._arrived.notify_all()

            def log_message(self, *_args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def wait_for(
        self, condition: Callable[[ExportMetricsServiceRequest], bool], timeout: float = 30.0
    ) -> tuple[dict[str, str], ExportMetricsServiceRequest]:
        """The first request received (before or after the call) that satisfies ``condition``."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            seen = 0
            while True:
                for headers, request in self.requests[seen:]:
                    if condition(request):
                        return headers, request
                seen = len(self.requests)
                left = deadline - time.monotonic()
                if left <= 0 or not self._arrived.wait(left):
                    raise AssertionError(f"no matching OTLP request in {timeout}s ({seen} received)")


def metrics_of(request: ExportMetricsServiceRequest) -> dict[str, Any]:
    """Every metric of a request by name (the last one wins if two scopes share a name)."""
    return {
        metric.name: metric
        for resource in request.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }


def attributes(point: Any) -> dict[str, Any]:
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in point.attributes}


def resource_attributes(request: ExportMetricsServiceRequest) -> dict[str, Any]:
    return attributes(request.resource_metrics[0].resource)


class GrpcOtlpReceiver(OtlpReceiver):
    """The same over OTLP/gRPC (grpcio's server, the collector's own service definition)."""

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        import grpc
        from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc

        self.requests = []
        self._arrived = threading.Condition()
        receiver = self

        class Servicer(metrics_service_pb2_grpc.MetricsServiceServicer):
            def Export(self, request: ExportMetricsServiceRequest, context: Any) -> Any:  # noqa: N802 - the service method name
                with receiver._arrived:
                    metadata = {key.lower(): value for key, value in context.invocation_metadata()}
                    receiver.requests.append((metadata, request))
                    receiver._arrived.notify_all()
                return ExportMetricsServiceResponse()

        self._grpc = grpc.server(ThreadPoolExecutor(max_workers=2))
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Servicer(), self._grpc)
        self._port = self._grpc.add_insecure_port("127.0.0.1:0")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def __enter__(self) -> GrpcOtlpReceiver:
        self._grpc.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._grpc.stop(grace=None)
