"""The Lua transitions, loaded from files and run by name with keyword arguments.

Each ``lua/<name>.lua`` opens with a contract block: what it does, ``KEYS: none`` (every key
is built from the prefix: one Redis, not a cluster, so a script may touch any key),
``ARGV:`` (the argument names in order, after the prefix) and ``Returns:``. The text sent to
Redis is, in this order:

1. a key header **generated from** ``keys.Keys``: ``local P = ARGV[1]``, one ``K.<member>``
   per member (``K.worker_pin(node)``, ``K.jobs``, ``K.queue_keys(queue)`` ...) and
   ``BOUNDS`` (``keys.HISTOGRAM_BOUNDS``), so the key schema is written once, in Python;
2. the shared helpers, ``lua/lib/*.lua`` in dependency order (``LIB``);
3. a binding line generated from the contract's ``ARGV:`` names
   (``local jid, node = ARGV[2], ARGV[3]``);
4. the body.

``Scripts(client, prefix).run("claim", jid=..., node=..., pid=..., context=...)`` runs one; a
missing or unknown argument name is a ``TypeError`` naming it.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

import redis
from redis.client import Pipeline

from session_broker.core.keys import HISTOGRAM_BOUNDS, Keys
from session_broker.errors import ErrorCode

# The helpers of lua/lib, in the order they are defined (each uses only those before it).
LIB = ("clock", "records", "metrics", "jobs", "pins", "timers", "sessions", "messages", "instances", "lost")

_LUA_KEYWORDS = frozenset(
    {
        "and",
        "break",
        "do",
        "else",
        "elseif",
        "end",
        "false",
        "for",
        "function",
        "if",
        "in",
        "local",
        "nil",
        "not",
        "or",
        "repeat",
        "return",
        "then",
        "true",
        "until",
        "while",
    }
)
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_CONTRACT = re.compile(r"\A\s*--\[\[(.*?)\]\]\n", re.DOTALL)
_MARK = "\x00"  # placeholders in the sample key names: \x00name\x00


def _lua_dir() -> Traversable:
    return resources.files("session_broker.core") / "lua"


@dataclass(frozen=True)
class Contract:
    """A script's contract block: its description, ARGV names (after P) and return value."""

    name: str
    text: str
    argv: tuple[str, ...]
    returns: str


def parse_contract(name: str, source: str) -> Contract:
    """Read the ``--[[ ... ]]`` block a script file opens with. ``ARGV:`` lists names separated
    by commas; a line ending in a comma goes on on the next line; ``ARGV: none`` is none."""
    m = _CONTRACT.match(source)
    if not m:
        raise ValueError(f"lua/{name}.lua must open with a --[[ contract ]] block")
    text = m.group(1)
    lines = text.splitlines()
    fields = {}
    for i, line in enumerate(lines):
        head, _, rest = line.partition(":")
        if head in ("KEYS", "ARGV", "Returns"):
            if head == "ARGV":
                while rest.rstrip().endswith(",") and i + 1 < len(lines):
                    i += 1
                    rest += " " + lines[i]
            fields[head] = rest.strip()
    missing = [f for f in ("KEYS", "ARGV", "Returns") if f not in fields]
    if missing:
        raise ValueError(f"lua/{name}.lua: its contract block has no {', '.join(missing)} line")
    argv = () if fields["ARGV"] == "none" else tuple(a.strip() for a in fields["ARGV"].split(","))
    bad = [a for a in argv if not _IDENT.match(a) or a in _LUA_KEYWORDS]
    if bad or len(set(argv)) != len(argv):
        raise ValueError(f"lua/{name}.lua: ARGV names must be distinct Lua identifiers: {argv}")
    return Contract(name, text, argv, fields["Returns"])


# ------------------------------------------------------------------ the generated key header
def lua_string(s: str) -> str:
    """A Lua string literal: printable ASCII as is, every other byte as a 3-digit escape (a
    shorter one would swallow a following digit: '\\6\\0223' is \\x06 \\x16 '3')."""
    out = []
    for b in s.encode():
        c = chr(b)
        out.append(c if 32 <= b < 127 and c not in "'\\" else f"\\{b:03d}")
    return "'" + "".join(out) + "'"


