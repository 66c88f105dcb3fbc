"""Postfix, Dovecot and rspamd configuration of one generation, rendered from a `MailModel`.

Pure: `render(model, settings, gen)` returns the files of the generation directory `gen`
(relative path -> `RenderedFile`); `servers.py` writes, checks, swaps and reloads them. Equal
inputs render equal files. Files name each other by their absolute path inside `gen` (Postfix's
`texthash:` maps, Dovecot's users file and Lua script, rspamd's DKIM keys), so a staged
generation is checked with its own files and the live one keeps using its own until the swap.

Everything that reaches a configuration file is checked against a strict grammar first: a value
that does not fit raises `RenderError` naming the server and the value, before any file is written.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from services.mail.model import MESSAGE_LIMIT, Mailbox, MailDomain, MailModel, ServersSettings
from services.mail.sieve_send import sendmail_program

__all__ = [
    "PLATFORM_SERVICE",
    "TLS_CIPHERS",
    "Layout",
    "RenderError",
    "RenderedFile",
    "render",
]

# Mozilla intermediate (guideline 6.0) for TLS 1.2: ECDHE only, AEAD only (SECURITY.md)
TLS_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)
QUOTA_REFUSAL = "552 5.2.2 Mailbox is full"
# Postfix's listener for the platform's own mail (`Layout.platform_socket`)
PLATFORM_SERVICE = "homeport-platform"

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN = re.compile(rf"(?=.{{1,253}}$)(?:{_LABEL}\.)*[a-z](?:[a-z0-9-]{{0,61}}[a-z0-9])?")
_LOCAL = re.compile(r"[a-z0-9_](?:[a-z0-9._=+-]{0,62}[a-z0-9_=+-])?")
_LOGIN = re.compile(r"[a-z][a-z0-9._-]{0,63}")
_FOLDER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_SELECTOR = re.compile(r"[a-z0-9](?:[a-z0-9_-]{0,62})")
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_PATH = re.compile(r"/[A-Za-z0-9/._+-]{0,200}")
_TOKEN = re.compile(r"[\x21-\x7e]{16,512}")
_URL = re.compile(r"https?://[A-Za-z0-9.:\[\]_-]+(?:/[A-Za-z0-9/._~%-]*)?")
_RELAY_USER = re.compile(r"[^\s:\x00-\x1f\x7f]{1,256}")
_RELAY_PASSWORD = re.compile(r"[^\x00-\x1f\x7f]{1,256}")
_PEM_KEY = re.compile(
    r"-----BEGIN (?:RSA )?PRIVATE KEY-----\n[A-Za-z0-9+/=\n]+-----END (?:RSA )?PRIVATE KEY-----\n?"
)


class RenderError(ValueError):
    """A value of the model or the settings cannot be put in `server`'s configuration."""

    def __init__(self, server: str, message: str) -> None:
        self.server = server
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class RenderedFile:
    """One file of a generation: its bytes, mode and owner (user/group names; None: root)."""

    data: bytes
    mode: int = 0o644
    owner: str | None = None
    group: str | None = None


@dataclass(frozen=True, slots=True)
class Layout:
    """Where the servers keep their state under the root (the same for every generation)."""

    root: Path

    @property
    def generations(self) -> Path:
        return self.root / "generations"

    @property
    def conf(self) -> Path:
        """The live generation: a symlink to generations/gNNNNNN, swapped with one rename."""
        return self.root / "conf"

    @property
    def queue(self) -> Path:
        return self.root / "postfix" / "queue"

    @property
    def postfix_data(self) -> Path:
        return self.root / "postfix" / "data"

    @property
    def dovecot_base(self) -> Path:
        return self.root / "run" / "dovecot"

    @property
    def dovecot_state(self) -> Path:
        return self.root / "state" / "dovecot"

    @property
    def rspamd_db(self) -> Path:
        return self.root / "rspamd-db"

    @property
    def milter_socket(self) -> Path:
        """rspamd's milter socket: Postfix talks to it over a unix socket, not TCP (a TCP
        loopback connection stalled every message ~40 ms on delayed ACKs, bench/mail.py)."""
        return self.root / "run" / "milter" / "rspamd.sock"

    @property
    def platform_socket(self) -> Path:
        """Where the mail service submits the platform's own mail (services/mail/outbound.py):
        Postfix's private folder, which only root and Postfix can enter."""
        return self.queue / "private" / PLATFORM_SERVICE

    @property
    def sieve_socket(self) -> Path:
        """Where Dovecot's sendmail for Sieve hands messages to the mail service
        (services/mail/sieve_send.py): a folder of root and the mail store's group."""
        return self.root / "run" / "sieve" / "send.sock"

    @property
    def rspamd_run(self) -> Path:
        return self.root / "run" / "rspamd"

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def tls(self) -> Path:
        return self.root / "tls"

    @property
    def fallback_cert(self) -> Path:
        return self.tls / "self-signed.crt"

    @property
    def fallback_key(self) -> Path:
        return self.tls / "self-signed.key"

    @property
    def instance_name(self) -> str:
        """Dovecot's instance name: one per root, so two roots never share a Dovecot."""
        return "homeport-" + hashlib.sha256(str(self.root).encode()).hexdigest()[:10]


