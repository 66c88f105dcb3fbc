"""ACME v2 adapter over certbot's `acme` package: accounts and orders (http-01, dns-01).

The `acme` client is synchronous (requests); every call runs in a worker thread, and all waiting
(polling, backoff) happens on the event loop so an order can be cancelled between steps.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import requests
from acme import challenges, messages
from acme import client as acme_client
from acme import errors as acme_errors
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.errors import DeserializationError
from josepy.jwa import ES256
from josepy.jwk import JWKEC

from services.certs.certificates import (
    CertificateError,
    CertInfo,
    csr_for,
    inspect,
    new_private_key,
)
from services.certs.errors import AcmeError

__all__ = [
    "AcmeAccount",
    "AcmeError",
    "HttpResponder",
    "Issued",
    "TxtPublisher",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
Progress = Callable[[str], Awaitable[None]]

# Pebble rejects 5 % of nonces by default (50 % in our tests); a fresh nonce is cheap, and
# 20 attempts make a spurious failure at 50 % about one in a million per request.
_NONCE_ATTEMPTS = 20
_CONNECT_ATTEMPTS = 4  # backoff 0.5 s, 1 s, 2 s between them
_CONNECT_BACKOFF = 0.5
_POLL_FIRST = 0.2  # first poll delay without Retry-After; doubles up to _POLL_MAX
_POLL_MAX = 3.0
_RETRY_AFTER_MAX = 60.0  # while polling, never sleep longer than this per round
_WITHDRAW_TIMEOUT = 30.0  # per token / TXT record

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_DNS_NAME = re.compile(rf"(\*\.)?({_LABEL}\.)+{_LABEL}")

_KNOWN_CAS = {
    "acme-v02.api.letsencrypt.org": "Let's Encrypt",
    "acme-staging-v02.api.letsencrypt.org": "Let's Encrypt (staging)",
    "acme.zerossl.com": "ZeroSSL",
    "api.buypass.com": "Buypass",
}

# ACME problem types (RFC 8555 section 6.7) to our error codes.
_PROBLEM_CODES = {
    "rateLimited": "rate_limited",
    "badNonce": "bad_nonce",
    "unauthorized": "unauthorized",
    "incorrectResponse": "unauthorized",
    "connection": "unreachable",
    "tls": "unreachable",
    "dns": "dns",
    "unknownHost": "dns",
    "caa": "caa",
    "rejectedIdentifier": "invalid_order",
    "unsupportedIdentifier": "invalid_order",
    "malformed": "invalid_order",
    "badCSR": "invalid_order",
    "orderNotReady": "invalid_order",
    "accountDoesNotExist": "account_missing",
    "externalAccountRequired": "external_account_required",
    "userActionRequired": "user_action_required",
    "serverInternal": "server",
}

_HINTS = {
    "bad_nonce": "the CA kept rejecting nonces: try again in a few minutes",
    "invalid_order": "check that the names are public DNS names this CA will certify",
    "account_missing": "the ACME account is gone: register a new one",
    "external_account_required": "this CA needs an external account binding (EAB) key",
    "user_action_required": "accept the CA's updated terms of service, then try again",
    "unauthorized": "check the ACME account key and the names",
}


class HttpResponder(Protocol):
    """The edge: serves `/.well-known/acme-challenge/<token>` with the key authorization."""

    async def put(self, token: str, key_authorization: str) -> None: ...

    async def remove(self, token: str) -> None: ...


class TxtPublisher(Protocol):
    """The dns service: sets `_acme-challenge` TXT records for DNS-01."""

    async def publish(self, name: str, value: str) -> None:
        """Add the value; return once the ACME server's resolver can see it."""
        ...

    async def remove(self, name: str, value: str) -> None: ...


@dataclass(frozen=True)
class Issued:
    """A certificate chain (leaf first) and its new private key (PKCS#8 PEM, seal it)."""

    chain_pem: str
    key_pem: str
    info: CertInfo


