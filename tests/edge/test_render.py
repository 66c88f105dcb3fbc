"""The rendered nginx config: deterministic, and nothing from the model can inject a directive."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from services.gateway.edge import EdgeModel, Vhost, render
from services.gateway.edge.render import CIPHERS

ROOT = Path("/srv/hp")


def _vhost(host: str, kind: str = "app", **kw: Any) -> Vhost:
    return Vhost(
        host=host,
        kind="dashboard" if kind == "dashboard" else "app",
        upstream=kw.pop("upstream", "127.0.0.1:8080"),
        cert=kw.pop("cert", ROOT / f"certs/{host}.pem"),
        key=kw.pop("key", ROOT / f"certs/{host}.key"),
        **kw,
    )


def _model(*vhosts: Vhost, **kw: Any) -> EdgeModel:
    fields: dict[str, Any] = dict(
        vhosts=vhosts,
        http_port=8080,
        https_port=8443,
        acme_dir=ROOT / "acme",
        default_cert=ROOT / "certs/default.pem",
        default_key=ROOT / "certs/default.key",
        log_dir=ROOT / "logs",
        pid_file=ROOT / "run/nginx.pid",
        temp_dir=ROOT / "temp",
    )
    fields.update(kw)
    return EdgeModel(**fields)


def _server_blocks(text: str) -> list[str]:
    """The top-level `server { ... }` blocks of a file (the renderer indents by 4)."""
    return re.findall(r"^server \{\n.*?^\}", text, re.M | re.S)


def test_output_is_deterministic_and_sorted() -> None:
    a, b, c = _vhost("blog.example.test"), _vhost("my.example.test", "dashboard"), _vhost("x.io")
    first = render(_model(a, b, c))
    assert render(_model(c, a, b)) == first
    assert list(first) == sorted(first)
    assert set(first) == {
        "nginx.conf",
        "default.conf",
        "sites/blog.example.test.conf",
        "sites/my.example.test.conf",
        "sites/x.io.conf",
    }


@pytest.mark.parametrize(
    "host",
    [
        "blog.example.test; include /etc/passwd",
        "blog example.test",
        'blog".example.test',
        "blog'.example.test",
        "blog.example.test{",
        "blog.example.test}",
        "blog.example.test\n",
        "$host.example.test",
        "Blog.Example.Test",
        "*.example.test",
        "-blog.example.test",
        "blog..example.test",
        "",
        "a" * 64 + ".example.test",
    ],
)
def test_bad_hosts_are_refused(host: str) -> None:
    with pytest.raises(ValueError, match="host"):
        _vhost(host)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("upstream", "127.0.0.1:80; proxy_pass http://evil"),
        ("upstream", "evil.example:80"),
        ("upstream", "127.0.0.1:99999"),
        ("cert", Path("/srv/certs/a b.pem")),
        ("cert", Path("/srv/certs/a;b.pem")),
        ("key", Path("/srv/certs/$ssl_server_name.key")),
        ("key", Path("certs/relative.key")),
        ("frame_ancestors", "'self'; script-src *"),
        ("frame_ancestors", 'https://a.example" always; add_header X 1'),
    ],
)
def test_bad_vhost_fields_are_refused(field: str, value: Any) -> None:
    with pytest.raises(ValueError):
        _vhost("blog.example.test", **{field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("acme_dir", Path("/srv/acme }")),
        ("log_dir", Path("/srv/../etc")),
        ("password_paths", ('/api/v1/session" $x; "',)),
        ("rate_per_ip", "30r/s burst=1"),
        ("password_rate", "10r/s;"),
        ("real_ip_from", ("10.0.0.0/8; allow all",)),
        ("bind", ("127.0.0.1:80",)),
        ("user", "root; daemon on"),
        ("http_port", 0),
        ("https_port", 8080),
    ],
)
def test_bad_model_fields_are_refused(field: str, value: Any) -> None:
    with pytest.raises(ValueError):
        _model(_vhost("blog.example.test"), **{field: value})


def test_duplicate_hosts_are_refused() -> None:
    with pytest.raises(ValueError, match=r"blog\.example\.test"):
        _model(_vhost("blog.example.test"), _vhost("blog.example.test", "dashboard"))


def test_a_model_changed_behind_its_back_is_refused_at_render() -> None:
    v = _vhost("blog.example.test")
    object.__setattr__(v, "host", "blog.example.test; evil")
    with pytest.raises(ValueError, match="host"):
        render(_model(v))


def test_tls_settings_are_mozilla_intermediate_as_security_md_says() -> None:
    conf = render(_model(_vhost("blog.example.test")))["nginx.conf"]
    assert "    ssl_protocols TLSv1.2 TLSv1.3;\n" in conf
    (ciphers,) = re.findall(r"ssl_ciphers (\S+);", conf)
    assert ciphers == CIPHERS
    assert set(ciphers.split(":")) == {
        f"ECDHE-{sig}-{c}"
        for sig in ("ECDSA", "RSA")
        for c in ("AES128-GCM-SHA256", "AES256-GCM-SHA384", "CHACHA20-POLY1305")
    }
    assert "ssl_prefer_server_ciphers off;" in conf
    assert "ssl_session_tickets off;" in conf


def test_redirect_keeps_a_non_default_https_port_and_drops_443() -> None:
    site = render(_model(_vhost("blog.example.test")))["sites/blog.example.test.conf"]
    assert "return 301 https://blog.example.test:8443$request_uri;" in site
    files = render(_model(_vhost("blog.example.test"), https_port=443))
    site = files["sites/blog.example.test.conf"]
    assert "return 301 https://blog.example.test$request_uri;" in site


def test_security_headers_are_only_at_server_level() -> None:
    """nginx drops inherited add_header in a location with its own: none may have one."""
    files = render(_model(_vhost("a.example.test"), _vhost("my.example.test", "dashboard")))
    for name, text in files.items():
        for line in text.splitlines():
            if "add_header" in line:
                assert line.startswith("    add_header "), (
                    f"{name}: {line!r} is not at server level"
                )
                assert line.endswith(" always;"), f"{name}: {line!r} lacks `always`"


def test_headers_per_kind() -> None:
    files = render(
        _model(
            _vhost("a.example.test"),
            _vhost("b.example.test", frame_ancestors="'self' https://portal.example.test"),
            _vhost("my.example.test", "dashboard"),
        )
    )
    app = files["sites/a.example.test.conf"]
    framed = files["sites/b.example.test.conf"]
    dash = files["sites/my.example.test.conf"]
    for text in (app, framed, dash):
        hsts = 'add_header Strict-Transport-Security "max-age=31536000; includeSubDomains" always;'
        assert hsts in text
        assert "add_header X-Content-Type-Options nosniff always;" in text
    assert "add_header X-Frame-Options SAMEORIGIN always;" in app
    assert "Content-Security-Policy" not in app
    assert "add_header X-Frame-Options" not in framed
    csp = "frame-ancestors 'self' https://portal.example.test"
    assert f'add_header Content-Security-Policy "{csp}" always;' in framed
    assert "add_header X-Frame-Options DENY always;" in dash
    assert "add_header Cross-Origin-Resource-Policy same-origin always;" in dash
    (policy,) = re.findall(r'Content-Security-Policy "([^"]*)"', dash)
    assert "unsafe-" not in policy
    for part in ("object-src 'none'", "base-uri 'none'", "frame-ancestors 'none'"):
        assert part in policy
    assert "hp_password" in dash and "hp_password" not in app
    assert "client_max_body_size 10m;" in dash and "client_max_body_size 100m;" in app


def test_the_dashboard_cannot_be_made_frameable() -> None:
    with pytest.raises(ValueError, match="dashboard"):
        _vhost("my.example.test", "dashboard", frame_ancestors="'self'")


def test_default_servers_refuse_unknown_hosts_and_vhosts_name_theirs() -> None:
    files = render(_model(_vhost("blog.example.test"), bind=("127.0.0.1", "::1")))
    default = files["default.conf"]
    http, https = _server_blocks(default)
    assert "listen 127.0.0.1:8080 default_server;" in http and "return 444;" in http
    assert "listen [::1]:8443 ssl http2 default_server;" in https
    assert "ssl_reject_handshake on;" in https
    for block in _server_blocks(files["sites/blog.example.test.conf"]):
        assert "default_server" not in block
        assert "server_name blog.example.test;" in block


def test_real_ip_only_from_the_trusted_proxies() -> None:
    conf = render(_model(real_ip_from=("10.1.2.3", "192.168.0.0/16")))["nginx.conf"]
    assert "set_real_ip_from 10.1.2.3/32;" in conf
    assert "set_real_ip_from 192.168.0.0/16;" in conf
    assert "set_real_ip_from" not in render(_model())["nginx.conf"]


def test_websocket_off_clears_connection() -> None:
    site = render(_model(_vhost("a.example.test", websocket=False)))["sites/a.example.test.conf"]
    assert 'proxy_set_header Connection "";' in site
    assert "Upgrade" not in site


def test_model_is_frozen() -> None:
    m = _model()
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.http_port = 1  # type: ignore[misc]


def test_an_app_signed_in_at_the_edge_asks_the_gateway_about_every_request() -> None:
    files = render(
        _model(
            _vhost("a.example.test", auth="127.0.0.1:9000"),
            _vhost("b.example.test"),
            _vhost("my.example.test", "dashboard"),
        )
    )
    signed, public, dash = (files[f"sites/{h}.example.test.conf"] for h in ("a", "b", "my"))
    root = re.findall(r"^    location / \{\n.*?^    \}", signed, re.M | re.S)[-1]  # https
    assert "auth_request /.homeport/auth;" in root
    assert "error_page 401 = @hp_signin;" in root
    assert "proxy_set_header X-Homeport-User $hp_user;" in root
    assert "proxy_set_header Cookie $hp_app_cookie;" in root
    assert (
        "internal;" in signed
        and "proxy_pass http://hpauth_a_example_test/.homeport/check;" in signed
    )
    assert "server 127.0.0.1:9000;" in signed
    assert "location ^~ /.homeport/ {" in signed and "location ^~ /.homeport/ {" in public
    assert "auth_request" not in public and "auth_request" not in dash
    for text in (public, dash):  # nobody signed in here: a client's copy is cleared
        assert 'proxy_set_header X-Homeport-User "";' in text
        assert 'proxy_set_header X-Homeport-Email "";' in text
    assert "proxy_set_header Cookie $hp_app_cookie;" in public
    assert "hp_app_cookie" not in dash
    for path in ("/metrics", "/healthz", "/readyz", "/.homeport/check"):
        assert f"location = {path} {{\n        return 404;" in dash
        assert f"location = {path} " not in public
    for name, text in files.items():  # headers stay at server level (see the module's doc)
        assert all(
            line.startswith("    add_header ") for line in text.splitlines() if "add_header" in line
        ), name
    with pytest.raises(ValueError, match="dashboard"):
        _vhost("my.example.test", "dashboard", auth="127.0.0.1:9000")
    with pytest.raises(ValueError, match="upstream"):
        _vhost("a.example.test", auth="localhost:9000")


def test_local_domain_vhosts_listen_on_loopback_and_the_rest_there_too() -> None:
    files = render(
        _model(_vhost("my.localhost", "dashboard", loopback=True), _vhost("blog.example.test"))
    )
    local = files["sites/my.localhost.conf"]
    assert re.findall(r"listen [^;]*;", local) == [
        "listen 127.0.0.1:8080;",
        "listen 127.0.0.1:8443 ssl http2;",
    ]
    other = files["sites/blog.example.test.conf"]
    assert "listen 8443 ssl http2;" in other and "listen 127.0.0.1:8443 ssl http2;" in other
    default = files["default.conf"]
    assert "listen 127.0.0.1:8443 ssl http2 default_server;" in default
    assert "listen 8443 ssl http2 default_server;" in default
    v6 = render(_model(_vhost("my.localhost", loopback=True), bind=("192.0.2.1", "2001:db8::1")))
    assert re.findall(r"listen [^;]*;", v6["sites/my.localhost.conf"]) == [
        "listen 127.0.0.1:8080;",
        "listen [::1]:8080;",
        "listen 127.0.0.1:8443 ssl http2;",
        "listen [::1]:8443 ssl http2;",
    ]
    # without a local vhost nothing changes
    plain = render(_model(_vhost("blog.example.test")))["sites/blog.example.test.conf"]
    assert "listen 127.0.0.1" not in plain
