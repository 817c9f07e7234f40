"""nginx configs: the TLS site config passes `nginx -t` and proxies as documented; the scale-out
template starts, balances, streams events unbuffered and does not retry POSTs."""

from __future__ import annotations

import datetime
import re
import ssl
import uuid
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .backends import broken_backend, http_backend
from .nginx_harness import (
    NGINX_BINARY,
    NGINX_DIR,
    free_port,
    nginx_prefix,
    nginx_test_config,
    render_scaleout_config,
    running_nginx,
)

pytestmark = pytest.mark.skipif(
    NGINX_BINARY is None, reason="nginx is not installed (Debian: apt-get install nginx-light)"
)

SITE_CONF = NGINX_DIR / "proof-messenger.conf"


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "fullchain.pem", directory / "privkey.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _sub(pattern: str, replacement: str, text: str, expected: int) -> str:
    """re.subn that fails loudly if the config no longer has the shape the test rewrites."""
    result, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    assert count == expected, f"expected {expected} match(es) of {pattern!r}, found {count}"
    return result


def _site_with_local_paths(prefix: Path) -> str:
    cert, key = _self_signed(prefix)
    site = SITE_CONF.read_text(encoding="utf-8")
    site = _sub(r"^(\s*ssl_certificate\s+)\S+;", rf"\g<1>{cert};", site, 1)
    return _sub(r"^(\s*ssl_certificate_key\s+)\S+;", rf"\g<1>{key};", site, 1)


def _main_conf(prefix: Path, site: str) -> Path:
    """A minimal nginx.conf around the site config, as a distribution's would include it."""
    (prefix / "site.conf").write_text(site, encoding="utf-8")
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"""daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/client_body_temp;
    proxy_temp_path {prefix}/proxy_temp;
    fastcgi_temp_path {prefix}/fastcgi_temp;
    uwsgi_temp_path {prefix}/uwsgi_temp;
    scgi_temp_path {prefix}/scgi_temp;
    include {prefix}/site.conf;
}}
""",
        encoding="utf-8",
    )
    return conf


def test_site_config_passes_nginx_t() -> None:
    with nginx_prefix() as prefix:
        conf = _main_conf(prefix, _site_with_local_paths(prefix))
        result = nginx_test_config(conf, prefix)
        assert result.returncode == 0, result.stderr
        assert "test is successful" in result.stderr


def test_nginx_t_rejects_a_broken_site_config() -> None:
    """The check above can fail: a config with a typo does not pass."""
    with nginx_prefix() as prefix:
        site = _site_with_local_paths(prefix).replace("least_conn;", "least_connections;")
        result = nginx_test_config(_main_conf(prefix, site), prefix)
        assert result.returncode != 0
        assert "least_connections" in result.stderr


def test_site_config_terminates_tls_and_sets_forwarding_headers() -> None:
    with nginx_prefix() as prefix, http_backend("a") as backend:
        https_port, http_port = free_port(), free_port()
        site = _site_with_local_paths(prefix)
        site = _sub(r"^\s*listen \[::\]:\d+.*\n", "", site, 2)
        site = _sub(r"listen 443 ssl http2;", f"listen 127.0.0.1:{https_port} ssl http2;", site, 1)
        site = _sub(r"listen 80;", f"listen 127.0.0.1:{http_port};", site, 1)
        site = _sub(r"^(\s*server) 127\.0\.0\.1:808[123];\n", "", site, 3)
        site = _sub(r"^(\s*least_conn;)$", rf"\1\n    server 127.0.0.1:{backend.port};", site, 1)
        conf = _main_conf(prefix, site)

        context = ssl.create_default_context(cafile=str(prefix / "fullchain.pem"))
        with (
            running_nginx(conf, prefix, [https_port, http_port]),
            httpx.Client(verify=context, timeout=10) as client,
        ):
            base = f"https://localhost:{https_port}"
            response = client.get(
                f"{base}/health",
                headers={"X-Forwarded-For": "203.0.113.9", "X-Request-ID": "req-123"},
            )
            assert response.status_code == 200
            assert response.headers["x-backend"] == "a"
            assert response.headers["strict-transport-security"].startswith("max-age=63072000")
            assert response.headers["x-request-id"] == "req-123"
            tls_version = (
                response.extensions["network_stream"].get_extra_info("ssl_object").version()
            )
            assert tls_version in {"TLSv1.2", "TLSv1.3"}

            seen = backend.seen[-1].headers
            # The edge replaces a client-supplied X-Forwarded-For with the real peer address.
            assert seen["x-forwarded-for"] == "127.0.0.1"
            assert seen["x-real-ip"] == "127.0.0.1"
            assert seen["x-forwarded-proto"] == "https"
            assert seen["x-request-id"] == "req-123"

            # An unsafe request id is replaced by nginx's own random one, consistently both ways.
            response = client.get(f"{base}/health", headers={"X-Request-ID": "bad id\twith spaces"})
            generated = response.headers["x-request-id"]
            assert re.fullmatch(r"[0-9a-f]{32}", generated)
            assert backend.seen[-1].headers["x-request-id"] == generated

            # Bodies above limits.max_body_bytes (1 MiB) stop at nginx.
            count = len(backend.seen)
            response = client.post(f"{base}/verify", content=b"x" * (1024 * 1024 + 1))
            assert response.status_code == 413
            assert len(backend.seen) == count
            response = client.post(f"{base}/verify", content=b"x" * (1024 * 1024))
            assert response.status_code == 200
            assert response.text == "a 1048576"

            # Plain HTTP redirects to HTTPS.
            redirect = httpx.get(f"http://127.0.0.1:{http_port}/approve/abc", timeout=10)
            assert redirect.status_code == 301
            assert redirect.headers["location"] == "https://127.0.0.1/approve/abc"


