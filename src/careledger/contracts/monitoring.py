"""Remote patient monitoring: devices, their binding to patients, anchored windows of readings,
per-patient alert rules, alerts, acknowledgement and escalation.

A device (its Ed25519 key, model and owner organisation) is registered by that organisation and
bound to a patient by the patient's own signature (the patient's consent); either side may end
the binding. Readings never touch the ledger: the owner organisation's node keeps them
encrypted and anchors each window of them (a few seconds, or N readings) as one transaction
carrying the window's Merkle root, with the alerts the patient's rules raised over it. A window
from a device that is not bound, or no longer bound, is refused, and the node drops its
readings. Rules that look at time rather than readings (no data for M minutes) and escalation
of unacknowledged alerts are judged on block time by ``tick``, so every node agrees.

State (namespace ``monitoring``):

* ``device/{id}`` -> ``{"id", "key", "model", "org", "status"}``; ``device-key/{key}`` -> id
* ``binding/{device}`` -> ``{"patient", "since", "status", "ended"}``
* ``rules/{device}`` -> ``{"rules", "version", "patient", "by", "org", "time"}``
* ``window/{device}/{seq:012d}`` -> ``{"root", "count", "first", "last", "height", "alerts"}``
* ``last/{device}`` -> ``{"window", "last"}`` (the latest reading's time)
* ``alert/{id}`` -> an alert (rule, time, reading index: never the value); ``open/{org}`` -> its
  alerts tracked for escalation; ``watched/{org}`` -> its devices with a no-data rule
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from careledger.contracts.base import Args, Context, Contract, KeyLister, StateReader, tx_method
from careledger.contracts.identity import ID_PATTERN
from careledger.contracts.records import require_patient
from careledger.core.alert_rules import RuleError, check_rules
from careledger.core.keys import decode_public_key
from careledger.errors import Rejected, ValidationError

NAMESPACE = "monitoring"
DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # no ":": alert ids use it
HASH = re.compile(r"^[0-9a-f]{64}$")
MAX_WINDOW = 100_000  # readings one window anchors
MAX_ALERTS = 100  # alerts one window raises
MAX_OPEN = 10_000  # per organisation: alerts tracked for escalation
MAX_WATCHED = 10_000  # per organisation: devices with a no-data rule
SKEW = 5 * 60_000  # clock skew tolerated between devices and block time
CARE_ROLES = frozenset({"clinician", "nurse"})
MINUTE = 60_000
MAX_AHEAD = 24 * 60 * MINUTE  # readings stamped further ahead are refused (replays allowed)
# Staff methods a node may run for a member it authenticated (API workflows). A patient's
# binding is never among them: the patient signs it (or the node with the key it holds for them).
ON_BEHALF_METHODS = frozenset(
    {"register_device", "retire_device", "unbind", "set_rules", "acknowledge"}
)


def window_key(device: str, seq: int) -> str:
    return f"window/{device}/{seq:012d}"


# -- views: what the node reads of this contract's state (pure; none is used by a ruleset) ----


def device_key(device_id: str) -> str:
    return f"device/{device_id}"


def binding_key(device_id: str) -> str:
    return f"binding/{device_id}"


def rules_key(device_id: str) -> str:
    return f"rules/{device_id}"


def last_key(device_id: str) -> str:
    return f"last/{device_id}"


def alert_key(alert_id: str) -> str:
    return f"alert/{alert_id}"


def open_alerts_key(org: str) -> str:
    return f"open/{org}"


def watched_devices_key(org: str) -> str:
    return f"watched/{org}"


def erased_key(patient: str) -> str:
    return f"erased/{patient}"


DEVICE_PREFIX = "device/"
ALERT_PREFIX = "alert/"


def _window_prefix(device: str) -> str:
    return f"window/{device}/"


def device_of(read: StateReader, device_id: str) -> Mapping[str, Any] | None:
    """A registered device (key, model, owner org, status), or None: whose batches to accept."""
    found: Mapping[str, Any] | None = read(NAMESPACE, device_key(device_id))
    return found


def device_ids(keys: KeyLister, limit: int) -> list[str]:
    """Every registered device's id, in key order: what a node audit checks it owns."""
    return [k[len(DEVICE_PREFIX) :] for k in keys(NAMESPACE, DEVICE_PREFIX, limit)]


