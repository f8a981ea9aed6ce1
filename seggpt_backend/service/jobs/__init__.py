"""Worker side: the jobs RQ runs (:mod:`seggpt_backend.service.jobs.worker`), loading the engine once per process.

Downloads and decodes images, materialises examples, calls the engine, turns masks into brush
regions and delivers them (see :mod:`.delivery`); never imports the HTTP side.
"""
