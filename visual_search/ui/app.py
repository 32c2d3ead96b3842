"""Two surfaces in one FastAPI app: the shopper's search at ``/`` and the admin at ``/admin``.

Gradio lets anyone call any event handler of a Blocks by ``fn_index`` (``api_visibility`` only hides
it from the docs), so what a shopper must not run is not in the shopper's Blocks at all: the
shopper Blocks holds the search and the five named search endpoints; the admin Blocks (Catalog:
status, import, audit, evaluation; Pilot analytics) is mounted behind Gradio's login, or on a
loopback host only when no password is set. Catalog images are served by product id
(``/img/<id>/<n>``), so no indexed folder is ever added to Gradio's ``allowed_paths``.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from fastapi import FastAPI
from fastapi.responses import RedirectResponse, Response

from ..analytics import SearchLog
from ..engine import SearchEngine
from ..images.load import MAX_BYTES
from . import render
from .api import add_api_endpoints
from .common import UIContext, UIOptions, static_text
from .media import add_media_routes
from .tabs.analytics import build_analytics_tab
from .tabs.catalog import build_catalog_tab
from .tabs.search import build_search_tab

log = logging.getLogger(__name__)

ADMIN_USER = "admin"
ADMIN_PATH = "/admin"
# Gradio's cache of uploads and outputs: every 10 minutes, drop files older than an hour (uploads
# are also deleted as soon as their search is answered; this is the backstop).
DELETE_CACHE = (600, 3600)
# A page load reuses catalog statistics this young (computing them reads the whole index); an
# import through the admin of this process refreshes them at once.

# Page-frame rules: Gradio prefixes css=... with its content container, so these go in <head>.
HEAD_STYLE = """<meta name="theme-color" content="#4f46e5">
<style>
.gradio-container { max-width: 1320px !important; margin: 0 auto !important; }
@media (max-width: 640px) {
  .gradio-container .main.app { padding-left: 10px !important; padding-right: 10px !important; }
}
</style>"""


def theme() -> gr.themes.Base:
    """Soft theme, system fonts only (no font downloads: offline demos and privacy in a pilot)."""
    return gr.themes.Soft(
        primary_hue=gr.themes.colors.indigo,
        secondary_hue=gr.themes.colors.pink,
        neutral_hue=gr.themes.colors.slate,
        radius_size=gr.themes.sizes.radius_lg,
        font=["Inter", "ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"],
        font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "monospace"],
    )


def header_html(ctx: UIContext, extra: Sequence[str] = ()) -> str:
    encoder = ctx.engine.encoder
    facts = [f"{ctx.stats().products:,} products", encoder.model_id, encoder.device, *extra]
    return render.header(ctx.options.title, ctx.options.tagline, facts)


# ---------------------------------------------------------------------------- the two Blocks


def build_shopper(ctx: UIContext) -> gr.Blocks:
    """Search only: nothing else may be callable from the public page, by any fn_index."""
    with gr.Blocks(title=ctx.options.title, analytics_enabled=False, delete_cache=DELETE_CACHE) as demo:
        header = gr.HTML(header_html(ctx), elem_id="vs-header")
        tab = build_search_tab(ctx)
        add_api_endpoints(ctx)

        def on_load():  # an import (here or in another process) may have changed the catalog
            ctx.stats()  # StatsCache: recomputed when the index changed (remote: also after a TTL)
            return (*_search_filters(ctx), header_html(ctx))

        demo.load(
            on_load, None, [tab.categories, tab.brands, tab.price_note, header], api_visibility="private"
        )
    return demo


def _search_filters(ctx: UIContext) -> tuple[Any, Any, str]:
    from .tabs.search import SearchHandlers

    return SearchHandlers(ctx).refresh_filters()


def build_admin(ctx: UIContext) -> gr.Blocks:
    """Catalog (status, import, audit, evaluation) and Pilot analytics, for the operator."""
    with gr.Blocks(
        title=f"{ctx.options.title} · admin", analytics_enabled=False, delete_cache=DELETE_CACHE
    ) as demo:
        gr.HTML(header_html(ctx, ["admin"]), elem_id="vs-header")
        with gr.Tabs(elem_id="vs-tabs"):
            with gr.Tab("Catalog", id="catalog", elem_id="tab-catalog"):
                build_catalog_tab(ctx)
            with gr.Tab("Pilot analytics", id="analytics", elem_id="tab-analytics"):
                build_analytics_tab(ctx)
    return demo


# ---------------------------------------------------------------------------- which surfaces


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Surfaces:
    admin: bool
    admin_auth: tuple[str, str] | None
    message: str  # one line for the console: what is served, and why


def decide_surfaces(host: str, share: bool, admin_password: str | None) -> Surfaces:
    """The admin needs a password unless nobody but this machine can reach it."""
    if admin_password:
        return Surfaces(
            True,
            (ADMIN_USER, admin_password),
            f"Serving search at / and the admin at {ADMIN_PATH} (login: user '{ADMIN_USER}' and the admin password).",
        )
    if share or not is_loopback(host):
        why = "--share" if share else f"--host {host} is reachable from other machines"
        return Surfaces(
            False,
            None,
            f"Serving search only: no admin at {ADMIN_PATH} because {why} and no admin password is set "
            "(set VS_ADMIN_PASSWORD or --admin-password-file to serve it).",
        )
    return Surfaces(
        True,
        None,
        f"Serving search at / and the admin at {ADMIN_PATH} without a password (loopback host {host} only).",
    )


# ---------------------------------------------------------------------------- the FastAPI app


@dataclass
class ServeOptions:
    concurrency: int = 4
    max_file_size: int = MAX_BYTES
    monitoring: bool = False
    blocked: Sequence[Path] = ()  # never served by Gradio's file route (the log, the index)


def create_app(
    engine: SearchEngine,
    search_log: SearchLog | None,
    options: UIOptions,
    surfaces: Surfaces,
    serve: ServeOptions | None = None,
) -> FastAPI:
    """The shopper Blocks at ``/``, the admin Blocks at ``/admin`` (when ``surfaces.admin``)."""
    serve = serve or ServeOptions()
    options.import_root.mkdir(parents=True, exist_ok=True)
    ctx = UIContext.create(engine, search_log, options)
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    prefixes = ("", ADMIN_PATH) if surfaces.admin else ("",)
    add_media_routes(app, ctx, prefixes)
    if not serve.monitoring:
        _no_monitoring(app, prefixes)
    common: dict[str, Any] = {
        "theme": theme(),
        "css": static_text("style.css"),
        "head": HEAD_STYLE,
        "allowed_paths": [],
        "blocked_paths": [str(Path(p).resolve()) for p in (*serve.blocked, options.import_root)],
        "max_file_size": serve.max_file_size,
        "enable_monitoring": serve.monitoring,
        "show_error": False,  # uncaught errors stay generic; gr.Error messages still show
        "mcp_server": False,
    }
    if surfaces.admin:
        app.add_api_route(
            ADMIN_PATH, lambda: RedirectResponse(ADMIN_PATH + "/"), methods=["GET"], include_in_schema=False
        )
        admin = build_admin(ctx)
        admin.queue(default_concurrency_limit=serve.concurrency, max_size=64)
        gr.mount_gradio_app(app, admin, path=ADMIN_PATH, auth=surfaces.admin_auth, footer_links=[], **common)
    shopper = build_shopper(ctx)
    shopper.queue(default_concurrency_limit=serve.concurrency, max_size=64)
    gr.mount_gradio_app(app, shopper, path="/", footer_links=["api"], **common)
    return app


def _no_monitoring(app: FastAPI, prefixes: Sequence[str]) -> None:
    """Gradio's /monitoring answers (403) even when off; without --monitoring it does not exist."""

    def not_found() -> Response:
        return Response(status_code=404)

    for prefix in prefixes:
        for route in ("/monitoring", "/monitoring/{rest:path}", "/gradio_api/monitoring/{rest:path}"):
            app.add_api_route(prefix + route, not_found, methods=["GET"], include_in_schema=False)


def serve_forever(
    app: FastAPI,
    *,
    host: str,
    port: int,
    share: bool = False,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
) -> None:
    """Run the app with uvicorn (and a gradio.live tunnel with ``share``) until interrupted."""
    import uvicorn

    config = uvicorn.Config(
        app, host=host, port=port, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile, log_level="warning"
    )
    server = uvicorn.Server(config)
    if not share:
        server.run()
        return
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        thread.join(0.1)
    if server.started:
        from gradio import networking

        url = networking.setup_tunnel("127.0.0.1", port, secrets.token_urlsafe(32), None, None)
        print(f"Public link (search only): {url}", flush=True)
    thread.join()
