"""Gradio UI for visual product search (never imports qdrant or torch; talks to the engine)."""

from .app import SearchApp, UIOptions, build_ui, default_threshold, launch_kwargs

__all__ = ["SearchApp", "UIOptions", "build_ui", "default_threshold", "launch_kwargs"]
