"""Push notifications through apprise: the only module of notify that talks to apprise.

An administrator keeps up to `MAX_PUSH_URLS` apprise URLs (ntfy, Gotify, Matrix, Slack, a JSON
webhook, ...). `check_url` decides whether one may be kept, `push` sends to each of them in a
worker thread with a deadline, `masked` and `url_id` are all that ever leaves this module of a
URL: an apprise URL holds its service's token, so it is a secret like a password.

Why the rules are so:
- Only network services on an allow-list: apprise also reaches the desktop (dbus, glib, gnome,
  macosx, windows), local files and programs (attachments, config, decorated `@notify` plugins),
  syslog and mail; none of that belongs to an administrator's choice. The platform's own mail
  goes through the mail service, not through apprise.
- A URL whose scheme names a server of the administrator's (json://, ntfys://host/topic,
  gotify://...) must not point at link-local (cloud metadata), unspecified, multicast or
  reserved addresses: checked on the literal when the URL is kept, and again on every resolved
  address just before sending (a name can be made to resolve anywhere; a rebinding between that
  check and the connect remains possible and is the residual risk). Loopback and private
  networks are allowed: a receiver on the same host or LAN is the common case. HTTP redirects
  are never followed, so a receiver cannot bounce the request to such an address.
- apprise logs URLs and, at debug level, request paths (urllib3) that hold tokens. Its logger
  is kept at WARNING; while one of our calls runs, `_Redactor` drops anything below WARNING
  from apprise and urllib3 and strips every piece of the URL from what remains.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import ipaddress
import logging
import re
import socket
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import apprise
from apprise.manager_plugins import NotificationManager
from apprise.plugins import url_to_dict

__all__ = [
    "ALLOWED_SCHEMES",
    "KINDS",
    "MAX_URL_LENGTH",
    "PushResult",
    "check_url",
    "masked",
    "push",
    "url_id",
]

log = logging.getLogger(__name__)

MAX_URL_LENGTH = 2000  # as the contract's push_urls items
KINDS = ("info", "success", "warning", "failure")
_SOCKET_GRACE = 1.0  # seconds a worker thread's sockets wait past the caller's deadline

# Schemes whose host is a server the administrator names: that host is checked and shown.
_HOSTED = frozenset(
    {
        "json", "jsons", "form", "forms", "xml", "xmls",  # webhooks
        "ntfy", "ntfys", "gotify", "gotifys", "matrix", "matrixs",
        "mmost", "mmosts", "rocket", "rockets", "apprise", "apprises",
        "nctalk", "nctalks", "ncloud", "nclouds", "hassio", "hassios",
        "signal", "signals", "bark", "barks", "workflow", "workflows",
        "mastodon", "mastodons", "toot", "toots", "misskey", "misskeys",
        "synology", "synologys",
    }
)  # fmt: skip
# Schemes of a vendor's fixed service: what stands where a host would is a token or an id.
_VENDOR = frozenset(
    {
        "slack", "discord", "tgram", "pover", "pbul", "gchat", "pagerduty", "opsgenie",
        "webex", "wxteams", "spush", "simplepush", "psafer", "psafers", "prowl", "join",
        "ifttt", "guilded", "line", "pushed", "signl4", "spike", "splunk", "victorops",
        "ilert", "dingtalk", "feishu", "lark", "wxpusher", "pushplus", "schan", "threema",
        "revolt", "flock", "ryver",
    }
)  # fmt: skip
ALLOWED_SCHEMES = _HOSTED | _VENDOR

# Cloud metadata endpoints outside 169.254.0.0/16 (Alibaba, AWS over IPv6) and their names.
_METADATA_ADDRESSES = frozenset(
    {ipaddress.ip_address("100.100.100.200"), ipaddress.ip_address("fd00:ec2::254")}
)
_METADATA_NAMES = frozenset(
    {"metadata", "metadata.google.internal", "instance-data", "instance-data.ec2.internal"}
)
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]{0,31})://")
_ANY_URL = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]{0,31})://\S+")
_PRINTABLE = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no space
_PIECES = re.compile(r"[/:@?&=#,+;]+")
_MIN_PIECE = 4  # shorter pieces of a URL are no secret and would garble every message
_DOTTED_OR_IP = re.compile(r"^(?:[A-Za-z0-9-]+\.)+[A-Za-z0-9-]+$|^\[[0-9A-Fa-f:.]+\]$")

_NOTIFY_TYPES = {
    "info": apprise.NotifyType.INFO,
    "success": apprise.NotifyType.SUCCESS,
    "warning": apprise.NotifyType.WARNING,
    "failure": apprise.NotifyType.FAILURE,
}


@dataclass(frozen=True)
class PushResult:
    """What became of one URL: `url_id` names it, `error` says why it failed (never the URL)."""

    url_id: str
    ok: bool
    error: str | None


def url_id(url: str) -> str:
    """A short stable id of `url` (12 hex of its SHA-256), to name it without showing it."""
    return hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def masked(url: str) -> str:
    """What a person sees of a stored URL: scheme and host, the rest masked (e.g.
    "ntfys://ntfy.sh/…"); a vendor's token-only URL shows its scheme only ("slack://…")."""
    m = _SCHEME.match(url)
    if m is None:
        return "…"
    shown = _shown_host(url, m.group(1).lower())
    return f"{m.group(1).lower()}://{':'.join(shown)}/…" if shown else f"{m.group(1).lower()}://…"


