"""Locale codes: "xx-YY" is kept (normalized), a bare language maps to its usual locale."""

from __future__ import annotations

__all__ = ["normalize_locale"]

# The usual locale for a bare language code, as browsers and SDKs send it.
DEFAULT_LOCALES = {
    "ar": "ar-SA",
    "bg": "bg-BG",
    "bn": "bn-IN",
    "cs": "cs-CZ",
    "cy": "cy-GB",
    "da": "da-DK",
    "de": "de-DE",
    "el": "el-GR",
    "en": "en-US",
    "es": "es-ES",
    "et": "et-EE",
    "fa": "fa-IR",
    "fi": "fi-FI",
    "fr": "fr-FR",
    "ga": "ga-IE",
    "he": "he-IL",
    "hi": "hi-IN",
    "hr": "hr-HR",
    "hu": "hu-HU",
    "id": "id-ID",
    "it": "it-IT",
    "ja": "ja-JP",
    "ko": "ko-KR",
    "lt": "lt-LT",
    "lv": "lv-LV",
    "ms": "ms-MY",
    "nb": "nb-NO",
    "nl": "nl-NL",
    "no": "no-NO",
    "pl": "pl-PL",
    "pt": "pt-BR",
    "ro": "ro-RO",
    "ru": "ru-RU",
    "sk": "sk-SK",
    "sl": "sl-SI",
    "sq": "sq-AL",
    "sr": "sr-RS",
    "sv": "sv-SE",
    "sw": "sw-KE",
    "ta": "ta-IN",
    "th": "th-TH",
    "tr": "tr-TR",
    "uk": "uk-UA",
    "ur": "ur-PK",
    "vi": "vi-VN",
    "zh": "zh-CN",
}


def _is_letters(text: str) -> bool:
    return text.isascii() and text.isalpha()


_cache: dict[str, str] = {}


def normalize_locale(code: str) -> str:
    """Return the "xx-YY" form of a locale code, or "" when it is not one (the locale is dropped).

    "en_us", "EN-US" and "en-US" all give "en-US"; "en" gives "en-US".
    """
    if len(code) != 2 and len(code) != 5:  # no other length is a locale: nothing to keep
        return ""
    normalized = _cache.get(code)
    if normalized is None:
        if len(_cache) >= 1024:
            _cache.clear()  # bounded: arbitrary client strings must not grow it forever
        normalized = _cache[code] = _normalize(code)
    return normalized


def _normalize(code: str) -> str:
    if len(code) == 5 and code[2] in "-_":
        language, region = code[:2], code[3:]
        if _is_letters(language) and _is_letters(region):
            return f"{language.lower()}-{region.upper()}"
        return ""
    if len(code) == 2:
        return DEFAULT_LOCALES.get(code.lower(), "")
    return ""
