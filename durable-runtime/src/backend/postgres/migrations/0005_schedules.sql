-- Schedules (Engine::add_schedule): one row per schedule, its record
-- (workflow, cron expression, policy, pause, last tick fired) encoded by
-- the engine. Updated under an advisory lock on the name.
CREATE TABLE schedules (
    name text PRIMARY KEY,
    record bytea NOT NULL
);

-- Pending debounces (Engine::debounce): one row per debounce key, with the
-- last input, when it is due and its generation.
CREATE TABLE debounces (
    key text PRIMARY KEY,
    record bytea NOT NULL
);
