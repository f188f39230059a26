"""The seeded soak: ``make soak SEED=… N=…`` (``python -m soak``).

N top-ups with outcomes, callback behaviours and faults drawn from one seed, against real
Redis, PostgreSQL and gateway processes and the Daraja simulator; then the invariants.

- :mod:`soak.plan` — the seed's plan: each top-up (account, phone, amount, outcome, callback
  behaviour, forgery) and the fault schedule. A pure function of (seed, N, …).
- :mod:`soak.customers` — the clients: paced submissions and forged callbacks.
- :mod:`soak.faults` — each planned fault done to the running system.
- :mod:`soak.observed` — what the ledger and the simulator report at the end.
- :mod:`soak.invariants` — the checks: pure functions over the plan and what was observed.
- :mod:`soak.runner` — starts everything, runs the load and the faults, waits for the
  system to settle, checks, and prints the summary (:mod:`soak.report`).
"""
