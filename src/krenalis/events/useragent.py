"""Browser and OS: normalizing explicit names and filling them from a User-Agent string.

The parser is deliberately small: it looks for the product tokens of the browsers and systems in
the event schema's enums and reads a "major.minor.patch" version next to them. Everything else is
"Other". Results are cached because a batch usually repeats one user agent for every event.
"""

from __future__ import annotations

__all__ = ["normalize_browser", "normalize_os", "parse_user_agent"]

_BROWSER_NAMES = {
    "chrome": "Chrome",
    "safari": "Safari",
    "edge": "Edge",
    "firefox": "Firefox",
    "samsung internet": "Samsung Internet",
    "opera": "Opera",
}

_OS_NAMES = {
    "android": "Android",
    "windows": "Windows",
    "ios": "iOS",
    "macos": "macOS",
    "darwin": "macOS",
    "linux": "Linux",
    "chrome os": "Chrome OS",
}

# Windows NT kernel versions as the marketing versions users know (10 and 11 both send 10.0).
_WINDOWS_VERSIONS = {
    "10.0": "10.0.0",
    "6.3": "8.1.0",
    "6.2": "8.0.0",
    "6.1": "7.0.0",
    "6.0": "6.0.0",
    "5.1": "5.1.0",
}

# (token, browser name, token whose version to read instead; None = the token itself), in order:
# Chromium-based browsers also send "Chrome/" and "Safari/", so they must be tested first.
_BROWSER_TOKENS = (
    ("SamsungBrowser/", "Samsung Internet", None),
    ("OPR/", "Opera", None),
    ("OPiOS/", "Opera", None),
    ("Opera", "Opera", "Version/"),
    ("Edg/", "Edge", None),
    ("EdgA/", "Edge", None),
    ("EdgiOS/", "Edge", None),
    ("Edge/", "Edge", None),
    ("Trident/", "Edge", "rv:"),  # Internet Explorer is reported as Edge, its successor
    ("MSIE ", "Edge", None),
    ("FxiOS/", "Firefox", None),
    ("Firefox/", "Firefox", None),
    ("CriOS/", "Chrome", None),
    ("Chrome/", "Chrome", None),
    ("Safari/", "Safari", "Version/"),
)

_VERSION_CHARS = frozenset("0123456789._")
_MAX_LENGTH = 25  # a longer "version" is noise from a forged or broken user agent: dropped
_CACHE_SIZE = 1024
# Real user agents are a few hundred characters; longer ones are parsed each time, so that the
# cache, keyed by client input, stays bounded in bytes too (bench/cache_memory.py).
_MAX_CACHED_LENGTH = 1024
_cache: dict[str, tuple[dict, dict]] = {}


def normalize_browser(section: dict) -> None:
    """Map an explicit context.browser.name onto the schema enum (in place)."""
    _normalize(section, _BROWSER_NAMES)


def normalize_os(section: dict) -> None:
    """Map an explicit context.os.name onto the schema enum (in place)."""
    _normalize(section, _OS_NAMES)


def _normalize(section: dict, names: dict[str, str]) -> None:
    name = section.get("name")
    if name is None:
        return
    known = names.get(name.lower())
    if known is None:
        section["name"] = "Other"
        section["other"] = name
    else:
        section["name"] = known
        section.pop("other", None)


def parse_user_agent(user_agent: str) -> tuple[dict, dict]:
    """Return fresh (browser, os) context sections parsed from a User-Agent string."""
    cached = _cache.get(user_agent)
    if cached is None:
        cached = _parse(user_agent)
        if len(user_agent) <= _MAX_CACHED_LENGTH:
            if len(_cache) >= _CACHE_SIZE:
                _cache.clear()  # crude but bounded; the hot entries come back at once
            _cache[user_agent] = cached
    # Callers own the returned sections (they end up in events that others may change).
    return dict(cached[0]), dict(cached[1])


def _parse(ua: str) -> tuple[dict, dict]:
    browser = _parse_browser(ua)
    return browser, _parse_os(ua, browser)


def _parse_browser(ua: str) -> dict:
    for token, name, version_token in _BROWSER_TOKENS:
        if token in ua:
            version = _version_after(ua, version_token or token)
            return {"name": name, "version": version} if version else {"name": name}
    lowered = ua.lower()
    if "bot" in lowered or "spider" in lowered or "crawl" in lowered:
        return {"name": "Other", "other": "Bot"}
    return {"name": "Other"}


def _parse_os(ua: str, browser: dict) -> dict:
    if "Windows" in ua:
        version = _WINDOWS_VERSIONS.get(_raw_version_after(ua, "Windows NT "))
        return _os("Windows", version)
    if "iPhone" in ua or "iPad" in ua or "iPod" in ua:
        return _os("iOS", _version_after(ua, " OS "))
    if "CrOS" in ua:
        # Chrome OS is versioned like the Chrome it ships (the platform token is a build number).
        return _os("Chrome OS", browser.get("version") if browser["name"] == "Chrome" else None)
    if "Android" in ua:
        return _os("Android", _version_after(ua, "Android "))
    if "Mac OS X" in ua or "Macintosh" in ua:
        return _os("macOS", _version_after(ua, "Mac OS X "))
    if "Linux" in ua or "X11" in ua:
        return {"name": "Linux"}
    return {"name": "Other"}


def _os(name: str, version: str | None) -> dict:
    return {"name": name, "version": version} if version else {"name": name}


def _raw_version_after(ua: str, token: str) -> str:
    """The run of digits, dots and underscores right after token ("" if none)."""
    start = ua.find(token)
    if start < 0:
        return ""
    start += len(token)
    end = start
    while end < len(ua) and ua[end] in _VERSION_CHARS:
        end += 1
    return ua[start:end]


def _version_after(ua: str, token: str) -> str | None:
    """The version after token as "major.minor.patch" (missing parts are 0), or None."""
    raw = _raw_version_after(ua, token)
    if not raw[:1].isdigit() or len(raw) > 64:  # a huge number cannot give a short version
        return None
    parts = raw.replace("_", ".").split(".")[:3]
    numbers = [str(int(p)) if p else "0" for p in parts]
    numbers += ["0"] * (3 - len(numbers))
    version = ".".join(numbers)
    return version if len(version) <= _MAX_LENGTH else None
