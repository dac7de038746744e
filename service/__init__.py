"""siteapi: one small async service that serves several website integrations under /api/<project>/."""

SERVICE_NAME = "siteapi"
__version__ = "1.0.0"  # the one source; tests/test_version.py checks the others agree
