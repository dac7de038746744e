"""Observability: metrics, logs, request ids and health. Knows nothing of any project."""
