"""nginx configuration as a pure function of a frozen model (SECURITY.md "HTTP").

Every name, path and number is checked against a strict grammar when the model is built, so
nothing reaches a config file that could end a directive or open a block (config injection).
Output is deterministic: the same model renders the same bytes.

Invariants of the rendered config that are easy to break by editing it:
- `add_header` is inherited by a location only when the location has none of its own
  (https://nginx.org/en/docs/http/ngx_http_headers_module.html#add_header), so the security
  headers live at server level and no HTTPS location sets a header.
- `proxy_set_header` follows the same rule: all of them are in the one proxy location.
- The password-route limit is keyed by a map on `$uri`: requests to other paths have an empty
  key and are not counted, so no location (and no header repetition) is needed for it.
- An app signed in at the edge (`Vhost.auth`) asks the gateway about every request
  (`auth_request` to an internal location): 204 passes with the user's name in `X-Homeport-User`
  (and `-Email`), 401 sends the browser to sign in at `my.<domain>`, 403 refuses. The headers of
  `EDGE_HEADERS` are set by nginx on every vhost (empty, so not sent, where nobody signed in): a
  client's own copy never reaches an upstream. The edge's cookie (`EDGE_COOKIE`) is cut out of
  the Cookie header before any app sees it. `/.homeport/` is the edge's on every app host: the
  app never gets a request under it.
- The gateway's `/metrics`, `/healthz` and `/readyz` answer on its loopback port only: the
  dashboard vhosts refuse them (404).
- A vhost of the local domain (`Vhost.loopback`) listens on loopback addresses only; then the
  other servers listen on those addresses as well, so that loopback keeps every host and a
  default server.
- The server's own addresses (`EdgeModel.address`, while the platform has no domain of its
  own): a request whose Host is an IP literal (`ADDRESS_NAMES`) gets the dashboard exactly as
  `my.<domain>` serves it, with the fallback certificate; the HTTPS default server then answers
  handshakes without SNI (browsers send none for an address) instead of refusing them, and
  still closes every request for a name no vhost has (444): a DNS name pointed at the server
  (DNS rebinding too) never reaches the dashboard through it. Without `address` the default
  servers refuse every unknown host, addresses included.
- The dashboard's allow list (`EdgeModel.dashboard_allow`, the firewall's list for scope
  `dashboard`) is `allow`/`deny all` in the HTTPS server of every dashboard (each `my.<domain>`,
  the local domain's, the one at the server's addresses); 127.0.0.1 and ::1 are always let in,
  so the console of the machine itself is never locked out. HTTP (ACME HTTP-01, the redirect)
  stays open to everyone: the CA's check comes from anywhere.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = [
    "ADDRESS_NAMES",
    "CIPHERS",
    "DASHBOARD_CSP",
    "EDGE_COOKIE",
    "EDGE_HEADERS",
    "EDGE_PREFIX",
    "HSTS",
    "INTERNAL_PATHS",
    "LOOPBACK_ALLOWED",
    "PASSWORD_PATHS",
    "EdgeModel",
    "Vhost",
    "render",
]

HSTS = "max-age=31536000; includeSubDomains"
# Mozilla intermediate (guideline 6.0) as SECURITY.md states it: ECDHE with AEAD only.
CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)
DASHBOARD_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
PASSWORD_PATHS = (
    "/api/v1/session",
    "/api/v1/setup",
    "/api/v1/profile/password",
    "/api/v1/profile/totp/disable",
    "/api/v1/invitations/accept",
    "/api/v1/password-reset",
    "/api/v1/password-reset/complete",
    "/api/v1/session/totp",
)

EDGE_COOKIE = "__Host-hp_edge"  # services/gateway/edge/signin.py
EDGE_PREFIX = "/.homeport/"  # the edge's paths on an app host; never the app's
EDGE_HEADERS = ("X-Homeport-User", "X-Homeport-Email")
INTERNAL_PATHS = ("/metrics", "/healthz", "/readyz")  # the gateway's, loopback only
# let in to the dashboard whatever its allow list says: the console of the machine itself
LOOPBACK_ALLOWED = ("127.0.0.1/32", "::1/128")
_AUTH_LOCATION = "/.homeport/auth"  # internal: nginx's subrequest to the gateway
# Hosts that are IP literals, as nginx's $host has them (lower case, no port, IPv6 in brackets)
ADDRESS_NAMES = r"~^(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|\[[0-9a-f:.]+\])$"
_ADDRESS_UPSTREAM = "hp-address"  # never a vhost's: _upstream_name has no hyphen
_ADDRESS_VHOST = "address.invalid"  # the name of the dashboard at the addresses, never served

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_PATH = re.compile(r"/[A-Za-z0-9._/@+=,-]*")  # no space, quote, ;, {, }, $, \ or #
_URL_PATH = re.compile(r"/[A-Za-z0-9._~/-]*")
_RATE = re.compile(r"[1-9][0-9]{0,6}r/[sm]")
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_SOURCE = re.compile(
    r"'self'|'none'|https?:|https?://(?:\*\.)?" + rf"{_LABEL}(?:\.{_LABEL})*(?::[0-9]{{1,5}})?"
)
_GENERAL_BURST = 100  # page loads fetch many assets at once
_PASSWORD_BURST = 5
_KEEPALIVE = 32
_READ_TIMEOUT = "300s"  # long polls and quiet WebSockets
_BODY = {"app": "100m", "dashboard": "10m"}


def check_host(host: str) -> str:
    """`host` if it is a lower-case DNS name; ValueError naming it otherwise."""
    if not isinstance(host, str) or len(host) > 253 or not _HOST.fullmatch(host):
        raise ValueError(
            f"host {host!r} is not a lower-case DNS name (letters, digits, hyphens, dots; "
            "labels of 1-63 characters): fix the domain or location"
        )
    return host


def _check_path(what: str, path: Path) -> None:
    text = str(path)
    if not path.is_absolute() or not _PATH.fullmatch(text) or "/../" in f"{text}/":
        raise ValueError(
            f"{what} {text!r} must be an absolute path of letters, digits and ._/@+=,- "
            "(no spaces, quotes, ';', braces, '$' or '..'): move the file"
        )


def _check_port(what: str, port: int) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"{what} {port!r} is not a TCP port (1-65535)")


def _networks(cidrs: tuple[str, ...], what: str = "real_ip_from") -> list[str]:
    out: set[str] = set()
    for cidr in cidrs:
        try:
            if not isinstance(cidr, str):
                raise ValueError(cidr)
            out.add(str(ipaddress.ip_network(cidr, strict=False)))
        except ValueError:
            raise ValueError(f"{what} {cidr!r} is not an IP address or CIDR") from None
    return sorted(out)


def _allowed(cidrs: tuple[str, ...]) -> list[str]:
    """The dashboard's `allow` lines (none for an empty list: everyone)."""
    if not cidrs:
        return []
    networks = [n for n in _networks(cidrs, "dashboard_allow") if n not in LOOPBACK_ALLOWED]
    return [
        "# who may reach the dashboard: the firewall's allow list, and this machine always",
        *(f"allow {n};" for n in (*LOOPBACK_ALLOWED, *networks)),
        "deny all;",
    ]


