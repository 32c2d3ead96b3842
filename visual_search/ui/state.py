"""Per-browser-session state of the search tab, kept server-side in ``gr.State``.

A typed record instead of a dict of string keys: the last search (for Reset), what is on screen,
the liked and disliked products, the query vector (plain floats, so likes and dislikes refine that
search) and the last photo. Uploads are deleted from Gradio's cache once a search is answered, so
the decoded photo is kept here (in memory, shrunk) for a second search or a crop of the same photo.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from PIL import Image

Card = dict[str, Any]  # card_from_result(): what the renderer and the API read
View = dict[str, Any]  # view_from_response(): one results panel (mode, filters, cards, timings)

KEPT_PHOTO_SIDE = 1600  # the photo kept in memory for a re-search or crop: enough for the encoders


@dataclass
class SessionState:
    query_id: str | None = None  # pilot log id of the search on screen (feedback refers to it)
    base: View | None = None  # the last photo/text/more-like-this search, before refinements
    view: View | None = None  # what the results panel shows now
    liked: list[Card] = field(default_factory=list)
    disliked: list[Card] = field(default_factory=list)
    query_vector: list[float] | None = None
    photo_key: str | None = None  # Gradio's path of the upload `photo` came from (file since deleted)
    photo: Image.Image | None = field(default=None, repr=False)

    def copy(self, **changes: Any) -> SessionState:
        """A new state (Gradio keeps the old object until the event's output replaces it)."""
        lists = {"liked": list(self.liked), "disliked": list(self.disliked)}
        return replace(self, **{**lists, **changes})

    def find_card(self, product_id: str) -> Card | None:
        for view in (self.view, self.base):
            for card in (view or {}).get("results", []):
                if card["product_id"] == product_id:
                    return card
        for card in [*self.liked, *self.disliked]:
            if card["product_id"] == product_id:
                return card
        return None

    def remember_photo(self, key: str | None, photo: Image.Image | None) -> None:
        if key is None or photo is None:
            return
        kept = photo.copy()
        kept.thumbnail((KEPT_PHOTO_SIDE, KEPT_PHOTO_SIDE))
        self.photo_key, self.photo = key, kept


def as_state(value: Any) -> SessionState:
    """Gradio hands back what the last event returned; a fresh session starts empty."""
    return value if isinstance(value, SessionState) else SessionState()
