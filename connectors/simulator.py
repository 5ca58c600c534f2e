"""Shared machinery for the loopback back-office simulators: HTTP server, tenants, jobs and faults.

A simulator serves one tenant (one council's system) per first URL path segment, keeps its jobs in
memory, moves them through a lifecycle over time and can be told to misbehave the way real back
offices do (500s, slow answers after doing the work, garbage, hostile XML, being down).
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import random
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

MAX_REQUEST_BYTES = 5 * 1024 * 1024

XXE_BODY = b'<?xml version="1.0"?>\n<!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n<r>&xxe;</r>'
BILLION_LAUGHS_BODY = (
    b'<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
    b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
    b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">'
    b'<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">]>\n<r>&lol4;</r>'
)

# A 1x1 JPEG: a real image, so a back office that checks what it stores takes it (tests and the demo send it).
SAMPLE_JPEG = bytes.fromhex(
    "ffd8ffe000104a46494600010100000100010000ffdb004300080606070605080707070909080a0c140d0c0b0b0c1912130f141d1a1f"
    "1e1d1a1c1c20242e2720222c231c1c2837292c30313434341f27393d38323c2e333432ffc0000b080001000101011100ffc4001f00"
    "00010501010101010100000000000000000102030405060708090a0bffc400b5100002010303020403050504040000017d01020300"
    "041105122131410613516107227114328191a1082342b1c11552d1f02433627282090a161718191a25262728292a3435363738393a"
    "434445464748494a535455565758595a636465666768696a737475767778797a838485868788898a92939495969798999aa2a3a4a5"
    "a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7d8d9dae1e2e3e4e5e6e7e8e9eaf1f2f3f4f5f6f7f8f9faff"
    "da0008010100003f00fbd3ffd9"
)

FAULT_KINDS = ("error500", "reset", "slow", "garbage", "truncated", "xxe", "entities", "wrong_type", "status429")
"""error500/reset/status429 fail before any work is done; the others do the work, then answer badly."""


HTML_PROXY_PAGE = (b'<!DOCTYPE html>\n<html><head><title>502 Proxy Error</title></head><body><h1>Proxy Error</h1>'
                   b"<p>The proxy server received an invalid response from an upstream server.</p></body></html>")
"""What an Apache reverse proxy in front of a back office answers when the back office is down."""


@dataclass
class Request:
    method: str
    tenant: str
    path: str  # below the tenant, starting with "/"
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def param(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class JobEvent:
    """One change to a job, with a simulator-wide increasing id (what `updates since` pages over)."""

    update_id: int
    status: str
    note: str | None
    at: datetime


@dataclass
class Job:
    id: int
    ref: str
    tenant: str
    hub_ref: str | None
    service_code: str
    status: str
    created_at: datetime
    changed_at: datetime
    data: dict[str, Any] = field(default_factory=dict)
    events: list[JobEvent] = field(default_factory=list)


def _time_order(pair: tuple[Job, JobEvent]) -> tuple[datetime, int]:
    return pair[1].at, pair[1].update_id


class JobStore:
    """Thread-safe jobs of every tenant; deliberately NOT idempotent, like real back offices.

    Lookups go through indexes, as a real back office's would: a soak of 100,000 cases must not make every
    request scan every job ever raised (that made long benchmark runs slow down as they went).
    """

    def __init__(self, lifecycle: Sequence[str], ref_format: str = "SR{id:08d}", first_id: int = 1000) -> None:
        self.lifecycle = list(lifecycle)
        self.ref_format = ref_format
        self._ids = itertools.count(first_id)
        self._update_ids = itertools.count(1)
        self._lock = threading.RLock()
        self.jobs: dict[int, Job] = {}
        self._by_ref: dict[tuple[str, str], Job] = {}
        self._by_hub_ref: dict[tuple[str, str], list[Job]] = {}
        self._tenant_jobs: dict[str, list[Job]] = {}
        # per tenant, every event in update_id order, and the same ordered by (at, update_id): tests move the
        # clock, so time order and id order can differ
        self._log: dict[str, list[tuple[Job, JobEvent]]] = {}
        self._timeline: dict[str, list[tuple[Job, JobEvent]]] = {}
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)
        self.stall_every = 0
        """A bad day, off by default: every this many jobs (hubbridge's or raised in the back office) sits
        untouched in the back office, as a job nobody picks up does; `advance` never moves it."""

    def stalled(self, job: Job) -> bool:
        """Whether nobody will ever pick this job up (see `stall_every`)."""
        return bool(self.stall_every) and job.id % self.stall_every == 0

    def create(self, tenant: str, hub_ref: str | None, service_code: str, data: dict[str, Any]) -> Job:
        with self._lock:
            now = self.clock()
            jid = next(self._ids)
            job = Job(
                jid,
                self.ref_format.format(id=jid),
                tenant,
                hub_ref,
                service_code,
                self.lifecycle[0],
                now,
                now,
                dict(data),
            )
            self.jobs[jid] = job
            self._by_ref[(tenant, job.ref)] = job
            if hub_ref is not None:
                self._by_hub_ref.setdefault((tenant, hub_ref), []).append(job)
            self._tenant_jobs.setdefault(tenant, []).append(job)
            self._record(job, JobEvent(next(self._update_ids), job.status, "created", now))
            return job

    def set_status(self, job: Job, status: str, note: str | None = None) -> JobEvent:
        with self._lock:
            now = self.clock()
            job.status = status
            job.changed_at = now
            ev = JobEvent(next(self._update_ids), status, note, now)
            self._record(job, ev)
            return ev

    def _record(self, job: Job, ev: JobEvent) -> None:
        job.events.append(ev)
        self._log.setdefault(job.tenant, []).append((job, ev))
        bisect.insort(self._timeline.setdefault(job.tenant, []), (job, ev), key=_time_order)

    def by_ref(self, tenant: str, ref: str) -> Job | None:
        with self._lock:
            return self._by_ref.get((tenant, ref))

    def by_hub_ref(self, tenant: str, hub_ref: str) -> list[Job]:
        with self._lock:
            return list(self._by_hub_ref.get((tenant, hub_ref), ()))

    def record_followup(self, job: Job, kind: str, text: str, documents: Sequence[str] = (), **extra: Any) -> dict:
        """Note, in the job's own records, one follow-up operation the back office carried out (a note made, a
        status set by the client, a document stored): what tests and the demo count, never what the client says.

        `kind` is the Hub follow-up kind the operation stands for (note, cancel, evidence, ...).
        """
        with self._lock:
            record = {"kind": kind, "text": text, "documents": list(documents), "at": self.clock().isoformat(),
                      **extra}
            job.data.setdefault("followups", []).append(record)
            return record

    def tenant_jobs(self, tenant: str) -> list[Job]:
        """The tenant's jobs, oldest first."""
        with self._lock:
            return list(self._tenant_jobs.get(tenant, ()))

    def newest_update_id(self, tenant: str) -> int:
        with self._lock:
            log = self._log.get(tenant)
            return log[-1][1].update_id if log else 0

    def events_after(self, tenant: str, after_update_id: int, limit: int) -> list[tuple[Job, JobEvent]]:
        """Events of `tenant` with update_id > after_update_id, oldest first."""
        with self._lock:
            log = self._log.get(tenant, [])
            i = bisect.bisect_right(log, after_update_id, key=lambda pair: pair[1].update_id)
            return log[i:i + limit]

    def events_between(self, tenant: str, start: datetime, end: datetime | None = None) -> list[tuple[Job, JobEvent]]:
        """Events of `tenant` with start <= at (< end), oldest first."""
        with self._lock:
            timeline = self._timeline.get(tenant, [])
            i = bisect.bisect_left(timeline, (start, 0), key=_time_order)
            j = len(timeline) if end is None else bisect.bisect_left(timeline, (end, 0), key=_time_order)
            return timeline[i:j]

    def changed_since(self, tenant: str, since: datetime) -> list[Job]:
        """Jobs of `tenant` whose last change is at or after `since`, oldest first."""
        with self._lock:
            touched = {job.id: job for job, _ in self.events_between(tenant, since)}
        return sorted((j for j in touched.values() if j.changed_at >= since), key=lambda j: j.id)

    def advance(self, tenant: str | None = None, note: str | None = None) -> int:
        """Move every open job (of one tenant, or all) one step along the lifecycle; returns how many moved."""
        moved = 0
        with self._lock:
            for job in list(self.jobs.values()):
                if tenant is not None and job.tenant != tenant:
                    continue
                if job.status not in self.lifecycle or self.stalled(job):
                    continue
                i = self.lifecycle.index(job.status)
                if i + 1 < len(self.lifecycle):
                    self.set_status(job, self.lifecycle[i + 1], note or f"moved to {self.lifecycle[i + 1]}")
                    moved += 1
        return moved

    def count_by_hub_ref(self) -> dict[str, int]:
        with self._lock:
            counts: dict[str, int] = {}
            for j in self.jobs.values():
                if j.hub_ref:
                    counts[j.hub_ref] = counts.get(j.hub_ref, 0) + 1
            return counts


