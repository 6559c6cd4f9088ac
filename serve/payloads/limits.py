"""How much one adapted request may make the payload service hold: the declared limits.

A body is checked against these before anything is allocated in proportion
to what it declares (records, chunks), and each refusal is a 413 naming the
setting that would let the request through (serve/settings.py).
"""

from __future__ import annotations

import dataclasses

from serve.errors import PayloadTooLarge
from serve.settings import MAX_CHUNKS, MAX_RECORDS, Settings


@dataclasses.dataclass(frozen=True)
class PayloadLimits:
    """SERVE_MAX_RECORDS and SERVE_MAX_CHUNKS."""

    max_records: int = MAX_RECORDS
    max_chunks: int = MAX_CHUNKS

    @classmethod
    def of(cls, settings: Settings) -> PayloadLimits:
        return cls(settings.max_records, settings.max_chunks)

    def check_records(self, count: int) -> None:
        """413 for a request of more records than SERVE_MAX_RECORDS."""
        if count > self.max_records:
            raise PayloadTooLarge(
                f"the request holds {count} records, more than SERVE_MAX_RECORDS="
                f"{self.max_records}; send fewer records per request (a batch transform's "
                "MaxPayloadInMB), or raise SERVE_MAX_RECORDS"
            )
