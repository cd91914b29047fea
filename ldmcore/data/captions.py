"""Captions that come with a user's images: sidecar ``.txt`` files, and what to do when some lack one.

``data.missing_captions`` decides for images without a caption when others have one:
``error`` (the default) stops with a message naming the first few, so a typo in a file name is
not silently trained as an empty prompt; ``empty`` gives them the empty caption "" (which a
text plugin sees like its unconditional prompt).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from ldmcore.errors import DataError, first_few

MissingCaptions = Literal["error", "empty"]
SHOWN = 5


def sidecar_caption(image: Path) -> str | None:
    """The stripped text of ``NAME.txt`` beside ``NAME.png`` (any image suffix), or None."""
    text = image.with_suffix(".txt")
    if not text.is_file():
        return None
    try:
        return text.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read caption file {str(text)!r} ({exc}); captions are UTF-8 "
                        f"text files.") from None


def quoted_few(names: list[str]) -> str:
    """The first ``SHOWN`` names, quoted, then how many more (for messages about many files)."""
    return first_few([repr(n) for n in names], SHOWN)


def complete_captions(captions: list[str | None], names: list[str], missing: MissingCaptions,
                      source: str) -> list[str]:
    """``captions`` with each None (image ``names[i]`` has none) made "" or a DataError."""
    lacking = [name for name, c in zip(names, captions) if c is None]
    if lacking and missing == "error":
        raise DataError(f"{len(lacking)} of {len(names)} images have no caption in {source}: "
                        f"{quoted_few(lacking)}. Add their captions, or set "
                        f"data.missing_captions=empty to give them the empty caption.")
    return ["" if c is None else c for c in captions]