def _check_upstream(upstream: str) -> None:
    host, sep, port = upstream.rpartition(":")
    try:
        ip = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
        ok = bool(sep) and port.isdigit() and 1 <= int(port) <= 65535
        ok = ok and (ip.version == 4) == (not host.startswith("["))
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"upstream {upstream!r} must be <ip>:<port> (e.g. 127.0.0.1:8080, [::1]:8080)"
        )


@dataclass(frozen=True, slots=True)
class Vhost:
    """One HTTPS virtual server: an app or the dashboard, proxied to `upstream`."""

    host: str
    kind: Literal["app", "dashboard"]
    upstream: str
    cert: Path
    key: Path
    websocket: bool = True
    frame_ancestors: str | None = None
    # the gateway (<ip>:<port>) that signs users in at the edge: every request asks it first
    auth: str | None = None
    loopback: bool = False  # a host of the local domain: served on loopback addresses only

    def __post_init__(self) -> None:
        check_host(self.host)
        if self.kind not in ("app", "dashboard"):
            raise ValueError(f"vhost {self.host}: kind {self.kind!r} must be 'app' or 'dashboard'")
        _check_upstream(self.upstream)
        if self.auth is not None:
            if self.kind == "dashboard":
                raise ValueError(f"vhost {self.host}: the dashboard signs users in itself")
            _check_upstream(self.auth)
        if not isinstance(self.loopback, bool):
            raise ValueError(f"vhost {self.host}: loopback must be true or false")
        _check_path(f"vhost {self.host}: certificate", self.cert)
        _check_path(f"vhost {self.host}: key", self.key)
        if self.frame_ancestors is not None:
            if self.kind == "dashboard":
                raise ValueError(
                    f"vhost {self.host}: the dashboard is never framed (frame-ancestors 'none')"
                )
            sources = self.frame_ancestors.split(" ")
            if not all(_SOURCE.fullmatch(s) for s in sources):
                raise ValueError(
                    f"vhost {self.host}: frame_ancestors {self.frame_ancestors!r} must be "
                    "CSP sources separated by single spaces ('self', 'none', https://host[:port])"
                )


