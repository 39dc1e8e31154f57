-- The consumer group that stored each event and dead letter: a conflict is
-- our own replay only at the same group, topic, partition and offset; another
-- group's copy of the same position is an upstream repeat (no second output).
-- Rows stored earlier get the group when exactly one group ever claimed their
-- partition; the rest stay NULL, which the store reads as "this group's" (the
-- rule before the column existed), so an upgrade never loses an owed output.
-- (SQLite has no ADD COLUMN IF NOT EXISTS; sqlx applies this migration once.)
ALTER TABLE ad_events ADD COLUMN source_group TEXT;
ALTER TABLE dead_letters ADD COLUMN source_group TEXT;

UPDATE ad_events
   SET source_group = (SELECT min(o.group_id)
                         FROM consumer_offsets AS o
                        WHERE o.topic = ad_events.source_topic
                          AND o.partition = ad_events.source_partition
                        GROUP BY o.topic, o.partition
                       HAVING count(*) = 1)
 WHERE source_group IS NULL;

UPDATE dead_letters
   SET source_group = (SELECT min(o.group_id)
                         FROM consumer_offsets AS o
                        WHERE o.topic = dead_letters.source_topic
                          AND o.partition = dead_letters.source_partition
                        GROUP BY o.topic, o.partition
                       HAVING count(*) = 1)
 WHERE source_group IS NULL;
