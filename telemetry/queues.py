"""Dramatiq's queues, read from Dramatiq's own keys in Redis (no bookkeeping of our own).

The layout, from the broker's ``dispatch.lua`` (namespace ``dramatiq``):

========================================  ===============================================
``dramatiq:<q>``                           list of message ids ready to be fetched
``dramatiq:<q>.msgs``                      hash id → message, for ready *and* fetched ones
``dramatiq:<q>.DQ`` / ``<q>.DQ.msgs``      the delay queue: messages waiting for their eta
                                           (a worker prefetches them and holds them in
                                           memory until then; they stay in ``.DQ.msgs``)
``dramatiq:<q>.XQ`` / ``<q>.XQ.msgs``      dead letters: sorted set id → when (ms), and hash
``dramatiq:__acks__.<worker>.<q>``         ids a worker fetched and has not acked yet
``dramatiq:__heartbeats__``                sorted set worker → last heartbeat (ms)
========================================  ===============================================

So, for a queue: **ready** = ``LLEN <q>``; **in progress** = the ids in every worker's
``__acks__.<worker>.<q>`` whose message still exists (being processed, or prefetched by that
worker); **delayed** = ``HLEN <q>.DQ.msgs``; **dead** = ``ZCARD <q>.XQ``. The totals are read
by one Lua script, so they are one consistent snapshot. In-progress messages held by a
worker whose heartbeat is older than the broker's ``heartbeat_timeout`` are also counted as
``held_by_dead_workers``: Dramatiq returns them only when its maintenance next runs.

The count per actor needs every message decoded; it is read with ``HSCAN`` (which never
blocks Redis) right after the snapshot, so under load it may differ from the totals by what
moved meanwhile.

Dead letters can be listed, requeued (moved back to their queue as fresh messages with their
retry count reset) or purged, a queue or an actor at a time; each move is one atomic script
that acts only if the message is still a dead letter.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Iterable

from telemetry.redact import Redactor

NAMESPACE = "dramatiq"
HEARTBEAT_TIMEOUT_MS = 60_000  # Dramatiq's default (RedisBroker heartbeat_timeout)
SCAN_LIMIT = 200_000           # messages decoded per hash for the per-actor counts
HEAD_SAMPLE = 100              # ready messages looked at for the oldest one's age

_SNAPSHOT = """
local ns = KEYS[1]
local now = tonumber(ARGV[1])
local heartbeat_timeout = tonumber(ARGV[2])
local sample = tonumber(ARGV[3])
local workers = redis.call("zrange", ns .. ":__heartbeats__", 0, -1, "withscores")
local out = {}
for i = 4, #ARGV do
  local q = ARGV[i]
  local base = ns .. ":" .. q
  local in_progress, dead_held = 0, 0
  local held = {}
  for j = 1, #workers, 2 do
    local ids = redis.call("smembers", ns .. ":__acks__." .. workers[j] .. "." .. q)
    local stale = tonumber(workers[j + 1]) < now - heartbeat_timeout
    for _, id in ipairs(ids) do
      if redis.call("hexists", base .. ".msgs", id) == 1 then
        in_progress = in_progress + 1
        table.insert(held, id)
        if stale then dead_held = dead_held + 1 end
      end
    end
  end
  local head = redis.call("lrange", base, 0, sample - 1)
  local head_messages = {}
  if #head > 0 then head_messages = redis.call("hmget", base .. ".msgs", unpack(head)) end
  for k = 1, #head_messages do
    if not head_messages[k] then head_messages[k] = "" end
  end
  table.insert(out, {q, redis.call("llen", base), redis.call("hlen", base .. ".DQ.msgs"),
                     in_progress, dead_held, redis.call("zcard", base .. ".XQ"),
                     head_messages, held})
