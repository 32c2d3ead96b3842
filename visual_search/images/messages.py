"""Small text helpers for the one-line messages image loading, fetching and background removal give."""

from __future__ import annotations


def short(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def cap(label: str) -> str:
    """Capitalise a label that starts a sentence ("the image" -> "The image")."""
    return label[:1].upper() + label[1:] if label[:1].islower() else label


def mb(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB"


def reason(e: BaseException) -> str:
    """An exception as a short reason: its first line, never a traceback."""
    text = str(e).strip() or type(e).__name__
    return short(text.splitlines()[0], 160)
