-- The first schema of the PostgreSQL backend. Applied with search_path set
-- to the backend's schema, inside the migration transaction.

-- One row per worker process start; never reused.
CREATE TABLE workers (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    host        text NOT NULL,
    pid         integer NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    -- Renewed by the worker every lease/3, on this database's clock.
    lease_until timestamptz NOT NULL,
    -- 0 live, 2 dead (its lease expired; a reaper released its instances),
    -- 3 gone (closed cleanly).
    state       smallint NOT NULL DEFAULT 0
);
CREATE INDEX workers_live ON workers (lease_until) WHERE state = 0;

-- One row per instance: the record (codec envelope) and the columns that
-- claims and listings need.
CREATE TABLE instances (
    id            text COLLATE "C" PRIMARY KEY,
    workflow      text COLLATE "C" NOT NULL,
    -- 0 running, 1 ready (its awaited event arrived), 2 sleeping,
    -- 3 waiting, 4 blocked, 5 needs attention, 6 incompatible,
    -- 7 completed, 8 failed, 9 cancelled.
    status        smallint NOT NULL,
    -- The fencing token: moves on every claim, takeover and cancel.
    epoch         bigint NOT NULL,
    -- The worker that holds the instance, NULL when nobody does.
    owner         bigint,
    -- The worker that blocked it (a blocked instance is retried once that
    -- worker is gone, as an embedded store retries it at the next open).
    blocked_by    bigint,
    -- The earliest deadline of the park record, in ms on the engine's clock.
    wake_at_ms    bigint,
    -- Resumes without progress.
    recoveries    integer NOT NULL DEFAULT 0,
    created_at_ms bigint NOT NULL,
    -- When the status last changed (the record's last transition), in ms.
    updated_ms    bigint NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    finished      boolean NOT NULL DEFAULT false,
    record        bytea NOT NULL,
    park          bytea
) WITH (fillfactor = 80);
CREATE INDEX instances_runnable ON instances (workflow)
    WHERE owner IS NULL AND status IN (0, 1, 4);
CREATE INDEX instances_timers ON instances (wake_at_ms)
    WHERE owner IS NULL AND status IN (2, 3);
CREATE INDEX instances_owned ON instances (owner) WHERE owner IS NOT NULL;
CREATE INDEX instances_created ON instances (created_at_ms DESC, id DESC);
CREATE INDEX instances_workflow_created ON instances (workflow, created_at_ms DESC, id DESC);

-- Checkpoints, keyed by the bytes an embedded store keys them with.
CREATE TABLE checkpoints (
    instance_id text COLLATE "C" NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    key         bytea NOT NULL,
    name        text COLLATE "C" NOT NULL,
    -- A wait that ended (received or timed out): counts for event numbers.
    ended_wait  boolean NOT NULL,
    record      bytea NOT NULL,
    PRIMARY KEY (instance_id, key)
);

CREATE TABLE events (
    instance_id text COLLATE "C" NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    name        text COLLATE "C" NOT NULL,
    seq         integer NOT NULL,
    record      bytea NOT NULL,
    PRIMARY KEY (instance_id, name, seq)
);

CREATE TABLE manifests (
    hash     bigint PRIMARY KEY,
    manifest bytea NOT NULL
);
