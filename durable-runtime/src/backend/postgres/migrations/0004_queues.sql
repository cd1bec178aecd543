-- Queues (Engine::enqueue): an enqueued instance is held (never claimed)
-- until a dispatch takes it, under its queue's row lock in `queues`.
ALTER TABLE instances
    ADD COLUMN queue         text COLLATE "C",
    -- Enqueued and not dispatched yet: no claim takes it.
    ADD COLUMN queued        boolean NOT NULL DEFAULT false,
    ADD COLUMN priority      integer NOT NULL DEFAULT 0,
    -- Enqueue order among equal priorities.
    ADD COLUMN queue_seq     bigint,
    ADD COLUMN partition_key text COLLATE "C",
    ADD COLUMN dedup         text COLLATE "C",
    -- Not dispatched before this time (ms on the engine's clock).
    ADD COLUMN not_before_ms bigint NOT NULL DEFAULT 0,
    -- When a dispatch took it (the rate limit counts these).
    ADD COLUMN dispatched_ms bigint;

CREATE SEQUENCE queue_seq;

-- One row per queue: a dispatch locks it FOR UPDATE, so limits are
-- decided by one worker at a time.
-- Its limits as the last worker that dispatched declared them (shown by
-- `durable queues`; each worker dispatches with its own).
CREATE TABLE queues (
    name                  text COLLATE "C" PRIMARY KEY,
    concurrency           integer,
    partition_concurrency integer,
    per_worker            integer,
    rate_n                integer,
    rate_ms               bigint
);

CREATE INDEX instances_queued ON instances (queue, priority, queue_seq)
    WHERE queued AND NOT finished;
CREATE INDEX instances_queue_running ON instances (queue)
    WHERE queue IS NOT NULL AND NOT queued AND NOT finished;
CREATE INDEX instances_queue_dispatched ON instances (queue, dispatched_ms)
    WHERE dispatched_ms IS NOT NULL;
-- A deduplication id is held while its instance is unfinished.
CREATE UNIQUE INDEX instances_queue_dedup ON instances (queue, dedup)
    WHERE dedup IS NOT NULL AND NOT finished;
