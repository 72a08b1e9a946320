"""fed-audit: checks a run's audit chain (``OUT/audit.jsonl``), shows who contributed to which round, and
checks a hospital's receipts against a run. ``verify`` (a run folder against its chain and the
federation's CA), ``show`` (the table and its PNG grid), ``receipts`` (what a hospital kept), ``cli``."""
