"""What an HTTP receiver's answer means for a batch: one table shared by the MES and InfluxDB sinks.

| answer | outcome |
|---|---|
| 2xx | Delivered |
| connection error, timeout, 5xx, 408, 429 | Retry (honouring `Retry-After`) |
| a status the sink names as refusing (401/403 credentials, 404/405 wrong URL) | Refused: stop loudly, keep the data |
| 413 | Split the batch |
| a 4xx whose body names records (422 invalid, 409 conflicting) | Rejected: those are dead-lettered |
| any other 4xx | Split until one record is left, then Rejected |
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping

from cmm_twin.gateway.sinks.base import Delivered, Refused, Rejected, Retry, Split, WriteOutcome


def classify_answer(
    status: int,
    text: str,
    retry_after_s: float | None,
    batch_len: int,
    refused: Mapping[int, str],
    invalid: Mapping[int, str],
) -> WriteOutcome:
    """The outcome of an HTTP answer (see the module docstring).

    `refused` maps statuses that mean "fix the configuration" to a hint naming what to check;
    `invalid` maps positions in the batch to the receiver's reason, parsed from its body.
    """
    if 200 <= status < 300:
        return Delivered()
    reason = f"HTTP {status}: {short_text(text)}"
    if status in (408, 429) or status >= 500:
        return Retry(reason, retry_after_s)
    if status in refused:
        return Refused(f"{reason} ({refused[status]})")
    if status == 413:
        return Split(reason)
    if invalid:
        return Rejected(invalid)
    if batch_len > 1:
        return Split(reason)
    return Rejected({0: reason})


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def short_text(text: str, limit: int = 300) -> str:
    """`text` on one line, cut to `limit` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
