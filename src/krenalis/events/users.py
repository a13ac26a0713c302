"""Who an event is about: the one key that orders and groups a user's events everywhere.

The same key picks a pipeline's shard in the collector, holds a user's later events behind a
retried one in the worker, and groups a batch per user in the webhook sink, so "one user's
events stay in order" means the same thing at every step.

Ids (anonymousId, userId, groupId, previousId) are at most `MAX_ID_LENGTH` characters; the
collector rejects an event with a longer one. 255 holds every id SDKs make (UUIDs are 36
characters, a SHA-512 hex digest 128, an e-mail address at most 254) and bounds what an id costs
where it is a key: the collector's shard-hash cache, the worker's and the webhook's per-user
groups.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MAX_ID_LENGTH", "user_key"]

MAX_ID_LENGTH = 255


def user_key(event: dict[str, Any]) -> str:
    """The event's anonymousId, else its userId, else "" (no user: the event stands alone).

    The wire form always has an anonymousId (the collector makes one when a request has only
    a userId), so in practice this is the anonymousId.
    """
    key = event.get("anonymousId") or event.get("userId")
    return key if isinstance(key, str) else ""
