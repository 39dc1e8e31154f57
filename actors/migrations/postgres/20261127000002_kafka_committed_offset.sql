-- The Kafka offset onceflow saw committed, written after each confirmed
-- Kafka commit: a lower bound of the group's committed offset that survives
-- the loss of the group's offsets (offset retention, a broker without
-- transactional offsets), so a replay does not owe outputs Kafka already has.
ALTER TABLE consumer_offsets ADD COLUMN IF NOT EXISTS kafka_committed_offset bigint;
