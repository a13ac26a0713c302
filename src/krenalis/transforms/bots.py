"""``drop_bots``: events whose user agent is a crawler's are dropped.

Two sources decide, either is enough:

- the collector's user-agent parser (:mod:`krenalis.events.useragent`), whose browser is
  "Bot" for agents that name no browser and call themselves a bot, spider or crawler;
- the crawler list of the ``crawler-user-agents`` package (the patterns of
  github.com/monperrus/crawler-user-agents, maintained there and released to PyPI often):
  crawlers that look like browsers (Googlebot sends "Chrome/..."), monitoring and preview
  fetchers, HTTP libraries. A newer list comes with ``pip install -U crawler-user-agents``
  (``make lock`` moves the pin); nothing is fetched at run time.
"""

from __future__ import annotations

from typing import Any

from crawleruseragents import is_crawler

from krenalis.events.useragent import parse_user_agent
from krenalis.transforms.context import Context
from krenalis.transforms.spec import DropBotsStep

__all__ = ["build_drop_bots", "is_bot"]

# Same bounds as the parser's cache: user agents repeat within a batch; keys are client input.
_CACHE_SIZE = 1024
_MAX_CACHED_LENGTH = 1024
_cache: dict[str, bool] = {}


def is_bot(user_agent: str) -> bool:
    """Whether ``user_agent`` is a crawler's, by the parser's flag or the crawler list."""
    known = _cache.get(user_agent)
    if known is not None:
        return known
    browser, _ = parse_user_agent(user_agent)
    found = browser.get("other") == "Bot" or is_crawler(user_agent)
    if len(user_agent) <= _MAX_CACHED_LENGTH:
        if len(_cache) >= _CACHE_SIZE:
            _cache.clear()
        _cache[user_agent] = found
    return found


def build_drop_bots(spec: DropBotsStep) -> Any:
    def drop_bots(event: dict[str, Any], context: Context) -> dict[str, Any] | None:
        agent = (event.get("context") or {}).get("userAgent")
        if isinstance(agent, str) and agent and is_bot(agent):
            return None
        return event

    return drop_bots
