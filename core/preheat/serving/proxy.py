"""The front proxy (aiohttp): API-key checks, scale-to-zero, streaming forwarding, metrics.

It owns the app's port whenever an API key is required or the app scales to zero; the
engine then listens on a loopback port of its own.

- Every route but `/health` and `/metrics` needs `Authorization: Bearer KEY` when the
  app requires auth (a missing or wrong key is a 401 and never wakes the engine).
- With `replicas=(0, 1)` the first request starts the engine and is held until the
  engine is ready (up to the app's start-up timeout); the engine is stopped after
  `scaledown_after` seconds without requests. `/health` and `/metrics` never count as
  activity and never start the engine.
- Responses are forwarded as they arrive, so streamed completions reach the client
  token by token.
- `/metrics` is Prometheus text: requests by status code, requests in flight, cold
  starts, scale-downs, whether the engine is up and its time to ready; followed by the
  engine's own metrics while it is up.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from preheat.errors import PreheatError

if TYPE_CHECKING:
    from preheat.serving.server import EngineSlot

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)
OPEN_ROUTES = ("/health", "/metrics")


class Metrics:
    """The proxy's Prometheus metrics, in a registry of their own."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "preheat_serve_requests",
            "API requests answered by the proxy, by HTTP status code",
            ["code"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "preheat_serve_requests_in_flight",
            "API requests being held or forwarded now",
            registry=self.registry,
        )
        self.cold_starts = Counter(
            "preheat_serve_cold_starts",
            "Engine starts caused by a request while no engine was up",
            registry=self.registry,
        )
        self.scale_downs = Counter(
            "preheat_serve_scale_downs",
            "Engine stops after the idle timeout",
            registry=self.registry,
        )
        self.engine_up = Gauge(
            "preheat_serve_engine_up",
            "1 while the engine answers its health check, else 0",
            registry=self.registry,
        )
        self.time_to_ready = Histogram(
            "preheat_serve_time_to_ready_seconds",
            "Seconds from starting the engine to its first healthy answer",
            buckets=(1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 900, 1800),
            registry=self.registry,
        )

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


def _error(status: int, message: str, kind: str):
    from aiohttp import web

    body = {"error": {"message": message, "type": kind, "code": status}}
    return web.json_response(body, status=status)


