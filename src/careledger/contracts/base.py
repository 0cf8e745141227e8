"""The contract framework: what a contract may see and how it answers.

A contract method gets a frozen :class:`Context` and the transaction's args; it either writes
state and emits events through the context or raises :class:`~careledger.errors.Rejected` with a
stable code. Contracts never see the clock (only ``ctx.time``, the block time), randomness, files
or the network, so every node that replays the same blocks derives the same state.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

from careledger.core.block import Write
from careledger.errors import Rejected

StateReader = Callable[[str, str], Any]
"""Reads committed state: (namespace, key) -> JSON value, or None when absent."""

KeyLister = Callable[[str, str, int], list[str]]
"""Lists committed keys: (namespace, prefix, limit) -> the first ``limit`` keys under ``prefix``,
in order. The node's views over many entries take one beside a :data:`StateReader`."""

_DELETED = object()


class BlockState:
    """The state as seen while executing one block: committed state plus this block's writes."""

    def __init__(self, reader: StateReader) -> None:
        self._reader = reader
        self._writes: dict[tuple[str, str], Any] = {}

    def get(self, namespace: str, key: str) -> Any:
        value = self._writes.get((namespace, key), None)
        if value is None and (namespace, key) not in self._writes:
            return self._reader(namespace, key)
        return None if value is _DELETED else value

    def apply(self, writes: Mapping[tuple[str, str], Any]) -> None:
        self._writes.update(writes)

    def writes(self) -> list[Write]:
        return [
            (ns, key, None if value is _DELETED else value)
            for (ns, key), value in self._writes.items()
        ]


class TxState:
    """One transaction's writes, kept apart until the transaction succeeds."""

    def __init__(self, block: BlockState) -> None:
        self._block = block
        self.writes: dict[tuple[str, str], Any] = {}

    def get(self, namespace: str, key: str) -> Any:
        if (namespace, key) in self.writes:
            value = self.writes[(namespace, key)]
            return None if value is _DELETED else value
        return self._block.get(namespace, key)

    def put(self, namespace: str, key: str, value: Any) -> None:
        if value is None:
            raise ValueError("use delete() to remove a key")
        self.writes[(namespace, key)] = value

    def delete(self, namespace: str, key: str) -> None:
        self.writes[(namespace, key)] = _DELETED


class StateView:
    """A contract's own namespace (read-write) plus read-only access to other contracts."""

    def __init__(self, namespace: str, tx_state: TxState) -> None:
        self.namespace = namespace
        self._tx = tx_state

    def get(self, key: str) -> Any:
        return self._tx.get(self.namespace, key)

    def put(self, key: str, value: Any) -> None:
        self._tx.put(self.namespace, key, value)

    def delete(self, key: str) -> None:
        self._tx.delete(self.namespace, key)

    def read(self, namespace: str, key: str) -> Any:
        return self._tx.get(namespace, key)


@dataclass(frozen=True, slots=True)
class Signer:
    public_key: str
    member: str
    org: str
    roles: frozenset[str]

    def has_role(self, role: str) -> bool:
        return role in self.roles


@dataclass(frozen=True, slots=True)
class Event:
    type: str
    data: Mapping[str, Any]


@dataclass(frozen=True)
class Context:
    signer: Signer
    chain: str
    height: int
    time: int
    tx_id: str
    state: StateView
    rules: Ruleset
    _events: list[Event] = field(default_factory=list, repr=False)

    def args(self, raw: Mapping[str, Any]) -> Args:
        """Typed access to a nested object, matched as this ruleset matches ids."""
        return self.rules.args(raw)

    def emit(self, event_type: str, data: Mapping[str, Any]) -> None:
        self._events.append(Event(event_type, dict(data)))

    @property
    def events(self) -> Sequence[Event]:
        return tuple(self._events)


Method = Callable[[Any, Context, "Args"], None]
M = TypeVar("M", bound=Method)


def tx_method(fn: M) -> M:
    """Marks a contract method as callable by transactions."""
    fn.__careledger_tx__ = True  # type: ignore[attr-defined]
    return fn


class Contract:
    """Base of every contract. Subclasses set ``name`` and mark methods with ``@tx_method``."""

    name: ClassVar[str]
    version: ClassVar[int] = 1
    _methods: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._methods = frozenset(
            attr for attr in dir(cls) if getattr(getattr(cls, attr), "__careledger_tx__", False)
        )

    def methods(self) -> frozenset[str]:
        return self._methods

    def call(self, ctx: Context, method: str, args: Mapping[str, Any]) -> None:
        if method not in self.methods():
            raise Rejected("UNKNOWN_METHOD", f"{self.name} has no method {method}")
        getattr(self, method)(ctx, ctx.args(args))