def binding_of(read: StateReader, device_id: str) -> Mapping[str, Any] | None:
    """A device's binding to a patient (patient, since, status), or None: whom readings are of."""
    found: Mapping[str, Any] | None = read(NAMESPACE, binding_key(device_id))
    return found


def rules_of(read: StateReader, device_id: str) -> Mapping[str, Any] | None:
    """A device's alert rules as last set (rules, version, patient), or None: what to judge by."""
    found: Mapping[str, Any] | None = read(NAMESPACE, rules_key(device_id))
    return found


def next_window(read: StateReader, device_id: str) -> int:
    """The number of a device's next window, i.e. how many windows the ledger anchored for it."""
    last = read(NAMESPACE, last_key(device_id))
    return 0 if last is None else int(last["window"]) + 1


def window_of(read: StateReader, device_id: str, seq: int) -> Mapping[str, Any] | None:
    """An anchored window (root, count, height, tx, alerts), or None: what a reading proves to."""
    found: Mapping[str, Any] | None = read(NAMESPACE, window_key(device_id, seq))
    return found


def windows_of(read: StateReader, keys: KeyLister, device_id: str, limit: int) -> dict[int, Any]:
    """Every window anchored for a device, by number: what a node audit compares its store to."""
    prefix = _window_prefix(device_id)
    found: dict[int, Any] = {}
    for key in keys(NAMESPACE, prefix, limit):
        held = read(NAMESPACE, key)
        if held is not None:
            found[int(key[len(prefix) :])] = held
    return found


def alert_of(read: StateReader, alert_id: str) -> Mapping[str, Any] | None:
    """An alert (patient, device, rule, org, status; never a reading's value), or None."""
    found: Mapping[str, Any] | None = read(NAMESPACE, alert_key(alert_id))
    return found


def alerts_of_patient(
    read: StateReader, keys: KeyLister, patient: str, limit: int
) -> list[Mapping[str, Any]]:
    """A patient's alerts, oldest first, among the first ``limit`` alerts: for their charts."""
    found = []
    for key in keys(NAMESPACE, ALERT_PREFIX, limit):
        alert = read(NAMESPACE, key)
        if alert is not None and alert["patient"] == patient:
            found.append(alert)
    return sorted(found, key=lambda a: a["at"])


def open_alerts(read: StateReader, org: str) -> Iterator[Mapping[str, Any]]:
    """The alerts an organisation tracks for escalation (unacknowledged), in the order raised,
    read lazily: its care team's inbox, and whether its node has escalations to judge."""
    for alert_id in read(NAMESPACE, open_alerts_key(org)) or []:
        alert = read(NAMESPACE, alert_key(alert_id))
        if alert is not None:
            yield alert


def watched_devices(read: StateReader, org: str) -> list[str]:
    """An organisation's devices with a no-data rule: whether its node has silences to judge."""
    return [str(d) for d in read(NAMESPACE, watched_devices_key(org)) or []]


def erasure_entry(read: StateReader, patient: str) -> Mapping[str, Any] | None:
    """A patient's last erasure of their readings (``before``, ``height``), or None (r4)."""
    found: Mapping[str, Any] | None = read(NAMESPACE, erased_key(patient))
    return found


