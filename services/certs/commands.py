"""Commands of the certs service and the engine behind them: orders, renewals, retries.

`ensure` makes sure nginx has something to serve at once (the self-signed fallback) and starts
an ACME order as a task; the engine runs orders in tracked background tasks, records exactly
one outcome per order (`CertificateIssued` or `CertificateRenewalFailed`) and writes the files.
The renewal loop wakes every `check_hours` ± 10 % (and when a retry falls due), renews ACME
certificates with fewer than `renew_days` days left and retries failed orders with backoff.
A stop cancels running orders without recording an outcome: the next start runs them again.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from libs.events import context
from libs.events.bus import (
    BusClient,
    BusError,
    Conflict,
    DeadlineExceeded,
    Invalid,
    NotFound,
    Unavailable,
)
from libs.events.context import Context
from libs.events.errors import ConcurrencyError
from libs.events.inline import append_inline
from libs.events.sealing import Keyring, SealingError
from libs.events.store import PostgresEventStore
from libs.events.tasks import Task
from libs.service.runner import ServiceStopping
from services.certs import events as ev
from services.certs.acme_client import AcmeAccount, AcmeError
from services.certs.certificates import (
    CertificateError,
    CertInfo,
    covers,
    inspect,
    next_check_delay,
    renewal_due,
    self_signed,
    validate_custom,
)
from services.certs.config import CertsConfig
from services.certs.projections import CertsProjection, CertState, Pending, fold
from services.certs.store import CertFiles, FilesError, TokenFiles

__all__ = [
    "CHALLENGES",
    "BusTxtPublisher",
    "Commands",
    "Engine",
    "check_host",
    "check_names",
    "retry_delay",
]

log = logging.getLogger("services.certs")

CHALLENGES = ("http-01", "dns-01")
MAX_NAMES = 100
MAX_PEM = 64 * 1024
TRANSIENT = frozenset({"connection", "server", "bad_nonce", "timeout", "internal", "files"})
_VALIDATION_GAP = 3600.0  # CAs limit failed validations per hour: never retry those sooner
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_NAME = re.compile(rf"(\*\.)?({_LABEL}\.)+{_LABEL}")
_PUBLISH_TIMEOUT = 150.0  # the dns service answers publish_txt once the record propagated
_REMOVE_TIMEOUT = 30.0
_STOP_GRACE = 10.0

Spawn = Callable[[Coroutine[Any, Any, Any], str], asyncio.Task[Any]]


# -- input ----------------------------------------------------------------------------------


def _fields(payload: Mapping[str, Any], allowed: set[str]) -> None:
    for name in payload:
        if name not in allowed:
            raise Invalid(f"unknown field {name!r}", field=str(name)[:64])


def check_host(value: object, field: str = "host") -> str:
    """A DNS name a CA can certify (a leading `*.` allowed), lower-cased without a final dot."""
    if not isinstance(value, str):
        raise Invalid(f"{field} must be a host name such as blog.example.com", field=field)
    name = value.strip().rstrip(".").lower()
    if len(name) > 253 or not _NAME.fullmatch(name):
        raise Invalid(
            f"{field}: {value[:80]!r} is not a host name a CA can certify: use two or more "
            "labels of letters, digits and inner hyphens (punycode for international names), "
            "optionally starting with '*.'",
            field=field,
        )
    return name


def check_names(value: object, field: str = "names") -> list[str]:
    """1 to 100 host names, the first being the primary; duplicates dropped."""
    if not isinstance(value, list) or not value or len(value) > MAX_NAMES:
        raise Invalid(f"{field} must be a list of 1 to {MAX_NAMES} host names", field=field)
    out: list[str] = []
    for item in value:
        name = check_host(item, field)
        if name not in out:
            out.append(name)
    return out


def _pem(payload: Mapping[str, Any], name: str) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_PEM:
        raise Invalid(f"{name} must be PEM text of at most {MAX_PEM} characters", field=name)
    return value


def _primary(payload: Mapping[str, Any]) -> str:
    return check_host(payload.get("primary"), "primary")


def retry_delay(
    code: str, retry_after: float | None, failures: int, low: float, high: float
) -> float:
    """Seconds until a failed order is tried again.

    rate_limited: the CA's Retry-After (else `high`); transient errors: `low` doubling per
    consecutive failure up to `high`; anything else (a challenge the CA could not check, an
    order it refused) as transient but never sooner than an hour (capped at `high`), since CAs
    limit failed validations per hour.
    """
    if code == "rate_limited":
        return max(retry_after, 1.0) if retry_after is not None else high
    backoff = min(low * 2.0 ** max(failures - 1, 0), high)
    if code in TRANSIENT:
        return backoff
    return min(max(backoff, _VALIDATION_GAP), high)


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat()


# -- the dns service as a TxtPublisher -------------------------------------------------------


class BusTxtPublisher:
    """DNS-01 through the dns service: `publish_txt` and `remove_txt` over the bus."""

    def __init__(self, bus: BusClient, publish_timeout: float = _PUBLISH_TIMEOUT) -> None:
        self.bus = bus
        self.publish_timeout = publish_timeout

    async def publish(self, name: str, value: str) -> None:
        await self._send("publish_txt", name, value, self.publish_timeout)

    async def remove(self, name: str, value: str) -> None:
        await self._send("remove_txt", name, value, _REMOVE_TIMEOUT)

    async def _send(self, verb: str, name: str, value: str, timeout: float) -> None:  # noqa: ASYNC109
        try:
            await self.bus.command("dns", verb, {"name": name, "value": value}, timeout=timeout)
        except DeadlineExceeded as e:
            raise AcmeError(
                "timeout",
                f"the dns service did not answer {verb} for the TXT record {name} within "
                f"{timeout:.0f} s: check the domain's DNS provider",
            ) from e
        except BusError as e:
            raise AcmeError(
                "dns",
                f"the dns service could not {verb.replace('_txt', '')} the TXT record {name}: "
                f"{e.message}",
            ) from e


# -- the engine -----------------------------------------------------------------------------


@dataclass
class _Run:
    task_id: str
    task: asyncio.Task[Any]


class Engine:
    """Runs orders and the renewal loop; the commands only validate, decide and call it."""

    def __init__(
        self,
        cfg: CertsConfig,
        store: PostgresEventStore,
        keyring: Keyring,
        files: CertFiles,
        tokens: TokenFiles,
        bus: BusClient | None,
        spawn: Spawn,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.keyring = keyring
        self.files = files
        self.tokens = tokens
        self.txt = BusTxtPublisher(bus) if bus is not None else None
        self._spawn = spawn
        self._projection = CertsProjection()
        self._locks: dict[str, asyncio.Lock] = {}
        self._running: dict[str, _Run] = {}
        self._account: AcmeAccount | None = None
        self._account_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()

    # -- the stream ----------

    def lock(self, primary: str) -> asyncio.Lock:
        return self._locks.setdefault(primary, asyncio.Lock())

    async def load(self, primary: str) -> CertState:
        return fold(primary, await self.store.read_stream(ev.cert_stream(primary)))

    async def append(self, primary: str, new: list[Any], expected: int | None) -> None:
        """Append to the certificate's stream and update the read model in one transaction."""
        async with self.store.pool.acquire() as conn, conn.transaction():
            await append_inline(
                self.store, conn, self._projection, ev.cert_stream(primary), new, expected
            )

    async def seal(self, subject: str, pem: str) -> str:
        return await asyncio.to_thread(self.keyring.seal_for, subject, pem)

    def running_task(self, primary: str) -> str | None:
        run = self._running.get(primary)
        return run.task_id if run is not None and not run.task.done() else None

    # -- files ----------

    async def ensure_fallback(self, primary: str, names: list[str]) -> None:
        """Self-signed files for `names` unless the primary's files already cover them."""
        chain = await asyncio.to_thread(self.files.read_chain, primary)
        if chain is not None and await asyncio.to_thread(self.files.exists, primary):
            try:
                info = inspect(chain)
            except CertificateError:
                info = None
            now = datetime.now(UTC)
            if (
                info is not None
                and info.not_after > now + timedelta(days=1)
                and all(covers(info.names, n) for n in names)
            ):
                return
        cert_pem, key_pem = await asyncio.to_thread(self_signed, names)
        await asyncio.to_thread(self.files.write, primary, cert_pem, key_pem)
        log.info("fallback certificate written", extra={"primary": primary})

    async def heal_files(self) -> int:
        """At start: rewrite every certificate's files from the events; returns how many."""
        rows = await self.store.pool.fetch(
            "SELECT stream FROM events.streams WHERE stream LIKE $1 ORDER BY stream",
            f"{ev.CERT_CATEGORY}-%",
        )
        live: set[str] = set()
        for r in rows:
            events = await self.store.read_stream(r["stream"])
            if not events:
                continue
            primary = str(events[0].data["primary"])
            if await self._write_state(fold(primary, events)):
                live.add(primary)
        for name in await asyncio.to_thread(self.files.leftovers, live):
            log.info("removing certificate files of nothing known: %s", name)
            await asyncio.to_thread(self.files.remove_name, name)
        return len(live)

    async def heal_one(self, primary: str) -> None:
        """Make the files of `primary` what its events say."""
        s = await self.load(primary)
        if not await self._write_state(s):
            await asyncio.to_thread(self.files.remove, primary)

    async def _write_state(self, s: CertState) -> bool:
        if not s.exists:
            return False
        if s.current is not None:
            key_pem = await asyncio.to_thread(self.keyring.unseal_str, s.current.key)
            await asyncio.to_thread(self.files.write, s.primary, s.current.chain_pem, key_pem)
        else:
            await self.ensure_fallback(s.primary, list(s.names))
        return True

    # -- orders ----------

    async def start_order(
        self, primary: str, names: list[str], challenge: str, reason: str, owner: str
    ) -> str:
        """Start an order for `primary` unless one runs; its task id."""
        async with self.lock(primary):
            return await self.start_order_locked(primary, names, challenge, reason, owner)

    async def start_order_locked(
        self, primary: str, names: list[str], challenge: str, reason: str, owner: str
    ) -> str:
        running = self.running_task(primary)
        if running is not None:
            return running
        s = await self.load(primary)
        if s.pending is not None:  # recorded, not running here: a previous run was cut short
            await self._resume_locked(s)
            return self.running_task(primary) or s.pending.task_id
        task = await Task.start(
            self.store,
            kind="certs.order",
            title=f"Certificate for {primary}"[:200],
            owner=owner,
            target=ev.cert_stream(primary),
        )
        ordered = ev.CertificateOrdered(primary, names, challenge, task.id, reason)
        try:
            await self.append(primary, [ordered], s.version)
        except ConcurrencyError:
            await task.fail(
                "another change to this certificate came first; nothing done", "conflict"
            )
            raise Conflict(
                f"the certificate for {primary} changed at the same time; look again and retry",
                field="primary",
            ) from None
        self._launch(primary, Pending(task.id, tuple(names), challenge, reason), task)
        return task.id

    def _launch(self, primary: str, pending: Pending, task: Task) -> None:
        try:
            t = self._spawn(self._run(primary, pending, task), f"certs.order.{primary}")
        except ServiceStopping as e:
            raise Unavailable("the certs service is stopping: the order runs after restart") from e
        run = _Run(task.id, t)
        self._running[primary] = run

        def done(_: asyncio.Task[Any]) -> None:
            if self._running.get(primary) is run:
                del self._running[primary]

        t.add_done_callback(done)

    async def _resume_locked(self, s: CertState) -> None:
        assert s.pending is not None
        task = await Task.load(self.store, s.pending.task_id)
        if task.ended:
            # the task ended without an outcome in the stream: close the order, retry soon
            failed = ev.CertificateRenewalFailed(
                s.primary,
                "interrupted",
                "the order was interrupted; it is tried again",
                _iso(datetime.now(UTC)),
                s.pending.task_id,
            )
            await self.append(s.primary, [failed], s.version)
            self._wake.set()
            return
        log.info("resuming the order for %s (task %s)", s.primary, task.id)
        with context.use(Context("system", task.id, None, None)):
            self._launch(s.primary, s.pending, task)

    async def stop_order(self, primary: str, why: str) -> None:
        """Cancel the order running for `primary` (superseded); fail its task with `why`."""
        run = self._running.get(primary)
        if run is None or run.task.done():
            return
        run.task.cancel()
        await asyncio.wait({run.task}, timeout=_STOP_GRACE)
        task = await Task.load(self.store, run.task_id)
        if not task.ended:
            await task.fail(why, "superseded")

    async def _run(self, primary: str, pending: Pending, task: Task) -> None:
        """One order, from the account to the files; records exactly one outcome."""
        names = list(pending.names)
        percent = max(task.percent, 5)

        async def progress(msg: str) -> None:
            nonlocal percent
            percent = min(percent + 10, 90)
            await task.progress(percent, msg[:500])

        try:
            await task.progress(percent, f"ordering a certificate for {', '.join(names)}"[:500])
            account = await self.account()
            issued = await account.issue(
                names,
                http=self.tokens if pending.challenge == "http-01" else None,
                dns=self.txt if pending.challenge == "dns-01" else None,
                progress=progress,
                deadline=self.cfg.order_deadline_s,
            )
        except AcmeError as e:
            await self._failed(primary, task, e.code, e.message, e.retry_after)
            return
        except FilesError as e:
            await self._failed(primary, task, "files", str(e), None)
            return
        except Exception as e:  # a bug must not stop the service: record it, retry later
            log.exception("order for %s failed unexpectedly", primary)
            await self._failed(primary, task, "internal", f"the order failed: {e!r}", None)
            return
        try:
            await self._issued(primary, task, issued.chain_pem, issued.key_pem, issued.info)
        except (FilesError, SealingError, OSError) as e:
            log.exception("recording the certificate of %s failed", primary)
            await self._failed(primary, task, "files", str(e), None)

    async def _issued(
        self, primary: str, task: Task, chain_pem: str, key_pem: str, info: CertInfo
    ) -> None:
        sealed = await self.seal(ev.cert_stream(primary), key_pem)
        issued = ev.CertificateIssued(
            primary,
            list(info.names),
            chain_pem,
            sealed,
            _iso(info.not_before),
            _iso(info.not_after),
            info.issuer,
            info.fingerprint_sha256,
            task.id,
        )
        async with self.lock(primary):
            s = await self.load(primary)
            if s.pending is None or s.pending.task_id != task.id:
                await task.fail(
                    "the order was superseded; its certificate is not used", "superseded"
                )
                return
            # files first: whoever reacts to the event (the edge reloading nginx) finds them
            await asyncio.to_thread(self.files.write, primary, chain_pem, key_pem)
            try:
                await self.append(primary, [issued], s.version)
            except ConcurrencyError:
                await self.heal_one(primary)
                await task.fail("the certificate changed at the same time; not used", "conflict")
                return
        await task.succeed(
            f"certificate for {primary} issued, valid until {info.not_after:%Y-%m-%d}",
            {
                "primary": primary,
                "not_after": _iso(info.not_after),
                "fingerprint": issued.fingerprint,
            },
        )
        log.info("certificate issued", extra={"primary": primary, "not_after": issued.not_after})

    async def _failed(
        self, primary: str, task: Task, code: str, message: str, retry_after: float | None
    ) -> None:
        async with self.lock(primary):
            s = await self.load(primary)
            if s.pending is None or s.pending.task_id != task.id:
                if not task.ended:
                    await task.fail("the order was superseded", "superseded")
                return
            delay = retry_delay(
                code, retry_after, s.failures + 1, self.cfg.retry_min_s, self.cfg.retry_max_s
            )
            retry_at = datetime.now(UTC) + timedelta(seconds=delay)
            failed = ev.CertificateRenewalFailed(
                primary, code, message[:2000], _iso(retry_at), task.id
            )
            await self.append(primary, [failed], s.version)
        await task.fail(message[:500] or f"the order failed ({code})", code)
        log.warning(
            "certificate order failed",
            extra={"primary": primary, "code": code, "retry_at": failed.retry_at},
        )
        self._wake.set()

    # -- the ACME account ----------

    async def account(self) -> AcmeAccount:
        """The account at the configured CA: registered once, its key sealed in an event."""
        async with self._account_lock:
            if self._account is not None:
                return self._account
            directory = self.cfg.acme_directory
            stream = ev.account_stream(directory)
            known = await self.store.read_stream(stream)
            key_pem = None
            if known:
                key_pem = await asyncio.to_thread(
                    self.keyring.unseal_str, known[-1].data["account_key"]
                )
            account = await AcmeAccount.register(
                directory,
                self.cfg.acme_email or None,
                account_key_pem=key_pem,
                ca_bundle=self.cfg.acme_ca_bundle or None,
            )
            if not known:
                try:
                    sealed = await self.seal(stream, account.account_key_pem)
                    registered = ev.AcmeAccountRegistered(directory, account.uri, sealed)
                    async with self.store.pool.acquire() as conn, conn.transaction():
                        await append_inline(
                            self.store, conn, self._projection, stream, [registered], 0
                        )
                except BaseException:
                    await account.aclose()
                    raise
            self._account = account
            return account

    async def close(self) -> None:
        if self._account is not None:
            await self._account.aclose()
            self._account = None

    # -- the renewal loop ----------

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    async def run_renewals(self) -> None:
        """Resume cut-short orders, then check every check_hours ± jitter until stop()."""
        while not self._stop.is_set():
            self._wake.clear()
            soonest = await self.check_once()
            delay = next_check_delay(self.cfg.check_hours)
            if soonest is not None:
                delay = min(delay, max(soonest, 0.05))
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def check_once(self) -> float | None:
        """Start what is due; the seconds until the next retry falls due, if any."""
        rows = await self.store.pool.fetch(
            "SELECT primary_name, names, challenge, kind, issuer, not_before, not_after,"
            " fingerprint, task_id, next_attempt_at FROM certs.certificates"
            " ORDER BY primary_name"
        )
        now = datetime.now(UTC)
        soonest: float | None = None
        for r in rows:
            if self._stop.is_set():
                break
            primary: str = r["primary_name"]
            if r["kind"] == "custom" or self.running_task(primary) is not None:
                continue
            reason = ""
            if r["task_id"] is not None:
                reason = "resume"
            elif r["next_attempt_at"] is not None:
                wait = (r["next_attempt_at"] - now).total_seconds()
                if wait > 0:
                    soonest = wait if soonest is None else min(soonest, wait)
                    continue
                reason = "retry"
            elif r["kind"] == "acme":
                info = CertInfo(
                    tuple(r["names"]),
                    r["not_before"],
                    r["not_after"],
                    r["issuer"],
                    r["fingerprint"],
                    False,
                )
                if renewal_due(info, now, self.cfg.renew_days):
                    reason = "renewal"
            else:
                reason = "new"  # a fallback with no order recorded (a crash in between)
            if not reason:
                continue
            try:
                with context.use(Context("system", f"certs-{reason}", None, None)):
                    await self.start_order(
                        primary, list(r["names"]), r["challenge"], reason, "system"
                    )
            except (BusError, ConcurrencyError) as e:
                log.warning("could not start the %s of %s: %s", reason, primary, e)
        return soonest


