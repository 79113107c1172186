"""Tenant names that cannot collide, and ACL rules that follow ``keys.Keys``.

The integration test (``tests/integration/test_tenants.py``) proves the rules on a real
Redis; these checks are the cheap half: the prefix grammar, that every member of ``Keys``
has an access decision, and that no name of one tenant matches another tenant's rules.
"""

from __future__ import annotations

import fnmatch
import inspect
from pathlib import Path

import pytest

from session_broker.core.config import load_settings
from session_broker.core.keys import Keys
from session_broker.errors import ConfigurationError
from session_broker.ops import acl

NEAR = ("a", "ax", "a_x", "a-x", "x")  # prefixes as close to each other as the grammar allows


@pytest.mark.parametrize("prefix", ["a", "sb", "a_x", "a-x", "0", "t" * 32])
def test_prefix_grammar_accepts(prefix):
    assert load_settings({"SESSION_BROKER_KEY_PREFIX": prefix}).key_prefix == prefix


@pytest.mark.parametrize("prefix", ["a.x", "a:x", "A", "-a", "_a", "t" * 33, "a x", "a*", "é"])
def test_prefix_grammar_refuses_with_the_variable_and_the_rule(prefix):
    with pytest.raises(ConfigurationError) as info:
        load_settings({"SESSION_BROKER_KEY_PREFIX": prefix})
    text = str(info.value)
    assert "SESSION_BROKER_KEY_PREFIX" in text and "no '.' or ':'" in text, text


@pytest.mark.parametrize(
    "auth",
    [
        "admin:abc,XYZsecret",
        "admin:has space",
        "ad min:pw",
        "admin:",
        ":pw",
        "admin",
        "admin:pässword",
        "a,b:pw",
    ],
)
def test_flower_auth_that_could_be_split_is_refused_without_echoing_it(auth):
    with pytest.raises(ConfigurationError) as info:
        load_settings({"SESSION_BROKER_FLOWER_AUTH": auth})
    text = str(info.value)
    assert "SESSION_BROKER_FLOWER_AUTH" in text and "','" in text, text
    assert auth.partition(":")[2] not in text or not auth.partition(":")[2], "the password was echoed"


@pytest.mark.parametrize("auth", ["admin:s3cret", "ops.team@example:p:a;s$s'w\"o`r~d"])
def test_flower_auth_accepts_printable_passwords(auth):
    assert load_settings({"SESSION_BROKER_FLOWER_AUTH": auth}).flower_auth == auth


def test_every_member_of_keys_has_an_access_decision():
    assert sorted(acl.ACCESS) == acl.key_members(), (
        "a member of keys.Keys was added or removed: decide who may touch it in acl.ACCESS"
    )


def _sample_names(prefix: str) -> dict[str, list[str]]:
    """Real names (variable parts filled in) of every key-naming member of Keys."""
    keys, out = Keys(prefix), {}
    for member, access in acl.ACCESS.items():
        if access is None:
            continue
        attr = getattr(keys, member)
        if callable(attr):
            n = len(inspect.signature(attr).parameters)
            attr = attr(*[f"v{i}-{prefix}.x:y" for i in range(n)])
        names = [attr]
        if member in acl.QUEUES:
            names += keys.queue_keys(attr)[1:4]
        out[member] = names
    return out


def _allowed(patterns, name) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


@pytest.mark.parametrize("prefix", NEAR)
def test_every_role_is_granted_the_names_it_uses(prefix):
    names = _sample_names(prefix)
    for i, role in enumerate(acl.ROLES):
        rw, ro = acl.key_rules(prefix, role)
        for member, access in acl.ACCESS.items():
            if not access or not access[i]:
                continue
            for name in names[member]:
                assert _allowed(rw if access[i] == acl.RW else rw + ro, name), (role, member, name)
            if access[i] == acl.R:
                assert not _allowed(rw, names[member][0]), (role, member, "should be read-only")


@pytest.mark.parametrize("mine", NEAR)
def test_no_tenant_rule_matches_another_tenants_names(mine):
    patterns = [p for role in acl.ROLES for p in sum(acl.key_rules(mine, role), [])]
    for other in NEAR:
        if other == mine:
            continue
        for member, names in _sample_names(other).items():
            for name in names:
                assert not _allowed(patterns, name), (mine, other, member, name)
        channels = [c for role in acl.ROLES for c in acl.channel_rules(mine, role, 0)]
        keys = Keys(other)
        for channel in (
            keys.channel(0, keys.mailbox_exchange),
            keys.result("abc"),
            keys.channel(0, keys.event_exchange, "task.x"),
        ):
            assert not _allowed(channels, channel), (mine, other, channel)


def test_producers_cannot_register_workers_or_use_kombu_or_channels():
    rw, ro = acl.key_rules("a", "producer")
    keys = Keys("a")
    for name in (
        keys.workers,
        keys.epoch,
        keys.config,
        keys.unacked,
        keys.mailbox_queue("n"),
        keys.bindings(keys.mailbox_exchange)[0],
    ):
        assert not _allowed(rw, name), name
    assert acl.channel_rules("a", "producer", 0) == []
    words = acl.setuser("a", "producer", 0, "pw")
    assert "+info" not in words and "-scan" in words and "-@dangerous" in words


def test_recipe_hashes_passwords_and_needs_a_valid_tenant(tmp_path):
    pw_file = tmp_path / "pw"
    passwords = acl.read_passwords(pw_file)
    assert set(passwords) == set(acl.ROLES) and oct(pw_file.stat().st_mode & 0o777) == "0o600"
    text = "\n".join(acl.recipe("a", 3, passwords))
    assert all(pw not in text for pw in passwords.values())
    assert text.count("ACL SETUSER") == 3 and "/3" in text
    assert acl.read_passwords(pw_file) == passwords  # read back, nothing regenerated
    pw_file.chmod(0o644)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        acl.read_passwords(pw_file)
    with pytest.raises(ConfigurationError, match="TENANT='a.x'"):
        acl.recipe("a.x")


def test_the_readme_recipe_is_the_tools_output():
    guide = (Path(__file__).parents[2] / "docs" / "operator-guide.md").read_text()
    block = "\n".join("  " + line for line in acl.recipe("acme", 0))
    assert block in guide, "the operator guide's ACL recipe drifted: paste `session-broker acl acme` again"
