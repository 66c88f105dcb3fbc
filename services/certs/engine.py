"""The certs engine: ACME orders, their one outcome each, the files nginx reads, renewals.

The command handlers (`commands.py`) validate and decide; the engine runs orders in tracked
background tasks, records exactly one outcome per order (`CertificateIssued` or
`CertificateRenewalFailed`) and writes the files. The renewal loop wakes every `check_hours`
± 10 % (and when a retry falls due), renews ACME certificates with fewer than `renew_days`
days left and retries failed orders with backoff. A stop gives running orders the drain
deadline, then cancels them without recording an outcome: the next start runs them again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from libs.events import context
from libs.events.bus import BusError
from libs.events.context import Context
from libs.events.envelope import RecordedEvent
from libs.events.errors import ConcurrencyError
from libs.events.repository import Repository
from libs.events.sealing import Keyring, SealingError
from libs.events.store import PostgresEventStore
from libs.events.tasks import Task
from libs.service.runner import ServiceStopping
from services.certs import events as ev
from services.certs import metrics
from services.certs.certificates import (
    CertInfo,
    covers,
    inspect,
    next_check_delay,
    renewal_due,
    self_signed,
)
from services.certs.config import CertsConfig
from services.certs.errors import (
    AcmeError,
    CertificateChanged,
    CertificateError,
    CertsStopping,
    FilesError,
)
from services.certs.projections import CertsProjection, CertState, Pending, fold
from services.certs.store import CertFiles, TokenFiles

if TYPE_CHECKING:  # acme, josepy and requests cost ~5 MiB: imported when an account is needed
    from services.certs.acme_client import AcmeAccount, TxtPublisher

__all__ = ["TRANSIENT", "Engine", "retry_delay"]

log = logging.getLogger("services.certs")

TRANSIENT = frozenset({"connection", "server", "bad_nonce", "timeout", "internal", "files"})
_VALIDATION_GAP = 3600.0  # CAs limit failed validations per hour: never retry those sooner
_STOP_GRACE = 10.0

Spawn = Callable[[Coroutine[Any, Any, Any], str], asyncio.Task[Any]]


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


def _account_key(directory: str, events: Sequence[RecordedEvent]) -> str | None:
    """The sealed key of the account registered at `directory`, if any."""
    return str(events[-1].data["account_key"]) if events else None


def _account_raced() -> Exception:
    return AcmeError("server", "the ACME account was registered twice at the same time; try again")


@dataclass
class _Run:
    task_id: str
    task: asyncio.Task[Any]


class Engine:
    """Runs orders and the renewal loop; the commands only validate, decide and call it.

    `txt` answers DNS-01 challenges (None: http-01 only); `spawn` starts a tracked task.
    """

    def __init__(
        self,
        cfg: CertsConfig,
        store: PostgresEventStore,
        keyring: Keyring,
        files: CertFiles,
        tokens: TokenFiles,
        txt: TxtPublisher | None,
        spawn: Spawn,
    ) -> None:
        self._cfg = cfg
        self._store = store
        self._keyring = keyring
        self._files = files
        self._tokens = tokens
        self._txt = txt
        self._spawn = spawn
        projection = CertsProjection()
        self._certs = Repository(
            store, ev.cert_stream, fold, projection, conflict=CertificateChanged
        )
        self._accounts = Repository(
            store, ev.account_stream, _account_key, projection, conflict=_account_raced
        )
        self._locks: dict[str, asyncio.Lock] = {}
        self._running: dict[str, _Run] = {}
        self._account: AcmeAccount | None = None
        self._account_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()

    # -- lifecycle ----------

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Engine]:
        """Heal the files from the events at start; on exit stop the renewal loop, give the
        running orders the drain deadline, cancel the rest and close the ACME account."""
        healed = await self.heal_files()
        log.info("certificate files written for %d name(s)", healed)
        try:
            yield self
        finally:
            self.stop()
            await self._stop_orders(self._cfg.drain_seconds)
            await self.close()

    async def _stop_orders(self, grace: float) -> None:
        tasks = {run.task for run in self._running.values() if not run.task.done()}
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=grace)
        for t in late:
            t.cancel()
        if late:
            log.info(
                "stopped %d order(s) without an outcome; they run at the next start", len(late)
            )
            await asyncio.wait(late, timeout=_STOP_GRACE)

    # -- the stream ----------

    def lock(self, primary: str) -> asyncio.Lock:
        return self._locks.setdefault(primary, asyncio.Lock())

    async def load(self, primary: str) -> CertState:
        return await self._certs.load(primary)

    async def append(self, primary: str, new: list[Any], expected: int | None) -> None:
        """Append to the certificate's stream and update the read model in one transaction;
        CertificateChanged if another change came first."""
        await self._certs.append(primary, new, expected)

    async def seal(self, subject: str, pem: str) -> str:
        return await asyncio.to_thread(self._keyring.seal_for, subject, pem)

    def running_task(self, primary: str) -> str | None:
        run = self._running.get(primary)
        return run.task_id if run is not None and not run.task.done() else None

    # -- files ----------

    async def ensure_fallback(self, primary: str, names: list[str]) -> None:
        """Self-signed files for `names` unless the primary's files already cover them."""
        chain = await asyncio.to_thread(self._files.read_chain, primary)
        if chain is not None and await asyncio.to_thread(self._files.exists, primary):
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
        await asyncio.to_thread(self._files.write, primary, cert_pem, key_pem)
        log.info("fallback certificate written", extra={"primary": primary})

    async def heal_files(self) -> int:
        """At start: rewrite every certificate's files from the events; returns how many."""
        rows = await self._store.pool.fetch(
            "SELECT stream FROM events.streams WHERE stream LIKE $1 ORDER BY stream",
            f"{ev.CERT_CATEGORY}-%",
        )
        live: set[str] = set()
        for r in rows:
            events = await self._store.read_stream(r["stream"])
            if not events:
                continue
            primary = str(events[0].data["primary"])
            if await self._write_state(fold(primary, events)):
                live.add(primary)
        for name in await asyncio.to_thread(self._files.leftovers, live):
            log.info("removing certificate files of nothing known: %s", name)
            await asyncio.to_thread(self._files.remove_name, name)
        return len(live)

    async def heal_one(self, primary: str) -> None:
        """Make the files of `primary` what its events say."""
        s = await self.load(primary)
        if not await self._write_state(s):
            await asyncio.to_thread(self._files.remove, primary)

    async def _write_state(self, s: CertState) -> bool:
        if not s.exists:
            return False
        if s.current is not None:
            key_pem = await asyncio.to_thread(self._keyring.unseal_str, s.current.key)
            await asyncio.to_thread(self._files.write, s.primary, s.current.chain_pem, key_pem)
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
            self._store,
            kind="certs.order",
            title=f"Certificate for {primary}"[:200],
            owner=owner,
            target=ev.cert_stream(primary),
        )
        ordered = ev.CertificateOrdered(
            primary=primary, names=names, challenge=challenge, task_id=task.id, reason=reason
        )
        try:
            await self.append(primary, [ordered], s.version)
        except CertificateChanged:
            await task.fail(
                "another change to this certificate came first; nothing done", "conflict"
            )
            raise CertificateChanged(primary) from None
        self._launch(primary, Pending(task.id, tuple(names), challenge, reason), task)
        return task.id

    def _launch(self, primary: str, pending: Pending, task: Task) -> None:
        try:
            t = self._spawn(self._run(primary, pending, task), f"certs.order.{primary}")
        except ServiceStopping as e:
            raise CertsStopping() from e
        run = _Run(task.id, t)
        self._running[primary] = run

        def done(_: asyncio.Task[Any]) -> None:
            if self._running.get(primary) is run:
                del self._running[primary]

        t.add_done_callback(done)

    async def _resume_locked(self, s: CertState) -> None:
        assert s.pending is not None
        task = await Task.load(self._store, s.pending.task_id)
        if task.ended:
            # the task ended without an outcome in the stream: close the order, retry soon
            failed = ev.CertificateRenewalFailed(
                primary=s.primary,
                code="interrupted",
                message="the order was interrupted; it is tried again",
                retry_at=_iso(datetime.now(UTC)),
                task_id=s.pending.task_id,
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
        task = await Task.load(self._store, run.task_id)
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
                http=self._tokens if pending.challenge == "http-01" else None,
                dns=self._txt if pending.challenge == "dns-01" else None,
                progress=progress,
                deadline=self._cfg.order_deadline_s,
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
            primary=primary,
            names=list(info.names),
            chain_pem=chain_pem,
            key=sealed,
            not_before=_iso(info.not_before),
            not_after=_iso(info.not_after),
            issuer=info.issuer,
            fingerprint=info.fingerprint_sha256,
            task_id=task.id,
        )
        async with self.lock(primary):
            s = await self.load(primary)
            if s.pending is None or s.pending.task_id != task.id:
                await task.fail(
                    "the order was superseded; its certificate is not used", "superseded"
                )
                return
            # files first: whoever reacts to the event (the edge reloading nginx) finds them
            await asyncio.to_thread(self._files.write, primary, chain_pem, key_pem)
            try:
                await self.append(primary, [issued], s.version)
            except CertificateChanged:
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
                code, retry_after, s.failures + 1, self._cfg.retry_min_s, self._cfg.retry_max_s
            )
            retry_at = datetime.now(UTC) + timedelta(seconds=delay)
            failed = ev.CertificateRenewalFailed(
                primary=primary,
                code=code,
                message=message[:2000],
                retry_at=_iso(retry_at),
                task_id=task.id,
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
            directory = self._cfg.acme_directory
            known = await self._accounts.load(directory)
            key_pem = None
            if known is not None:
                key_pem = await asyncio.to_thread(self._keyring.unseal_str, known)
            from services.certs.acme_client import AcmeAccount

            account = await AcmeAccount.register(
                directory,
                self._cfg.acme_email or None,
                account_key_pem=key_pem,
                ca_bundle=self._cfg.acme_ca_bundle or None,
            )
            if known is None:
                try:
                    sealed = await self.seal(ev.account_stream(directory), account.account_key_pem)
                    registered = ev.AcmeAccountRegistered(
                        directory=directory, uri=account.uri, account_key=sealed
                    )
                    await self._accounts.append(directory, [registered], 0)
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
            delay = next_check_delay(self._cfg.check_hours)
            if soonest is not None:
                delay = min(delay, max(soonest, 0.05))
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def check_once(self) -> float | None:
        """Start what is due; the seconds until the next retry falls due, if any."""
        rows = await self._store.pool.fetch(
            "SELECT primary_name, names, challenge, kind, issuer, not_before, not_after,"
            " fingerprint, task_id, next_attempt_at, failures FROM certs.certificates"
            " ORDER BY primary_name"
        )
        metrics.observe_all((r["primary_name"], r["not_after"], r["failures"]) for r in rows)
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
                if renewal_due(info, now, self._cfg.renew_days):
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
