"""Media types as HTTP spells them: a Content-Type's type and parameters, Accept's ranking.

What each type means for a payload is the formats' business (formats.py).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class MediaType:
    mime: str
    params: dict[str, str]

    @classmethod
    def parse(cls, text: str) -> MediaType:
        mime, _, rest = text.partition(";")
        params = {}
        for part in rest.split(";"):
            key, sep, value = part.partition("=")
            if sep:
                params[key.strip().lower()] = value.strip().strip('"')
        return cls(mime.strip().lower(), params)

    @property
    def charset(self) -> str:
        charset = self.params.get("charset", "utf-8")
        try:
            "".encode(charset)
        except LookupError:
            return "utf-8"
        return charset


def ranked(accept: str) -> list[MediaType]:
    """Accept's media ranges, best first: by quality (q; q=0 dropped), then by order."""
    entries = []
    for position, part in enumerate(accept.split(",")):
        if not part.strip():
            continue
        media = MediaType.parse(part)
        try:
            quality = float(media.params.get("q", "1"))
        except ValueError:
            quality = 1.0
        if quality > 0:
            entries.append((-quality, position, media))
    return [media for _, _, media in sorted(entries, key=lambda e: (e[0], e[1]))]
