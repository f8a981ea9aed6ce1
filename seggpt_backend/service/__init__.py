"""The ML-backend service, one folder per room (no tensors here):

- :mod:`.contract`, :mod:`.errors`: the typed jobs both processes exchange, and the errors;
- :mod:`.store`: shared state (Redis or memory);
- :mod:`.http`: the server process (``seggpt-backend serve``);
- :mod:`.jobs`: the worker process (``seggpt-backend worker``);
- :mod:`.server`: the server composed with its runtime (embedded mode runs jobs in-process).

Imports only point down (``tests/test_layout.py``); the model is seen only through
:mod:`seggpt_backend.engine.interface`.
"""
