"""Intake: where a detection enters — the spool watch, the spool file format, the claim."""
