-- Pausing (Engine::pause): a paused unfinished instance is never claimed,
-- whatever its timer or events. Kept equal to whether its record says it is
-- paused (set by pause, unpause and the reopening of retry and resume).
ALTER TABLE instances ADD COLUMN paused boolean NOT NULL DEFAULT false;

-- Purge: the finished instances by when they last changed.
CREATE INDEX instances_finished ON instances (updated_ms) WHERE finished;