# -- checks -------------------------------------------------------------------------------


def _domain(server: str, name: str, what: str = "domain") -> str:
    if not _DOMAIN.fullmatch(name):
        raise RenderError(server, f"{what} {name!r} is not a lower-case DNS name")
    return name


def _address(server: str, address: str, what: str = "address") -> str:
    local, at, domain = address.rpartition("@")
    if not at or not _LOCAL.fullmatch(local) or not _DOMAIN.fullmatch(domain):
        raise RenderError(server, f"{what} {address!r} is not a lower-case local@domain address")
    return address


def _login(login: str) -> str:
    if not _LOGIN.fullmatch(login):
        raise RenderError("postfix", f"login {login!r} is not a lower-case platform user name")
    return login


def _path(server: str, path: Path, what: str) -> str:
    text = str(path)
    if not path.is_absolute() or not _PATH.fullmatch(text) or "/../" in text + "/":
        raise RenderError(
            server, f"{what} {text!r} must be an absolute path of letters, digits and /._+-"
        )
    return text


def _port(server: str, port: int, what: str) -> int:
    if not 0 <= port <= 65535:
        raise RenderError(server, f"{what} {port} is not a port 0-65535")
    return port


def _listen(server: str, listen: Iterable[str]) -> list[str]:
    out = []
    for a in listen:
        try:
            out.append(str(ipaddress.ip_address(a)))
        except ValueError:
            raise RenderError(server, f"listen address {a!r} is not an IP address") from None
    if not out:
        raise RenderError(server, "no listen address: give at least one (127.0.0.1)")
    return out


def _seconds(server: str, value: float, what: str) -> str:
    if not 0 <= value <= 60:
        raise RenderError(server, f"{what} {value!r} must be 0-60 seconds")
    return f"{int(value * 1000)} msecs"


def _lua_string(s: str) -> str:
    """A Lua string literal of `s`: its UTF-8 bytes, all but printable ASCII (and quotes and
    backslashes) as decimal escapes."""
    return (
        '"'
        + "".join(
            chr(b) if 0x20 <= b < 0x7F and b not in b'"\\' else f"\\{b:03d}" for b in s.encode()
        )
        + '"'
    )


def _ucl_string(s: str) -> str:
    if any(c in s for c in '"\\$\n\r') or not s.isprintable():
        raise RenderError("rspamd", f"{s!r} cannot be written as an rspamd string")
    return f'"{s}"'


def _lines(rows: Iterable[str]) -> bytes:
    return "".join(f"{r}\n" for r in rows).encode()


# -- render -------------------------------------------------------------------------------


def render(model: MailModel, settings: ServersSettings, gen: Path) -> dict[str, RenderedFile]:
    """The files of generation `gen` (relative path -> file) for `model`; RenderError if a value
    does not fit its server's grammar."""
    lay = Layout(settings.root)
    _path("postfix", settings.root, "root")
    _path("postfix", gen, "generation")
    _domain("postfix", model.hostname, "hostname")
    for d in model.domains:
        _domain("postfix", d.name)
    if len({d.name for d in model.domains}) != len(model.domains):
        raise RenderError("postfix", "a domain is listed twice")
    if model.tls_cert is not None and model.tls_key is not None:
        cert = _path("postfix", model.tls_cert, "TLS certificate")
        key = _path("postfix", model.tls_key, "TLS key")
    elif model.tls_cert is None and model.tls_key is None:
        cert, key = str(lay.fallback_cert), str(lay.fallback_key)
    else:
        raise RenderError("postfix", "give both a TLS certificate and its key, or neither")
    files: dict[str, RenderedFile] = {}
    files.update(_postfix(model, settings, lay, gen, cert, key))
    files.update(_dovecot(model, settings, lay, gen, cert, key))
    files.update(_rspamd(model, settings, lay, gen))
    return files


# -- Postfix ------------------------------------------------------------------------------


