-- History of memberships and segments, archived from the Redis streams.
--
-- Event identity is (stream, entry_ms, entry_seq): the Redis stream key and
-- the two halves of the entry id. The unique key also holds ts, because a
-- unique index of a partitioned table must contain the partition key; ts is
-- part of the entry's immutable content, so a redelivered entry always lands
-- on the same partition and collides there.

CREATE TABLE history (
    ts          timestamptz NOT NULL,
    user_id     bigint      NOT NULL CHECK (user_id > 0),
    segment     text        NOT NULL,
    operation   text        NOT NULL CHECK (operation IN ('add', 'remove')),
    reason      text        NOT NULL
        CHECK (reason IN ('manual', 'ttl', 'percent', 'segment_deleted', 'user_deleted')),
    deadline    timestamptz,
    stream      text        NOT NULL,
    entry_ms    bigint      NOT NULL,
    entry_seq   bigint      NOT NULL
) PARTITION BY RANGE (ts);

-- Column order: a whole-month report reads this index in order (no sort).
ALTER TABLE history
    ADD CONSTRAINT history_event_key UNIQUE (ts, stream, entry_ms, entry_seq);
CREATE INDEX history_user_ts ON history (user_id, ts);
CREATE INDEX history_segment_ts ON history (segment, ts);

-- Creates the month partition holding `month` unless it exists. Safe to call
-- concurrently: the advisory lock serialises creators, the second one finds
-- the table and does nothing.
CREATE FUNCTION history_ensure_partition(month date) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    first_day date := date_trunc('month', month)::date;
    name text := format('history_p%s', to_char(first_day, 'YYYY_MM'));
BEGIN
    IF to_regclass(name) IS NULL THEN
        PERFORM pg_advisory_xact_lock(hashtext('segments.history_ensure_partition'));
        IF to_regclass(name) IS NULL THEN
            -- Bounds written with an explicit UTC offset: months are UTC
            -- months whatever the session's TimeZone.
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF history FOR VALUES FROM (%L) TO (%L)',
                name,
                to_char(first_day, 'YYYY-MM-DD') || ' 00:00:00+00',
                to_char((first_day + interval '1 month')::date, 'YYYY-MM-DD') || ' 00:00:00+00'
            );
        END IF;
    END IF;
    RETURN name;
END
$$;

-- Segment lifecycle, so that history alone explains the state. Low volume:
-- one table, no partitions.
CREATE TABLE segment_events (
    ts          timestamptz NOT NULL,
    segment     text        NOT NULL,
    segment_id  bigint      NOT NULL,
    operation   text        NOT NULL CHECK (operation IN ('created', 'changed', 'deleted')),
    percent     numeric(5, 2),
    description text,
    stream      text        NOT NULL,
    entry_ms    bigint      NOT NULL,
    entry_seq   bigint      NOT NULL,
    CONSTRAINT segment_events_event_key UNIQUE (stream, entry_ms, entry_seq)
);
CREATE INDEX segment_events_segment_ts ON segment_events (segment, ts);

-- How far each stream is archived, written in the transaction of every
-- batch: the highest entry id committed so far and a running count of rows.
-- For observability; see docs/history.md for why the report's wait reads
-- the consumer group instead.
CREATE TABLE archive_progress (
    stream          text        PRIMARY KEY,
    last_entry_ms   bigint      NOT NULL,
    last_entry_seq  bigint      NOT NULL,
    archived        bigint      NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- This month and the next two, so that the archiver rarely has to create
-- one on the hot path (it does when an event falls outside them).
SELECT history_ensure_partition(((now() AT TIME ZONE 'UTC')::date + make_interval(months => m))::date)
FROM generate_series(0, 2) AS m;