class Proxy:
    """The aiohttp front of one served app, run on a thread of its own (`start` / `stop`)."""

    def __init__(
        self,
        slot: EngineSlot,
        *,
        host: str,
        port: int,
        api_key: str | None,
        min_replicas: int,
        scaledown_after: float,
        startup_timeout: float,
        note: Callable[[str], None] = lambda message: None,
    ) -> None:
        self.slot = slot
        self.host = host
        self.port = port
        self.api_key = api_key
        self.min_replicas = min_replicas
        self.scaledown_after = scaledown_after
        self.startup_timeout = startup_timeout
        self.note = note
        self.metrics = Metrics()
        self.in_flight = 0
        self.last_activity = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner = None
        self._session = None
        self._lock: asyncio.Lock | None = None
        self._starting: asyncio.Future | None = None
        self._idle_task: asyncio.Task | None = None
        # engine starts and stops take seconds: one thread of their own, one at a time
        self._lifecycle = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="preheat-engine"
        )
        self.stopped = threading.Event()

    # ------------------------------------------------------------------ thread

    def start(self) -> None:
        """Listen on host:port (raises PreheatError when the port is taken); returns at once."""
        started: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._open())
            except BaseException as exc:  # noqa: BLE001 - handed to start()
                started.set_exception(exc)
                loop.close()
                return
            started.set_result(None)
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._close())
                loop.close()
                self.stopped.set()

        self._thread = threading.Thread(target=run, name="preheat-proxy", daemon=True)
        self._thread.start()
        try:
            started.result()
        except OSError as exc:
            raise PreheatError(
                f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}: pick another "
                "port with --port / port="
            ) from None

    def stop(self) -> None:
        """Stop listening and stop the engine."""
        loop = self._loop
        if loop is not None and self._thread is not None and self._thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(self.slot.grace + 60)
        self._lifecycle.shutdown(wait=True)

    # ------------------------------------------------------------------ aiohttp

    async def _open(self) -> None:
        import aiohttp
        from aiohttp import web

        self._lock = asyncio.Lock()
        app = web.Application()
        app.router.add_route("GET", "/health", self._health)
        app.router.add_route("GET", "/metrics", self._metrics)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
        )
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await self._session.close()
            await self._runner.cleanup()
            raise
        self._idle_task = asyncio.ensure_future(self._idle())

    async def _close(self) -> None:
        if self._idle_task is not None:
            self._idle_task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._lifecycle, self.slot.stop)
        self.metrics.engine_up.set(0)

    # ------------------------------------------------------------------ the engine

    def warm(self) -> concurrent.futures.Future:
        """Start the engine now (for `replicas=(1, 1)`); the future ends when it is ready."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(self._ensure_ready(cold=False), self._loop)

    async def _ensure_ready(self, *, cold: bool = True) -> None:
        assert self._lock is not None
        loop = asyncio.get_running_loop()
        async with self._lock:
            if self.slot.ready():
                return
            if self._starting is None:
                if self.slot.current is not None and not self.slot.current.alive():
                    self.note(
                        f"the engine exited (code {self.slot.current.returncode}): starting it again"
                    )
                    self.metrics.engine_up.set(0)
                if cold:
                    self.metrics.cold_starts.inc()
                    self.note("request received: starting the engine")
                self._starting = loop.run_in_executor(self._lifecycle, self.slot.start_and_wait)
                starting = self._starting

                def done(future: asyncio.Future) -> None:
                    self._starting = None
                    if not future.cancelled() and future.exception() is None:
                        self.metrics.engine_up.set(1)
                        self.metrics.time_to_ready.observe(future.result())
                        self.last_activity = time.monotonic()

                starting.add_done_callback(done)
            starting = self._starting
        await asyncio.shield(starting)

    async def _idle(self) -> None:
        tick = max(0.05, min(1.0, self.scaledown_after / 4))
        while True:
            await asyncio.sleep(tick)
            if self.slot.current is not None and not self.slot.current.alive():
                self.metrics.engine_up.set(0)
            if self.min_replicas > 0 or self.in_flight or self._starting is not None:
                continue
            if time.monotonic() - self.last_activity < self.scaledown_after:
                continue
            assert self._lock is not None
            async with self._lock:
                if self.in_flight or self._starting is not None or self.slot.current is None:
                    continue
                loop = asyncio.get_running_loop()
                if not self.slot.current.alive():  # it exited: clear what is left of it
                    await loop.run_in_executor(self._lifecycle, self.slot.stop)
                    self.slot.forget()
                    continue
                self.note(f"no requests for {self.scaledown_after:g} s: stopping the engine")
                await loop.run_in_executor(self._lifecycle, self.slot.stop)
                self.slot.forget()
                self.metrics.engine_up.set(0)
                self.metrics.scale_downs.inc()

    # ------------------------------------------------------------------ routes

    async def _health(self, request):
        from aiohttp import web

        state = self.slot.state()
        if state == "ready":
            self.metrics.engine_up.set(1)
        ok = self.min_replicas == 0 or state == "ready"
        return web.json_response(
            {"status": "ok" if ok else "unavailable", "engine": state}, status=200 if ok else 503
        )

    async def _metrics(self, request):
        import aiohttp
        from aiohttp import web

        text = self.metrics.text()
        if self.slot.ready() and self._session is not None:
            try:
                async with self._session.get(
                    self.slot.engine_url + "/metrics", timeout=aiohttp.ClientTimeout(total=2)
                ) as upstream:
                    if upstream.status == 200 and upstream.content_type.startswith("text/plain"):
                        text += b"\n" + await upstream.read()
            except (TimeoutError, aiohttp.ClientError):
                pass
        return web.Response(
            body=text, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
        )

    def _authorized(self, request) -> bool:
        if self.api_key is None or request.method == "OPTIONS":
            return True
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self.api_key.encode()
        )

    async def _forward(self, request):
        import aiohttp
        from aiohttp import web

        if not self._authorized(request):
            self.metrics.requests.labels("401").inc()
            return _error(
                401,
                "missing or wrong API key: send the header `Authorization: Bearer <key>`",
                "authentication_error",
            )
        self.in_flight += 1
        self.metrics.in_flight.inc()
        self.last_activity = time.monotonic()
        status = 502
        try:
            try:
                await asyncio.wait_for(self._ensure_ready(), timeout=self.startup_timeout + 30)
            except TimeoutError:
                status = 503
                return _error(503, "the engine is still starting: retry later", "unavailable")
            except PreheatError as exc:
                status = 503
                return _error(503, f"the engine could not start: {exc}", "unavailable")
            headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
            data = request.content if request.body_exists else None
            response = None
            try:
                async with self._session.request(
                    request.method,
                    self.slot.engine_url + request.rel_url.raw_path_qs,
                    headers=headers,
                    data=data,
                    allow_redirects=False,
                ) as upstream:
                    response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                    for key, value in upstream.headers.items():
                        if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                            response.headers.add(key, value)
                    if upstream.content_length is not None:
                        response.content_length = upstream.content_length
                    status = upstream.status
                    await response.prepare(request)
                    async for chunk in upstream.content.iter_any():
                        await response.write(chunk)
                    await response.write_eof()
                    return response
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
                if response is not None and response.prepared:
                    raise  # the client sees the stream end early
                status = 502
                return _error(502, f"the engine did not answer: {exc}", "bad_gateway")
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(str(status)).inc()
            self.last_activity = time.monotonic()