@dataclass(frozen=True, slots=True)
class EdgeModel:
    """Everything the edge's nginx config is made of."""

    vhosts: tuple[Vhost, ...]
    http_port: int
    https_port: int
    acme_dir: Path
    default_cert: Path
    default_key: Path
    log_dir: Path
    pid_file: Path
    temp_dir: Path
    user: str | None = None
    bind: tuple[str, ...] = ()
    password_paths: tuple[str, ...] = PASSWORD_PATHS
    rate_per_ip: str = "30r/s"
    password_rate: str = "10r/s"  # noqa: S105 - a rate, not a password
    real_ip_from: tuple[str, ...] = ()
    worker_processes: int = 0  # 0: one per CPU
    # the dashboard's upstream (<ip>:<port>) served at the server's own addresses (no domain
    # of its own yet); None: a request for an address is refused like any unknown host
    address: str | None = None
    # who may reach the dashboard over HTTPS (addresses or CIDR ranges), beside loopback
    # (LOOPBACK_ALLOWED, always); empty: everyone
    dashboard_allow: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        hosts = [v.host for v in self.vhosts]
        dupes = sorted({h for h in hosts if hosts.count(h) > 1})
        if dupes:
            raise ValueError(f"hosts {', '.join(dupes)} appear in more than one vhost")
        _check_port("http_port", self.http_port)
        _check_port("https_port", self.https_port)
        if self.http_port == self.https_port:
            raise ValueError(f"http_port and https_port are both {self.http_port}")
        for what, path in (
            ("acme_dir", self.acme_dir),
            ("default_cert", self.default_cert),
            ("default_key", self.default_key),
            ("log_dir", self.log_dir),
            ("pid_file", self.pid_file),
            ("temp_dir", self.temp_dir),
        ):
            _check_path(what, path)
        if self.user is not None and not _USER.fullmatch(self.user):
            raise ValueError(f"user {self.user!r} is not a system user name")
        for addr in self.bind:
            try:
                ipaddress.ip_address(addr)
            except ValueError:
                raise ValueError(f"bind address {addr!r} is not an IP address") from None
        for url_path in self.password_paths:
            if not _URL_PATH.fullmatch(url_path):
                raise ValueError(
                    f"password path {url_path!r} must be an absolute URL path of letters, digits "
                    "and ._~/-"
                )
        for what, rate in (
            ("rate_per_ip", self.rate_per_ip),
            ("password_rate", self.password_rate),
        ):
            if not _RATE.fullmatch(rate):
                raise ValueError(f"{what} {rate!r} must look like 30r/s or 600r/m")
        _networks(self.real_ip_from)
        _allowed(self.dashboard_allow)
        if self.address is not None:
            _check_upstream(self.address)
        if isinstance(self.worker_processes, bool) or not 0 <= self.worker_processes <= 256:
            raise ValueError(f"worker_processes {self.worker_processes!r} must be 0 (auto)-256")