def _postfix(
    model: MailModel, s: ServersSettings, lay: Layout, gen: Path, cert: str, key: str
) -> dict[str, RenderedFile]:
    listen = _listen("postfix", s.listen)
    for what, port in (
        ("smtp_port", s.smtp_port),
        ("submission_port", s.submission_port),
        ("submissions_port", s.submissions_port),
        ("milter_port", s.milter_port),
    ):
        _port("postfix", port, what)
    if not s.milter_port:
        raise RenderError("postfix", "milter_port 0: rspamd must listen somewhere")
    conf = gen / "postfix"
    base = lay.dovecot_base
    domains = [d.name for d in model.domains]
    boxes = {_address("postfix", b.address, "mailbox"): b for b in model.mailboxes}
    aliases = _aliases(model, boxes)
    senders = _senders(model, boxes)
    protocols = {"ipv6" if ":" in a else "ipv4" for a in listen}
    interfaces = ["all" if ipaddress.ip_address(a).is_unspecified else a for a in listen]
    main = [
        "# Rendered by Homeport (services/mail/render.py): changes here are overwritten.",
        "compatibility_level = 3.6",
        f"queue_directory = {_path('postfix', lay.queue, 'queue directory')}",
        f"data_directory = {lay.postfix_data}",
        "mail_owner = postfix",
        "setgid_group = postdrop",
        f"myhostname = {model.hostname}",
        "myorigin = $myhostname",
        "mydestination =",
        "mynetworks =",
        "local_recipient_maps =",
        "local_transport = error:5.1.1 local delivery is off",
        "alias_maps =",
        "alias_database =",
        f"inet_interfaces = {'all' if 'all' in interfaces else ', '.join(interfaces)}",
        f"inet_protocols = {'all' if len(protocols) > 1 else protocols.pop()}",
        "maillog_file = /dev/stdout",
        "biff = no",
        "append_dot_mydomain = no",
        "readme_directory = no",
        "smtputf8_enable = no",
        "disable_vrfy_command = yes",
        "smtpd_helo_required = yes",
        f"message_size_limit = {MESSAGE_LIMIT}",
        "smtpd_banner = $myhostname ESMTP",
        "recipient_delimiter = +",
        # mailboxes: virtual domains delivered over LMTP to Dovecot
        f"virtual_mailbox_domains = {' '.join(domains)}",
        f"virtual_mailbox_maps = texthash:{conf}/mailboxes",
        f"virtual_alias_maps = texthash:{conf}/aliases",
        f"virtual_transport = lmtp:unix:{base}/lmtp",
        # TLS (SECURITY.md): 1.2+, Mozilla intermediate ciphers, ECDSA P-256 certificate
        f"smtpd_tls_chain_files = {key}, {cert}",
        "smtpd_tls_security_level = may",
        "smtpd_tls_protocols = >=TLSv1.2",
        "smtpd_tls_mandatory_protocols = >=TLSv1.2",
        "smtpd_tls_ciphers = medium",
        "smtpd_tls_mandatory_ciphers = medium",
        f"tls_medium_cipherlist = {TLS_CIPHERS}",
        "tls_preempt_cipherlist = no",
        "smtpd_tls_received_header = yes",
        "smtpd_tls_session_cache_database =",
        "smtp_tls_protocols = >=TLSv1.2",
        "smtp_tls_mandatory_protocols = >=TLSv1.2",
        "smtp_tls_session_cache_database =",
        # who may send what: nobody is trusted by address, only by SASL login (port 587/465)
        "smtpd_sasl_type = dovecot",
        f"smtpd_sasl_path = {base}/auth-postfix",
        "smtpd_sasl_auth_enable = no",
        "smtpd_sasl_security_options = noanonymous",
        "smtpd_sasl_authenticated_header = no",
        f"smtpd_sender_login_maps = texthash:{conf}/senders",
        "smtpd_relay_restrictions = permit_sasl_authenticated, reject_unauth_destination",
        # port 25: mail from outside claiming a local address is refused
        "smtpd_sender_restrictions = reject_non_fqdn_sender,"
        f" reject_unauthenticated_sender_login_mismatch, check_sender_access"
        f" texthash:{conf}/sender_domains",
        # over quota: refused at RCPT by Dovecot's quota-status, asked only for mailboxes
        # with a quota (the others would pay a look-up for each recipient, bench/mail.py)
        "smtpd_restriction_classes = quota_check",
        f"quota_check = check_policy_service unix:{base}/quota-status",
        "smtpd_recipient_restrictions = reject_non_fqdn_recipient,"
        f" check_recipient_access texthash:{conf}/quota_limited",
        # rspamd: spam, DNSBL, DKIM signing; mail waits (4xx) while it does not answer
        f"smtpd_milters = unix:{lay.milter_socket}",
        f"non_smtpd_milters = unix:{lay.milter_socket}",
        "milter_default_action = tempfail",
        "milter_protocol = 6",
    ]
    files = {
        "postfix/mailboxes": RenderedFile(_lines(f"{a} OK" for a in sorted(boxes))),
        "postfix/quota_limited": RenderedFile(
            _lines(f"{a} quota_check" for a in sorted(_quota_checked(model, boxes)))
        ),
        "postfix/aliases": RenderedFile(
            _lines(f"{k} {', '.join(v)}" for k, v in sorted(aliases.items()))
        ),
        "postfix/senders": RenderedFile(
            _lines(f"{k} {', '.join(v)}" for k, v in sorted(senders.items()))
        ),
        "postfix/sender_domains": RenderedFile(
            _lines(
                f"{d} REJECT 5.7.1 mail from {d} must be sent signed in (port "
                f"{s.submission_port or s.submissions_port})"
                for d in sorted(domains)
            )
        ),
    }
    if model.relay is not None:
        r = model.relay
        relay_host = r.host.lower()
        try:
            if ipaddress.ip_address(r.host).version == 6:  # a relay known by its address
                relay_host = f"ipv6:{ipaddress.ip_address(r.host)}"
        except ValueError:
            _domain("postfix", relay_host, "relay host")
        _port("postfix", r.port, "relay port")
        if r.tls not in ("starttls", "tls"):
            raise RenderError("postfix", f"relay tls {r.tls!r} is not 'starttls' or 'tls'")
        main += [
            f"relayhost = [{relay_host}]:{r.port}",
            "smtp_tls_security_level = encrypt",
            f"smtp_tls_wrappermode = {'yes' if r.tls == 'tls' else 'no'}",
        ]
        if r.username is not None or r.password is not None:
            if r.username is None or not _RELAY_USER.fullmatch(r.username):
                raise RenderError("postfix", "relay username is missing or has spaces or ':'")
            if r.password is None or not _RELAY_PASSWORD.fullmatch(r.password):
                raise RenderError("postfix", "relay password is missing or has control characters")
            main += [
                "smtp_sasl_auth_enable = yes",
                f"smtp_sasl_password_maps = texthash:{conf}/relay_password",
                "smtp_sasl_security_options = noanonymous",
                "smtp_sasl_tls_security_options = noanonymous",
            ]
            files["postfix/relay_password"] = RenderedFile(
                _lines([f"[{relay_host}]:{r.port} {r.username}:{r.password}"]), mode=0o600
            )
    else:
        main.append("smtp_tls_security_level = may")
    files["postfix/main.cf"] = RenderedFile(_lines(main))
    apps: list[str] = []
    if model.apps_listen:
        apps = _listen("postfix", model.apps_listen)
        _port("postfix", s.apps_port, "apps_port")
        if not s.apps_port:
            raise RenderError("postfix", "apps_port 0 with an address for apps to send to")
    files["postfix/master.cf"] = RenderedFile(_master_cf(s, listen, apps))
    return files


