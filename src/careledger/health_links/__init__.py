"""SMART Health Links and SMART Health Cards (HL7 "SMART Health Cards and Links" IG 1.0.0).

The pure part: links, their encrypted files, signed cards, QR codes and the patient summary they
carry, as functions of their inputs. Time and random bytes come from the caller; nothing here
reads the clock, the network or files.
"""
