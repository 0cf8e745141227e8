"""Who is calling, and with what rights: the caller of a service (``caller``), the SMART scopes
a token carries (``scopes``) and the bearer tokens that carry them (``tokens``).

Nothing here reads the ledger: what a caller may see of a patient is decided from ledger state
by ``careledger.health.access`` and re-checked by the audit contract at commit.
"""
