"""Gradio UI for visual product search (never imports qdrant or torch; talks to the engine).

Two surfaces: the shopper's search (``/``) and the admin (``/admin``); see :mod:`.app`.
"""

from .app import Surfaces, build_admin, build_shopper, create_app, decide_surfaces, serve_forever
from .common import UIOptions

__all__ = [
    "Surfaces",
    "UIOptions",
    "build_admin",
    "build_shopper",
    "create_app",
    "decide_surfaces",
    "serve_forever",
]
