-- Published state, streams and idempotent events. Applied with search_path set to
-- the backend's schema, inside the migration transaction.

-- The value each instance published under each key (`Ctx::set_event`):
-- an event record (codec envelope), replaced by a later set of the key.
CREATE TABLE published (
    instance_id text COLLATE "C" NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    key         text COLLATE "C" NOT NULL,
    record      bytea NOT NULL,
    PRIMARY KEY (instance_id, key)
);

-- The idempotency keys of events sent with one, and the event each one
-- stored: a second send with the same key to the same instance is a no-op.
CREATE TABLE send_keys (
    instance_id text COLLATE "C" NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    key         text COLLATE "C" NOT NULL,
    name        text COLLATE "C" NOT NULL,
    seq         integer NOT NULL,
    PRIMARY KEY (instance_id, key)
);

-- Stream entries (`Ctx::write_stream`): append-only in workflow order, read
-- from an offset on.
CREATE TABLE streams (
    instance_id text COLLATE "C" NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    key         text COLLATE "C" NOT NULL,
    "offset"    bigint NOT NULL,
    record      bytea NOT NULL,
    PRIMARY KEY (instance_id, key, "offset")
);