class FaultPlan:
    """What the simulator should get wrong next: a queue of one-off faults, a random rate, or down."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[tuple[str, bytes | None]] = []
        self.rate = 0.0
        self.rate_kinds: tuple[str, ...] = ("error500",)
        self.down = False
        self.slow_seconds = 3.0
        self._random = random.Random(0)
        self.injected: dict[str, int] = {}
        # `hold`: the request is done, and its answer waits until `release()`, so a test can act in between
        self.holding = threading.Event()
        self._released = threading.Event()

    def release(self) -> None:
        """Let every held answer go."""
        self._released.set()

    def wait_released(self, most_seconds: float = 60.0) -> None:
        self.holding.set()
        self._released.wait(most_seconds)  # bounded, so a test that forgets to release cannot hang the server

    def next(self, kinds: Sequence[str] | str, count: int = 1, match: str | None = None) -> None:
        """Queue faults for the next requests; with `match`, only for requests whose path or body contains it."""
        with self._lock:
            for _ in range(count):
                for kind in [kinds] if isinstance(kinds, str) else list(kinds):
                    self._queue.append((kind, match.encode() if match else None))

    def set_rate(self, rate: float, kinds: Sequence[str] = ("error500",), seed: int = 0) -> None:
        with self._lock:
            self.rate, self.rate_kinds, self._random = rate, tuple(kinds), random.Random(seed)

    def clear(self) -> None:
        self._released.set()
        self.holding.clear()
        self._released = threading.Event()
        with self._lock:
            self._queue.clear()
            self.rate = 0.0
            self.down = False

    def take(self, request: Request | None = None) -> str | None:
        with self._lock:
            kind: str | None = None
            if self.down:
                kind = "reset"
            elif self._queue:
                queued, match = self._queue[0]
                if match is None or (request is not None and (match in request.body
                                                              or match in request.path.encode())):
                    self._queue.pop(0)
                    kind = queued
            elif self.rate and self._random.random() < self.rate:
                kind = self._random.choice(self.rate_kinds)
            if kind:
                self.injected[kind] = self.injected.get(kind, 0) + 1
            return kind


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class Simulator:
    """Base of every loopback simulator: subclasses implement `handle` (and `bad_body` for their format)."""

    name = "simulator"
    xml = False

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if not host.startswith("127.") and host not in ("localhost", "::1"):
            raise ValueError("simulators listen on loopback only")
        self.host = host
        self.port = port
        self.faults = FaultPlan()
        self.requests: list[tuple[str, str, str]] = []  # (method, tenant, path) of every request seen
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> Simulator:
        sim = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                return

            def _serve(self) -> None:
                sim._dispatch(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

        self._server = _Server((self.host, self.port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"{self.name}-http", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def tenant_url(self, tenant: str) -> str:
        return f"{self.url}{tenant}/"

    def auto_advance(self, every_seconds: float, step: Callable[[], object]) -> None:
        """Call `step` (e.g. move jobs along) every few seconds in the background until stopped."""

        def run() -> None:
            while not self._stop.wait(every_seconds):
                step()

        self._ticker = threading.Thread(target=run, name=f"{self.name}-ticker", daemon=True)
        self._ticker.start()

    # -- what the conformance suite reads and drives ------------------------------------------
    def _jobs(self) -> JobStore:
        store = getattr(self, "store", None)
        if not isinstance(store, JobStore):
            raise NotImplementedError(f"{type(self).__name__} keeps no JobStore in .store; override jobs_for/advance")
        return store

    def jobs_for(self, hub_ref: str, tenant: str | None = None) -> int:
        """How many jobs carry `hub_ref` (in one tenant, or in any), from the back office's own records."""
        store = self._jobs()
        if tenant is not None:
            return len(store.by_hub_ref(tenant, hub_ref))
        with store._lock:
            return sum(1 for j in store.jobs.values() if j.hub_ref == hub_ref)

    def advance(self, tenant: str | None = None) -> int:
        """Move every open job (of one tenant, or all) one step along its lifecycle; returns how many moved."""
        return self._jobs().advance(tenant)

    def followups_for(self, backoffice_ref: str, tenant: str) -> list[dict[str, Any]]:
        """The follow-up operations the back office carried out on one job, in the order it took them (its own
        records, as `JobStore.record_followup` noted them): each {kind, text, documents, at, ...}."""
        store = self._jobs()
        job = store.by_ref(tenant, backoffice_ref)
        if job is None:
            return []
        with store._lock:
            return [dict(r) for r in job.data.get("followups", ())]

    # -- per-protocol hooks --------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        raise NotImplementedError

    def bad_body(self, kind: str, good: Response) -> Response:
        """The answer for a fault that does the work but answers badly."""
        if kind == "garbage":
            return Response(200, b"<html><body>Proxy Error: upstream sent nonsense \x00\xff</body>", "text/html")
        if kind == "html_proxy":
            # a reverse proxy's own error page, sent with 200 while the back office behind it is unreachable
            return Response(200, HTML_PROXY_PAGE, "text/html; charset=utf-8")
        if kind == "unrelated_xml":
            # well-formed XML that is not an answer of this API (a load balancer's health document)
            return Response(200, b'<?xml version="1.0"?><health><status>ok</status><node>lb-2</node></health>',
                            "text/xml; charset=utf-8")
        if kind == "truncated":
            return Response(good.status, good.body[: max(1, len(good.body) // 2)], good.content_type)
        if kind == "xxe":
            return Response(200, XXE_BODY, "text/xml" if self.xml else "application/xml")
        if kind == "entities":
            return Response(200, BILLION_LAUGHS_BODY, "text/xml" if self.xml else "application/xml")
        if kind == "wrong_type":
            if self.xml:
                return Response(200, b'{"not": "xml"}', "application/json")
            return Response(200, b'["unexpected", 1, {"id": {"nested": true}}]', "application/json")
        return good

    # -- plumbing ------------------------------------------------------------------------------
    def _dispatch(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        segments = parts.path.lstrip("/").split("/", 1)
        tenant = segments[0]
        sub = "/" + (segments[1] if len(segments) > 1 else "")
        length = int(h.headers.get("Content-Length") or 0)
        if length > MAX_REQUEST_BYTES:
            self._send(h, Response(413, b"request too large", "text/plain"))
            return
        body = h.rfile.read(length) if length else b""
        req = Request(h.command, tenant, sub, parse_qs(parts.query), {k.lower(): v for k, v in h.headers.items()}, body)
        self.requests.append((req.method, tenant, sub))
        fault = self.faults.take(req)
        if fault == "reset":
            # close without answering: the client sees a connection error, nothing was done
            h.close_connection = True
            with contextlib.suppress(OSError):
                h.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault == "error500":
            self._send(h, self.server_error())
            return
        if fault == "status429":
            self._send(h, Response(429, b"slow down", "text/plain", {"Retry-After": "1"}))
            return
        try:
            resp = self.handle(req)
        except Exception as exc:  # a simulator bug must surface as a 500, not a dead socket
            resp = Response(500, f"simulator error: {exc!r}".encode(), "text/plain")
        if fault == "slow":
            time.sleep(self.faults.slow_seconds)
        elif fault == "hold":
            self.faults.wait_released()
        elif fault:
            resp = self.bad_body(fault, resp)
        self._send(h, resp)

    def server_error(self) -> Response:
        return Response(500, b"Internal Server Error", "text/plain")

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, resp: Response) -> None:
        # one write with Nagle off: headers and body in separate segments cost a 40 ms delayed ACK per call
        try:
            h.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            h.send_response(resp.status)
            h.send_header("Content-Type", resp.content_type)
            h.send_header("Content-Length", str(len(resp.body)))
            for k, v in resp.headers.items():
                h.send_header(k, v)
            h._headers_buffer.append(b"\r\n")  # type: ignore[attr-defined]  # end_headers() without its flush
            h._headers_buffer.append(resp.body)  # type: ignore[attr-defined]
            h.flush_headers()
        except OSError:
            pass
