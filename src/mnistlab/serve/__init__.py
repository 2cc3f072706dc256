"""Serving: the HTTP API and the drawing page (`create_app`), and a load test (`loadtest`)."""

from mnistlab.serve.app import create_app

__all__ = ["create_app"]
