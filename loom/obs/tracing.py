"""OpenTelemetry traces: off by default; with `[trace] endpoint`, spans go to an OTLP/HTTP
collector. This module owns how a Loom process traces; the node and the gateway call it.

One span per request on the node, named after its message type (SERVER kind), whose parent is
the caller's W3C `traceparent` when one came (an HTTP header, or the `traceparent` key of the
binary protocol's header map, parsed in loom/wire/codec.py), and whose steps are events, not
child spans, because an event is a list append where a span is an object, a context and an
export record:

    acl        the policy's decision (allowed)
    propose    handed to the log (a write), or `read` (a linearizable or stale read)
    applied    the log applied it (a write) or the read was served
    the end    `loom.result` (ok, denied, ...) and an ERROR status for a failure

Cost when off: nothing is built; the dispatcher tests one attribute (`call.span is None`) at
each step. When on, the SDK's BatchSpanProcessor owns a thread: `end()` appends to a bounded
queue (`max_queue`; beyond it spans are dropped, never waited for) and the thread exports, so
the trio loop never blocks on the collector.

The gateway makes one SERVER span per proxied request (`request_span`, loom/gateway/app.py) and
sends `traceparent_of(span)` upstream, so that the node's span is the gateway span's child.
`Tracing.outgoing()` gives a CLIENT span and its traceparent, for a caller that forwards a call
it did not receive.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()


@dataclass(frozen=True, slots=True)
class TraceSettings:
    endpoint: str  # the OTLP/HTTP traces URL ("http://collector:4318/v1/traces")
    service_name: str = "loomd"
    instance: str = ""  # service.instance.id: the node id, or the gateway's name
    sample_ratio: float = 1.0  # for requests without a parent; a parent's decision is kept
    max_queue: int = 2048
    export_timeout_s: float = 10.0
    schedule_delay_s: float = 1.0  # how often the export thread sends a batch


@dataclass(frozen=True, slots=True)
class TracingStatistics:
    spans_started: int  # request spans begun (sampled or not)
    spans_sampled: int  # of which recorded, and queued for export at their end


def parent_context(traceparent: str) -> Context | None:
    """The context a valid traceparent names, else None (a root span)."""
    if not traceparent:
        return None
    ctx = _PROPAGATOR.extract({"traceparent": traceparent})
    return ctx or None


def traceparent_of(span: Span) -> str:
    """The `traceparent` header value that makes a callee's span a child of `span`."""
    from opentelemetry.trace import set_span_in_context

    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=set_span_in_context(span))
    return carrier.get("traceparent", "")


class Tracing:
    """A tracer provider with its export thread. `exporter` replaces OTLP/HTTP (tests)."""

    def __init__(self, settings: TraceSettings, exporter: SpanExporter | None = None) -> None:
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=settings.endpoint,
                                        timeout=settings.export_timeout_s)
        resource = Resource.create({"service.name": settings.service_name,
                                    "service.instance.id": settings.instance})
        self._provider = TracerProvider(
            resource=resource, sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)))
        self._provider.add_span_processor(BatchSpanProcessor(
            exporter, max_queue_size=settings.max_queue,
            max_export_batch_size=min(512, settings.max_queue),
            schedule_delay_millis=settings.schedule_delay_s * 1000,
            export_timeout_millis=settings.export_timeout_s * 1000))
        self._tracer = self._provider.get_tracer("loom")
        self._started = 0
        self._sampled = 0

    def request_span(self, traceparent: str, attributes: Mapping[str, Any],
                     name: str = "request") -> Span:
        """A SERVER span for one request, child of `traceparent` when valid."""
        span = self._tracer.start_span(name, context=parent_context(traceparent),
                                       kind=SpanKind.SERVER, attributes=dict(attributes))
        self._count(span)
        return span

    def outgoing(self, name: str, traceparent: str = "",
                 attributes: Mapping[str, Any] | None = None) -> tuple[Span, str]:
        """A CLIENT span for a call forwarded to a node, and the traceparent to send with it.
        The caller ends the span (`end(span, result)`) when the answer is back."""
        span = self._tracer.start_span(name, context=parent_context(traceparent),
                                       kind=SpanKind.CLIENT, attributes=dict(attributes or {}))
        self._count(span)
        return span, traceparent_of(span)

    def _count(self, span: Span) -> None:
        self._started += 1
        if not isinstance(span, NonRecordingSpan):
            self._sampled += 1

    def statistics(self) -> TracingStatistics:
        return TracingStatistics(self._started, self._sampled)

    @staticmethod
    def end(span: Span, result: str) -> None:
        """End a request span with its outcome (`ok`, `denied`, `error`, ...)."""
        span.set_attribute("loom.result", result)
        if result != "ok":
            span.set_status(Status(StatusCode.ERROR, result))
        span.end()

    def force_flush(self, timeout_s: float = 10.0) -> bool:
        """Export what is queued; blocking (call it from a thread under trio)."""
        return self._provider.force_flush(int(timeout_s * 1000))

    def shutdown(self) -> None:
        """Export what is queued and stop the thread; blocking (from a thread under trio)."""
        self._provider.shutdown()

