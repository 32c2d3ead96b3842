"""Visual product search app: ``python app.py`` (see ``--help``).

Loads the model once, opens the index (embedded Qdrant in --data-dir, or --qdrant-url), indexes the
sample catalog on first start when the index is empty, then serves the Gradio UI and API.
Model or store problems end the program with one clear line and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from visual_search.core.config import (  # noqa: E402
    SAMPLE_CATALOG,
    Settings,
    add_log_days_argument,
    add_settings_arguments,
)
from visual_search.core.errors import VisualSearchError  # noqa: E402

log = logging.getLogger("visual_search.app")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python app.py",
        description="Visual product search: a web app to search a product catalog by photo, text or both.",
    )
    g = parser.add_argument_group("server")
    g.add_argument(
        "--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 for a phone on the LAN)"
    )
    g.add_argument("--port", type=int, default=7860)
    g.add_argument("--share", action="store_true", help="also open a public https://*.gradio.live link")
    g.add_argument("--ssl-certfile", help="serve HTTPS with this certificate (camera on phones needs HTTPS)")
    g.add_argument("--ssl-keyfile", help="private key for --ssl-certfile")
    g.add_argument(
        "--concurrency",
        type=int,
        default=4,
        help="searches that run at the same time (others queue); default 4",
    )
    g.add_argument(
        "--max-upload-mb", type=float, default=50, help="largest upload accepted, in MB (default 50)"
    )
    g.add_argument(
        "--admin-password-file",
        metavar="PATH",
        help="file holding the admin password (user 'admin'; or set VS_ADMIN_PASSWORD). Without a "
        "password the admin pages are served on a loopback --host only",
    )
    g.add_argument(
        "--monitoring", action="store_true", help="serve Gradio's /monitoring dashboard (off by default)"
    )
    g = parser.add_argument_group("catalog and pilot")
    g.add_argument(
        "--catalog",
        default=str(SAMPLE_CATALOG),
        help="catalog indexed on first start when the index is empty (default: the shipped sample catalog)",
    )
    g.add_argument(
        "--no-auto-index", action="store_true", help="do not index --catalog when the index is empty"
    )
    g.add_argument(
        "--log-photos",
        action="store_true",
        help="keep query photos in the pilot log (off: uploads are deleted once answered)",
    )
    add_log_days_argument(g)
    g.add_argument("--currency", default="$", help="currency symbol shown with prices (default $)")
    g.add_argument(
        "--allow-private-image-links",
        action="store_true",
        help="let the image-link box fetch from loopback/private addresses (off: only public hosts)",
    )
    add_settings_arguments(parser)
    return parser


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def admin_password(path: str | None) -> str | None:
    """The admin password: the first line of --admin-password-file, else VS_ADMIN_PASSWORD."""
    if path:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        return (lines[0].strip() if lines else "") or None
    return os.environ.get("VS_ADMIN_PASSWORD") or None


def ensure_indexed(engine, catalog: Path | None) -> None:
    """Index the catalog when the store is empty; refuse an index built by another model."""
    info = engine.store.info()
    model_id = engine.encoder.model_id
    if info.points and info.model_id and info.model_id != model_id:
        raise VisualSearchError(
            f"the index at {info.location} was built with {info.model_id}, but this app runs {model_id}. "
            "Start with the same --model, use another --data-dir/--collection, or re-index."
        )
    if info.points:
        print(f"Index: {info.points:,} images at {info.location} ({info.backend}).", flush=True)
        return
    if catalog is None:
        print("Index is empty; import a catalog in the Catalog tab.", flush=True)
        return
    if not catalog.is_file():
        print(
            f"Index is empty and {catalog} does not exist; import a catalog in the Catalog tab.", flush=True
        )
        return
    from visual_search.core.io import progress_bar

    print(f"First start: indexing {catalog} with {model_id} …", flush=True)
    with progress_bar("Indexing catalog", "img", file=sys.stdout, dynamic_ncols=True) as progress:
        report = engine.index_catalog(catalog, progress=progress)
    print(f"Indexed: {report.summary()}", flush=True)
    for issue in report.issues[:20]:
        print(f"  skipped {issue}", flush=True)
    if len(report.issues) > 20:
        print(f"  … and {len(report.issues) - 20} more", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("visual_search").setLevel(logging.INFO)
    if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
        return fail("--ssl-certfile and --ssl-keyfile go together.")
    if args.concurrency < 1:
        return fail("--concurrency must be at least 1.")
    try:
        password = admin_password(args.admin_password_file)
    except OSError as exc:
        return fail(f"cannot read --admin-password-file ({exc.strerror or exc}).")
    settings = Settings.from_args(args)
    from visual_search.images.fetch import FetchPolicy, set_default_policy

    set_default_policy(FetchPolicy(allow_private=args.allow_private_image_links))  # every URL the app opens

    from visual_search.engine import SearchEngine

    print(f"Loading model {settings.model} …", flush=True)
    try:
        engine = SearchEngine.from_settings(settings)
    except VisualSearchError as exc:  # ModelUnavailableError, StoreUnavailableError, ...
        return fail(str(exc))
    try:
        ensure_indexed(engine, None if args.no_auto_index else Path(args.catalog))
    except VisualSearchError as exc:
        engine.close()
        return fail(str(exc))

    from visual_search.analytics import SearchLog
    from visual_search.ui import UIOptions, create_app, decide_surfaces, serve_forever
    from visual_search.ui.app import ServeOptions

    data_dir = Path(settings.data_dir)
    analytics_dir = data_dir / "analytics"
    search_log = SearchLog(
        analytics_dir / "search_log.jsonl", store_photos=args.log_photos, retention_days=settings.log_days
    )
    print(
        f"Pilot log: query photos ARE stored under {search_log.photos_dir}"
        if args.log_photos
        else "Pilot log: query photos are not stored (uploads are deleted once answered).",
        flush=True,
    )
    surfaces = decide_surfaces(args.host, args.share, password)
    print(surfaces.message, flush=True)
    blocked = [analytics_dir]
    location = engine.store.info().location
    if not settings.qdrant_url and location and Path(location).exists():
        blocked.append(Path(location))
    app = create_app(
        engine,
        search_log,
        UIOptions(
            import_root=data_dir / "imports",
            currency=args.currency,
            allow_private_links=args.allow_private_image_links,
        ),
        surfaces,
        ServeOptions(
            concurrency=args.concurrency,
            max_file_size=int(args.max_upload_mb * 1024 * 1024),
            monitoring=args.monitoring,
            blocked=blocked,
        ),
    )
    scheme = "https" if args.ssl_certfile else "http"
    print(f"Running on {scheme}://{args.host}:{args.port}/", flush=True)
    try:
        serve_forever(
            app,
            host=args.host,
            port=args.port,
            share=args.share,
            ssl_certfile=args.ssl_certfile,
            ssl_keyfile=args.ssl_keyfile,
        )
    except KeyboardInterrupt:
        pass
    except (OSError, SystemExit) as exc:
        return fail(f"cannot start the web server on {args.host}:{args.port} ({exc}).")
    finally:
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
