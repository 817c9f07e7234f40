"""Pages for people: ``/approve/{id}`` (approve or decline), ``/register`` (enrol a passkey).

Templates are files under ``web/templates`` filled with :class:`string.Template`; every
value is HTML-escaped here. Pages carry a strict CSP (no inline script or style: the page
logic is ``/static/approve.js`` and ``/static/register.js``), cannot be framed, and send
no Referer (the URL holds the page token). ``/static`` serves ``web/static``.
"""

from __future__ import annotations

import functools
import html
import string
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from .. import web
from ..protocol import b64u_encode
from ..web.render import describe
from .approvals import approval_view, authorize, load_intent
from .problems import HTTPProblem
from .state import RelayState, relay_state

__all__ = ["SECURITY_HEADERS", "install"]

SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
_STATUS_TEXT = {
    "pending": "",
    "approved": "Approved. You can close this page.",
    "declined": "Declined. Nothing was approved. You can close this page.",
    "expired": "This request has expired. Nothing was approved.",
}


#: The package's templates and static files, read from its directory (StaticFiles needs a
#: real directory anyway); not through importlib.resources, which would import zipfile
#: and eight importlib modules into every worker.
_WEB_DIR = Path(web.__file__).parent


@functools.cache
def _template(name: str) -> string.Template:
    files = _WEB_DIR / "templates" / name
    return string.Template(files.read_text(encoding="utf-8"))


def _page(name: str, status: int = 200, **values: str) -> Response:
    escaped = {k: html.escape(v, quote=True) for k, v in values.items()}
    return HTMLResponse(_template(name).substitute(escaped), status, headers=SECURITY_HEADERS)


def _raw_page(name: str, values: dict[str, str]) -> Response:
    """For templates that take pre-escaped fragments (the rows list)."""
    return HTMLResponse(_template(name).substitute(values), headers=SECURITY_HEADERS)


def _message(title: str, message: str, status: int, state: str = "error") -> Response:
    return _page("message.html", status, title=title, message=message, state=state)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%d %b %Y, %H:%M UTC")


def _time_left(seconds: int) -> str:
    if seconds <= 0:
        return "Time left: none"
    return f"Time left: {seconds // 60} min {seconds % 60:02d} s"


async def approve_page(request: Request) -> Response:
    state = relay_state(request)
    if "t" not in request.query_params:
        return _message(
            "This link is incomplete",
            "Open the full link you were sent (it is long, copy all of it).",
            404,
        )
    try:
        record, _ = await authorize(request, state)
    except HTTPProblem as exc:
        if exc.status == 429:
            return _message("Too many attempts", "Please wait a minute and try again.", 429)
        return _message(
            "This approval link is not valid",
            "The link is wrong or incomplete. Open the link you were sent again.",
            404,
        )
    view = await approval_view(state, record, for_page=True)
    intent = load_intent(state, record)
    headline, rows = describe(intent.ctx)
    credential_ids: list[str] = view["credential_ids"]
    e = functools.partial(html.escape, quote=True)
    rows_html = "\n".join(
        f'      <div class="row"><dt>{e(r.label)}</dt><dd>{e(r.value)}</dd></div>' for r in rows
    )
    status = view["status"]
    values = {
        "id": e(record.id),
        "status": e(status),
        "expires_epoch": str(int(record.expires_at)),
        "rp_id": e(state.settings.audience),
        "rp_name": e(state.settings.webauthn.rp_name),
        "intent": b64u_encode(intent.to_bytes()),
        # One registered passkey: ask for it; several: let the user choose.
        "credential_id": e(credential_ids[0]) if len(credential_ids) == 1 else "",
        "require_uv": "true" if record.require_uv else "false",
        "requested_by": e(view["requested_by"] or "A service"),
        "sub": e(record.sub),
        "headline": e(headline),
        "rows": rows_html,
        "created_at": e(_when(record.created_at)),
        "time_left": e(_time_left(view["expires_in_seconds"])),
        "status_text": e(_STATUS_TEXT.get(status, "")),
        "disabled": "" if status == "pending" else "disabled",
    }
    return _raw_page("approve.html", values)


async def register_page(request: Request) -> Response:
    state = relay_state(request)
    token = request.query_params.get("token", "")
    from .webauthn_routes import _token_hash  # the enrolment module owns the token format

    ceremony = (
        await state.store.get_registration(_token_hash(token), state.clock())
        if 0 < len(token) <= 128
        else None
    )
    if ceremony is None:
        return _message(
            "This enrolment link has expired",
            "The link was already used or is too old. Ask for a new enrolment link.",
            410,
        )
    return _page(
        "register.html",
        rp_name=state.settings.webauthn.rp_name,
        sub=ceremony.sub,
        expires_at=_when(ceremony.expires_at),
    )


def install(state: RelayState) -> list[BaseRoute]:
    static_dir = _WEB_DIR / "static"
    static = StaticFiles(directory=str(static_dir))
    routes: list[Any] = [
        Route("/approve/{id}", approve_page, methods=["GET"]),
        Route("/register", register_page, methods=["GET"]),
        Mount("/static", app=static, name="static"),
    ]
    return routes
