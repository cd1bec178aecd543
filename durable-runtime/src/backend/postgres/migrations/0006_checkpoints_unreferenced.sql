-- Checkpoints without a foreign key to their instance. A checkpoint is
-- written only under its instance's row lock (the owner's fence) or with
-- its instance in one transaction (a fork), so the row it belongs to
-- exists; purge deletes an instance's checkpoints with it, explicitly.
-- The constraint cost one trigger and one row lock per checkpoint, the
-- hottest write of all.
ALTER TABLE checkpoints DROP CONSTRAINT IF EXISTS checkpoints_instance_id_fkey;
