"""What weir tells operators: Prometheus metrics, /healthz and /readyz, structured log events.

See docs/observability.md. The actors only bump plain counters (per chunk or batch); everything
else is read from the live statistics objects at scrape time.
"""