class MonitoringV1(Contract):
    name = NAMESPACE

    @tx_method
    def on_behalf(self, ctx: Context, args: Args) -> None:
        """A node runs a staff method for a member it authenticated."""
        ctx.rules.run_on_behalf(self, ctx, args, ON_BEHALF_METHODS)

    # -- devices ---------------------------------------------------------------------------

    @staticmethod
    def _device(ctx: Context, device_id: str) -> dict[str, Any]:
        device = ctx.state.get(f"device/{device_id}")
        if device is None:
            raise Rejected("UNKNOWN_DEVICE", f"no device {device_id!r}")
        return dict(device)

    @tx_method
    def register_device(self, ctx: Context, args: Args) -> None:
        """An organisation's admin (or node) registers a device it owns."""
        args.only("id", "model", "public_key")
        device_id = args.string("id", pattern=DEVICE_ID)
        if not ctx.signer.roles & {"admin", "node"}:
            raise Rejected("NOT_AUTHORISED", "an organisation's admin registers its devices")
        key = args.string("public_key", max_len=64)
        try:
            decode_public_key(key)
        except ValidationError:
            raise Rejected("BAD_ARGS", "public_key is a base64url Ed25519 public key") from None
        if ctx.state.get(f"device/{device_id}") is not None:
            raise Rejected("DEVICE_EXISTS", f"device {device_id} is registered")
        if ctx.state.get(f"device-key/{key}") is not None:
            raise Rejected("DEVICE_EXISTS", "that key belongs to another device")
        device = {
            "id": device_id,
            "key": key,
            "model": args.string("model", max_len=128),
            "org": ctx.signer.org,
            "status": "active",
            "registered": ctx.height,
        }
        ctx.state.put(f"device/{device_id}", device)
        ctx.state.put(f"device-key/{key}", device_id)
        ctx.emit("monitoring.device", {"device": device_id, "org": ctx.signer.org})

    @tx_method
    def retire_device(self, ctx: Context, args: Args) -> None:
        args.only("device")
        device = self._device(ctx, args.string("device", pattern=DEVICE_ID))
        if device["org"] != ctx.signer.org or not ctx.signer.roles & {"admin", "node"}:
            raise Rejected("NOT_AUTHORISED", "the owner organisation's admin retires a device")
        device["status"] = "retired"
        ctx.state.put(f"device/{device['id']}", device)
        self._end_binding(ctx, device["id"], "device_retired")

    # -- bindings (the patient's consent) ----------------------------------------------------

    @tx_method
    def bind(self, ctx: Context, args: Args) -> None:
        """The patient, with their own key, lets a device send readings about them."""
        args.only("device")
        device = self._device(ctx, args.string("device", pattern=DEVICE_ID))
        if not ctx.signer.has_role("patient"):
            raise Rejected("NOT_AUTHORISED", "the patient binds a device, with their own key")
        require_patient(ctx, ctx.signer.member)
        if device["status"] != "active":
            raise Rejected("DEVICE_RETIRED", f"device {device['id']} is retired")
        current = ctx.state.get(f"binding/{device['id']}")
        if current is not None and current["status"] == "active":
            raise Rejected("DEVICE_BOUND", f"device {device['id']} is bound to a patient")
        binding = {
            "patient": ctx.signer.member,
            "since": ctx.time,
            "status": "active",
            "ended": None,
        }
        ctx.state.put(f"binding/{device['id']}", binding)
        # a new binding starts with no rules (the last patient's are not this one's), under a
        # new version, so a window still pending from the last binding can never match them
        previous = ctx.state.get(f"rules/{device['id']}") or {"version": 0}
        ctx.state.put(
            f"rules/{device['id']}",
            {
                "rules": [],
                "version": previous["version"] + 1,
                "patient": ctx.signer.member,
                "by": ctx.signer.member,
                "org": device["org"],
                "height": ctx.height,
                "time": ctx.time,
            },
        )
        self._unwatch(ctx, device)
        ctx.emit("monitoring.bound", {"device": device["id"], "patient": ctx.signer.member})

    @tx_method
    def unbind(self, ctx: Context, args: Args) -> None:
        """The patient, or the owner organisation's staff, ends a binding."""
        args.only("device", "reason")
        device = self._device(ctx, args.string("device", pattern=DEVICE_ID))
        reason = args.string("reason", max_len=64)
        binding = ctx.state.get(f"binding/{device['id']}")
        if binding is None or binding["status"] != "active":
            raise Rejected("NOT_BOUND", f"device {device['id']} is not bound")
        is_patient = ctx.signer.member == binding["patient"]
        is_owner = ctx.signer.org == device["org"] and bool(
            ctx.signer.roles & (CARE_ROLES | {"admin", "node"})
        )
        if not (is_patient or is_owner):
            raise Rejected("NOT_AUTHORISED", "the patient or the device's organisation unbinds")
        self._end_binding(ctx, device["id"], reason)

    @staticmethod
    def _unwatch(ctx: Context, device: dict[str, Any]) -> None:
        watched_key = f"watched/{device['org']}"
        watched = ctx.state.get(watched_key) or []
        if device["id"] in watched:
            ctx.state.put(watched_key, [d for d in watched if d != device["id"]])

    def _end_binding(self, ctx: Context, device_id: str, reason: str) -> None:
        self._unwatch(ctx, self._device(ctx, device_id))
        binding = ctx.state.get(f"binding/{device_id}")
        if binding is None or binding["status"] != "active":
            return
        ended = {**binding, "status": "revoked", "ended": ctx.time, "reason": reason}
        ctx.state.put(f"binding/{device_id}", ended)
        ctx.emit("monitoring.unbound", {"device": device_id, "patient": binding["patient"]})

    # -- rules -------------------------------------------------------------------------------

    @tx_method
    def set_rules(self, ctx: Context, args: Args) -> None:
        """A clinician or nurse of the device's organisation sets the rules its readings are
        judged by (per device: another organisation's device keeps its own rules)."""
        args.only("patient", "device", "rules")
        patient = args.string("patient", max_len=64)
        device = self._device(ctx, args.string("device", pattern=DEVICE_ID))
        binding = ctx.state.get(f"binding/{device['id']}")
        if binding is None or binding["status"] != "active" or binding["patient"] != patient:
            raise Rejected("NOT_BOUND", f"device {device['id']} does not monitor {patient}")
        if not ctx.signer.roles & CARE_ROLES or ctx.signer.org != device["org"]:
            raise Rejected(
                "NOT_AUTHORISED", "a clinician or nurse of the device's organisation sets rules"
            )
        try:
            rules = check_rules(args.raw.get("rules"))
        except RuleError as exc:
            raise Rejected("BAD_RULE", exc.message) from None
        key = f"rules/{device['id']}"
        previous = ctx.state.get(key) or {"version": 0}
        version = previous["version"] + 1
        ctx.state.put(
            key,
            {
                "rules": rules,
                "version": version,
                "patient": patient,
                "by": ctx.signer.member,
                "org": device["org"],
                "height": ctx.height,
                "time": ctx.time,
            },
        )
        watched_key = f"watched/{device['org']}"
        watched = list(ctx.state.get(watched_key) or [])
        silent = any(r["kind"] == "no_data" for r in rules)
        if silent and device["id"] not in watched:
            if len(watched) >= MAX_WATCHED:
                raise Rejected("TOO_MANY_WATCHED", f"at most {MAX_WATCHED} silent-device rules")
            ctx.state.put(watched_key, sorted([*watched, device["id"]]))
        elif not silent and device["id"] in watched:
            ctx.state.put(watched_key, [d for d in watched if d != device["id"]])
        ctx.emit("monitoring.rules", {"device": device["id"], "version": version})

    # -- windows of readings -------------------------------------------------------------------

    @tx_method
    def anchor_window(self, ctx: Context, args: Args) -> None:
        """The owner organisation's node anchors a window of a bound device's readings.

        The window names the patient its readings were taken for: it must be the device's
        binding (still active, or ended after the window's last reading), so a window never
        lands on another patient after the device was re-bound.
        """
        args.only(
            "device", "patient", "window", "root", "count", "first", "last", "rules_version",
            "alerts",
        )  # fmt: skip
        device = self._device(ctx, args.string("device", pattern=DEVICE_ID))
        if not ctx.signer.has_role("node") or ctx.signer.org != device["org"]:
            raise Rejected("NOT_AUTHORISED", "the device owner's node anchors its readings")
        patient = args.string("patient", max_len=64)
        seq = args.integer("window")
        root = args.string("root", pattern=HASH)
        count = args.integer("count", minimum=1, maximum=MAX_WINDOW)
        first, last = args.integer("first"), args.integer("last")
        binding = ctx.state.get(f"binding/{device['id']}")
        covered = (
            binding is not None
            and binding["patient"] == patient
            and (binding["status"] == "active" or (binding["ended"] or 0) + SKEW >= last)
        )
        if binding is None or not covered:
            raise Rejected("NOT_BOUND", f"device {device['id']} is not bound to {patient}")
        if first > last or first < binding["since"] - SKEW:
            raise Rejected("BAD_ARGS", "readings predate the binding, or first > last")
        if last > ctx.time + MAX_AHEAD:
            raise Rejected("BAD_ARGS", "readings a day ahead: check the device's clock")
        previous = ctx.state.get(f"last/{device['id']}") or {"window": -1, "last": 0}
        if seq != previous["window"] + 1:
            raise Rejected(
                "WINDOW_ORDER", f"the next window of this device is {previous['window'] + 1}"
            )
        rules = ctx.state.get(f"rules/{device['id']}") or {"rules": [], "version": 0}
        if args.integer("rules_version") != rules["version"]:
            raise Rejected("STALE_RULES", f"the device's rules are at version {rules['version']}")
        alerts = self._alerts(ctx, args.raw.get("alerts"), rules["rules"], count)
        ids = []
        for n, alert in enumerate(alerts):
            alert_id = f"{device['id']}:{seq}:{n}"
            self._raise(
                ctx,
                alert_id,
                {**alert, "patient": patient, "device": device["id"], "window": seq},
                device["org"],
            )
            ids.append(alert_id)
        ctx.state.put(
            window_key(device["id"], seq),
            {
                "root": root,
                "count": count,
                "first": first,
                "last": last,
                "patient": patient,
                "height": ctx.height,
                "tx": ctx.tx_id,
                "alerts": ids,
            },
        )
        ctx.state.put(
            f"last/{device['id']}",
            # "at" is block time: silence is judged on arrival, never on a device's clock
            {"window": seq, "last": max(last, previous["last"]), "at": ctx.time},
        )
        ctx.emit(
            "monitoring.window",
            {"device": device["id"], "window": seq, "count": count, "root": root},
        )

    @staticmethod
    def _alerts(
        ctx: Context, raw: object, rules: list[dict[str, Any]], count: int
    ) -> list[dict[str, Any]]:
        """What fired, where and when; never the reading's value (that stays in the vault)."""
        if not isinstance(raw, list) or len(raw) > MAX_ALERTS:
            raise Rejected("BAD_ARGS", f"alerts is a list of at most {MAX_ALERTS}")
        by_id = {r["id"]: r for r in rules}
        out = []
        for item in raw:
            alert = ctx.args(item if isinstance(item, dict) else {})
            alert.only("rule", "index", "at")
            rule = by_id.get(alert.string("rule", max_len=32))
            if rule is None or rule["kind"] == "no_data":
                raise Rejected("BAD_ARGS", "an alert names one of the device's reading rules")
            out.append(
                {
                    "rule": rule["id"],
                    "kind": rule["kind"],
                    "code": rule.get("code"),
                    "index": alert.integer("index", maximum=count - 1),
                    "at": alert.integer("at"),
                    "escalate_after": rule.get("escalate_after"),
                }
            )
        return out

    @staticmethod
    def _raise(ctx: Context, alert_id: str, alert: dict[str, Any], org: str) -> None:
        """Record an alert; the organisation's open list tracks it for escalation (bounded: past
        the bound an alert is still recorded and announced, only not escalated)."""
        entry = {
            **alert,
            "id": alert_id,
            "org": org,
            "status": "open",
            "raised": ctx.time,
            "height": ctx.height,
        }
        if ctx.state.get(f"alert/{alert_id}") is not None:
            raise Rejected("BAD_ARGS", f"alert {alert_id} exists")
        open_key = f"open/{org}"
        opened = list(ctx.state.get(open_key) or [])
        if len(opened) < MAX_OPEN:
            ctx.state.put(open_key, [*opened, alert_id])
        else:
            entry["untracked"] = True
        ctx.state.put(f"alert/{alert_id}", entry)
        ctx.emit(
            "monitoring.alert",
            {
                "alert": alert_id,
                "patient": alert["patient"],
                "device": alert["device"],
                "rule": alert["rule"],
                "kind": alert["kind"],
                "at": alert["at"],
            },
        )

    # -- the care team -------------------------------------------------------------------------

    @tx_method
    def acknowledge(self, ctx: Context, args: Args) -> None:
        """The care team of the device's organisation acknowledges (a note, if any, stays in
        the organisation's own records: it is clinical text)."""
        args.only("alert")
        alert_id = args.string("alert", max_len=96)
        alert = ctx.state.get(f"alert/{alert_id}")
        if alert is None:
            raise Rejected("UNKNOWN_ALERT", f"no alert {alert_id!r}")
        if not ctx.signer.roles & CARE_ROLES or ctx.signer.org != alert["org"]:
            raise Rejected("NOT_AUTHORISED", "the monitoring organisation's care team acknowledges")
        if alert["status"] == "acknowledged":
            raise Rejected("ALREADY_ACKNOWLEDGED", "the alert was acknowledged")
        acknowledged = {"by": ctx.signer.member, "time": ctx.time}
        ctx.state.put(
            f"alert/{alert_id}", {**alert, "status": "acknowledged", "acknowledged": acknowledged}
        )
        open_key = f"open/{alert['org']}"
        ctx.state.put(open_key, [a for a in (ctx.state.get(open_key) or []) if a != alert_id])
        ctx.emit("monitoring.acknowledged", {"alert": alert_id, "patient": alert["patient"]})

    @tx_method
    def tick(self, ctx: Context, args: Args) -> None:
        """Judge time itself (block time) for the signer's organisation: silent devices, and
        its alerts left unacknowledged."""
        args.only()
        if not ctx.signer.has_role("node"):
            raise Rejected("NOT_AUTHORISED", "nodes tick")
        org = ctx.signer.org
        for device_id in ctx.state.get(f"watched/{org}") or []:
            self._silence(ctx, device_id, org)
        for alert_id in ctx.state.get(f"open/{org}") or []:
            alert = ctx.state.get(f"alert/{alert_id}") or {}
            minutes = int(alert.get("escalate_after") or 0)
            due = minutes > 0 and ctx.time - alert["raised"] >= minutes * MINUTE
            if due and alert["status"] == "open":
                escalated = {**alert, "status": "escalated", "escalated": ctx.time}
                ctx.state.put(f"alert/{alert_id}", escalated)
                ctx.emit("monitoring.escalated", {"alert": alert_id, "patient": alert["patient"]})

    def _silence(self, ctx: Context, device_id: str, org: str) -> None:
        rules = ctx.state.get(f"rules/{device_id}")
        binding = ctx.state.get(f"binding/{device_id}")
        if rules is None or binding is None or binding["status"] != "active":
            return
        last = ctx.state.get(f"last/{device_id}") or {}
        since = max(int(last.get("at", 0)), rules["time"], binding["since"])
        for rule in rules["rules"]:
            if rule["kind"] != "no_data":
                continue
            fired_key = f"silent/{device_id}/{rule['id']}"
            fired = ctx.state.get(fired_key)
            if fired is not None and fired >= since:
                continue  # this silence was already announced
            if ctx.time - since >= rule["minutes"] * MINUTE:
                self._raise(
                    ctx,
                    f"{device_id}:silent:{ctx.height}:{rule['id']}",
                    {
                        "rule": rule["id"],
                        "kind": "no_data",
                        "code": None,
                        "index": None,
                        "at": ctx.time,
                        "patient": binding["patient"],
                        "device": device_id,
                        "escalate_after": rule.get("escalate_after"),
                    },
                    org,
                )
                ctx.state.put(fired_key, ctx.time)


class MonitoringV2(MonitoringV1):
    """r4: a patient erases their device readings, as they shred vault records.

    The ledger records the erasure (everything read up to this block); every node holding the
    patient's readings destroys their data keys when it sees the event (crypto-shredding). The
    windows' anchored roots stay, so every proof of what was anchored still verifies.
    """

    version = 2

    @tx_method
    def erase_readings(self, ctx: Context, args: Args) -> None:
        args.only("patient")
        patient = args.string("patient", pattern=ID_PATTERN)
        if ctx.signer.member != patient or not ctx.signer.has_role("patient"):
            raise Rejected("NOT_AUTHORISED", "a patient erases their own readings, with their key")
        require_patient(ctx, patient)
        ctx.state.put(f"erased/{patient}", {"before": ctx.time, "height": ctx.height})
        ctx.emit("monitoring.readings_erased", {"patient": patient, "before": ctx.time})
