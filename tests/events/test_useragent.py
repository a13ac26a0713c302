"""Browser and OS: explicit names normalized, missing sections filled from context.userAgent."""

from __future__ import annotations

import pytest

from krenalis.events.useragent import parse_user_agent

from ._helpers import one, track

UAS = {
    "chrome-windows": (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.6778.86 Safari/537.36"
    ),
    "safari-macos": (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.4.1 Safari/605.1.15"
    ),
    "safari-iphone": (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) Version/17.4.1 Mobile/15E148 Safari/604.1"
    ),
    "chrome-ios": (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) CriOS/124.0.6367.88 Mobile/15E148 Safari/604.1"
    ),
    "edge-windows": (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Safari/537.36 Edg/131.0.2903.70"
    ),
    "firefox-linux": "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "samsung-android": (
        "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
        "SamsungBrowser/25.0 Chrome/121.0.0.0 Mobile Safari/537.36"
    ),
    "opera-windows": (
        "Mozilla/5.0 (Windows NT 6.1; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/130.0.0.0 Safari/537.36 OPR/115.0.0.0"
    ),
    "chrome-chromeos": (
        "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Safari/537.36"
    ),
    "googlebot": "Googlebot/2.1 (+http://www.google.com/bot.html)",
    "curl": "curl/8.5.0",
}


@pytest.mark.parametrize(
    ("ua", "browser", "os"),
    [
        (
            "chrome-windows",
            {"name": "Chrome", "version": "131.0.6778"},
            {"name": "Windows", "version": "10.0.0"},
        ),
        (
            "safari-macos",
            {"name": "Safari", "version": "17.4.1"},
            {"name": "macOS", "version": "10.15.7"},
        ),
        (
            "safari-iphone",
            {"name": "Safari", "version": "17.4.1"},
            {"name": "iOS", "version": "17.4.1"},
        ),
        (
            "chrome-ios",
            {"name": "Chrome", "version": "124.0.6367"},
            {"name": "iOS", "version": "17.4.0"},
        ),
        (
            "edge-windows",
            {"name": "Edge", "version": "131.0.2903"},
            {"name": "Windows", "version": "10.0.0"},
        ),
        ("firefox-linux", {"name": "Firefox", "version": "133.0.0"}, {"name": "Linux"}),
        (
            "samsung-android",
            {"name": "Samsung Internet", "version": "25.0.0"},
            {"name": "Android", "version": "14.0.0"},
        ),
        (
            "opera-windows",
            {"name": "Opera", "version": "115.0.0"},
            {"name": "Windows", "version": "7.0.0"},
        ),
        (
            "chrome-chromeos",
            {"name": "Chrome", "version": "131.0.0"},
            {"name": "Chrome OS", "version": "131.0.0"},
        ),
        ("googlebot", {"name": "Other", "other": "Bot"}, {"name": "Other"}),
        ("curl", {"name": "Other"}, {"name": "Other"}),
    ],
)
def test_user_agents(ua: str, browser: dict, os: dict) -> None:
    assert parse_user_agent(UAS[ua]) == (browser, os)
    context = one(track(context={"userAgent": UAS[ua]}))["context"]
    assert (context["browser"], context["os"]) == (browser, os)
    assert context["userAgent"] == UAS[ua]


def test_parsed_sections_are_not_shared() -> None:
    first, _ = parse_user_agent(UAS["curl"])
    first["name"] = "changed"
    assert parse_user_agent(UAS["curl"])[0] == {"name": "Other"}


def test_user_agent_fills_only_the_missing_section() -> None:
    context = {"userAgent": UAS["chrome-windows"], "browser": {"name": "firefox", "version": "1"}}
    filled = one(track(context=context))["context"]
    assert filled["browser"] == {"name": "Firefox", "version": "1"}
    assert filled["os"] == {"name": "Windows", "version": "10.0.0"}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("chrome", {"name": "Chrome"}),
        ("SAFARI", {"name": "Safari"}),
        ("Edge", {"name": "Edge"}),
        ("firefox", {"name": "Firefox"}),
        ("samsung internet", {"name": "Samsung Internet"}),
        ("Opera", {"name": "Opera"}),
        ("Brave", {"name": "Other", "other": "Brave"}),
    ],
)
def test_explicit_browser_names(name: str, expected: dict) -> None:
    assert one(track(context={"browser": {"name": name}}))["context"]["browser"] == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("android", {"name": "Android"}),
        ("Windows", {"name": "Windows"}),
        ("IOS", {"name": "iOS"}),
        ("macos", {"name": "macOS"}),
        ("Darwin", {"name": "macOS"}),
        ("linux", {"name": "Linux"}),
        ("Chrome OS", {"name": "Chrome OS"}),
        ("FreeBSD", {"name": "Other", "other": "FreeBSD"}),
    ],
)
def test_explicit_os_names(name: str, expected: dict) -> None:
    assert one(track(context={"os": {"name": name}}))["context"]["os"] == expected


def test_overlong_versions_are_dropped() -> None:
    browser, _ = parse_user_agent("Mozilla/5.0 Firefox/" + "1" * 30)
    assert browser == {"name": "Firefox"}
