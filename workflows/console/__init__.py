"""The operations console and the public case-tracking page, served by the intake API process.

Mounted by `workflows/api.py` with `console_router` from `hubbridge.workflows.console.routes`.
"""