def _aliases(model: MailModel, boxes: Mapping[str, Mailbox]) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for address, targets in model.aliases.items():
        _address("postfix", address, "alias")
        if not targets:
            raise RenderError("postfix", f"alias {address} delivers to nobody")
        out[address] = tuple(_address("postfix", t, f"target of {address}") for t in targets)
    domains = {d.name: d for d in model.domains}
    for d in domains.values():
        if d.catch_all is not None:
            out[f"@{d.name}"] = (_address("postfix", d.catch_all, f"catch-all of {d.name}"),)
    # a catch-all (@domain) would win over virtual_mailbox_maps: every mailbox maps to itself
    for address in boxes:
        out.setdefault(address, (address,))
    return out


def _senders(model: MailModel, boxes: Mapping[str, Mailbox]) -> dict[str, tuple[str, ...]]:
    """Address -> the SASL names that own it: each login, and that login's mailbox address
    (Dovecot's auth answers with the address, which Postfix then sees as the login name)."""
    address_of = {_login(b.login): a for a, b in boxes.items()}
    out: dict[str, tuple[str, ...]] = {}
    for address, logins in model.senders.items():
        _address("postfix", address, "sender address")
        names: list[str] = []
        for login in logins:
            names.append(_login(login))
            if login in address_of:
                names.append(address_of[login])
        if names:
            out[address] = tuple(dict.fromkeys(names))
    return out


_MASTER_TOP = """\
# Rendered by Homeport (services/mail/render.py): changes here are overwritten.
# service type  private unpriv  chroot  wakeup  maxproc command + args
"""
_MASTER_BOTTOM = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
  -o syslog_name=postfix/$service_name
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""
_SIGNED_IN = [
    "smtpd_sasl_auth_enable=yes",
    "smtpd_tls_auth_only=yes",
    "smtpd_client_restrictions=permit_sasl_authenticated,reject",
    "smtpd_sender_restrictions=reject_sender_login_mismatch",
    "smtpd_relay_restrictions=permit_sasl_authenticated,reject",
    "milter_macro_daemon_name=ORIGINATING",
]


# Apps' sending accounts (their `sendmail` addon), on the services network's address: an app's
# account only (the auth endpoint takes it from the app's own network only), its own sender only;
# TLS offered, not required (the host's own bridge; apps' mail libraries often cannot check a
# certificate for an address).
_APPS = [
    "syslog_name=postfix/apps",
    "smtpd_tls_security_level=may",
    "smtpd_sasl_auth_enable=yes",
    "smtpd_tls_auth_only=no",
    "smtpd_client_restrictions=permit_sasl_authenticated,reject",
    "smtpd_sender_restrictions=reject_sender_login_mismatch",
    "smtpd_relay_restrictions=permit_sasl_authenticated,reject",
    "milter_macro_daemon_name=ORIGINATING",
]


