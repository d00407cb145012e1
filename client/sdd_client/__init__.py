"""sdd-client: wire protocol, client library, sddctl and the desktop notifier."""
