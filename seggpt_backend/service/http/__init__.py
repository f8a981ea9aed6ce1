"""Server side: the Label Studio ML-backend HTTP protocol (FastAPI), run by ``seggpt-backend serve``.

Validates requests, enqueues jobs, waits within the budget and answers; never computes a mask and
never imports the worker side (:mod:`seggpt_backend.service.jobs`).
"""