def check_url(url: str) -> str | None:
    """None when apprise understands `url` and it is allowed; else why not, in words that name
    neither the URL nor its token."""
    parsed = _parse(url)
    return parsed if isinstance(parsed, str) else None


async def push(
    urls: Sequence[str],
    title: str,
    body: str,
    *,
    kind: str = "info",
    timeout: float = 10.0,  # noqa: ASYNC109 (the interface the notify service calls)
) -> list[PushResult]:
    """Send to every URL (apprise, in worker threads so the event loop never blocks), each
    bounded by `timeout`; one failing URL never stops the others. kind: info|success|warning|
    failure."""
    if kind not in _NOTIFY_TYPES:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if not urls:
        return []
    loop = asyncio.get_running_loop()
    # Our own threads: a slow service never waits behind the loop's default executor, and one
    # that outlives its deadline (a send in progress cannot be interrupted) ends on its socket
    # timeouts, set just past the same deadline.
    pool = ThreadPoolExecutor(max_workers=len(urls), thread_name_prefix="notify-push")
    try:
        return list(
            await asyncio.gather(
                *(
                    _push_one(loop, pool, url, title, body, _NOTIFY_TYPES[kind], timeout)
                    for url in urls
                )
            )
        )
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


async def _push_one(
    loop: asyncio.AbstractEventLoop,
    pool: ThreadPoolExecutor,
    url: str,
    title: str,
    body: str,
    notify_type: apprise.NotifyType,
    deadline: float,
) -> PushResult:
    uid = url_id(url)
    started = time.monotonic()
    call = contextvars.copy_context().run
    fut = loop.run_in_executor(pool, call, _deliver, url, title, body, notify_type, deadline)
    try:
        error = await asyncio.wait_for(fut, deadline)
    except TimeoutError:
        error = f"the service did not answer within {deadline:g} s"
    elapsed = time.monotonic() - started
    if error is None:
        log.info("push %s to %s delivered in %.2f s", uid, masked(url), elapsed)
    else:
        log.warning("push %s to %s failed in %.2f s: %s", uid, masked(url), elapsed, error)
    return PushResult(uid, error is None, error)


def _deliver(
    url: str, title: str, body: str, notify_type: apprise.NotifyType, timeout: float
) -> str | None:
    """One URL, in a worker thread: None once delivered, else why not."""
    with _guarded(url) as guard:
        parsed = _parse(url)
        if isinstance(parsed, str):
            return parsed
        results, plugin = parsed
        host = _network_host(results)
        if host is not None:
            refusal = _resolved_refusal(host, results.get("port"))
            if refusal is not None:
                return refusal
        # The URL may ask otherwise (`?redirect=yes`, `?cto=`); these always win. The sockets
        # give up a little after the caller's deadline, so that the deadline names the cause
        # and the thread still ends soon after it.
        plugin.redirects = False
        plugin.socket_connect_timeout = timeout + _SOCKET_GRACE
        plugin.socket_read_timeout = timeout + _SOCKET_GRACE
        try:
            ok = plugin.notify(
                body=body,
                title=title,
                notify_type=notify_type,
                body_format=apprise.NotifyFormat.TEXT,
            )
        except Exception as e:  # a plugin's own bug: its message may hold the URL
            return f"apprise failed while sending ({type(e).__name__})"
        if ok:
            return None
        said = guard.first_message()
        failed = "the service refused the notification or could not be reached"
        return f"{failed}: {said}" if said else failed