def render(model: EdgeModel) -> dict[str, str]:
    """File name (relative to the config dir) -> content: nginx.conf, default.conf, sites/*."""
    # A frozen model is checked when built; check again in case one was built around
    # __post_init__ (object.__setattr__), since a config file is where it would hurt.
    EdgeModel.__post_init__(model)
    for v in model.vhosts:
        Vhost.__post_init__(v)
    files = {"nginx.conf": _main(model), "default.conf": _default(model)}
    for v in sorted(model.vhosts, key=lambda v: v.host):
        files[f"sites/{v.host}.conf"] = _site(model, v)
    return dict(sorted(files.items()))


# -- pieces ---------------------------------------------------------------------------------

_HEAD = "# Rendered by Homeport (services/gateway/edge): changes here are overwritten.\n"


def _loopback(model: EdgeModel) -> tuple[str, ...]:
    """Loopback addresses of a model: IPv6's only where the model binds IPv6 at all."""
    return ("127.0.0.1", "::1") if any(":" in a for a in model.bind) else ("127.0.0.1",)


def _listen(model: EdgeModel, port: int, extra: str = "", v: Vhost | None = None) -> list[str]:
    """`listen` lines of `v` (None: the default servers); "" is the wildcard address."""
    if v is not None and v.loopback:
        addrs: tuple[str, ...] = _loopback(model)
    else:
        addrs = model.bind or ("",)
        if any(x.loopback for x in model.vhosts):
            # nginx picks a server among those listening on the connection's own address:
            # on loopback, every host and the default server must be there too
            addrs = tuple(dict.fromkeys((*addrs, *_loopback(model))))
    out = []
    for a in addrs:
        where = f"[{a}]:{port}" if ":" in a else (f"{a}:{port}" if a else str(port))
        out.append(f"listen {where}{extra};")
    return out


def _block(head: str, lines: list[str], indent: int = 0) -> list[str]:
    pad = "    " * indent
    return [f"{pad}{head} {{", *(f"{pad}    {x}" if x else "" for x in lines), f"{pad}}}"]


def _main(model: EdgeModel) -> str:
    t = model.temp_dir
    workers = str(model.worker_processes) if model.worker_processes else "auto"
    top = [f"user {model.user};"] if model.user else []
    top += [
        f"worker_processes {workers};",
        f"pid {model.pid_file};",
        f"error_log {model.log_dir}/error.log warn;",
        "worker_shutdown_timeout 60s;  # a reload ends old WebSockets after this",
        "pcre_jit on;",
        "",
    ]
    password_keys = sorted({p for path in model.password_paths for p in (path, path + "/")})
    http = [
        "server_tokens off;",
        "default_type application/octet-stream;",
        "sendfile on;",
        "tcp_nopush on;",
        "keepalive_timeout 65s;",
        "keepalive_requests 1000;",
        f"client_body_temp_path {t}/client_body;",
        f"proxy_temp_path {t}/proxy;",
        f"fastcgi_temp_path {t}/fastcgi;",
        f"uwsgi_temp_path {t}/uwsgi;",
        f"scgi_temp_path {t}/scgi;",
        "",
        "# no query strings in the log: they may carry reset or invitation tokens",
        'log_format hp_json escape=json \'{"service":"edge","time":"$time_iso8601",'
        '"correlation_id":"$request_id","remote":"$remote_addr","host":"$host",'
        '"method":"$request_method","path":"$uri","status":$status,'
        '"bytes":$body_bytes_sent,"seconds":$request_time,'
        '"upstream_seconds":"$upstream_response_time"}\';',
        "# written in blocks (a write(2) per 64 KiB, at the latest each second), not per request",
        f"access_log {model.log_dir}/access.log hp_json buffer=64k flush=1s;",
        "",
        *_block("map $http_upgrade $connection_upgrade", ["default upgrade;", '"" "";']),
        "# the edge's cookie is the gateway's alone: cut out of what apps are sent",
        *_block(
            "map $http_cookie $hp_app_cookie",
            [
                "default $http_cookie;",
                f'"~^(?<hp_before>(?:.*?;)?)\\s*{EDGE_COOKIE}=[^;]*;?\\s*(?<hp_after>.*)$" '
                '"$hp_before$hp_after";',
            ],
        ),
        # only a POST carries a password (all of these routes take one that way): a sign-out
        # (DELETE /api/v1/session) spends none of the limit
        *_block(
            'map "$request_method $uri" $hp_password_key',
            ['default "";', *(f'"POST {p}" $binary_remote_addr;' for p in password_keys)],
        ),
        f"limit_req_zone $binary_remote_addr zone=hp_general:10m rate={model.rate_per_ip};",
        f"limit_req_zone $hp_password_key zone=hp_password:10m rate={model.password_rate};",
        "limit_req_status 429;",
        "limit_req_log_level warn;",
        "",
        "ssl_protocols TLSv1.2 TLSv1.3;",
        f"ssl_ciphers {CIPHERS};",
        "ssl_prefer_server_ciphers off;",
        "ssl_ecdh_curve X25519:prime256v1:secp384r1;",
        "ssl_session_tickets off;",
        "ssl_session_cache shared:hp_tls:10m;",
        "ssl_session_timeout 1d;",
        "",
    ]
    networks = _networks(model.real_ip_from)
    if networks:
        http += [f"set_real_ip_from {n};" for n in networks]
        http += ["real_ip_header X-Forwarded-For;", "real_ip_recursive on;", ""]
    http += ["include default.conf;", "include sites/*.conf;"]
    lines = [*top, *_block("events", ["worker_connections 4096;"]), "", *_block("http", http)]
    return _HEAD + "\n".join(lines) + "\n"


