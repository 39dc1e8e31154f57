-- The consumer group that stored each event and dead letter: a conflict is
-- our own replay only at the same group, topic, partition and offset; another
-- group's copy of the same position is an upstream repeat (no second output).
-- Rows stored earlier get the group when exactly one group ever claimed their
-- partition; the rest stay NULL, which the store reads as "this group's" (the
-- rule before the column existed), so an upgrade never loses an owed output.
ALTER TABLE ad_events ADD COLUMN IF NOT EXISTS source_group text;
ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS source_group text;

UPDATE ad_events AS e
   SET source_group = o.group_id
  FROM (SELECT topic, partition, min(group_id) AS group_id
          FROM consumer_offsets
         GROUP BY topic, partition
        HAVING count(*) = 1) AS o
 WHERE e.source_group IS NULL
   AND o.topic = e.source_topic
   AND o.partition = e.source_partition;

UPDATE dead_letters AS d
   SET source_group = o.group_id
  FROM (SELECT topic, partition, min(group_id) AS group_id
          FROM consumer_offsets
         GROUP BY topic, partition
        HAVING count(*) = 1) AS o
 WHERE d.source_group IS NULL
   AND o.topic = d.source_topic
   AND o.partition = d.source_partition;