def _scaleout(prefix: Path, upstreams: list[str]) -> tuple[Path, int]:
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(render_scaleout_config(port, upstreams, prefix), encoding="utf-8")
    return conf, port


def test_scaleout_template_renders_and_rejects_bad_input() -> None:
    with nginx_prefix() as prefix:
        text = render_scaleout_config(18080, ["127.0.0.1:1", "127.0.0.1:2"], prefix)
        assert "listen 127.0.0.1:18080;" in text
        assert "server 127.0.0.1:1;" in text and "server 127.0.0.1:2;" in text
        assert f"pid {prefix}/nginx.pid;" in text
        assert "/var/" not in text
        with pytest.raises(ValueError, match="at least one upstream"):
            render_scaleout_config(18080, [], prefix)


def test_scaleout_template_balances_across_instances() -> None:
    with nginx_prefix() as prefix, http_backend("a") as a, http_backend("b") as b:
        conf, port = _scaleout(prefix, [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"])
        assert nginx_test_config(conf, prefix).returncode == 0
        with running_nginx(conf, prefix, [port]), httpx.Client(timeout=10) as client:
            served_by = set()
            for i in range(6):
                response = client.get(f"http://127.0.0.1:{port}/ready?n={i}")
                assert response.status_code == 200
                served_by.add(response.headers["x-backend"])
                assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])
        assert served_by == {"a", "b"}
        assert all(seen.headers["x-forwarded-for"] == "127.0.0.1" for seen in a.seen + b.seen)


def test_scaleout_template_streams_events_unbuffered() -> None:
    """The backend sends the second event only after the client got the first through nginx;
    with proxy buffering on, the first event would sit in nginx and the read would time out."""
    with nginx_prefix() as prefix, http_backend("a") as backend:
        conf, port = _scaleout(prefix, [f"127.0.0.1:{backend.port}"])
        with running_nginx(conf, prefix, [port]), httpx.Client(timeout=20) as client:
            url = f"http://127.0.0.1:{port}/approvals/{uuid.uuid4().hex}/events"
            with client.stream("GET", url) as response:
                assert response.status_code == 200
                assert response.headers["content-type"] == "text/event-stream"
                lines = response.iter_lines()
                received = []
                for line in lines:
                    received.append(line)
                    if line == "data: pending":
                        break
                backend.release_stream.set()
                received.extend(lines)
        assert received[:2] == ["event: status", "data: pending"]
        assert "data: approved" in received


def test_scaleout_template_retries_get_but_never_resends_post() -> None:
    """A crashed instance (reads the request, closes without answering): nginx retries a GET on
    the next instance, but a POST that already reached an instance is answered 502, not resent
    (a resent proof would be refused as a replay)."""
    with nginx_prefix() as prefix, broken_backend() as broken, http_backend("good") as good:
        # max_fails=0 keeps the broken instance in rotation so every round hits it.
        conf, port = _scaleout(
            prefix, [f"server 127.0.0.1:{broken.port} max_fails=0;", f"127.0.0.1:{good.port}"]
        )
        with running_nginx(conf, prefix, [port]), httpx.Client(timeout=20) as client:
            base = f"http://127.0.0.1:{port}"
            for i in range(4):
                response = client.get(f"{base}/health?n={i}")
                assert response.status_code == 200
                assert response.headers["x-backend"] == "good"

            statuses: dict[str, int] = {}
            for _ in range(6):
                request_id = uuid.uuid4().hex
                response = client.post(
                    f"{base}/verify", content=b"{}", headers={"X-Request-ID": request_id}
                )
                statuses[request_id] = response.status_code

        failed = {rid for rid, status in statuses.items() if status == 502}
        assert set(statuses.values()) <= {200, 502}
        broken_posts = {
            rid for rid in statuses if any(rid.encode() in raw for raw in broken.requests)
        }
        assert broken_posts, "no POST reached the broken instance; the test proved nothing"
        # Every POST the broken instance swallowed was answered 502, not resent to another one.
        assert failed == broken_posts
        good_posts = {s.headers["x-request-id"] for s in good.seen if s.method == "POST"}
        assert good_posts == set(statuses) - failed
