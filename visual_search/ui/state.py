"""Per-browser-session state of the search tab, kept server-side in ``gr.State``.

A typed record instead of a dict of string keys: the last search (for Reset), what is on screen,
the liked and disliked products, the query vector (plain floats, so likes and dislikes refine that
search) and the last photo. Uploads are deleted from Gradio's cache once a search is answered, so
the decoded photo is kept here (in memory, shrunk) for a second search or a crop of the same photo.
The objects found in the last searched photo (plain dicts of fractions) and the one searched are
kept too: the chips over the photo re-run that photo's search with another object.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from PIL import Image

Card = dict[str, Any]  # card_from_result(): what the renderer and the API read
ObjectBox = dict[str, float]  # x0, y0, x1, y1 (fractions of the photo), area (share of its pixels)
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
    # The photo the chips belong to (the last photo searched, from an upload or a link), its
    # objects and the one its views showed.
    searched_photo: Image.Image | None = field(default=None, repr=False)
    objects: list[ObjectBox] = field(default_factory=list)
    box_index: int | None = None

    def copy(self, **changes: Any) -> SessionState:
        """A new state (Gradio keeps the old object until the event's output replaces it)."""
        lists = {"liked": list(self.liked), "disliked": list(self.disliked), "objects": list(self.objects)}
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
        self.photo_key, self.photo = key, shrunk(photo)

    def remember_objects(
        self, photo: Image.Image | None, objects: list[ObjectBox], box_index: int | None
    ) -> None:
        """The photo just searched and the objects found in it (for the chips)."""
        kept = None
        if photo is not None:
            kept = photo if photo is self.photo else shrunk(photo)
        self.searched_photo, self.objects, self.box_index = kept, list(objects), box_index


def shrunk(photo: Image.Image) -> Image.Image:
    """A copy small enough to keep in memory, large enough for the encoders and background removal."""
    kept = photo.copy()
    kept.thumbnail((KEPT_PHOTO_SIDE, KEPT_PHOTO_SIDE))
    return kept


def as_state(value: Any) -> SessionState:
    """Gradio hands back what the last event returned; a fresh session starts empty."""
    return value if isinstance(value, SessionState) else SessionState()