# The platform's own mail (services/mail/outbound.py): a UNIX socket in Postfix's private
# folder (root and Postfix only), TLS, then the platform's sign-in (a password the mail
# service makes at each start; its auth endpoint takes it from loopback only), so rspamd signs
# it as it signs people's mail. No sender login map: only the service can reach it.
_PLATFORM = [
    "syslog_name=postfix/platform",
    "smtpd_tls_security_level=encrypt",
    "smtpd_sasl_auth_enable=yes",
    "smtpd_tls_auth_only=yes",
    "smtpd_client_restrictions=permit_sasl_authenticated,reject",
    "smtpd_sender_restrictions=reject_non_fqdn_sender",
    "smtpd_relay_restrictions=permit_sasl_authenticated,reject",
    "milter_macro_daemon_name=ORIGINATING",
]


def _quota_checked(model: MailModel, boxes: dict[str, Mailbox]) -> list[str]:
    """The mailboxes Postfix asks Dovecot's quota-status about at RCPT (model.quota_checked;
    unknown: every mailbox with a quota)."""
    if model.quota_checked is None:
        return [a for a, b in boxes.items() if b.quota_bytes]
    return [a for a in model.quota_checked if a in boxes and boxes[a].quota_bytes]


def _master_cf(s: ServersSettings, listen: list[str], apps: list[str]) -> bytes:
    out = [_MASTER_TOP, f"{PLATFORM_SERVICE} unix - - n - - smtpd\n"]
    out += [f"  -o {o}\n" for o in _PLATFORM]
    for a in apps:
        host = f"[{a}]" if ":" in a else a
        out.append(f"{host}:{s.apps_port} inet n - n - - smtpd\n")
        out += [f"  -o {o}\n" for o in _APPS]
    for a in listen:
        host = f"[{a}]" if ":" in a else a
        if s.smtp_port:
            out.append(f"{host}:{s.smtp_port} inet n - n - - smtpd\n")
        if s.submission_port:
            out.append(f"{host}:{s.submission_port} inet n - n - - smtpd\n")
            opts = ["syslog_name=postfix/submission", "smtpd_tls_security_level=encrypt"]
            out += [f"  -o {o}\n" for o in opts + _SIGNED_IN]
        if s.submissions_port:
            out.append(f"{host}:{s.submissions_port} inet n - n - - smtpd\n")
            opts = ["syslog_name=postfix/submissions", "smtpd_tls_wrappermode=yes"]
            out += [f"  -o {o}\n" for o in opts + _SIGNED_IN]
    out.append(_MASTER_BOTTOM)
    return "".join(out).encode()


# -- Dovecot ------------------------------------------------------------------------------

_AUTH_LUA = """\
-- Rendered by Homeport (services/mail/render.py). Every password is checked by the mail
-- service; it answers 200 with "user=<address>" (the mailbox's name from then on) or 403.
local URL = {url}
local TOKEN = {token}
local client = dovecot.http.client {{ timeout = 10000; max_attempts = 1; }}

local function escape(c)
  return string.format("\\\\u%04x", c:byte())
end

local function q(s)
  return '"' .. s:gsub('[%c"\\\\]', escape) .. '"'
end

function auth_password_verify(req, pass)
  local r = client:request {{ url = URL; method = "POST"; }}
  r:add_header("content-type", "application/json")
  r:add_header("x-homeport-auth", TOKEN)
  r:set_payload("{{\\"user\\":" .. q(req.user) .. ",\\"password\\":" .. q(pass)
    .. ",\\"ip\\":" .. q(req.remote_ip or "") .. ",\\"service\\":" .. q(req.service or "") .. "}}")
  local resp = r:submit()
  local status = resp:status()
  if status == 200 then
    return dovecot.auth.PASSDB_RESULT_OK, resp:payload()
  elseif status == 403 then
    return dovecot.auth.PASSDB_RESULT_PASSWORD_MISMATCH, "refused by the mail service"
  end
  return dovecot.auth.PASSDB_RESULT_INTERNAL_FAILURE, "the mail service answered " .. status
end
"""


def _clients(model: MailModel, s: ServersSettings) -> tuple[str, str, str]:
    """Dovecot's listeners for the mail clients among the apps (webmail) and the networks it
    trusts: IMAP and ManageSieve on the apps' addresses without TLS (the host's own bridge,
    as apps' sending is), taken from those networks only (`login_trusted_networks` counts as
    secured there, and lets the client name the person's address with IMAP ID)."""
    if not (model.apps_listen and model.client_networks):
        return "    port = 0", "", ""
    addresses = ", ".join(_listen("dovecot", model.apps_listen))
    for what, port in (
        ("apps_imap_port", s.apps_imap_port),
        ("apps_sieve_port", s.apps_sieve_port),
    ):
        _port("dovecot", port, what)
        if not port:
            raise RenderError("dovecot", f"{what} 0 with mail clients among the apps")
    nets = []
    for n in model.client_networks:
        try:
            nets.append(str(ipaddress.ip_network(n, strict=False)))
        except ValueError:
            raise RenderError("dovecot", f"client network {n!r} is not a CIDR") from None
    imap = f"    address = {addresses}\n    port = {s.apps_imap_port}"
    sieve = (
        f"  inet_listener sieve_apps {{\n    address = {addresses}\n"
        f"    port = {s.apps_sieve_port}\n  }}"
    )
    return imap, sieve, " ".join(nets)


