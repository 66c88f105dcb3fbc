"""Every call the apps service makes to another service (dns, identity, certs, the gateway).

An app's host name has one owner, this service: its DNS record (dns) and its certificate
(certs) are set when the app takes the name and dropped when it leaves it. The calls carry the
current bus context (the actor of the operation). A failure the operation should report becomes
`OperationFailed` with a code for programs; a query's failure keeps its wire code.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from libs.contracts.errors import BusError
from libs.events import context
from libs.events.bus import BusClient
from libs.events.context import Context
from services.apps.errors import OperationFailed

__all__ = ["Peers"]

log = logging.getLogger("services.apps.peers")

RECORD_TYPES = ("A", "AAAA")
EDGE_ASK_SECONDS = 5.0


class Peers:
    """The other services, as the apps service asks them (`bus` None: none is reachable)."""

    def __init__(self, bus: BusClient | None) -> None:
        self._bus = bus

    # -- dns: an app's A/AAAA records, owned by the app ------------------------------------

    async def dns_domain(self, domain: str) -> dict[str, Any] | None:
        """The dns service's view of `domain`, or None when it does not manage it."""
        if self._bus is None:
            return None
        try:
            view: dict[str, Any] = await self._bus.query("dns", "domain", {"domain": domain})
        except BusError as e:
            if e.code in ("not_found", "invalid"):  # invalid: a name dns could never manage
                return None
            raise OperationFailed(
                f"the dns service could not be asked about {domain}: {e.message}",
                "dns_unavailable",
            ) from e
        return view

    async def point(self, name: str, view: Mapping[str, Any], owner: str) -> None:
        """Point `name` at the domain's server addresses and wait until every authoritative
        server answers it (a CA checks it next). A record someone else set fails, naming it."""
        bus = self._need()
        for rtype, address in (("A", view.get("server_ipv4")), ("AAAA", view.get("server_ipv6"))):
            if not address:
                continue
            payload = {"name": name, "type": rtype, "values": [address], "owner": owner}
            try:
                await bus.command("dns", "set_record", payload, timeout=60)
            except BusError as e:
                code = "dns_conflict" if e.code == "conflict" else "dns_failed"
                raise OperationFailed(f"{name}: {e.message}", code) from e
            wait = {"name": name, "type": rtype, "values": [address], "deadline_s": 300}
            try:
                await bus.command("dns", "wait_record", wait, timeout=320)
            except BusError as e:
                raise OperationFailed(f"{name}: {e.message}", "dns_propagation") from e

    async def unpoint(self, name: str, owner: str) -> None:
        """Remove the records of `name` that `owner` set (none set is fine)."""
        bus = self._need()
        for rtype in RECORD_TYPES:
            payload = {"name": name, "type": rtype, "owner": owner}
            try:
                await bus.command("dns", "remove_record", payload, timeout=60)
            except BusError as e:
                if e.code != "not_found":
                    raise OperationFailed(f"{name}: {e.message}", "dns_failed") from e

    # -- certs: an app host's certificate ---------------------------------------------------

    async def ensure_certificate(self, host: str) -> None:
        """A certificate for `host`: a self-signed fallback is served at once, the real one
        follows (certs orders it)."""
        try:
            await self._need().command("certs", "ensure", {"names": [host]}, timeout=60)
        except BusError as e:
            raise OperationFailed(f"{host}: {e.message}", "certificate_failed") from e

    async def forget_certificate(self, host: str) -> None:
        """Stop serving and renewing the certificate of `host` (none, or no certs, is fine)."""
        if self._bus is None:
            return
        try:
            await self._bus.command("certs", "forget", {"primary": host}, timeout=60)
        except BusError as e:
            if e.code != "not_found":
                log.warning("the certificate of %s could not be forgotten: %s", host, e.message)

    # -- the gateway's edge -----------------------------------------------------------------

    async def edge_serves(self, host: str) -> bool | None:
        """Whether the live nginx configuration serves `host`; None when no edge answers."""
        if self._bus is None:
            return None
        try:
            answer = await self._bus.query(
                "gateway", "edge_host", {"host": host}, timeout=EDGE_ASK_SECONDS
            )
        except BusError as e:
            if e.code == "deadline_exceeded":
                return False
            return None  # unavailable (no gateway, or a gateway without an edge)
        return isinstance(answer, dict) and answer.get("served") is True

    # -- identity: the LDAP addon and group membership --------------------------------------

    async def ldap_endpoint(self) -> dict[str, Any]:
        """Where the identity service's LDAP endpoint listens (`hosts`, `port`)."""
        return dict(await self._identity("query", "ldap_endpoint", {}))

    async def ldap_register_app(self, app_id: str, access: Mapping[str, Any]) -> dict[str, Any]:
        """The app's bind account and base DNs, limited to who may open the app."""
        payload = {"app_id": app_id, "access": _ldap_access(access)}
        return dict(await self._identity("command", "ldap_register_app", payload))

    async def ldap_set_app_access(self, app_id: str, access: Mapping[str, Any]) -> None:
        if self._bus is not None:
            payload = {"app_id": app_id, "access": _ldap_access(access)}
            await self._identity("command", "ldap_set_app_access", payload)

    async def ldap_remove_app(self, app_id: str) -> None:
        if self._bus is not None:
            await self._identity("command", "ldap_remove_app", {"app_id": app_id})

    # -- mail: the sendmail addon -----------------------------------------------------------

    async def mail_register_app(
        self, app_id: str, sender: str, network: str, password: str | None = None
    ) -> dict[str, Any]:
        """The app's sending account (a new password, or `password` kept): host, port,
        username, password, sender."""
        payload = {"app_id": app_id, "sender": sender, "network": network}
        if password is not None:
            payload["password"] = password
        return dict(await self._mail("register_app", payload))

    async def mail_register_client(self, app_id: str, network: str) -> dict[str, Any]:
        """Where an app that is a mail client (webmail) reaches IMAP, submission and
        ManageSieve: host, imap_port, submission_port, sieve_port, domain."""
        payload = {"app_id": app_id, "network": network}
        return dict(await self._mail("register_client", payload))

    async def mail_remove_app(self, app_id: str) -> None:
        if self._bus is not None:
            await self._mail("remove_app", {"app_id": app_id})

    async def _mail(self, name: str, payload: dict[str, Any]) -> Any:
        if self._bus is None:
            raise OperationFailed(
                f"the {'mailclient' if name == 'register_client' else 'sendmail'} addon needs"
                " the mail service",
                "addon_unavailable",
            )
        ctx = context.current()
        try:
            return await self._bus.command(
                "mail", name, payload, ctx=Context("system", ctx.correlation_id, None, None)
            )
        except BusError as e:
            if e.code == "unavailable":
                raise OperationFailed(
                    f"the mail service did not answer, so the app cannot send mail: {e.message}",
                    "addon_unavailable",
                ) from e
            raise OperationFailed(e.message, "runtime") from e

    async def group_ids(self, user_id: str) -> set[str]:
        """The groups `user_id` belongs to (asked as the platform); empty without identity."""
        if self._bus is None:
            return set()
        ctx = context.current()
        answer = await self._bus.query(
            "identity", "groups", {}, ctx=Context("system", ctx.correlation_id, None, None)
        )
        return {
            str(g["group_id"]) for g in answer.get("items", []) if user_id in g.get("members", [])
        }

    # -- helpers ----------------------------------------------------------------------------

    def _need(self) -> BusClient:
        if self._bus is None:
            raise OperationFailed("no bus to reach the other services", "runtime")
        return self._bus

    async def _identity(self, kind: str, name: str, payload: dict[str, Any]) -> Any:
        if self._bus is None:
            raise OperationFailed("the ldap addon needs the identity service", "addon_unavailable")
        try:
            if kind == "query":
                return await self._bus.query("identity", name, payload)
            return await self._bus.command("identity", name, payload)
        except BusError as e:
            raise OperationFailed(e.message, "runtime") from e


def _ldap_access(access: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "all_users": bool(access.get("all_users")),
        "user_ids": list(access.get("user_ids", [])),
        "groups": list(access.get("groups", [])),
    }
