"""The daemon's lifecycle: start-up, loading, the control surface the API uses, shutdown."""
