"""GET /openapi.json and a human-readable API reference at /docs (no CDN, no scripts)."""

from __future__ import annotations

import html
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from ..openapi import build_spec
from ..problems import json_response
from ..state import relay_state


async def openapi_json(request: Request) -> Response:
    return json_response(build_spec(relay_state(request).settings.public_url))


def _schema_text(schema: dict[str, Any]) -> str:
    ref = schema.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        return f'<a href="#schema-{name}">{html.escape(name)}</a>'
    return html.escape(str(schema.get("type", "any")))


async def docs_page(request: Request) -> Response:
    spec = build_spec(relay_state(request).settings.public_url)
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        "<meta name=viewport content='width=device-width,initial-scale=1'>",
        "<title>Proof-Messenger relay API</title><style>",
        "body{font:16px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#111}",
        "code,pre{font-family:ui-monospace,monospace;background:#f3f3f3;padding:.1rem .3rem}",
        "h2{border-top:1px solid #ccc;padding-top:1rem}.m{font-weight:700;color:#fff;padding:.1rem .4rem;border-radius:3px}",
        ".get{background:#0b5394}.post{background:#38761d}.delete{background:#990000}",
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2rem .5rem;text-align:left}",
        "</style></head><body>",
        f"<h1>{html.escape(spec['info']['title'])} <small>v{html.escape(spec['info']['version'])}</small></h1>",
        f"<p>{html.escape(spec['info']['description'])}</p>",
        "<p>Machine-readable: <a href='/openapi.json'>/openapi.json</a>. Authenticate with "
        "<code>Authorization: Bearer &lt;api key&gt;</code>.</p>",
    ]
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            parts.append(
                f"<h2><span class='m {method}'>{method.upper()}</span> <code>{html.escape(path)}</code></h2>"
                f"<p>{html.escape(op.get('summary', ''))}</p>"
            )
            params = [*item.get("parameters", []), *op.get("parameters", [])]
            if params:
                parts.append(
                    "<table><tr><th>parameter</th><th>in</th><th>type</th><th>required</th></tr>"
                )
                for p in params:
                    parts.append(
                        f"<tr><td><code>{html.escape(p['name'])}</code></td><td>{p['in']}</td>"
                        f"<td>{_schema_text(p.get('schema', {}))}</td><td>{'yes' if p.get('required') else 'no'}</td></tr>"
                    )
                parts.append("</table>")
            body = op.get("requestBody", {}).get("content", {})
            if body:
                kinds = ", ".join(
                    f"{html.escape(ct)}: {_schema_text(c.get('schema', {}))}"
                    for ct, c in body.items()
                )
                parts.append(f"<p>Body: {kinds}</p>")
            parts.append("<table><tr><th>status</th><th>meaning</th></tr>")
            for status, resp in op.get("responses", {}).items():
                parts.append(
                    f"<tr><td>{status}</td><td>{html.escape(resp.get('description', ''))}</td></tr>"
                )
            parts.append("</table>")
    parts.append("<h2>Schemas</h2>")
    for name, schema in spec["components"]["schemas"].items():
        parts.append(f"<h3 id='schema-{name}'>{html.escape(name)}</h3>")
        if "description" in schema:
            parts.append(f"<p>{html.escape(schema['description'])}</p>")
        props = schema.get("properties", {})
        if props:
            required = set(schema.get("required", []))
            parts.append("<table><tr><th>field</th><th>type</th><th>required</th></tr>")
            for prop, sub in props.items():
                kind = sub.get("type", "any") if "$ref" not in sub else _schema_text(sub)
                parts.append(
                    f"<tr><td><code>{html.escape(prop)}</code></td><td>{html.escape(str(kind)) if '$ref' not in sub else kind}</td>"
                    f"<td>{'yes' if prop in required else 'no'}</td></tr>"
                )
            parts.append("</table>")
    parts.append("</body></html>")
    return HTMLResponse("".join(parts))


routes = [
    Route("/openapi.json", openapi_json, methods=["GET"]),
    Route("/docs", docs_page, methods=["GET"]),
]