def _acme_location(model: EdgeModel) -> list[str]:
    """`/.well-known/acme-challenge/<token>` from the token files, nothing else under it."""
    acme = _block(
        r'location ~ "^/\.well-known/acme-challenge/([A-Za-z0-9_-]+)$"',
        [
            f"alias {model.acme_dir}/$1;",
            "default_type text/plain;",
            "disable_symlinks on;",
        ],
    )
    return _block("location ^~ /.well-known/acme-challenge/", [*acme, "return 404;"])


def _default(model: EdgeModel) -> str:
    tls = " ssl http2"
    http = [
        *_listen(model, model.http_port, " default_server"),
        "server_name _;",
        # a certificate is ordered for a host before its vhost is applied: the CA's check of
        # the token may arrive first, so tokens answer for any host (they are public anyway)
        *_acme_location(model),
        *_block("location /", ["return 444;  # unknown host: close without an answer"]),
    ]
    https = [*_listen(model, model.https_port, f"{tls} default_server"), "server_name _;"]
    if model.address is None:
        https += [
            "ssl_reject_handshake on;  # no or unknown SNI: refuse the handshake",
            "# loaded and checked by nginx -t, never presented while handshakes are refused",
        ]
    else:
        https.append("# no SNI (an address) or an unknown one: the fallback certificate")
    https += [
        f"ssl_certificate {model.default_cert};",
        f"ssl_certificate_key {model.default_key};",
        "return 444;  # SNI of one vhost, Host of none",
    ]
    lines = [*_block("server", http), "", *_block("server", https)]
    if model.address is not None:
        lines += ["", *_address(model, model.address)]
    return _HEAD + "\n".join(lines) + "\n"


def _address(model: EdgeModel, upstream: str) -> list[str]:
    """The dashboard at the server's own addresses: an IP literal as Host (`ADDRESS_NAMES`),
    served as `my.<domain>` is, with the fallback certificate; HTTP redirects to the same
    address. `$host` is one of those literals here: nothing else matches the server name."""
    v = Vhost(_ADDRESS_VHOST, "dashboard", upstream, model.default_cert, model.default_key)
    port = "" if model.https_port == 443 else f":{model.https_port}"
    names = f'server_name "{ADDRESS_NAMES}";'
    http = [
        *_listen(model, model.http_port),
        names,
        *_acme_location(model),
        *_block("location /", [f"return 301 https://$host{port}$request_uri;"]),
    ]
    https = _https_server(model, v, _ADDRESS_UPSTREAM, f"$host{port}", names, None)
    return [
        "# the dashboard at the server's addresses: the platform has no domain of its own yet",
        *_upstream_block(_ADDRESS_UPSTREAM, upstream),
        "",
        *_block("server", http),
        "",
        *https,
    ]


