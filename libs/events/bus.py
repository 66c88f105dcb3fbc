"""Commands and queries over NATS request/reply: `Bus` serves them, `BusClient` sends them.

Wire contract (every service and the gateway speak it):
- a command is a request to `hp.cmd.<service>.<verb>.<sender>`, a query to
  `hp.qry.<service>.<name>.<sender>`, where `<sender>` is the calling service's NATS user:
  nats-server lets each user publish only with its own name there (libs/events/nats_access.py),
  so the token proves who sent the request. Instances of one service subscribe in the queue
  group `hp.<service>`, so each request is served by exactly one of them;
- only the gateway acts for a user: a request from any other sender must carry the actor
  "system" (a service acts as itself; `BusClient` of a service sends nothing else), and the
  gateway may never send "system" (nor may anyone else vouch `admin`). Anything else is answered
  `forbidden` before the contract or the handler sees it;
- request body: `{"actor", "admin", "correlation_id", "causation_id", "ip", "payload": {...},
  "deadline": <unix seconds>}`; who acts (`actor`, and `admin` when the gateway vouches the
  user is an administrator) travels here, in the context, never in the payload;
- a payload is checked against the service's contract (`libs/contracts/<service>.py`) by the
  caller before it is sent and by the server before its handler runs;
- reply body: `{"ok": true, "result": ...}` or
  `{"ok": false, "error": {"code", "message", "field"}}`.

The deadline is absolute wall-clock time so it survives queueing; it assumes the clocks of the
hosts agree to well under a typical timeout (NTP). A request whose deadline has passed is
answered `deadline_exceeded` without running its handler, and a handler still running at the
deadline is cancelled: nobody is waiting for its answer any more.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from libs.contracts import Contract, Kind
from libs.contracts.errors import (
    BusError,
    Conflict,
    DeadlineExceeded,
    Forbidden,
    Internal,
    Invalid,
    NotFound,
    Unauthorized,
    Unavailable,
    error_from_wire,
)
from libs.contracts.registry import CONTRACTS
from libs.contracts.schema import json_constant, json_float, json_int
from libs.events import context
from libs.events.context import Context
from libs.events.envelope import uuid7
from libs.events.nats_access import GATEWAY
from libs.service.logs import bind_correlation
from libs.service.metrics import HANDLER_ERRORS, HANDLER_LATENCY

__all__ = [
    "Bus",
    "BusClient",
    "BusError",
    "Conflict",
    "DeadlineExceeded",
    "Forbidden",
    "Handler",
    "Internal",
    "Invalid",
    "NotFound",
    "Unauthorized",
    "Unavailable",
    "error_from_wire",
]

log = logging.getLogger("homeport.bus")

Handler = Callable[[dict[str, Any]], Awaitable[Any]]

_TOKEN = re.compile(r"[a-z][a-z0-9_]*")
SYSTEM = "system"  # the actor of a service acting as itself
_MAX_META = 256  # characters of actor, correlation_id, causation_id, ip
_SUBSCRIBE_TIMEOUT = 5  # seconds
_CANCEL_GRACE = 2.0
_DRAIN_MIN = 1.0


# -- the wire -------------------------------------------------------------------------------


def _token(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise ValueError(
            f"{kind} name {value!r} is invalid: use lower-case letters, digits and _, "
            "starting with a letter"
        )
    return value


def _subject(kind: str, service: str, name: str) -> str:
    _token("service", service)
    _token("verb" if kind == "cmd" else "query", name)
    return f"hp.{kind}.{service}.{name}"


def _authorized(sender: str, ctx: Context) -> Context:
    """`ctx` with its proven sender, if that sender may act as `ctx.actor`; else Forbidden."""
    if sender == GATEWAY:
        if ctx.actor == SYSTEM:
            raise Forbidden(
                'the gateway acts for users and for itself, never as the platform ("system")',
                field="actor",
            )
        return replace(ctx, sender=sender)
    if ctx.actor != SYSTEM:
        raise Forbidden(
            f"only the gateway acts for a user: the {sender} service sent actor "
            f'{ctx.actor[:64]!r}; a service acts as "system"',
            field="actor",
        )
    return replace(ctx, sender=sender, admin=False)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _error_body(err: BusError) -> bytes:
    return _dumps({"ok": False, "error": err.to_wire()})


@dataclass(frozen=True, slots=True)
class _Request:
    context: Context
    payload: dict[str, Any]
    deadline: float


def _meta(body: dict[str, Any], name: str, *, required: bool) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > _MAX_META:
        need = "a non-empty string" if required else "null or a non-empty string"
        raise Invalid(f"{name} must be {need} of at most {_MAX_META} characters", field=name)
    return value


def _decode_request(data: bytes) -> _Request:
    try:
        body = json.loads(
            data, parse_int=json_int, parse_float=json_float, parse_constant=json_constant
        )
    except Invalid as e:  # a number beyond the parser's limits, NaN or Infinity
        raise Invalid(f"request is not usable JSON: {e.message}", field="payload") from None
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        raise Invalid(
            "request is not JSON: send {actor, correlation_id, payload: {...}, deadline}",
            field="payload",
        ) from None
    if not isinstance(body, dict) or not isinstance(body.get("payload"), dict):
        raise Invalid("request payload must be a JSON object", field="payload")
    actor = _meta(body, "actor", required=True)
    cid = _meta(body, "correlation_id", required=True)
    causation = _meta(body, "causation_id", required=False)
    ip = _meta(body, "ip", required=False)
    deadline = body.get("deadline")
    if (
        not isinstance(deadline, int | float)
        or isinstance(deadline, bool)
        or not math.isfinite(deadline)
    ):
        raise Invalid("deadline must be a time in Unix seconds", field="deadline")
    admin = body.get("admin", False)
    if not isinstance(admin, bool):
        raise Invalid("admin must be true or false", field="admin")
    assert actor is not None and cid is not None
    ctx = Context(actor, cid, causation, ip, admin=admin)
    return _Request(ctx, body["payload"], float(deadline))


def _decode_reply(subject: str, data: bytes) -> Any:
    try:
        body = json.loads(data)
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("ok"), bool):
        raise Internal(f"malformed reply from {subject}: {data[:200]!r}")
    if body["ok"]:
        return body.get("result")
    error = body.get("error")
    raise error_from_wire(error if isinstance(error, dict) else {})


# -- serving --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Route:
    subject: str
    handler: Handler
    kind: Kind
    name: str


class _Exchange:
    """One request being served: what stop() reports if it has to drop it."""

    __slots__ = ("correlation_id", "msg", "replied", "route")

    def __init__(self, route: _Route, msg: Msg) -> None:
        self.route = route
        self.msg = msg
        self.correlation_id: str | None = None
        self.replied = False


def _no_work() -> AbstractAsyncContextManager[None]:
    return contextlib.nullcontext()


class Bus:
    """Serves one service's commands and queries; every request runs in a task of its own."""

    def __init__(
        self,
        nc: NATS,
        service: str,
        *,
        work: Callable[[], AbstractAsyncContextManager[None]] | None = None,
        max_in_flight: int = 1000,
        contract: Contract | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self._nc = nc
        self.service = _token("service", service)
        self.queue = f"hp.{service}"
        self._work = work or _no_work
        self._max_in_flight = max_in_flight
        self._contract = contract
        self._routes: dict[str, _Route] = {}
        self._subs: list[Subscription] = []
        self._tasks: dict[asyncio.Task[None], _Exchange] = {}
        self._started = False
        self._accepting = False

    def command(self, verb: str) -> Callable[[Handler], Handler]:
        """Register the handler of `hp.cmd.<service>.<verb>`."""
        return self._register("cmd", verb)

    def query(self, name: str) -> Callable[[Handler], Handler]:
        """Register the handler of `hp.qry.<service>.<name>`."""
        return self._register("qry", name)

    def _register(self, kind: Kind, name: str) -> Callable[[Handler], Handler]:
        subject = _subject(kind, self.service, name)
        if self._started:
            raise RuntimeError(f"register {subject} before Bus.start()")
        if subject in self._routes:
            raise ValueError(f"{subject} already has a handler")

        def decorate(handler: Handler) -> Handler:
            self._routes[subject] = _Route(subject, handler, kind, name)
            return handler

        return decorate

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def start(self) -> None:
        """Subscribe every registered handler in the queue group `hp.<service>`."""
        if self._started:
            raise RuntimeError(f"bus of {self.service} already started")
        self._started = self._accepting = True
        try:
            for route in self._routes.values():
                sub = await self._nc.subscribe(
                    f"{route.subject}.*", queue=self.queue, cb=self._receiver(route)
                )
                self._subs.append(sub)
            # The server has the interest once it answers a PING sent after the SUBs: without
            # this a request sent on another connection right after start() can find no one.
            await self._nc.flush(timeout=_SUBSCRIBE_TIMEOUT)
        except BaseException:
            self._accepting = False
            subs, self._subs = self._subs, []
            for sub in subs:
                with contextlib.suppress(nats.errors.Error):  # the connection is gone
                    await sub.unsubscribe()
            raise

    async def stop(self, *, grace: float = 10.0) -> None:
        """Stop taking requests, let in-flight handlers finish within `grace` s, cancel the rest.

        The subscriptions are drained, so requests NATS already delivered are still served.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        subs, self._subs = self._subs, []
        if subs:
            try:
                # One round trip to the server at least, whatever `grace` says.
                async with asyncio.timeout(max(grace, _DRAIN_MIN)):
                    await asyncio.gather(*(s.drain() for s in subs))  # type: ignore[no-untyped-call]
            except (nats.errors.Error, TimeoutError) as e:
                # Closed or draining connections have dropped their subscriptions already.
                log.warning("bus %s: could not drain its subscriptions: %r", self.service, e)
        self._accepting = False
        if not self._tasks:
            return
        _, pending = await asyncio.wait(list(self._tasks), timeout=max(0.0, deadline - loop.time()))
        if not pending:
            return
        dropped = [self._tasks[t] for t in pending if t in self._tasks]
        log.warning(
            "bus %s stopped with %d request(s) unfinished after %.1f s; cancelled: %s",
            self.service,
            len(dropped),
            grace,
            ", ".join(f"{x.route.subject} ({x.correlation_id})" for x in dropped),
        )
        for t in pending:
            t.cancel()
        _, stuck = await asyncio.wait(pending, timeout=_CANCEL_GRACE)
        if stuck:
            log.error("bus %s: %d handler(s) ignored cancellation", self.service, len(stuck))

    def _receiver(self, route: _Route) -> Callable[[Msg], Awaitable[None]]:
        async def receive(msg: Msg) -> None:
            # Runs in nats-py's per-subscription loop, one message at a time: never block here.
            exchange = _Exchange(route, msg)
            if not msg.reply:
                log.warning("%s got a message without a reply subject; ignored", route.subject)
                HANDLER_ERRORS.labels(subject=route.subject, code=Invalid.code).inc()
                return
            if not self._accepting or len(self._tasks) >= self._max_in_flight:
                why = "is stopping" if not self._accepting else "is busy"
                err = Unavailable(f"service {self.service} {why}: retry shortly")
                HANDLER_ERRORS.labels(subject=route.subject, code=err.code).inc()
                await self._reply(exchange, _error_body(err))
                return
            task = asyncio.create_task(self._serve(exchange), name=f"bus {route.subject}")
            self._tasks[task] = exchange
            task.add_done_callback(self._forget)

        return receive

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)

    async def _serve(self, x: _Exchange) -> None:
        started = time.perf_counter()
        code: str | None = None
        try:
            async with self._work():
                code = await self._answer(x)
        except asyncio.CancelledError:
            code = Unavailable.code
            if not x.replied:
                gone = Unavailable(f"{x.route.subject} was cancelled: the service is stopping")
                await self._reply(x, _error_body(gone))
            raise
        except Exception as e:
            # Only the in-flight tracking (`work`) gets here; _answer replies to everything.
            if isinstance(e, BusError):
                err: BusError = e
            else:
                log.exception("bus %s could not take %s", self.service, x.route.subject)
                err = Unavailable(f"service {self.service} cannot take work now: retry shortly")
            code = err.code
            if not x.replied:
                await self._reply(x, _error_body(err))
        finally:
            HANDLER_LATENCY.labels(subject=x.route.subject).observe(time.perf_counter() - started)
            if code is not None:
                HANDLER_ERRORS.labels(subject=x.route.subject, code=code).inc()

    async def _answer(self, x: _Exchange) -> str | None:
        """Decode, check the deadline, run the handler, reply; the error code sent, if any."""
        try:
            req = _decode_request(x.msg.data)
            sender = x.msg.subject[len(x.route.subject) + 1 :]
            req = replace(req, context=_authorized(_token("sender", sender), req.context))
        except (Invalid, Forbidden) as e:
            await self._reply(x, _error_body(e))
            return e.code
        except ValueError as e:  # a sender token no service has
            refused = Forbidden(str(e), field="sender")
            await self._reply(x, _error_body(refused))
            return refused.code
        cid = req.context.correlation_id
        assert cid is not None
        x.correlation_id = cid
        with context.use(req.context), bind_correlation(cid):
            try:
                body = _dumps({"ok": True, "result": await self._run(x.route, req)})
            except BusError as e:
                err: BusError = e
            except Exception as e:
                # TypeError/ValueError from _dumps land here too: a result that is not JSON.
                log.exception(
                    "%s failed: %s",
                    x.route.subject,
                    type(e).__name__,
                    extra={"correlation_id": cid, "subject": x.route.subject},
                )
                err = Internal(f"internal error; see logs for correlation id {cid}")
            else:
                if len(body) <= self._nc.max_payload:
                    await self._reply(x, body)
                    return None
                log.error(
                    "%s: result of %d bytes exceeds the NATS max payload of %d bytes",
                    x.route.subject,
                    len(body),
                    self._nc.max_payload,
                    extra={"correlation_id": cid, "subject": x.route.subject},
                )
                err = Internal(f"internal error; see logs for correlation id {cid}")
            await self._reply(x, _error_body(err))
            return err.code

    async def _run(self, route: _Route, req: _Request) -> Any:
        remaining = req.deadline - time.time()
        if remaining <= 0:
            raise DeadlineExceeded(
                f"{route.subject} arrived {-remaining:.3f} s after its deadline; not run"
            )
        if self._contract is not None:
            self._contract.check(route.kind, route.name, req.payload)
        window = asyncio.timeout(remaining)
        try:
            async with window:
                return await route.handler(req.payload)
        except TimeoutError:
            if window.expired():
                log.warning("%s cancelled at its deadline", route.subject)
                raise DeadlineExceeded(
                    f"{route.subject} did not finish before its deadline; it was cancelled"
                ) from None
            raise  # the handler's own TimeoutError: an unexpected failure, so Internal

    async def _reply(self, x: _Exchange, body: bytes) -> None:
        # Not msg.respond(): nats-py's respond() copies the request's headers into the reply.
        x.replied = True
        try:
            await self._nc.publish(x.msg.reply, body)
        except nats.errors.Error as e:
            log.warning(
                "could not reply to %s: %r",
                x.route.subject,
                e,
                extra={"correlation_id": x.correlation_id},
            )


# -- calling --------------------------------------------------------------------------------


class BusClient:
    """Sends commands and queries and turns error replies back into typed BusErrors.

    `sender` is the NATS user of the connection (the service's name): it ends every subject
    sent. A service other than the gateway acts as itself: its requests carry the actor
    "system" whoever the work it does was for (the user stays in the events it records)."""

    def __init__(
        self,
        nc: NATS,
        *,
        sender: str,
        default_timeout: float = 5.0,
        contracts: Mapping[str, Contract] | None = None,
    ) -> None:
        _check_timeout(default_timeout)
        self.sender = _token("sender", sender)
        self._nc = nc
        self._contracts: Mapping[str, Contract] = contracts if contracts is not None else CONTRACTS
        self.default_timeout = default_timeout

    async def command(
        self,
        service: str,
        verb: str,
        payload: dict[str, Any],
        *,
        ctx: Context | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the wire deadline, not a local wait
    ) -> Any:
        """Send command `verb` to `service` and return its result."""
        return await self._call("cmd", service, verb, payload, ctx, timeout)

    async def query(
        self,
        service: str,
        name: str,
        payload: dict[str, Any],
        *,
        ctx: Context | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the wire deadline, not a local wait
    ) -> Any:
        """Ask query `name` of `service` and return its result."""
        return await self._call("qry", service, name, payload, ctx, timeout)

    async def _call(
        self,
        kind: Kind,
        service: str,
        name: str,
        payload: dict[str, Any],
        ctx: Context | None,
        timeout: float | None,  # noqa: ASYNC109
    ) -> Any:
        subject = _subject(kind, service, name)
        wait = self.default_timeout if timeout is None else _check_timeout(timeout)
        ctx = ctx or context.current()
        if self.sender != GATEWAY:
            ctx = replace(ctx, actor=SYSTEM, admin=False)
        if not isinstance(payload, dict):
            raise Invalid(f"payload of {subject} must be a dict", field="payload")
        contract = self._contracts.get(service)
        if contract is not None:
            contract.check(kind, name, payload)
        request = {
            "actor": ctx.actor,
            "admin": ctx.admin,
            "correlation_id": ctx.correlation_id or str(uuid7()),
            "causation_id": ctx.causation_id,
            "ip": ctx.ip,
            "payload": payload,
            "deadline": time.time() + wait,
        }
        try:
            data = _dumps(request)
        except (TypeError, ValueError) as e:
            raise Invalid(f"payload of {subject} is not JSON: {e}", field="payload") from e
        if len(data) > self._nc.max_payload:
            raise Invalid(
                f"request to {subject} is {len(data)} bytes; NATS takes at most "
                f"{self._nc.max_payload}",
                field="payload",
            )
        try:
            msg = await self._nc.request(f"{subject}.{self.sender}", data, timeout=wait)
        except nats.errors.NoRespondersError as e:
            raise Unavailable(
                f"no one answers {subject}: check that the {service} service is running"
            ) from e
        except nats.errors.TimeoutError as e:
            raise DeadlineExceeded(f"{subject} did not answer within {wait:g} s") from e
        except nats.errors.Error as e:
            raise Unavailable(f"cannot send {subject}: NATS connection problem ({e!r})") from e
        return _decode_reply(subject, msg.data)


def _check_timeout(timeout: float) -> float:
    if not isinstance(timeout, int | float) or not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)
