"""Artist and title names compared across services, without their spelling.

Pure text: no network and no store, so that the query path (journeys) and
the preview fetcher share it without one importing the other.
"""

from __future__ import annotations

import re
import unicodedata


def normalise_name(text: str | None) -> str:
    """For comparing artist and title across services: no case, accents or punctuation."""
    decomposed = unicodedata.normalize("NFKD", text or "")
    plain = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    return " ".join(re.sub(r"[^\w]+", " ", plain).split())
