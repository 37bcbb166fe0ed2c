-- Heimdall graph schema, version 2: what lets the projector look a batch up and build its
-- rows while the batch before it is still being written (docs/postgres-age.md, sixth round).

-- Reserve n consecutive entry ids of a label's sequence; returns the first. Atomic on its
-- own: a batch reserves its ids on a second connection, outside the transaction (and the
-- graph's advisory lock) of the batch still being written, so the reservation takes its own
-- lock, held only while it runs. A session lock, released before returning: a
-- transaction-level one would be held by the writer's transaction until its commit. The
-- id ranges stay consecutive whoever reserves (nextval then setval is two steps).
CREATE OR REPLACE FUNCTION @graph@.hm_reserve(seq regclass, n bigint) RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    AS $$
DECLARE
    lock_key constant bigint := hashtextextended('heimdall.graph.reserve:' || @graph_name@, 0);
    first bigint;
BEGIN
    PERFORM pg_advisory_lock(lock_key);
    BEGIN
        first := setval(seq, nextval(seq) + n - 1) - n + 1;
    EXCEPTION WHEN OTHERS THEN
        PERFORM pg_advisory_unlock(lock_key);  -- a session lock outlives the error otherwise
        RAISE;
    END;
    PERFORM pg_advisory_unlock(lock_key);
    RETURN first;
END
$$;

-- One counter, incremented by every transaction that writes the projection (under the
-- graph's advisory lock). A batch looked up ahead of its turn expects the counter of the
-- batch before it plus one; anything else means another writer committed in between, and
-- the batch is looked up again inside its own transaction.
CREATE TABLE @graph@.hm_writes (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    serial bigint NOT NULL
);
INSERT INTO @graph@.hm_writes VALUES (true, 0);