_NO_AUTH_PENALTY = """\
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
"""


def _dovecot(
    model: MailModel, s: ServersSettings, lay: Layout, gen: Path, cert: str, key: str
) -> dict[str, RenderedFile]:
    listen = _listen("dovecot", s.listen)
    _port("dovecot", s.imaps_port, "imaps_port")
    _port("dovecot", s.managesieve_port, "managesieve_port")
    if not _USER.fullmatch(s.vmail_user):
        raise RenderError("dovecot", f"vmail user {s.vmail_user!r} is not a system user name")
    if not _URL.fullmatch(s.auth_url):
        raise RenderError("dovecot", f"auth_url {s.auth_url!r} is not a plain http(s) URL")
    if not _TOKEN.fullmatch(s.auth_token):
        raise RenderError("dovecot", "auth_token must be 16-512 printable characters, no spaces")
    users: list[str] = []
    folders: set[str] = set()
    for b in sorted(model.mailboxes, key=lambda b: b.address):
        _address("dovecot", b.address, "mailbox")
        if not _FOLDER.fullmatch(b.folder) or b.folder in folders:
            raise RenderError("dovecot", f"folder {b.folder!r} of {b.address} is not a unique id")
        folders.add(b.folder)
        extra = ""
        if b.quota_bytes is not None:
            if b.quota_bytes <= 0:
                raise RenderError("dovecot", f"quota of {b.address} must be positive or none")
            extra = f"userdb_quota_rule=*:storage={b.quota_bytes}B"
        # user:password:uid:gid:gecos:home:shell:extra
        users.append(f"{b.address}:::::{lay.store / b.folder}::{extra}")
    addresses = ", ".join("*" if a == "0.0.0.0" else a for a in listen)  # noqa: S104
    # Apps' accounts sign in over Postfix's apps listener without TLS (the host's own bridge):
    # Dovecot's auth must take plaintext there. People still cannot: IMAP and ManageSieve
    # require TLS (ssl = required), submission refuses AUTH before TLS (smtpd_tls_auth_only).
    plaintext = "no" if model.apps_listen else "yes"
    imap_plain, sieve_apps, trusted = _clients(model, s)
    sending: dict[str, RenderedFile] = {}
    if s.sieve_send:
        # Away messages and redirects leave through the mail service (sieve_send.py), signed
        # in on Postfix's platform listener and DKIM-signed; a redirect goes out from the
        # mailbox's own address, so SPF holds at the next server and bounces come back here.
        sendmail = f"sendmail_path = {lay.conf}/dovecot/sendmail"
        sieve_sending = "  sieve_max_redirects = 4\n  sieve_redirect_envelope_from = recipient"
        sending["dovecot/sendmail"] = RenderedFile(
            sendmail_program(_path("dovecot", lay.sieve_socket, "sieve socket")).encode(),
            mode=0o755,
        )
    else:
        # Nothing sends for Sieve: scripts that would send (vacation, redirect) are refused
        # when they are kept, instead of failing unseen at delivery.
        sendmail = ""
        sieve_sending = (
            "  sieve_extensions = -vacation -vacation-seconds\n  sieve_max_redirects = 0"
        )
    # No wait at all asked for: Dovecot's own growing wait for an address that keeps failing
    # (2, 4, 8, up to 15 s, its `anvil` penalty) goes too; identity's limits still apply.
    penalty = "" if s.auth_failure_delay else _NO_AUTH_PENALTY
    # The users file and the Lua script are named through `conf`, not this generation: Dovecot
    # reads the users file again at each look-up, and a Dovecot not reloaded (Postfix-only
    # changes) must still find it once its own generation is gone (a CI run saw "unknown user").
    text = f"""\
# Rendered by Homeport (services/mail/render.py): changes here are overwritten.
base_dir = {_path("dovecot", lay.dovecot_base, "base_dir")}
state_dir = {lay.dovecot_state}
instance_name = {lay.instance_name}
protocols = imap lmtp sieve
listen = {addresses}
hostname = {model.hostname}
log_path = /dev/stderr
log_timestamp = "%Y-%m-%d %H:%M:%S "
shutdown_clients = yes
{sendmail}

ssl = required
ssl_cert = <{cert}
ssl_key = <{key}
ssl_min_protocol = TLSv1.2
ssl_cipher_list = {TLS_CIPHERS}
ssl_prefer_server_ciphers = no
disable_plaintext_auth = {plaintext}
auth_mechanisms = plain login
auth_failure_delay = {_seconds("dovecot", s.auth_failure_delay, "auth_failure_delay")}
login_trusted_networks = {trusted}

mail_uid = {s.vmail_user}
mail_gid = {s.vmail_user}
first_valid_uid = 1
first_valid_gid = 1
mail_location = maildir:~/Maildir
mail_plugins = $mail_plugins quota
recipient_delimiter = +
lmtp_save_to_detail_mailbox = no
lmtp_rcpt_check_quota = yes

namespace inbox {{
  inbox = yes
  separator = /
  mailbox Drafts {{
    special_use = \\Drafts
    auto = subscribe
  }}
  mailbox Sent {{
    special_use = \\Sent
    auto = subscribe
  }}
  mailbox Junk {{
    special_use = \\Junk
    auto = subscribe
  }}
  mailbox Trash {{
    special_use = \\Trash
    auto = subscribe
  }}
  mailbox Archive {{
    special_use = \\Archive
  }}
}}

service imap-login {{
  inet_listener imap {{
{imap_plain}
  }}
  inet_listener imaps {{
    port = {s.imaps_port}
    ssl = yes
  }}
}}
service managesieve-login {{
  inet_listener sieve {{
    port = {s.managesieve_port}
  }}
{sieve_apps}
}}
{penalty}service lmtp {{
  unix_listener lmtp {{
    mode = 0600
    user = postfix
  }}
}}
service auth {{
  unix_listener auth-postfix {{
    mode = 0600
    user = postfix
  }}
}}
service quota-status {{
  executable = quota-status -p postfix
  unix_listener quota-status {{
    mode = 0600
    user = postfix
  }}
  client_limit = 1
}}

passdb {{
  driver = lua
  args = file={lay.conf}/dovecot/auth.lua blocking=yes
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {lay.conf}/dovecot/users
  default_fields = uid={s.vmail_user} gid={s.vmail_user}
}}

protocol imap {{
  mail_plugins = $mail_plugins imap_quota
}}
protocol lmtp {{
  mail_plugins = $mail_plugins sieve
}}
plugin {{
  quota = maildir:User quota
  quota_status_success = DUNNO
  quota_status_nouser = DUNNO
  quota_status_overquota = "{QUOTA_REFUSAL}"
  sieve = file:~/sieve;active=~/.dovecot.sieve
{sieve_sending}
}}
"""
    lua = _AUTH_LUA.format(url=_lua_string(s.auth_url), token=_lua_string(s.auth_token))
    return {
        **sending,
        "dovecot/dovecot.conf": RenderedFile(text.encode()),
        "dovecot/users": RenderedFile(_lines(users), mode=0o640, group="dovecot"),
        # holds the token the mail service checks: root and Dovecot's auth only
        "dovecot/auth.lua": RenderedFile(lua.encode(), mode=0o640, group="dovecot"),
    }


