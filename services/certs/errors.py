"""The errors of the certs service, rooted at `CertsError`: callers catch one type.

Each also inherits its wire class (`libs/contracts/errors.py`), so a handler raising it answers
with that code. `AcmeError`, `CertificateError` and `FilesError` come from the adapters (the CA,
X.509 parsing, the files nginx reads); the engine records the first and the last as an order's
outcome, an upload answers the second as 400 naming the part at fault.
"""

from __future__ import annotations

from libs.contracts.errors import BusError, Conflict, Invalid, NotFound, Unavailable

__all__ = [
    "AcmeError",
    "CertificateChanged",
    "CertificateError",
    "CertificateNotFound",
    "CertsError",
    "CertsStopping",
    "CustomNotRenewed",
    "FilesError",
    "InvalidRequest",
    "NotCovered",
]


class CertsError(BusError):
    """Anything the certs service refuses or fails to do."""


class InvalidRequest(CertsError, Invalid):
    """A name or option the service cannot use; `field` names it."""


class CertificateError(CertsError, Invalid):
    """A certificate, key or chain that cannot be used; `field` names the part at fault
    (`certificate`, `key`, `chain` or `names`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message, field=field)


class CertificateNotFound(CertsError, NotFound):
    """No certificate is kept under this primary name."""

    def __init__(self, primary: str) -> None:
        super().__init__(f"no certificate for {primary}", field="primary")


class NotCovered(CertsError, NotFound):
    """No certificate on disk covers this host."""

    def __init__(self, host: str) -> None:
        super().__init__(f"no certificate covers {host}", field="host")


class CertificateChanged(CertsError, Conflict):
    """Another change to the certificate's stream came first (reload and decide again)."""

    def __init__(
        self,
        primary: str = "",
        advice: str = "look again and retry",
        *,
        field: str | None = "primary",
    ) -> None:
        what = f"the certificate for {primary}" if primary else "the certificate"
        super().__init__(f"{what} changed at the same time; {advice}", field=field)


class CustomNotRenewed(CertsError, Conflict):
    """An uploaded certificate is renewed by its own CA, never by Homeport."""

    def __init__(self, primary: str) -> None:
        super().__init__(
            f"the certificate for {primary} was uploaded: renew it with its CA and upload the "
            "new one",
            field="primary",
        )


class CertsStopping(CertsError, Unavailable):
    """The service is stopping: an order it would start now runs after the restart."""

    def __init__(self) -> None:
        super().__init__("the certs service is stopping: the order runs after restart")


class FilesError(CertsError, Unavailable):
    """A certificate or token file could not be written or removed."""


class AcmeError(CertsError):
    """An ACME step failed. It is an order's outcome, not a wire answer: `code` (recorded in
    `CertificateRenewalFailed` and the task) is one of

    rate_limited (see retry_after), bad_nonce, connection (the ACME server is unreachable),
    unauthorized (a challenge answer was wrong), unreachable / dns / caa (the CA could not check
    the challenge), invalid_order (names or challenges the CA refuses), account_missing,
    external_account_required, user_action_required, timeout, server, acme.
    """

    def __init__(self, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        # The ACME failure code, kept on the instance as `Internal` keeps an unknown wire code.
        self.__dict__["code"] = code
        self.retry_after = retry_after
