"""The errors of the dns service, rooted at `DnsError`: callers catch one type.

Each also inherits its wire class (`libs/contracts/errors.py`), so a handler raising it answers
with that code. The adapters raise `DnsProviderError` (and its kinds `ForeignRecord`,
`ProviderConfigError`), translated from their SDK's errors; the handlers say which of them a
user must fix (a setting, a record in the way) and which is the provider's trouble.
"""

from __future__ import annotations

from typing import ClassVar

from libs.contracts.errors import BusError, Conflict, Invalid, NotFound, Unavailable
from services.dns.providers.protocol import Record, format_record

__all__ = [
    "DnsError",
    "DnsProviderError",
    "DnsUnavailable",
    "DomainChanged",
    "DomainExists",
    "DomainInUse",
    "DomainNotFound",
    "ForeignRecord",
    "InvalidRequest",
    "NoDomainFor",
    "NotOwned",
    "ProviderConfigError",
    "RecordConflict",
]


class DnsError(BusError):
    """Anything the dns service refuses or fails to do."""


class InvalidRequest(DnsError, Invalid):
    """Input the service cannot use; `field` names it."""


class DomainNotFound(DnsError, NotFound):
    """Homeport does not manage this domain."""

    def __init__(self, domain: str, advice: str = "add it first") -> None:
        said = f"no domain {domain}: {advice}" if advice else f"no domain {domain}"
        super().__init__(said, field="domain")


class NoDomainFor(DnsError, NotFound):
    """No domain Homeport manages holds this name."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"no domain Homeport manages holds {name}: add its domain first", field="name"
        )


class NotOwned(DnsError, NotFound):
    """Homeport did not create this record, so it does not remove it."""

    def __init__(self, name: str, type_: str) -> None:
        super().__init__(
            f"Homeport owns no {name} {type_} record, and it removes only records it created",
            field="name",
        )


class DomainExists(DnsError, Conflict):
    """The domain is added already."""

    def __init__(self, domain: str = "") -> None:
        what = f"domain {domain}" if domain else "the domain"
        super().__init__(f"{what} is already added", field="domain")


class DomainChanged(DnsError, Conflict):
    """Another change to the domain's stream came first (look again and retry)."""

    def __init__(self, domain: str = "") -> None:
        what = f"domain {domain}" if domain else "the domain"
        super().__init__(f"{what} was changed at the same time; look again and retry")


class DomainInUse(DnsError, Conflict):
    """Apps are installed on the domain, so it stays."""

    def __init__(self, domain: str, users: list[str]) -> None:
        super().__init__(
            f"domain {domain} is used by {len(users)} app(s) ({', '.join(users)}): move or"
            " uninstall them first",
            field="domain",
        )


class RecordConflict(DnsError, Conflict):
    """A record is not Homeport's to change this way: it is kept for another owner, domain or
    purpose, or it changed meanwhile; `field` names the input at fault."""


class DnsUnavailable(DnsError, Unavailable):
    """The provider, the nameservers or a service asked could not do it now."""


class DnsProviderError(DnsError, Unavailable):
    """A provider refused or failed an operation; the message names the zone or record and
    says what to do."""


class ForeignRecord(DnsProviderError, Conflict):
    """A record Homeport did not create is in the way; `record` is what the provider holds."""

    code: ClassVar[str] = Conflict.code

    def __init__(self, record: Record, wanted: Record) -> None:
        super().__init__(
            f"{format_record(record)} already exists and was not created by Homeport, so it is "
            f"left alone: remove it at your DNS provider, or choose another name than "
            f"{wanted.name}, then try again"
        )
        self.record = record
        self.wanted = wanted


class ProviderConfigError(DnsProviderError, Invalid):
    """The provider config is wrong; `field` names the offending key (`kind` for the kind)."""

    code: ClassVar[str] = Invalid.code

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message, field=field)
