-- onceflow schema: events deduplicated by event id, spend per campaign and
-- minute, dead letters keyed by source position, and the stored offsets
-- that recovery reads (with the owner epoch that fences zombies).

CREATE TABLE IF NOT EXISTS ad_events (
    event_id         uuid        PRIMARY KEY,
    campaign_id      text        NOT NULL,
    ad_id            text        NOT NULL,
    kind             text        NOT NULL CHECK (kind IN ('impression', 'click')),
    cost_micros      bigint      NOT NULL CHECK (cost_micros >= 0),
    occurred_at      timestamptz NOT NULL,
    billed_minute    timestamptz NOT NULL,
    source_topic     text        NOT NULL,
    source_partition int         NOT NULL,
    source_offset    bigint      NOT NULL,
    txn_id           uuid        NOT NULL,
    inserted_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS campaign_spend (
    campaign_id  text        NOT NULL,
    minute       timestamptz NOT NULL,
    impressions  bigint      NOT NULL DEFAULT 0,
    clicks       bigint      NOT NULL DEFAULT 0,
    spend_micros bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (campaign_id, minute)
);

CREATE TABLE IF NOT EXISTS dead_letters (
    source_topic     text        NOT NULL,
    source_partition int         NOT NULL,
    source_offset    bigint      NOT NULL,
    error_kind       text        NOT NULL,
    error            text        NOT NULL,
    record_key       bytea,
    payload          bytea,
    txn_id           uuid        NOT NULL,
    inserted_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source_topic, source_partition, source_offset)
);

CREATE TABLE IF NOT EXISTS consumer_offsets (
    group_id       text        NOT NULL,
    topic          text        NOT NULL,
    partition      int         NOT NULL,
    -- first offset not yet committed here; NULL until the first batch
    next_offset    bigint,
    -- first offset this group ever fetched here: the Kafka position to
    -- assume while the group has no committed offset
    start_offset   bigint,
    txn_id         uuid,
    -- bumped by every claim; a write must carry the current one
    owner_epoch    bigint      NOT NULL DEFAULT 0,
    owner_instance text,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);
