"""The Dramatiq workers: the actors (:mod:`workers.actors`, :mod:`workers.webhooks`), the tasks
they run, the broker and its middleware, the scheduler's sweeps.

``dramatiq workers`` imports this package in every process it starts, then runs the actors
declared on Dramatiq's global broker: in those processes, and only there, the import is the
workers' start-up (see :mod:`bootstrap`). Anywhere else (the API, ``topupctl``, the tests)
importing the package or its modules does nothing; they configure themselves.
"""
from telemetry.metrics import server_kind

if server_kind() == "workers":  # a process of the `dramatiq` command
    import bootstrap

    bootstrap.configure("workers")