# -- rspamd -------------------------------------------------------------------------------


def _rspamd(
    model: MailModel, s: ServersSettings, lay: Layout, gen: Path
) -> dict[str, RenderedFile]:
    if not _USER.fullmatch(s.rspamd_user):
        raise RenderError("rspamd", f"rspamd user {s.rspamd_user!r} is not a system user name")
    files: dict[str, RenderedFile] = {}

    def put(name: str, text: str) -> None:
        files[f"rspamd/local.d/{name}"] = RenderedFile(text.encode())

    put(
        "worker-proxy.inc",
        f'bind_socket = "127.0.0.1:{s.milter_port}";\n'
        f'bind_socket = "{lay.milter_socket} mode=0666";\n'
        "milter = yes;\n"
        "timeout = 120s;\n"
        'upstream "local" { default = yes; self_scan = yes; }\n'
        "count = 1;\n",
    )
    for worker in ("normal", "controller", "fuzzy"):
        put(f"worker-{worker}.inc", "enabled = false;\n")
    put("logging.inc", 'type = "console";\nlevel = "notice";\n')
    options = [
        # nobody is local by address (Postfix trusts nobody by address either): a client on
        # loopback or a private network is checked like any other
        "local_addrs = [];",
    ]
    if s.nameservers:
        for ns in s.nameservers:
            host, _, port = ns.rpartition(":") if ns.count(":") == 1 else (ns, "", "")
            try:
                ipaddress.ip_address(host.strip("[]"))
            except ValueError:
                raise RenderError("rspamd", f"nameserver {ns!r} is not ip or ip:port") from None
            if port and not (port.isdigit() and 0 < int(port) < 65536):
                raise RenderError("rspamd", f"nameserver {ns!r} has a bad port")
        names = ", ".join(_ucl_string(ns) for ns in s.nameservers)
        options.append(f"dns {{ nameserver = [{names}]; timeout = 2s; retransmits = 2; }}")
    put("options.inc", "\n".join(options) + "\n")
    put("actions.conf", "reject = 15;\nadd_header = 6;\ngreylist = null;\n")
    # People and apps signed in: their client's address and HELO say nothing (home and phone
    # networks), so no block-list or host-name checks (six DNS look-ups a message otherwise);
    # DKIM signing and the content checks stay.
    put(
        "settings.conf",
        "signed_in {\n"
        "  priority = high;\n"
        "  authenticated = yes;\n"
        '  apply { groups_disabled = ["rbl", "surbl", "hfilter"];'
        ' symbols_disabled = ["HOMEPORT_LOCAL_FROM"]; }\n'
        "}\n",
    )
    # Mail from outside whose From: is in one of this server's domains must pass DMARC (SPF or
    # DKIM aligned with that domain): a forged local sender is refused at SMTP time. Postfix
    # already refuses a local envelope sender on port 25; this is the address people see.
    local = sorted(d.name for d in model.domains)
    if local:
        for name in local:
            _domain("rspamd", name, "mail domain")
        files["rspamd/local_domains.map"] = RenderedFile(_lines(local))
        put(
            "multimap.conf",
            "HOMEPORT_LOCAL_FROM {\n"
            '  type = "header";\n'
            '  header = "From";\n'
            '  filter = "email:domain";\n'
            f'  map = "{gen / "rspamd/local_domains.map"}";\n'
            '  require_symbols = "!DMARC_POLICY_ALLOW";\n'
            '  action = "reject";\n'
            '  message = "the From address is in a domain of this server but the message'
            ' did not come from it (DMARC)";\n'
            '  description = "From: a local domain, not DMARC-aligned";\n'
            "}\n",
        )
    # nothing fetched from rspamd.com's fuzzy servers; statistics need a redis we do not run
    put("fuzzy_check.conf", "enabled = false;\n")
    # statistics (Bayes) need a redis we do not run: an empty classifier, instead of a
    # warning from every worker that it cannot reach one
    files["rspamd/override.d/statistic.conf"] = RenderedFile(b'classifier "bayes" {\n}\n')
    files.update(_dkim(model.domains, s, gen))
    rules, scores = [], []
    for i, zone in enumerate(model.dnsbl, 1):
        _domain("rspamd", zone, "DNSBL zone")
        symbol = f"HOMEPORT_DNSBL_{i}"
        rules.append(
            f"  homeport_dnsbl_{i} {{\n"
            f'    symbol = "{symbol}";\n'
            f'    rbl = "{zone}";\n'
            '    checks = ["from"];\n'
            "    ipv4 = true;\n"
            "    ipv6 = true;\n"
            "    exclude_users = true;\n"
            "    exclude_private_ips = false;\n"
            "    exclude_local = false;\n"
            "    disable_monitoring = true;\n"
            "  }\n"
        )
        scores.append(
            f'  "{symbol}" {{ weight = 20.0; description = "the client is listed in {zone}"; }}\n'
        )
    put("rbl.conf", "rbls {\n" + "".join(rules) + "}\n")
    put("rbl_group.conf", "symbols {\n" + "".join(scores) + "}\n")
    return files