def _lua_concat(sample: str, params: set[str]) -> str:
    """A sample key name with placeholders -> a Lua expression (``P .. ':w:' .. node``)."""
    parts = sample.split(_MARK)
    if len(parts) % 2 == 0:
        raise ValueError(f"unbalanced placeholder in {sample!r}")
    pieces = []
    for i, part in enumerate(parts):
        if i % 2:
            if part != "P" and part not in params:
                raise ValueError(f"unknown placeholder {part!r} in {sample!r}")
            pieces.append(part)
        elif part:
            pieces.append(lua_string(part))
    return " .. ".join(pieces) or "''"


def _lua_value(value: object, params: set[str]) -> str:
    if isinstance(value, str):
        return _lua_concat(value, params)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return "{" + ", ".join(_lua_concat(v, params) for v in value) + "}"
    raise TypeError(f"a Keys member gave {value!r}: only names and lists of names translate")


def _members() -> Iterator[tuple[str, list[str] | None]]:
    """(name, parameter names or None for a property) of every member of Keys that the
    header translates. Methods with optional parameters (``channel``: two shapes) are left
    out: a template cannot say 'this part only when given'."""
    for name in sorted(n for n in dir(Keys) if not n.startswith("_")):
        attr = inspect.getattr_static(Keys, name)
        if isinstance(attr, property):
            yield name, None
        elif inspect.isfunction(attr):
            params = list(inspect.signature(attr).parameters.values())[1:]
            if any(
                p.default is not p.empty or p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                for p in params
            ):
                continue
            yield name, [p.name for p in params]


def translated_members() -> list[str]:
    """The members of Keys the key header defines as ``K.<name>``."""
    return [name for name, _ in _members()]


@cache
def key_header() -> str:
    """The Lua that defines P, K and BOUNDS, generated from ``Keys``: each member is called
    with placeholders (``Keys('\\0P\\0').worker_pin('\\0node\\0')`` is ``'\\0P\\0:w:\\0node\\0:pin'``)
    and the result becomes a Lua function or constant. Each is checked against a call with
    real values, so a member a template cannot express fails here, not in Redis."""
    marked = Keys(f"{_MARK}P{_MARK}")
    real = Keys("pfx")
    lines = [
        (
            "-- GENERATED from session_broker/core/keys.py by session_broker/core/scripts.py: "
            "the key schema (do not write key names in the Lua)"
        ),
        "local P = ARGV[1]",
        "local K = {}",
    ]
    for name, params in _members():
        if params is None:
            value, check = getattr(marked, name), getattr(real, name)
            samples = {"P": "pfx"}
            lines.append(f"K.{name} = {_lua_value(value, set())}")
        else:
            bad = [p for p in params if not _IDENT.match(p) or p in _LUA_KEYWORDS or p == "P"]
            if bad:
                raise ValueError(f"Keys.{name}: parameter names {bad} cannot be Lua parameters")
            value = getattr(marked, name)(*(f"{_MARK}{p}{_MARK}" for p in params))
            samples = {"P": "pfx", **{p: f"v{i}" for i, p in enumerate(params)}}
            check = getattr(real, name)(*(samples[p] for p in params))
            body = _lua_value(value, set(params))
            lines.append(f"K.{name} = function({', '.join(params)}) return {body} end")
        filled = _fill(value, samples)
        if filled != (list(check) if isinstance(check, tuple) else check):
            raise ValueError(
                f"Keys.{name} is not a plain template of its arguments "
                f"({filled!r} != {check!r}): write it so, or leave it out of the Lua"
            )
    bounds = ", ".join(repr(b) for b in HISTOGRAM_BOUNDS)
    lines.append(f"local BOUNDS = {{{bounds}}}  -- keys.HISTOGRAM_BOUNDS: bucket upper bounds (s)")
    codes = ", ".join(f"{c.name} = {lua_string(c.value)}" for c in ErrorCode)
    lines.append(f"local CODE = {{{codes}}}  -- errors.ErrorCode: a job's error_code")
    return "\n".join(lines) + "\n"


def _fill(value: str | list[str], samples: dict[str, str]) -> str | list[str]:
    def one(s: str) -> str:
        parts = s.split(_MARK)
        return "".join(samples[p] if i % 2 else p for i, p in enumerate(parts))

    return one(value) if isinstance(value, str) else [one(v) for v in value]


