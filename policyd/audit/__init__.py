"""The append-only action ledger with its hash chain, and the reports built on it."""
