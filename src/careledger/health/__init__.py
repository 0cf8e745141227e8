"""Health records: the node-side service joining the vault, the ledger contracts and FHIR."""
