"""The ML-backend service: HTTP protocol, example store, queue and job code (no tensors here)."""