def _upstream_name(host: str) -> str:
    # injective on DNS names: a dot never touches a hyphen or another dot
    return "hp_" + host.replace("-", "__").replace(".", "_")


def _https_origin(model: EdgeModel, host: str) -> str:
    return host if model.https_port == 443 else f"{host}:{model.https_port}"


def _forwarded(model: EdgeModel, origin: str) -> list[str]:
    return [
        "proxy_http_version 1.1;",
        "proxy_set_header Host $host;",
        "proxy_set_header X-Real-IP $remote_addr;",
        "proxy_set_header X-Forwarded-For $remote_addr;  # not the client's own list",
        "proxy_set_header X-Forwarded-Proto https;",
        f"proxy_set_header X-Forwarded-Host {origin};",
        f"proxy_set_header X-Forwarded-Port {model.https_port};",
        "proxy_set_header X-Request-Id $request_id;",
    ]


def _edge_locations(model: EdgeModel, v: Vhost, origin: str, hidden: list[str]) -> list[str]:
    """`/.homeport/` of an app host: the edge's sign-in (callback, sign-out) when the app is
    signed in at the edge, the internal check, and nothing else (404)."""
    out: list[str] = []
    if v.auth is not None:
        auth = "hpauth_" + _upstream_name(v.host).removeprefix("hp_")
        to_gateway = [
            *_forwarded(model, origin),
            'proxy_set_header Connection "";',
            "proxy_set_header Cookie \"\";  # the app's cookies are not the gateway's business",
            *(f'proxy_set_header {h} "";' for h in EDGE_HEADERS),
            "proxy_pass_request_body off;",
            'proxy_set_header Content-Length "";',
            # the gateway's own headers (the dashboard's) are not this host's
            *(f"proxy_hide_header {h};" for h in sorted({*hidden, "Content-Security-Policy"})),
        ]
        for path in ("callback", "signout"):
            out += _block(
                f"location = {EDGE_PREFIX}{path}",
                [f"proxy_pass http://{auth};", *to_gateway],
            )
            out.append("")
        check = [
            "internal;",
            f"proxy_pass http://{auth}{EDGE_PREFIX}check;",
            *_forwarded(model, origin),
            'proxy_set_header Connection "";',
            "proxy_set_header X-Homeport-Uri $request_uri;",
            *(f'proxy_set_header {h} "";' for h in EDGE_HEADERS),
            "proxy_pass_request_body off;",
            'proxy_set_header Content-Length "";',
        ]
        out += _block(f"location = {_AUTH_LOCATION}", check)
        out.append("")
        out += _block("location @hp_signin", ["return 302 $hp_signin;"])
        out.append("")
    out += _block(f"location ^~ {EDGE_PREFIX}", ["return 404;"])
    return out


def _upstream_block(name: str, server: str) -> list[str]:
    # an idle connection is closed after 60 s (apps wait longer: Notes 75 s), a busy one kept
    # for 10,000 requests (nginx's default of 1,000 reconnects every few seconds under load)
    lines = [
        f"server {server};",
        f"keepalive {_KEEPALIVE};",
        "keepalive_timeout 60s;",
        "keepalive_requests 10000;",
    ]
    return _block(f"upstream {name}", lines)


def _site(model: EdgeModel, v: Vhost) -> str:
    up = _upstream_name(v.host)
    origin = _https_origin(model, v.host)
    http = [
        *_listen(model, model.http_port, v=v),
        f"server_name {v.host};",
        *_acme_location(model),
        *_block("location /", [f"return 301 https://{origin}$request_uri;"]),
    ]
    lines = [f"# {v.kind} {v.host}", *_upstream_block(up, v.upstream), ""]
    if v.auth is not None:
        auth = "hpauth_" + up.removeprefix("hp_")
        lines += [*_block(f"upstream {auth}", [f"server {v.auth};", "keepalive 8;"]), ""]
    https = _https_server(model, v, up, origin, f"server_name {v.host};", v)
    lines += [*_block("server", http), "", *https]
    return _HEAD + "\n".join(lines) + "\n"


