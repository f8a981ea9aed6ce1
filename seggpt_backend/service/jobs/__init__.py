"""Worker side: the jobs RQ runs (``workers/worker.py``), loading the engine once per process.

Downloads and decodes images, materialises examples, calls the engine, turns masks into brush
regions and delivers them (see :mod:`.delivery`); never imports the HTTP side.
"""
