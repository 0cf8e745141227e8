"""Transactions only the patient may sign: with their own key, or the key this node holds.

A patient who has their own key sends the signed envelope (portal, SDK); for a patient
registered without one, the node signs with the key it keeps for them. Either way the
transaction must be the caller's own and the named method, never something else smuggled in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from careledger.callers.caller import Caller
from careledger.contracts.identity import key_of
from careledger.errors import Forbidden, Rejected, ValidationError
from careledger.health.service import HealthRecords

HOLD_RESULT_S = 30.0


def sign_as_patient(
    records: HealthRecords,
    caller: Caller,
    contract: str,
    method: str,
    args: Mapping[str, Any],
    envelope: object | None,
) -> dict[str, Any]:
    """The committed receipt; ``Rejected`` with the contract's reason when refused."""
    node, ledger = records.node, records.ledger
    if "patient" not in caller.roles:
        raise Forbidden("only the patient signs this", code="NOT_AUTHORISED")
    if envelope is None:
        key = records.custodial_key(caller.member)
        if key is None:
            raise Forbidden(
                "sign the transaction with your own key and send it as envelope",
                code="SIGN_YOURSELF",
            )
        ((receipt, why),) = node.execute_explained([(contract, method, dict(args))], keypair=key)
    else:
        tx = ledger.decode(envelope)
        signed_by = key_of(ledger.state, tx.signer)
        if (
            tx.contract != contract
            or tx.method != method
            or dict(tx.args) != dict(args)  # the very step asked for (this visit, this study)
            or signed_by is None
            or signed_by.get("member") != caller.member
        ):
            raise ValidationError(
                f"the envelope must be your own {contract}.{method}", code="WRONG_ENVELOPE"
            )
        (tx,) = node.admit_all([envelope], [None])
        (future,) = node.submit([tx])
        receipt = future.result(HOLD_RESULT_S)
        why = ledger.explain(tx) if receipt["result"] != "accepted" else None
    if receipt["result"] != "accepted":
        message = why.message if why is not None and why.code == receipt["code"] else ""
        raise Rejected(str(receipt["code"]), message or "the ledger refused the transaction")
    return receipt
