-- The Kafka offset onceflow saw committed, written after each confirmed
-- Kafka commit: a lower bound of the group's committed offset that survives
-- the loss of the group's offsets (offset retention, a broker without
-- transactional offsets), so a replay does not owe outputs Kafka already has.
-- (SQLite has no ADD COLUMN IF NOT EXISTS; sqlx applies this migration once.)
ALTER TABLE consumer_offsets ADD COLUMN kafka_committed_offset INTEGER;