# ------------------------------------------------------------------ files -> scripts
def names() -> list[str]:
    """Every script's name (its file name without ``.lua``)."""
    return sorted(p.name[:-4] for p in _lua_dir().iterdir() if p.name.endswith(".lua"))


@cache
def _read(rel: str) -> str:
    text: str = (_lua_dir() / rel).read_text(encoding="utf-8")
    return text


@cache
def lib_source() -> str:
    present = sorted(p.name[:-4] for p in (_lua_dir() / "lib").iterdir() if p.name.endswith(".lua"))
    if sorted(LIB) != present:
        raise ValueError(f"lua/lib holds {present} but scripts.LIB orders {sorted(LIB)}: list each once")
    return "".join(f"\n-- lib/{name}.lua\n" + _read(f"lib/{name}.lua") for name in LIB)


@cache
def _defined() -> frozenset[str]:
    """Names the header and helpers define: an ARGV name must not hide one of them."""
    text = key_header() + lib_source()
    found = set(re.findall(r"^local function (\w+)", text, re.MULTILINE))
    for group in re.findall(r"^local ([\w, ]+?) =", text, re.MULTILINE):
        found.update(n.strip() for n in group.split(","))
    return frozenset(found | {"client"})  # client: run()'s own keyword


@cache
def contract(name: str) -> Contract:
    if name not in names():
        raise ValueError(f"no Lua script {name!r}: the scripts are {', '.join(names())}")
    c = parse_contract(name, _read(f"{name}.lua"))
    clash = sorted(set(c.argv) & _defined())
    if clash:
        raise ValueError(
            f"lua/{name}.lua: ARGV names {clash} hide a name of the key header or the helpers: rename them"
        )
    return c


def binding(c: Contract) -> str:
    """``local jid, node = ARGV[2], ARGV[3]``: ARGV[1] is the prefix P (in the key header)."""
    if not c.argv:
        return "-- ARGV: none but P"
    return f"local {', '.join(c.argv)} = " + ", ".join(f"ARGV[{i}]" for i in range(2, len(c.argv) + 2))


@cache
def source(name: str) -> str:
    """The whole text of one script as Redis runs it."""
    c = contract(name)
    return key_header() + lib_source() + f"\n-- {name}.lua\n{binding(c)}\n" + _read(f"{name}.lua")


class Scripts:
    """The scripts for one Redis client and key prefix: ``run(name, **argv)``."""

    def __init__(self, client: redis.Redis, prefix: str):
        self.client, self.prefix = client, prefix
        self._registered: dict[str, Any] = {}

    def run(self, script: str, /, *, client: redis.Redis | Pipeline | None = None, **argv: object) -> Any:
        """Run ``script`` with its ARGV by name; ``client``: a pipeline to queue it on."""
        c = contract(script)
        missing = [a for a in c.argv if a not in argv]
        unknown = [a for a in argv if a not in c.argv]
        if missing or unknown:
            raise TypeError(
                f"Lua script {script!r} takes ARGV {', '.join(c.argv) or 'none'}: "
                + "; ".join(
                    ([f"missing {', '.join(missing)}"] if missing else [])
                    + ([f"unknown {', '.join(unknown)}"] if unknown else [])
                )
            )
        nones = [a for a in c.argv if argv[a] is None]
        if nones:
            raise TypeError(f"Lua script {script!r}: ARGV {', '.join(nones)} is None (pass '')")
        registered = self._registered.get(script)
        if registered is None:
            registered = self._registered[script] = self.client.register_script(source(script))
        args: list[Any] = [self.prefix, *(argv[a] for a in c.argv)]
        if isinstance(client, Pipeline):
            # EVALSHA alone: redis-py's own way adds a SCRIPT EXISTS round trip to every
            # pipeline; the caller loads the script (``load``) and runs again on NOSCRIPT
            return client.evalsha(registered.sha, 0, *args)
        return registered(keys=[], args=args, client=client)

    def load(self, *scripts: str) -> None:
        """Load scripts into Redis (after a pipeline's EVALSHA met NOSCRIPT: a restarted or
        failed-over Redis forgets them)."""
        for script in scripts:
            self.client.script_load(source(script))
