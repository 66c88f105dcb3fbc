"""Every service's contract by service name: what `BusClient` checks a payload against."""

from __future__ import annotations

from collections.abc import Mapping

from libs.contracts import Contract
from libs.contracts.apps import CONTRACT as APPS
from libs.contracts.backup import CONTRACT as BACKUP
from libs.contracts.certs import CONTRACT as CERTS
from libs.contracts.dns import CONTRACT as DNS
from libs.contracts.firewall import CONTRACT as FIREWALL
from libs.contracts.gateway import CONTRACT as GATEWAY
from libs.contracts.identity import CONTRACT as IDENTITY
from libs.contracts.mail import CONTRACT as MAIL
from libs.contracts.notify import CONTRACT as NOTIFY

__all__ = ["CONTRACTS"]

_ALL: tuple[Contract, ...] = (GATEWAY, CERTS, DNS, IDENTITY, APPS, BACKUP, MAIL, FIREWALL, NOTIFY)

CONTRACTS: Mapping[str, Contract] = {c.service: c for c in _ALL}
