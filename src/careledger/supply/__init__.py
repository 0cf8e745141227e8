"""Drug supply-chain traceability: GS1 identifiers, EPC URNs and GS1 Digital Link URIs."""