def _https_server(
    model: EdgeModel, v: Vhost, up: str, origin: str, names: str, listen_as: Vhost | None
) -> list[str]:
    """The HTTPS server of `v` proxied to upstream `up`, named by `names`, listening where
    `listen_as` does (None: the default servers' addresses); `origin` is what the upstream is
    told the request's host and port are (X-Forwarded-Host)."""
    headers = [
        ("Strict-Transport-Security", f'"{HSTS}"'),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "strict-origin-when-cross-origin"),
    ]
    if v.kind == "dashboard":
        headers += [
            ("X-Frame-Options", "DENY"),
            ("Content-Security-Policy", f'"{DASHBOARD_CSP}"'),
            ("Cross-Origin-Resource-Policy", "same-origin"),
        ]
    elif v.frame_ancestors is None:
        headers += [("X-Frame-Options", "SAMEORIGIN")]
    else:
        headers += [("Content-Security-Policy", f'"frame-ancestors {v.frame_ancestors}"')]
    # ours are authoritative: a second copy from the upstream would make them ambiguous
    hidden = sorted(
        {name for name, _ in headers} - {"Content-Security-Policy"} | {"X-Frame-Options"}
    )
    limits = [f"limit_req zone=hp_general burst={_GENERAL_BURST} nodelay;"]
    if v.kind == "dashboard":
        limits.append(f"limit_req zone=hp_password burst={_PASSWORD_BURST} nodelay;")
    if v.websocket:
        conn = ["proxy_set_header Upgrade $http_upgrade;"]
        conn.append("proxy_set_header Connection $connection_upgrade;")
    else:
        conn = ['proxy_set_header Connection "";']
    signed_in: list[str] = []
    if v.auth is not None:
        signed_in = [
            f"auth_request {_AUTH_LOCATION};",
            "auth_request_set $hp_user $upstream_http_x_homeport_user;",
            "auth_request_set $hp_email $upstream_http_x_homeport_email;",
            "auth_request_set $hp_signin $upstream_http_x_homeport_location;",
            "error_page 401 = @hp_signin;",
        ]
        who = ["proxy_set_header X-Homeport-User $hp_user;"]
        who.append("proxy_set_header X-Homeport-Email $hp_email;")
    else:  # set empty: a client's own copy is not passed on
        who = [f'proxy_set_header {h} "";' for h in EDGE_HEADERS]
    if v.kind == "app":
        who.append("proxy_set_header Cookie $hp_app_cookie;")
    proxy = [
        *signed_in,
        f"proxy_pass http://{up};",
        *_forwarded(model, origin),
        *who,
        *conn,
        *(f"proxy_hide_header {h};" for h in hidden),
        f"proxy_read_timeout {_READ_TIMEOUT};",
        f"proxy_send_timeout {_READ_TIMEOUT};",
    ]
    if v.kind == "dashboard":
        special = [
            *(x for path in INTERNAL_PATHS for x in _block(f"location = {path}", ["return 404;"])),
            # the gateway's own check of edge sign-ins is nginx's subrequest, never a client's
            *_block(f"location = {EDGE_PREFIX}check", ["return 404;"]),
        ]
    else:
        special = _edge_locations(model, v, origin, hidden)
    https = [
        *_listen(model, model.https_port, " ssl http2", listen_as),
        names,
        f"ssl_certificate {v.cert};",
        f"ssl_certificate_key {v.key};",
        f"client_max_body_size {_BODY[v.kind]};",
        *(_allowed(model.dashboard_allow) if v.kind == "dashboard" else []),
        *limits,
        *(f"add_header {name} {value} always;" for name, value in headers),
        "",
        *special,
        "",
        *_block("location /", proxy),
    ]
    return _block("server", https)