def _parse(url: str) -> tuple[dict[str, Any], Any] | str:
    """apprise's reading of `url` and its plugin, or why it may not be used."""
    if not isinstance(url, str) or not url:
        return "empty: give an apprise URL such as ntfys://ntfy.sh/<topic>"
    if len(url) > MAX_URL_LENGTH:
        return f"longer than {MAX_URL_LENGTH} characters"
    if not _PRINTABLE.match(url):
        return "holds spaces, control characters or non-ASCII characters: percent-encode them"
    m = _SCHEME.match(url)
    if m is None:
        return "not a URL: an apprise URL starts with a scheme such as ntfys:// or jsons://"
    scheme = m.group(1).lower()
    if scheme not in ALLOWED_SCHEMES and scheme not in ("http", "https"):
        return (
            f"{scheme}:// is not allowed: use a network service such as "
            "ntfy(s)://, gotify(s)://, matrix(s)://, slack://, discord://, tgram:// "
            "or a webhook json(s)://, form(s)://, xml(s)://"
        )
    with _guarded(url) as guard:
        results = url_to_dict(url, secure_logging=True)  # type: ignore[no-untyped-call]
        if not results:
            if scheme in ("http", "https"):
                return (
                    "not a service apprise recognizes: for a webhook write "
                    "jsons:// (or forms://) instead of https://"
                )
            return _not_understood(scheme, guard)
        service = str(results.get("schema", "")).lower()
        if service not in ALLOWED_SCHEMES:
            return f"a {service}:// service, which is not allowed"
        host = _network_host(results)
        if host is not None:
            refusal = _host_refusal(host)
            if refusal is not None:
                return refusal
        # From the string again: given the parsed dict, apprise would log it whole on failure.
        plugin = apprise.Apprise.instantiate(url, asset=_ASSET)
        if plugin is None:
            return _not_understood(scheme, guard)
    return results, plugin


def _not_understood(scheme: str, guard: _Guard) -> str:
    said = guard.first_message() or ""
    useful = not said.startswith(("Unparseable", "Could not load"))  # says nothing more
    hint = f" ({said})" if said and useful and len(said) <= 200 else ""
    return f"not a {scheme}:// URL apprise can use{hint}: check it against apprise's page for it"


def _network_host(results: dict[str, Any]) -> str | None:
    """The server a hosted scheme connects to (None for a vendor's fixed service, or where
    apprise reads no host of our own, e.g. ntfy's cloud mode)."""
    if str(results.get("schema", "")).lower() not in _HOSTED:
        return None
    host = results.get("host")
    return host.strip("[]").lower() if isinstance(host, str) and host else None


def _host_refusal(host: str) -> str | None:
    """Why `host` as written may not be used (a literal address or a metadata name)."""
    if host.rstrip(".") in _METADATA_NAMES:
        return f"points at {host}, a cloud metadata service: refused"
    address = _literal_address(host)
    what = None if address is None else _address_kind(address)
    return None if what is None else f"points at {address}, {what}: refused"


def _literal_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address `host` stands for without DNS, including the forms inet_aton reads
    (2852039166, 0xa9fea9fe, 169.254.43518) that a resolver would connect to as well."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _address_kind(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """What kind of address a service may not be reached at, or None (loopback and private
    networks are fine)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return _address_kind(embedded)
    if address.is_loopback:
        return None
    if address.is_link_local or address in _METADATA_ADDRESSES:
        return "a link-local or cloud metadata address"
    if address.is_unspecified or (
        isinstance(address, ipaddress.IPv4Address) and address in _THIS_NETWORK
    ):
        return "an unspecified address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_reserved or (
        isinstance(address, ipaddress.IPv6Address) and address.is_site_local
    ):
        return "a reserved address that is not routable"
    return None


def _resolved_refusal(host: str, port: object) -> str | None:
    """Why `host` may not be reached once resolved, or None. Runs in the worker thread."""
    refusal = _host_refusal(host)
    if refusal is not None:
        return refusal
    try:
        infos = socket.getaddrinfo(
            host, port if isinstance(port, int) else None, type=socket.SOCK_STREAM
        )
    except (OSError, UnicodeError):
        return f"the host {host} could not be resolved: check its name"
    for info in infos:
        address = _literal_address(str(info[4][0]))
        what = None if address is None else _address_kind(address)
        if what is not None:
            return f"the host {host} resolves to {address}, {what}: refused"
    return None


