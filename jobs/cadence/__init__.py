"""One cadence over every channel and program: `ops.contact_ledger` and the caps, quiet hours and
send times every message passes through (`p13n.cadence.ledger`)."""