class _RateLimited(Exception):
    """Carries a rateLimited problem together with the response's Retry-After."""

    def __init__(self, problem: messages.Error, retry_after: float | None) -> None:
        super().__init__(str(problem))
        self.problem = problem
        self.retry_after = retry_after


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class _Network(acme_client.ClientNetwork):
    """ClientNetwork that retries badNonce with fresh nonces and keeps rateLimited's Retry-After."""

    def post(self, *args: Any, **kwargs: Any) -> requests.Response:
        for attempt in range(1, _NONCE_ATTEMPTS + 1):
            try:
                return self._post_once(*args, **kwargs)
            except messages.Error as e:
                if e.code != "badNonce" or attempt == _NONCE_ATTEMPTS:
                    raise
                log.debug("badNonce, retrying with a fresh nonce (attempt %d)", attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    @classmethod
    def _check_response(
        cls, response: requests.Response, content_type: str | None = None
    ) -> requests.Response:
        try:
            return super()._check_response(response, content_type=content_type)
        except messages.Error as e:
            if e.code == "rateLimited":
                retry = _parse_retry_after(response.headers.get("Retry-After"))
                raise _RateLimited(e, retry) from e
            raise


@dataclass
class _Pending:
    """Challenge answers published for one order, to be withdrawn whatever happens."""

    tokens: list[str] = field(default_factory=list)
    txts: list[tuple[str, str]] = field(default_factory=list)


class AcmeAccount:
    """One ACME account at one directory URL; orders certificates with it."""

    def __init__(
        self,
        client: acme_client.ClientV2,
        net: _Network,
        key: JWKEC,
        key_pem: str,
        directory_url: str,
        ca_name: str,
    ) -> None:
        self._client = client
        self._net = net
        self._key = key
        self._key_pem = key_pem
        self._directory_url = directory_url
        self._ca = ca_name
        self._lock = asyncio.Lock()  # one request at a time on the shared requests session

    @classmethod
    async def register(
        cls,
        directory_url: str,
        email: str | None,
        *,
        account_key_pem: str | None = None,
        ca_bundle: str | None = None,
        timeout: float = 30,  # noqa: ASYNC109 - per HTTP request, handed to requests
        ca_name: str | None = None,
    ) -> AcmeAccount:
        """Register (agreeing to the terms of service) or find the account of `account_key_pem`.

        A new EC P-256 account key is made when none is given. `ca_bundle` is the path of a PEM
        file of CAs to trust for the ACME server's own TLS; `ca_name` names the CA in messages.
        """
        key_pem = account_key_pem or new_private_key()
        try:
            private = serialization.load_pem_private_key(key_pem.encode(), password=None)
        except (ValueError, TypeError) as e:
            raise AcmeError(
                "account_key", "the ACME account key is not an unencrypted PEM key"
            ) from e
        if not isinstance(private, ec.EllipticCurvePrivateKey) or not isinstance(
            private.curve, ec.SECP256R1
        ):
            raise AcmeError("account_key", "the ACME account key must be an EC P-256 key")
        jwk = JWKEC(key=private)
        ca = ca_name or _ca_name(directory_url)
        net = _Network(
            key=jwk,
            alg=ES256,
            verify_ssl=ca_bundle or True,  # type: ignore[arg-type]  # requests takes a path too
            user_agent="homeport-acme",
            timeout=max(1, round(timeout)),
        )
        account = cls(
            acme_client.ClientV2(messages.Directory({}), net), net, jwk, key_pem, directory_url, ca
        )
        try:
            directory = await account._call(
                f"reading the directory of {ca}",
                acme_client.ClientV2.get_directory,
                directory_url,
                net,
            )
            account._client = acme_client.ClientV2(directory, net)
            await account._call(f"registering with {ca}", account._new_or_existing, email)
        except BaseException:
            net.session.close()
            raise
        log.info("acme account ready", extra={"ca": ca, "account": account.uri})
        return account

    def _new_or_existing(self, email: str | None) -> messages.RegistrationResource:
        reg = messages.NewRegistration.from_data(email=email, terms_of_service_agreed=True)
        try:
            return self._client.new_account(reg)
        except acme_errors.ConflictError as e:
            # the key is known: fetch that account (onlyReturnExisting)
            existing = messages.RegistrationResource(uri=e.location, body=messages.Registration())
            return self._client.query_registration(existing)

    @property
    def account_key_pem(self) -> str:
        """The account's private key (PKCS#8 PEM); the caller seals it."""
        return self._key_pem

    @property
    def uri(self) -> str:
        """The account URL at the CA."""
        acct = self._net.account
        return str(acct.uri) if acct is not None else ""

    @property
    def directory_url(self) -> str:
        return self._directory_url

    async def aclose(self) -> None:
        """Close the HTTP session."""
        self._net.session.close()

    async def __aenter__(self) -> AcmeAccount:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def issue(
        self,
        names: Sequence[str],
        *,
        http: HttpResponder | None = None,
        dns: TxtPublisher | None = None,
        progress: Progress | None = None,
        deadline: float = 300,
    ) -> Issued:
        """Order a certificate for `names` with a new EC P-256 key.

        http-01 answers plain names, dns-01 answers wildcards (and every name when only `dns`
        is given). Published tokens and TXT records are removed whatever the outcome.
        """
        wanted = _clean(names)
        if not wanted:
            raise AcmeError("invalid_order", "no names to order a certificate for")
        bad = [n for n in wanted if len(n) > 253 or not _DNS_NAME.fullmatch(n)]
        if bad:
            raise AcmeError(
                "invalid_order",
                f"{', '.join(repr(n) for n in bad)} is not a DNS name a CA can certify: use "
                "letters, digits, hyphens and dots (punycode for international names)",
            )
        wild = [n for n in wanted if n.startswith("*.")]
        if wild and dns is None:
            raise AcmeError(
                "invalid_order",
                f"{', '.join(wild)} can only be validated over DNS-01: set up a DNS provider "
                "for this domain",
            )
        if http is None and dns is None:
            raise AcmeError("invalid_order", "no way to answer challenges: give http or dns")
        pending = _Pending()
        try:
            async with asyncio.timeout(deadline):
                return await self._order(wanted, http, dns, progress, pending)
        except TimeoutError as e:
            raise AcmeError(
                "timeout",
                f"{self._ca} did not issue the certificate for {', '.join(wanted)} within "
                f"{deadline:.0f} s: try again later",
            ) from e
        finally:
            await self._withdraw(pending, http, dns)

    async def _order(
        self,
        names: list[str],
        http: HttpResponder | None,
        dns: TxtPublisher | None,
        progress: Progress | None,
        pending: _Pending,
    ) -> Issued:
        async def say(msg: str) -> None:
            log.info("acme order step", extra={"step": msg, "names": names})
            if progress is not None:
                await progress(msg)

        shown = ", ".join(names)
        await say(f"asking {self._ca} for {shown}")
        key_pem = new_private_key()
        csr = csr_for(key_pem, names)
        orderr = await self._call(f"ordering {shown} from {self._ca}", self._client.new_order, csr)

        answers: list[tuple[messages.ChallengeBody, str]] = []
        for authzr in orderr.authorizations:
            if authzr.body.status == messages.STATUS_VALID:
                continue  # the CA reused an earlier valid authorization
            ident = authzr.body.identifier.value
            shown_name = f"*.{ident}" if authzr.body.wildcard else ident
            use_dns = bool(authzr.body.wildcard) or http is None
            kind = challenges.DNS01 if use_dns else challenges.HTTP01
            challb = next((c for c in authzr.body.challenges if isinstance(c.chall, kind)), None)
            if challb is None:
                raise AcmeError(
                    "invalid_order",
                    f"{self._ca} offers no {kind.typ} challenge for {shown_name}: "
                    "configure the other validation method for this domain",
                )
            validation = challb.chall.validation(self._key)
            if use_dns:
                assert dns is not None
                txt_name = challb.chall.validation_domain_name(ident)
                await say(f"publishing the dns-01 TXT record for {shown_name}")
                pending.txts.append((txt_name, validation))
                await dns.publish(txt_name, validation)
            else:
                assert http is not None
                token = challb.chall.encode("token")
                pending.tokens.append(token)
                await http.put(token, validation)
            answers.append((challb, f"{kind.typ} challenge for {shown_name}"))

        for challb, what in answers:
            await say(f"answering the {what}")
            await self._call(
                f"answering the {what}",
                self._client.answer_challenge,
                challb,
                challb.chall.response(self._key),
            )
        for authzr in orderr.authorizations:
            await self._wait_authorization(authzr)

        await say("finalizing")
        orderr = await self._finalize(orderr, shown)
        await say("downloading the certificate")
        url = orderr.body.certificate
        assert url is not None
        resp = await self._call(f"downloading the certificate for {shown}", self._post_as_get, url)
        chain = resp.text
        try:
            info = inspect(chain)
        except CertificateError as e:
            raise AcmeError(
                "server", f"{self._ca} returned an unreadable certificate for {shown}"
            ) from e
        if not _leaf_matches_key(chain, key_pem):
            raise AcmeError(
                "server", f"{self._ca} returned a certificate for {shown} that is not for our key"
            )
        return Issued(chain_pem=chain, key_pem=key_pem, info=info)

    async def _wait_authorization(self, authzr: messages.AuthorizationResource) -> None:
        delay = _POLL_FIRST
        ident = authzr.body.identifier.value
        name = f"*.{ident}" if authzr.body.wildcard else ident
        while True:
            authzr, resp = await self._call(
                f"checking the authorization of {name}", self._client.poll, authzr
            )
            status = authzr.body.status
            if status == messages.STATUS_VALID:
                return
            if status not in (messages.STATUS_PENDING, messages.STATUS_PROCESSING):
                raise self._challenge_failed(name, authzr)
            delay = await self._pause(resp, delay)

    def _challenge_failed(self, name: str, authzr: messages.AuthorizationResource) -> AcmeError:
        failed = [c for c in authzr.body.challenges if c.error is not None]
        if not failed:
            return AcmeError(
                "unauthorized",
                f"{self._ca} marked the authorization of {name} {authzr.body.status.name} "
                "without saying why: try again",
            )
        challb = failed[0]
        problem = challb.error
        assert problem is not None
        code = _PROBLEM_CODES.get(problem.code or "", "acme")
        if isinstance(challb.chall, challenges.DNS01):
            hint = (
                f"check that the TXT record _acme-challenge.{name.removeprefix('*.')} "
                "can be published and is visible from the internet"
            )
        else:
            hint = (
                f"check that {name} points at this server, that port 80 reaches it and that "
                "nothing else answers /.well-known/acme-challenge/ there"
            )
        detail = problem.detail or problem.description or str(problem.typ)
        return AcmeError(
            code,
            f"{self._ca} could not validate {name} over {challb.chall.typ}: {detail}; {hint}",
        )

    async def _finalize(self, orderr: messages.OrderResource, shown: str) -> messages.OrderResource:
        what = f"finalizing the order for {shown}"
        orderr = await self._call(what, self._begin_finalization, orderr)
        delay = _POLL_FIRST
        while True:
            body, resp = await self._call(what, self._poll_order, orderr.uri)
            if body.status == messages.STATUS_VALID and body.certificate is not None:
                done: messages.OrderResource = orderr.update(body=body)
                return done
            if body.status == messages.STATUS_INVALID:
                detail = str(body.error.detail) if body.error is not None else "no reason given"
                code = (
                    _PROBLEM_CODES.get(body.error.code or "", "invalid_order")
                    if body.error is not None
                    else "invalid_order"
                )
                raise AcmeError(code, f"{self._ca} refused the order for {shown}: {detail}")
            if body.status == messages.STATUS_READY:
                orderr = await self._call(what, self._begin_finalization, orderr)
            delay = await self._pause(resp, delay)

    def _begin_finalization(self, orderr: messages.OrderResource) -> messages.OrderResource:
        try:
            updated: messages.OrderResource = self._client.begin_finalization(orderr)
            return updated
        except messages.Error as e:
            # a retried finalize may find the order already processing: polling tells
            if e.code != "orderNotReady":
                raise
            return orderr

    async def _pause(self, resp: requests.Response, delay: float) -> float:
        wait = _parse_retry_after(resp.headers.get("Retry-After"))
        await asyncio.sleep(min(wait, _RETRY_AFTER_MAX) if wait is not None else delay)
        return min(delay * 2, _POLL_MAX)

    def _poll_order(self, url: str) -> tuple[messages.Order, requests.Response]:
        resp = self._post_as_get(url)
        return messages.Order.from_json(resp.json()), resp

    def _post_as_get(self, url: str) -> requests.Response:
        return self._net.post(url, None, new_nonce_url=self._client.directory["newNonce"])

    async def _withdraw(
        self, pending: _Pending, http: HttpResponder | None, dns: TxtPublisher | None
    ) -> None:
        """Remove every published token and TXT record; log (never raise) what fails."""
        for token in pending.tokens:
            assert http is not None
            try:
                async with asyncio.timeout(_WITHDRAW_TIMEOUT):
                    await http.remove(token)
            except Exception as e:
                log.warning("could not remove an http-01 token: %r", e)
        for name, value in pending.txts:
            assert dns is not None
            try:
                async with asyncio.timeout(_WITHDRAW_TIMEOUT):
                    await dns.remove(name, value)
            except Exception as e:
                log.warning("could not remove the TXT record %s: %r", name, e)

    async def _call(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """Run one blocking ACME call in a thread; retry connection errors, translate the rest."""
        delay = _CONNECT_BACKOFF
        for attempt in range(1, _CONNECT_ATTEMPTS + 1):
            try:
                async with self._lock:
                    return await asyncio.to_thread(fn, *args)
            except requests.exceptions.SSLError as e:
                raise AcmeError(
                    "connection",
                    f"{what}: the TLS certificate of {self._directory_url} is not trusted; "
                    "check the directory URL (or the CA bundle for a private ACME server)",
                ) from e
            except (requests.ConnectionError, requests.Timeout) as e:
                if attempt == _CONNECT_ATTEMPTS:
                    raise AcmeError(
                        "connection",
                        f"{what}: cannot reach {self._directory_url} after {attempt} attempts; "
                        "check the directory URL and that this server can make outbound "
                        "HTTPS connections",
                    ) from e
                log.info("acme connection error, retrying", extra={"step": what})
                await asyncio.sleep(delay)
                delay *= 2
            except _RateLimited as e:
                after = (
                    f"retry after {e.retry_after:.0f} s"
                    if e.retry_after is not None
                    else "retry later"
                )
                raise AcmeError(
                    "rate_limited",
                    f"{what}: {self._ca} is rate limiting ({e.problem.detail or 'no detail'}); "
                    f"{after}",
                    retry_after=e.retry_after,
                ) from e
            except messages.Error as e:
                code = _PROBLEM_CODES.get(e.code or "", "acme")
                detail = e.detail or e.description or str(e.typ)
                hint = _HINTS.get(code, "try again later")
                raise AcmeError(code, f"{what}: {self._ca} answered: {detail}; {hint}") from e
            except (acme_errors.Error, DeserializationError, ValueError) as e:
                raise AcmeError(
                    "server",
                    f"{what}: unexpected answer from {self._directory_url} ({e}); "
                    "check that the URL is an ACME directory",
                ) from e
        raise AssertionError("unreachable")  # pragma: no cover


def _leaf_matches_key(chain_pem: str, key_pem: str) -> bool:
    leaf = x509.load_pem_x509_certificates(chain_pem.encode())[0]
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return leaf.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt)


def _clean(names: Sequence[str]) -> list[str]:
    out: list[str] = []
    for n in names:
        c = n.strip().rstrip(".").lower()
        if c and c not in out:
            out.append(c)
    return out


def _ca_name(directory_url: str) -> str:
    host = urlsplit(directory_url).hostname or directory_url
    return _KNOWN_CAS.get(host, f"the ACME server at {urlsplit(directory_url).netloc}")