def _shown_host(url: str, scheme: str) -> tuple[str, ...]:
    """The host (and port) a person may see, for hosted schemes (and a native https URL,
    whose host is its vendor's); () where the host part may be a token."""
    if scheme not in _HOSTED and scheme not in ("http", "https"):
        return ()
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return ()
    if not host:
        return ()
    shown = f"[{host}]" if ":" in host else host
    if not _DOTTED_OR_IP.match(shown) and host != "localhost":
        return ()  # ntfy's cloud topic, a Matrix t2bot token: secrets where a host would be
    return (shown, str(port)) if port else (shown,)


# --- keeping URLs out of logs -------------------------------------------------------------


@dataclass
class _Guard:
    """The pieces of the URL in use by this call, and the warnings apprise said about it."""

    pieces: tuple[str, ...]
    messages: list[str] = field(default_factory=list)

    def redact(self, text: str) -> str:
        text = _ANY_URL.sub(lambda m: f"{m.group(1)}://…", text)
        for piece in self.pieces:
            text = text.replace(piece, "…")
        return text

    def first_message(self) -> str | None:
        """What apprise said first (the cause; what follows tends to be "could not load")."""
        return self.messages[0] if self.messages else None


_current: contextvars.ContextVar[_Guard | None] = contextvars.ContextVar(
    "notify_push_guard", default=None
)


@contextlib.contextmanager
def _guarded(url: str) -> Iterator[_Guard]:
    """Within the block (and threads started with its context), logs never show `url`."""
    outer = _current.get()
    if outer is not None and url in outer.pieces:
        yield outer
        return
    m = _SCHEME.match(url)
    shown = set(_shown_host(url, m.group(1).lower())) if m else set()
    shown |= {part.strip("[]") for part in shown}
    if m:
        shown.add(m.group(1))  # the scheme is no secret, and it names the service in messages
    pieces = {url, *_PIECES.split(url), *_PIECES.split(unquote(url))} - shown
    ordered = tuple(sorted((p for p in pieces if len(p) >= _MIN_PIECE), key=len, reverse=True))
    guard = _Guard(ordered)
    token = _current.set(guard)
    try:
        yield guard
    finally:
        _current.reset(token)


class _Redactor(logging.Filter):
    """On apprise's and urllib3's loggers: drops debug/info records during our calls, strips
    the URL's pieces from the rest, and keeps apprise's warnings for the call's error."""

    def filter(self, record: logging.LogRecord) -> bool:
        guard = _current.get()
        if guard is None:
            if record.name == "apprise" or record.name.startswith("apprise."):
                _scrub(record, _ANY_URL.sub(lambda m: f"{m.group(1)}://…", _message(record)))
            return True
        if record.levelno < logging.WARNING:
            return False
        text = guard.redact(_message(record))
        if record.name == "apprise":
            guard.messages.append(text.strip())
        _scrub(record, text)
        return True


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except (TypeError, ValueError):
        return str(record.msg)


def _scrub(record: logging.LogRecord, text: str) -> None:
    record.msg = text
    record.args = None
    record.exc_info = None  # a requests exception's text holds the path and its token
    record.exc_text = None
    record.stack_info = None


_REDACTOR = _Redactor()
_QUIET_LOGGERS = (
    "apprise",
    "urllib3",
    "urllib3.connectionpool",
    "urllib3.connection",
    "urllib3.poolmanager",
    "urllib3.response",
    "urllib3.util.retry",
    "requests",
)
logging.getLogger("apprise").setLevel(logging.WARNING)
for _name in _QUIET_LOGGERS:
    if _REDACTOR not in logging.getLogger(_name).filters:
        logging.getLogger(_name).addFilter(_REDACTOR)

# apprise loads its plugins on first use; its mail plugin imports `imghdr`, deprecated since
# Python 3.11. Load them now, once, so that warning is neither raised later nor an error in tests.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="'imghdr' is deprecated", category=DeprecationWarning)
    NotificationManager().load_modules()  # type: ignore[no-untyped-call]

_ASSET = apprise.AppriseAsset(
    storage_mode="memory",  # apprise writes nothing to disk
    http_redirects=False,
    allow_templates=False,
    image_path_mask=False,  # no local icon files
    secure_logging=True,
)
