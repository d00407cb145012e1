"""History: where runs are remembered — the recorder and crash recovery."""
