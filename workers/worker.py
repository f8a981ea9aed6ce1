"""RQ worker entry point: ``python -m workers.worker [--queues interactive batch] [--burst]``.

The same command line as ``seggpt-backend worker`` (one parser, in :mod:`seggpt_backend.cli`);
the worker itself is :mod:`seggpt_backend.service.jobs.worker`. Run one per GPU, e.g.
``CUDA_VISIBLE_DEVICES=1 python -m workers.worker``.
"""

import sys

from seggpt_backend.cli import main

if __name__ == "__main__":
    sys.exit(main(["worker", *sys.argv[1:]]))
