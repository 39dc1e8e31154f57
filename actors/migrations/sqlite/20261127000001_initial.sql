-- onceflow schema, SQLite dialect: the same tables, columns, checks and keys
-- as the PostgreSQL schema (actors/migrations/postgres). Events deduplicated
-- by event id, spend per campaign and minute, dead letters keyed by source
-- position, and the stored offsets that recovery reads (with the owner
-- epoch that fences zombies).
--
-- STRICT tables: a value of the wrong type is refused, never converted.
-- uuid columns hold the 16 bytes of the UUID (BLOB); timestamp columns hold
-- RFC 3339 UTC text with microseconds, `YYYY-MM-DDTHH:MM:SS.ffffffZ`, always
-- written in that one format, so equal instants are equal keys and text
-- order is time order (campaign_spend.minute is checked to be exactly that,
-- on a whole minute; the `now` defaults are millisecond-precise, padded).

CREATE TABLE IF NOT EXISTS ad_events (
    event_id         BLOB    NOT NULL PRIMARY KEY CHECK (length(event_id) = 16),
    campaign_id      TEXT    NOT NULL,
    ad_id            TEXT    NOT NULL,
    kind             TEXT    NOT NULL CHECK (kind IN ('impression', 'click')),
    cost_micros      INTEGER NOT NULL CHECK (cost_micros >= 0),
    occurred_at      TEXT    NOT NULL,
    billed_minute    TEXT    NOT NULL,
    source_topic     TEXT    NOT NULL,
    source_partition INTEGER NOT NULL,
    source_offset    INTEGER NOT NULL,
    txn_id           BLOB    NOT NULL,
    inserted_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now'))
) STRICT;

CREATE TABLE IF NOT EXISTS campaign_spend (
    campaign_id  TEXT    NOT NULL,
    minute       TEXT    NOT NULL
                 CHECK (minute GLOB '[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:00.000000Z'),
    impressions  INTEGER NOT NULL DEFAULT 0,
    clicks       INTEGER NOT NULL DEFAULT 0,
    spend_micros INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (campaign_id, minute)
) STRICT;

CREATE TABLE IF NOT EXISTS dead_letters (
    source_topic     TEXT    NOT NULL,
    source_partition INTEGER NOT NULL,
    source_offset    INTEGER NOT NULL,
    error_kind       TEXT    NOT NULL,
    error            TEXT    NOT NULL,
    record_key       BLOB,
    payload          BLOB,
    txn_id           BLOB    NOT NULL,
    inserted_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now')),
    PRIMARY KEY (source_topic, source_partition, source_offset)
) STRICT;

CREATE TABLE IF NOT EXISTS consumer_offsets (
    group_id       TEXT    NOT NULL,
    topic          TEXT    NOT NULL,
    partition      INTEGER NOT NULL,
    -- first offset not yet committed here; NULL until the first batch
    next_offset    INTEGER,
    -- first offset this group ever fetched here: the Kafka position to
    -- assume while the group has no committed offset
    start_offset   INTEGER,
    txn_id         BLOB,
    -- bumped by every claim; a write must carry the current one
    owner_epoch    INTEGER NOT NULL DEFAULT 0,
    owner_instance TEXT,
    updated_at     TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now')),
    PRIMARY KEY (group_id, topic, partition)
) STRICT;
