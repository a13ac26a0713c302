"""`krenalis snippet`: the HTML a website pastes, from the workspace in NATS or in a file.

tests/browser/ pastes what it prints into a page and proves that analytics.js sends from it;
here, what it prints and how it says what is wrong. The NATS case uses a real nats-server.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from fixtures.cli import run_cli
from krenalis.ops.snippet import render_snippet
from krenalis.runtime.nats_server import EmbeddedNats

WEB_KEY = "WebWriteKey0123456789abcdefghijk"
APP_KEY = "AppWriteKey0123456789abcdefghijk"
WORKSPACE = f"""\
sources:
  web:
    write_key: "{WEB_KEY}"
  app:
    write_key: "{APP_KEY}"
"""


@pytest.fixture(autouse=True)
def _clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no .env nor data directory of the developer's
    for name in list(os.environ):
        if name.startswith("KRENALIS_"):
            monkeypatch.delenv(name)


def snippet(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = run_cli(["snippet", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def loads(text: str) -> tuple[str, str]:
    """(script URL expression, _cdn) of a snippet."""
    src = re.search(r't\.src=("[^"]*")\+"/analytics\.js/v1/"\+key\+"/analytics\.min\.js"', text)
    cdn = re.search(r'analytics\._cdn=("[^"]*");', text)
    assert src and cdn, text
    return src[1], cdn[1]


def test_it_prints_the_standard_snippet_pointed_at_the_collector(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "ws.yaml").write_text(WORKSPACE)
    code, out, err = snippet(
        capsys, "--workspace", "ws.yaml", "--host", "https://events.shop.test/"
    )
    assert code == 0
    assert out.startswith("<script>\n") and out.endswith("</script>\n")
    assert loads(out) == ('"https://events.shop.test"', '"https://events.shop.test"')
    assert f'analytics._writeKey="{WEB_KEY}";' in out
    assert f'analytics.load("{WEB_KEY}");' in out and "analytics.page();" in out
    assert 'analytics.SNIPPET_VERSION="5.2.0"' in out  # Segment's own loader, as published
    assert 'Snippet of source "web" (also: app; choose with --source ID)' in err


def test_source_and_default_host(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "ws.yaml").write_text(WORKSPACE)
    monkeypatch.setenv("KRENALIS_HTTP_PORT", "4321")
    code, out, _ = snippet(capsys, "--workspace", "ws.yaml", "--source", "app")
    assert code == 0
    assert f'analytics.load("{APP_KEY}");' in out
    assert loads(out) == ('"http://127.0.0.1:4321"', '"http://127.0.0.1:4321"')


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--source", "shop"], 'the workspace has no source "shop"; its sources: web, app'),
        (["--host", "events.shop.test"], "--host must be the collector's URL"),
        (["--host", "ftp://events.shop.test"], "--host must be the collector's URL"),
        (["--host", "https://events.shop.test/collect"], "--host must be the collector's URL"),
        (["--host", "https://events.shop.test:99999"], "--host must be the collector's URL"),
    ],
)
def test_mistakes_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    (tmp_path / "ws.yaml").write_text(WORKSPACE)
    code, out, err = snippet(capsys, "--workspace", "ws.yaml", *argv)
    assert (code, out) == (2, "")
    assert says in err


def test_without_nats_nor_file_it_says_both_ways(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = snippet(capsys)
    assert code == 2 and out == ""
    assert "start `krenalis serve`" in err and "or pass --workspace FILE" in err


def test_it_reads_the_workspace_stored_in_nats(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    nats_server: EmbeddedNats,
) -> None:
    monkeypatch.setenv("KRENALIS_NATS_URL", nats_server.url)
    code, _, err = snippet(capsys)
    assert code == 1 and "no workspace is stored yet" in err
    (tmp_path / "ws.yaml").write_text(WORKSPACE)
    assert run_cli(["workspace", "apply", "ws.yaml"]) == 0
    capsys.readouterr()
    code, out, _ = snippet(capsys, "--source", "app", "--host", "http://10.0.0.5:2022")
    assert code == 0
    assert f'analytics.load("{APP_KEY}");' in out
    assert loads(out)[1] == '"http://10.0.0.5:2022"'


def test_a_key_cannot_end_the_script_element() -> None:
    text = render_snippet("key</script><b>0123456789", "http://127.0.0.1:2022")
    assert text.count("</script>") == 1
    assert '"key\\u003c/script>\\u003cb>0123456789"' in text
