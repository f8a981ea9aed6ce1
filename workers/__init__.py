"""Queue workers (RQ) for seggpt-backend; see workers/worker.py."""
