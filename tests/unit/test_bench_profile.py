"""The benchmark's py-spy summary (bench/profile.py) leaves out consumer threads waiting for
work: asleep in Dramatiq's poll."""
from __future__ import annotations

from bench.profile import ROOT, summarise

SITE = "/venv/lib/python3.11/site-packages"
THREAD = "process 1:\"dramatiq\";thread (0x1)"


def raw(tmp_path, *stacks):
    path = tmp_path / "raw.txt"
    path.write_text("".join(f"{THREAD};{';'.join(frames)} {n}\n" for frames, n in stacks))
    return path


def test_consumers_waiting_for_work_are_not_counted_as_dramatiq_work(tmp_path):
    run = f"ConsumerThread.run ({SITE}/dramatiq/worker.py)"
    path = raw(
        tmp_path,
        # stock Dramatiq asleep between two polls
        ([run, f"_RedisConsumer.__next__ ({SITE}/dramatiq/brokers/redis.py)"], 30),
        # a fetch is work
        ([run, f"_RedisConsumer.__next__ ({SITE}/dramatiq/brokers/redis.py)",
          f"Script.__call__ ({SITE}/redis/commands/core.py)"], 5),
        ([f"WorkerThread.process_message ({SITE}/dramatiq/worker.py)",
          f"push_topup ({ROOT}/workers/actors.py)"], 5),
    )
    summary = summarise(path)
    assert summary["samples"] == 10
    assert summary["idle_wait_samples"] == 30
    assert dict(summary["categories"]) == {"redis-py": 0.5, "our code (workers/)": 0.5}