def _dkim(domains: Iterable[MailDomain], s: ServersSettings, gen: Path) -> dict[str, RenderedFile]:
    files: dict[str, RenderedFile] = {}
    entries = []
    for d in domains:
        if d.dkim is None:
            continue
        if not _SELECTOR.fullmatch(d.dkim.selector):
            raise RenderError("rspamd", f"DKIM selector {d.dkim.selector!r} of {d.name} is invalid")
        if not _PEM_KEY.fullmatch(d.dkim.private_pem):
            # never the key itself in the message
            raise RenderError("rspamd", f"the DKIM key of {d.name} is not a PEM private key")
        rel = f"rspamd/dkim/{d.name}.{d.dkim.selector}.key"
        pem = d.dkim.private_pem if d.dkim.private_pem.endswith("\n") else d.dkim.private_pem + "\n"
        files[rel] = RenderedFile(pem.encode(), mode=0o600, owner=s.rspamd_user)
        entries.append(
            f'  "{d.name}" {{\n'
            f'    selectors [ {{ path = "{gen / rel}"; selector = "{d.dkim.selector}"; }} ]\n'
            "  }\n"
        )
    text = (
        "enabled = true;\n"
        "sign_authenticated = true;\n"
        "sign_local = false;\n"
        "sign_inbound = false;\n"
        "allow_username_mismatch = true;\n"
        "allow_hdrfrom_mismatch = false;\n"
        "use_esld = false;\n"
        "try_fallback = false;\n"
        "domain {\n" + "".join(entries) + "}\n"
    )
    files["rspamd/local.d/dkim_signing.conf"] = RenderedFile(text.encode())
    return files
