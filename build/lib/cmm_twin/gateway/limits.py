"""Process limits the gateway sets for itself at start-up.

Many idle sockets (a slow-loris client, a scanner) each hold a file descriptor; at the usual soft
limit of 1,024 open files they starve the inbox and the databases of descriptors. The soft limit
is raised to the hard limit, which an unprivileged process may do; where that is not permitted,
the gateway keeps the limit it has (its HTTP side also caps its connections, see `web`).
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

FALLBACK_NOFILE = 1_048_576
"""Target when the hard limit is unlimited (Linux refuses an unlimited soft RLIMIT_NOFILE)."""


def raise_open_file_limit() -> tuple[int, int] | None:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns (soft, hard) after, or None where the
    platform has no such limit. Never raises: a refusal is logged at DEBUG and the limit stays."""
    try:
        import resource  # noqa: PLC0415 (not on every platform)
    except ImportError:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else FALLBACK_NOFILE
    if soft == resource.RLIM_INFINITY or soft >= target:
        log.debug("open-file limit: soft %s, hard %s (kept)", soft, hard)
        return soft, hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.debug("open-file limit: soft %s, hard %s; raising the soft limit to %s failed: %s", soft, hard, target, exc)
        return soft, hard
    log.debug("open-file limit: soft %s -> %s (hard %s)", soft, target, hard)
    return target, hard