end
return out
"""

# KEYS: xq, xq.msgs, q, q.msgs; ARGV: dead id, new id, new message
_REQUEUE = """
if redis.call("zrem", KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call("hdel", KEYS[2], ARGV[1])
redis.call("hset", KEYS[4], ARGV[2], ARGV[3])
redis.call("rpush", KEYS[3], ARGV[2])
return 1
"""

# KEYS: xq, xq.msgs; ARGV: dead id
_PURGE = """
if redis.call("zrem", KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call("hdel", KEYS[2], ARGV[1])
return 1
"""

# What a requeued message forgets: its failure, its retries and any delay.
_FORGOTTEN_OPTIONS = ("retries", "traceback", "requeue_timestamp", "eta", "dead_letter_error",
                      "redis_message_id")


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _decode(raw) -> dict | None:
    try:
        message = json.loads(raw)
    except (TypeError, ValueError, UnicodeDecodeError):
        return None
    return message if isinstance(message, dict) else None


def canonical(queue_name: str) -> str:
    return queue_name[:-3] if queue_name.endswith(".DQ") else queue_name


def _ready_since_ms(message: dict) -> int | None:
    """When a ready message became ready: its enqueue, or the end of its delay."""
    times = [t for t in (message.get("message_timestamp"),
                         (message.get("options") or {}).get("eta")) if isinstance(t, (int, float))]
    return int(max(times)) if times else None


@dataclass
class QueueCounts:
    queue: str
    ready: int
    delayed: int
    in_progress: int
    dead: int
    held_by_dead_workers: int = 0
    oldest_ready_age_s: float | None = None
    by_actor: dict[str, dict[str, int]] | None = None
    by_actor_complete: bool = True

    def as_dict(self) -> dict:
        data = asdict(self)
        if self.by_actor is None:
            del data["by_actor"], data["by_actor_complete"]
        return data


@dataclass
class DeadLetter:
    queue: str
    redis_id: str
    message_id: str | None
    actor: str | None
    args: list
    kwargs: dict
    retries: int
    error: str | None
    traceback: str | None
    dead_at: float                 # Unix seconds
    enqueued_at: float | None      # Unix seconds, when first sent
    raw: dict = field(repr=False, default_factory=dict)

    def as_dict(self) -> dict:
        data = asdict(self)
        data.pop("raw")
        return data


class Queues:
    """``Queues(redis_client)``: the queues of the Dramatiq broker on that Redis."""

    def __init__(self, client, *, namespace: str = NAMESPACE,
                 heartbeat_timeout_ms: int = HEARTBEAT_TIMEOUT_MS,
                 redactor: Redactor | None = None, clock=time.time):
        self.client = client
        self.namespace = namespace
        self.heartbeat_timeout_ms = heartbeat_timeout_ms
        self.redact = redactor or Redactor()
        self.clock = clock
        self._snapshot = client.register_script(_SNAPSHOT)
        self._requeue = client.register_script(_REQUEUE)
        self._purge = client.register_script(_PURGE)

    # -- which queues ------------------------------------------------------------------------

    def discover(self) -> set[str]:
        """Queue names that have any key in Redis now (empty queues have none)."""
        prefix = self.namespace + ":"
        names = set()
        for key in self.client.scan_iter(match=prefix + "*", count=1000):
            key = _text(key)[len(prefix):]
            if key.startswith("__heartbeats__"):
                continue
            if key.startswith("__acks__."):
                # __acks__.<worker uuid>.<queue>: the uuid has no dots
                parts = key.split(".", 2)
                if len(parts) == 3:
                    names.add(canonical(parts[2]))
                continue
            for suffix in (".DQ.msgs", ".XQ.msgs", ".msgs", ".DQ", ".XQ"):
                if key.endswith(suffix):
                    key = key[: -len(suffix)]
                    break
            names.add(key)
        return names

    def names(self, declared: Iterable[str] = ()) -> list[str]:
        return sorted({canonical(q) for q in declared} | self.discover())

    # -- counting ----------------------------------------------------------------------------

    def counts(self, declared: Iterable[str] = (), *, by_actor: bool = False) -> list[QueueCounts]:
        """Every queue's counts, declared ones included even when empty."""
        queues = self.names(declared)
        if not queues:
            return []
        now_ms = int(self.clock() * 1000)
        rows = self._snapshot(keys=[self.namespace],
                              args=[now_ms, self.heartbeat_timeout_ms, HEAD_SAMPLE, *queues])
        result = []
        for name, ready, delayed, in_progress, dead_held, dead, head, held in rows:
            ages = [now_ms - t for t in (_ready_since_ms(m) for m in map(_decode, head) if m)
                    if t is not None]
            counts = QueueCounts(
                queue=_text(name), ready=int(ready), delayed=int(delayed),
                in_progress=int(in_progress), dead=int(dead), held_by_dead_workers=int(dead_held),
                oldest_ready_age_s=round(max(ages) / 1000, 3) if ages else None)
            if by_actor:
                self._count_actors(counts, {_text(i) for i in held}, now_ms)
            result.append(counts)
        return result

    def _scan_messages(self, key: str):
        """(id, decoded message) of a hash, at most SCAN_LIMIT; the flag says if all were read."""
        read = 0
        for redis_id, raw in self.client.hscan_iter(key, count=1000):
            if read >= SCAN_LIMIT:
                yield None, None
                return
            read += 1
            yield _text(redis_id), _decode(raw)

    def _count_actors(self, counts: QueueCounts, held: set[str], now_ms: int) -> None:
        base = f"{self.namespace}:{counts.queue}"
        actors: dict[str, dict[str, int]] = {}
        complete = True
        oldest = None

        def add(message, state):
            actor = (message or {}).get("actor_name") or "?"
            per = actors.setdefault(actor, {"ready": 0, "delayed": 0, "in_progress": 0,
                                            "dead": 0})
            per[state] += 1

        for redis_id, message in self._scan_messages(base + ".msgs"):
            if redis_id is None:
                complete = False
                break
            if redis_id in held:
                add(message, "in_progress")
            else:
                add(message, "ready")
                since = _ready_since_ms(message or {})
                if since is not None:
                    oldest = since if oldest is None else min(oldest, since)
        for key, state in ((base + ".DQ.msgs", "delayed"), (base + ".XQ.msgs", "dead")):
            for redis_id, message in self._scan_messages(key):
                if redis_id is None:
                    complete = False
                    break
                add(message, state)
        counts.by_actor = dict(sorted(actors.items()))
        counts.by_actor_complete = complete
        if complete and oldest is not None and counts.ready:
            counts.oldest_ready_age_s = round((now_ms - oldest) / 1000, 3)

    # -- dead letters ------------------------------------------------------------------------

    def dead_letters(self, *, queues: Iterable[str] = (), queue: str | None = None,
                     actor: str | None = None) -> list[DeadLetter]:
        """Dead letters, oldest first, of one queue (or all) and one actor (or all)."""
        names = [canonical(queue)] if queue else self.names(queues)
        found = []
        for name in names:
            xq = f"{self.namespace}:{name}.XQ"
            entries = self.client.zrange(xq, 0, -1, withscores=True)
            if not entries:
                continue
            ids = [_text(i) for i, _ in entries]
            raws = self.client.hmget(xq + ".msgs", ids)
            for redis_id, (_, score), raw in zip(ids, entries, raws):
                message = _decode(raw) if raw is not None else None
                if message is None:
                    continue
                if actor and message.get("actor_name") != actor:
                    continue
                found.append(self._dead_letter(name, redis_id, score, message))
        found.sort(key=lambda d: d.dead_at)
        return found

    def _dead_letter(self, queue: str, redis_id: str, score: float, message: dict) -> DeadLetter:
        options = message.get("options") or {}
        trace = options.get("traceback")
        error = options.get("dead_letter_error")
        if not error and trace:
            lines = [line for line in str(trace).strip().splitlines() if line.strip()]
            error = lines[-1].strip() if lines else None
        timestamp = message.get("message_timestamp")
        return DeadLetter(
            queue=queue, redis_id=redis_id, message_id=message.get("message_id"),
            actor=message.get("actor_name"),
            args=self.redact.value(list(message.get("args") or [])),
            kwargs=self.redact.value(dict(message.get("kwargs") or {})),
            retries=int(options.get("retries") or 0),
            error=self.redact.text(str(error)) if error else None,
            traceback=self.redact.text(str(trace)) if trace else None,
            dead_at=score / 1000,
            enqueued_at=timestamp / 1000 if isinstance(timestamp, (int, float)) else None,
            raw=message)

    def requeue(self, letters: Iterable[DeadLetter]) -> int:
        """Put dead letters back on their queues as fresh messages; returns how many moved."""
        moved = 0
        for letter in letters:
            message = dict(letter.raw)
            options = {k: v for k, v in (message.get("options") or {}).items()
                       if k not in _FORGOTTEN_OPTIONS}
            new_id = str(uuid.uuid4())
            options["redis_message_id"] = new_id
            message.update(queue_name=letter.queue, options=options)
            base = f"{self.namespace}:{letter.queue}"
            moved += int(self._requeue(
                keys=[base + ".XQ", base + ".XQ.msgs", base, base + ".msgs"],
                args=[letter.redis_id, new_id, json.dumps(message, separators=(",", ":"))]))
        return moved

    def purge(self, letters: Iterable[DeadLetter]) -> int:
        """Delete dead letters for good; returns how many went."""
        gone = 0
        for letter in letters:
            base = f"{self.namespace}:{letter.queue}"
            gone += int(self._purge(keys=[base + ".XQ", base + ".XQ.msgs"],
                                    args=[letter.redis_id]))
        return gone