# -- the command handlers -------------------------------------------------------------------


def _owner() -> str:
    return context.current().actor


class Commands:
    """The command side: each method is one bus command of the certs service."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def ensure(self, payload: dict[str, Any]) -> dict[str, Any]:
        """A certificate for these names: nothing if one serves, else fallback now + an order."""
        _fields(payload, {"names", "challenge"})
        names = check_names(payload.get("names"))
        challenge = payload.get("challenge", "http-01") or "http-01"
        if challenge not in CHALLENGES:
            raise Invalid("challenge must be http-01 or dns-01", field="challenge")
        wild = [n for n in names if n.startswith("*.")]
        if wild and challenge != "dns-01":
            raise Invalid(
                f"{', '.join(wild)} can only be validated over dns-01: set challenge to dns-01",
                field="challenge",
            )
        covering = await self._serving(names)
        if covering is not None:
            return {"primary": covering, "state": "valid", "task_id": None}
        primary = names[0]
        engine = self.engine
        async with engine.lock(primary):
            running = engine.running_task(primary)
            if running is not None:
                return {"primary": primary, "state": "ordering", "task_id": running}
            s = await engine.load(primary)
            if s.current is None:
                await engine.ensure_fallback(primary, names)
            task_id = await engine.start_order_locked(primary, names, challenge, "new", _owner())
        return {"primary": primary, "state": "ordering", "task_id": task_id}

    async def _serving(self, names: list[str]) -> str | None:
        """The primary of a certificate covering every name: custom and unexpired, or ACME and
        not due for renewal."""
        rows = await self.engine.store.pool.fetch(
            "SELECT primary_name, kind, cert_names, not_after FROM certs.certificates"
            " WHERE kind IS NOT NULL ORDER BY primary_name = $1 DESC,"
            " not_after DESC",
            names[0],
        )
        now = datetime.now(UTC)
        limit = now + timedelta(days=self.engine.cfg.renew_days)
        for r in rows:
            ok_until = now if r["kind"] == "custom" else limit
            if r["not_after"] <= ok_until:
                continue
            if all(covers(r["cert_names"], n) for n in names):
                return str(r["primary_name"])
        return None

    async def renew(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Order a new certificate now, even if not due; refused for custom certificates."""
        _fields(payload, {"primary"})
        primary = _primary(payload)
        engine = self.engine
        async with engine.lock(primary):
            s = await engine.load(primary)
            if not s.exists:
                raise NotFound(f"no certificate for {primary}", field="primary")
            if s.current is not None and s.current.kind == "custom":
                raise Conflict(
                    f"the certificate for {primary} was uploaded: renew it with its CA and "
                    "upload the new one",
                    field="primary",
                )
            task_id = await engine.start_order_locked(
                primary, list(s.names), s.challenge, "manual", _owner()
            )
        return {"primary": primary, "task_id": task_id}

    async def upload(self, payload: dict[str, Any]) -> dict[str, Any]:
        """A custom certificate: checked, its key sealed, served at once, never renewed."""
        _fields(payload, {"names", "chain_pem", "key_pem"})
        names = check_names(payload.get("names"))
        chain_pem = _pem(payload, "chain_pem")
        key_pem = _pem(payload, "key_pem")
        try:
            info = await asyncio.to_thread(validate_custom, chain_pem, key_pem, names)
        except CertificateError as e:
            raise Invalid(e.message, field=e.field) from None
        chain = "".join(
            c.public_bytes(serialization.Encoding.PEM).decode()
            for c in x509.load_pem_x509_certificates(chain_pem.encode())
        )
        primary = names[0]
        engine = self.engine
        sealed = await engine.seal(ev.cert_stream(primary), key_pem)
        uploaded = ev.CustomCertificateUploaded(
            primary,
            names,
            chain,
            sealed,
            _iso(info.not_before),
            _iso(info.not_after),
            info.issuer,
            info.fingerprint_sha256,
            list(info.names),
        )
        async with engine.lock(primary):
            s = await engine.load(primary)
            await asyncio.to_thread(engine.files.write, primary, chain, key_pem)
            try:
                await engine.append(primary, [uploaded], s.version)
            except ConcurrencyError:
                await engine.heal_one(primary)
                raise Conflict(
                    f"the certificate for {primary} changed at the same time; upload again",
                    field="names",
                ) from None
            await engine.stop_order(primary, "a custom certificate was uploaded instead")
        now = datetime.now(UTC)
        return {
            "primary": primary,
            "names": list(info.names),
            "kind": "custom",
            "issuer": info.issuer,
            "not_before": _iso(info.not_before),
            "not_after": _iso(info.not_after),
            "days_left": (info.not_after - now).days,
            "fingerprint": info.fingerprint_sha256,
            "state": "valid",
        }

    async def forget(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Stop serving and renewing a certificate: its files go, its order is cancelled."""
        _fields(payload, {"primary"})
        primary = _primary(payload)
        engine = self.engine
        async with engine.lock(primary):
            s = await engine.load(primary)
            if not s.exists:
                raise NotFound(f"no certificate for {primary}", field="primary")
            try:
                await engine.append(primary, [ev.CertificateForgotten(primary)], s.version)
            except ConcurrencyError:
                raise Conflict(
                    f"the certificate for {primary} changed at the same time; try again",
                    field="primary",
                ) from None
            await engine.stop_order(primary, f"the certificate for {primary} was forgotten")
            await asyncio.to_thread(engine.files.remove, primary)
        return {"primary": primary, "forgotten": True}
