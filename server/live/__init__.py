"""The coordinator's live view: what is happening now (monitor.py, as the typed records of status.py),
served to a browser (web.py, the page in page/) and to Prometheus (metrics.py).

Nothing here changes the federation: the coordinator, the servicer and the driver tell the monitor what
happened, and the web side only reads snapshots."""