class Args:
    """Typed access to a transaction's args; a wrong or missing arg is ``Rejected(BAD_ARGS)``."""

    def __init__(self, raw: Mapping[str, Any], *, exact: bool = False) -> None:
        self.raw = raw
        self.exact = exact

    def _matches(self, pattern: re.Pattern[str], value: str) -> bool:
        found = pattern.fullmatch(value) if self.exact else pattern.match(value)
        return found is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self.raw)

    def _get(self, name: str, default: Any) -> Any:
        if name in self.raw:
            return self.raw[name]
        if default is _REQUIRED:
            raise Rejected("BAD_ARGS", f"missing argument {name!r}")
        return default

    def string(
        self,
        name: str,
        *,
        pattern: re.Pattern[str] | None = None,
        max_len: int = 256,
        default: Any = None,
    ) -> str:
        value = self._get(name, _REQUIRED if default is None else default)
        if not isinstance(value, str) or not 0 < len(value) <= max_len:
            raise Rejected("BAD_ARGS", f"argument {name!r} must be a string of 1..{max_len} chars")
        if pattern is not None and not self._matches(pattern, value):
            raise Rejected(
                "BAD_ARGS", f"argument {name!r} has the wrong format (must match {pattern.pattern})"
            )
        return value

    def boolean(self, name: str) -> bool:
        value = self._get(name, _REQUIRED)
        if not isinstance(value, bool):
            raise Rejected("BAD_ARGS", f"argument {name!r} must be true or false")
        return value

    def integer(self, name: str, *, minimum: int = 0, maximum: int = 2**53 - 1) -> int:
        value = self._get(name, _REQUIRED)
        if type(value) is not int or not minimum <= value <= maximum:
            raise Rejected("BAD_ARGS", f"argument {name!r} must be an integer")
        return value

    def strings(self, name: str, *, allowed: frozenset[str], max_items: int = 32) -> list[str]:
        value = self._get(name, _REQUIRED)
        if (
            not isinstance(value, list)
            or not 0 < len(value) <= max_items
            or not all(isinstance(v, str) and v in allowed for v in value)
        ):
            raise Rejected("BAD_ARGS", f"argument {name!r} must be a list of {sorted(allowed)}")
        return sorted(set(value))

    def has(self, name: str) -> bool:
        return name in self.raw and self.raw[name] is not None

    def optional_integer(
        self, name: str, *, minimum: int = 0, maximum: int = 2**53 - 1
    ) -> int | None:
        return self.integer(name, minimum=minimum, maximum=maximum) if self.has(name) else None

    def names(self, name: str, *, pattern: re.Pattern[str], max_items: int = 64) -> list[str]:
        """A non-empty list of distinct strings of one format, sorted (order carries no meaning)."""
        value = self._get(name, _REQUIRED)
        if (
            not isinstance(value, list)
            or not 0 < len(value) <= max_items
            or not all(isinstance(v, str) and self._matches(pattern, v) for v in value)
        ):
            raise Rejected("BAD_ARGS", f"argument {name!r} must be a list of names")
        return sorted(set(value))

    def mapping(self, name: str) -> Args:
        value = self._get(name, _REQUIRED)
        if not isinstance(value, dict):
            raise Rejected("BAD_ARGS", f"argument {name!r} must be an object")
        return Args(value, exact=self.exact)

    def only(self, *names: str) -> None:
        extra = set(self.raw) - set(names)
        if extra:
            raise Rejected("BAD_ARGS", f"unknown arguments {sorted(extra)}")


_REQUIRED: Any = object()


# The ruleset a Context carries (``careledger.contracts.ruleset`` says what it is and is where
# it is imported from); defined here because a Context names it and its rules take a Context.

SignerResolver = Callable[["Ruleset", StateReader, str], Signer]
"""(ruleset, state reader, public key) -> the signer, or ``Rejected``."""
ActFor = Callable[[Context, str], Context]
"""(node's context, member id) -> the member's context, or ``Rejected``."""


@dataclass(frozen=True)
class Ruleset:
    name: str
    contracts: Mapping[str, Contract]
    roles: frozenset[str]
    org_kinds: frozenset[str]
    # Which roles members of an organisation of each kind may hold; None: any role anywhere.
    kind_roles: Mapping[str, frozenset[str]] | None
    # Id and name patterns must match the whole argument (r0 let "dr-a\n" pass as "dr-a").
    exact_ids: bool
    resolve_signer: SignerResolver
    act_for: ActFor
    nonce_policy: str = "strictly-increasing-per-signer"
    receipt_version: int = 1
    notes: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        # A read-only copy: a frozen ruleset's contracts cannot be swapped through the dict it
        # was built from, nor by item assignment (old rules are never edited).
        object.__setattr__(self, "contracts", MappingProxyType(dict(self.contracts)))

    def derive(self, name: str, **parts: Any) -> Ruleset:
        """The next ruleset: this one with ``parts`` replaced (contracts merged by name)."""
        contracts = parts.pop("contracts", None)
        if contracts is not None:
            parts["contracts"] = {**self.contracts, **{c.name: c for c in contracts}}
        return replace(self, name=name, **parts)

    def signer(self, read: StateReader, public_key: str) -> Signer:
        return self.resolve_signer(self, read, public_key)

    def contract(self, contract: str, method: str) -> Contract:
        found = self.contracts.get(contract)
        if found is None:
            raise Rejected("UNKNOWN_CONTRACT", f"no contract named {contract!r}")
        if method not in found.methods():
            raise Rejected("UNKNOWN_METHOD", f"{contract} has no method {method!r}")
        return found

    def args(self, raw: Mapping[str, Any]) -> Args:
        return Args(raw, exact=self.exact_ids)

    def allowed_roles(self, kinds: list[str]) -> frozenset[str]:
        """The roles members of an organisation of these kinds may hold."""
        if self.kind_roles is None:
            return self.roles
        allowed: frozenset[str] = frozenset()
        for kind in kinds:
            allowed |= self.kind_roles.get(kind, frozenset())
        return allowed

    def run_on_behalf(
        self, contract: Contract, ctx: Context, args: Args, allowed: frozenset[str]
    ) -> None:
        """``{actor, method, args}``: a node runs one of ``allowed`` as a member it authenticated
        (see ``act_for``); roles and ownership are judged as the member's."""
        args.only("actor", "method", "args")
        actor = self.act_for(ctx, args.string("actor", max_len=64))
        method = args.string("method", max_len=32)
        if method not in allowed:
            raise Rejected("BAD_ARGS", f"method must be one of {sorted(allowed)}")
        inner = args.raw.get("args")
        if not isinstance(inner, dict):
            raise Rejected("BAD_ARGS", "args must be an object")
        contract.call(actor, method, inner)
