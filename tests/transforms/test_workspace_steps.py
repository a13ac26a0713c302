"""The `transform:` list in the workspace file: the pinned syntax, its errors at their lines,
and the check that refuses steps that do not load before a workspace is stored."""

from __future__ import annotations

import pytest
from helpers_transforms import SECRET, make_geoip_db, workspace_with

from krenalis.errors import WorkspaceError
from krenalis.transforms.check import check_steps
from krenalis.transforms.spec import (
    DEFAULT_TIMEOUT,
    DropBotsStep,
    GeoipStep,
    HashStep,
    MaskIpStep,
    PythonStep,
)
from krenalis.workspace.load import parse_workspace

PINNED = """\
      - python: transforms.py:enrich        # or a module path: mypkg.transforms:enrich
        timeout: 200ms
      - hash: [traits.email, userId]
        secret: ${HASH_SECRET}
      - drop: [context.ip, properties.card]
      - rename: {properties.price: properties.amount}
      - set: {properties.channel: web}
      - keep: [properties.amount, properties.currency]   # properties not listed are removed
      - mask_ip
      - drop_bots
      - geoip: {database: ./data/GeoLite2-City.mmdb}
"""


def parse(steps: str, environ: dict[str, str] | None = None):
    env = {"HASH_SECRET": SECRET} if environ is None else environ
    return parse_workspace(workspace_with(steps), "krenalis.yaml", environ=env)


def test_the_pinned_syntax_is_read_in_order_with_lines():
    steps = parse(PINNED).pipelines["p"].transform
    assert [s.spec.kind for s in steps] == [
        "python", "hash", "drop", "rename", "set", "keep", "mask_ip", "drop_bots", "geoip",
    ]  # fmt: skip
    assert [s.line for s in steps] == [9, 11, 13, 14, 15, 16, 17, 18, 19]
    python, hashing = steps[0].spec, steps[1].spec
    assert isinstance(python, PythonStep) and python.python == "transforms.py:enrich"
    assert python.limit == 0.2 and steps[2].spec.limit == DEFAULT_TIMEOUT
    assert isinstance(hashing, HashStep) and hashing.secret == SECRET
    assert SECRET not in repr(parse(PINNED).pipelines["p"])  # the secret never shows
    assert isinstance(steps[6].spec, MaskIpStep) and steps[6].spec.paths == ["context.ip"]
    assert isinstance(steps[7].spec, DropBotsStep)
    assert isinstance(steps[8].spec, GeoipStep)


def test_an_unset_secret_is_checked_by_the_processes_that_have_it():
    unset: set[str] = set()
    text = workspace_with(PINNED)
    parse_workspace(text, "krenalis.yaml", environ={}, unset=unset)
    assert unset == {"HASH_SECRET"}


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        (
            "      - hsh: [a]\n",
            'krenalis.yaml:9: pipeline "p": transform[0]: unknown step "hsh" '
            "(known steps: drop, drop_bots, geoip, hash, keep, mask_ip, python, rename, set)",
        ),
        (
            "      - mask_ip\n      - hash: [a]\n        drop: [b]\n",
            'krenalis.yaml:10: pipeline "p": transform[1] has hash and drop: each list item is one step',
        ),
        (
            "      - hash: [a]\n        secret: short\n",
            'krenalis.yaml:10: pipeline "p": transform[0] (hash): secret must be at least 16 characters',
        ),
        (
            "      - hash: [a]\n        secrt: x\n",
            'krenalis.yaml:10: unknown key "secrt" in pipeline "p": transform[0] (hash) (allowed: '
            "timeout, hash, secret)",
        ),
        ("      - drop: []\n", 'krenalis.yaml:9: pipeline "p": transform[0] (drop): drop is empty'),
        ("      - drop: [a..b]\n", "drop[0] must be a field path such as userId"),
        (
            "      - keep: [traits.x]\n",
            'keep lists properties ("properties.amount"), and "traits.x"',
        ),
        ("      - python: nocolon\n", "it has no :function part"),
        (
            "      - python: x.py:f\n        timeout: 0s\n",
            'krenalis.yaml:10: pipeline "p": transform[0] (python): timeout must be a duration above zero',
        ),
        ("      - 12\n", "transform[0]: unknown step 12"),
        ("      - geoip\n", "(geoip): geoip must be a mapping"),
    ],
)
def test_mistakes_are_refused_at_their_line(steps, message):
    with pytest.raises(WorkspaceError) as caught:
        parse(steps)
    assert message in str(caught.value)


def test_a_transform_that_is_not_a_list_is_refused():
    text = workspace_with("").replace("transform:\n", "transform: mask_ip\n")
    with pytest.raises(WorkspaceError, match="transform must be a list of steps, got 'mask_ip'"):
        parse_workspace(text, "krenalis.yaml")


async def test_apply_refuses_steps_that_do_not_load_at_their_line(tmp_path):
    (tmp_path / "fns.py").write_text("def enrich(event):\n    return event\nVALUE = 1\n")
    make_geoip_db(tmp_path / "city.mmdb")
    good = parse("      - python: fns.py:enrich\n      - geoip: {database: city.mmdb}\n")
    await check_steps(good, tmp_path, "krenalis.yaml")  # loads: nothing raised
    cases = [
        (
            "      - mask_ip\n      - python: fns.py:VALUE\n",
            'krenalis.yaml:10: pipeline "p": transform[1] (python fns.py:VALUE): fns.py: VALUE is '
            "int, not a function",
        ),
        ("      - python: gone.py:enrich\n", "gone.py does not exist"),
        (
            "      - geoip: {database: missing.mmdb}\n",
            'krenalis.yaml:9: pipeline "p": transform[0] (geoip): the GeoIP database ',
        ),
    ]
    for steps, message in cases:
        with pytest.raises(WorkspaceError) as caught:
            await check_steps(parse(steps), tmp_path, "krenalis.yaml")
        assert message in str(caught.value)
    (tmp_path / "bad.mmdb").write_bytes(b"not a database")
    with pytest.raises(WorkspaceError, match="cannot be read"):
        await check_steps(parse("      - geoip: {database: bad.mmdb}\n"), tmp_path, "k.yaml")
