-- Heimdall graph schema, version 1: the AGE graph and the tables beside it.
--
-- Applied by heimdall_core/graph/age.py at open, in one transaction, then recorded in
-- @graph@.hm_migration. @graph@ is the graph's schema (a quoted identifier) and
-- @graph_name@ its name as a string literal; the program substitutes both, nothing else.
--
-- Vertices and edges live in AGE label tables (queryable with cypher()). Beside them,
-- plain tables (prefix hm_) hold what merging and the SQL query paths need: the content
-- id of each vertex and its graphid, and the merge-rule cells (msgpack) of its properties.
-- docs/postgres-age.md explains the choices and the measurements behind them.

-- Vertex labels.
SELECT ag_catalog.create_vlabel(@graph_name@, 'dump');
SELECT ag_catalog.create_vlabel(@graph_name@, 'field');
SELECT ag_catalog.create_vlabel(@graph_name@, 'value');
SELECT ag_catalog.create_vlabel(@graph_name@, 'sighting');
SELECT ag_catalog.create_vlabel(@graph_name@, 'entity');
SELECT ag_catalog.create_vlabel(@graph_name@, 'subject');

-- Edge labels.
SELECT ag_catalog.create_elabel(@graph_name@, 'in_dump');
SELECT ag_catalog.create_elabel(@graph_name@, 'has_value');
SELECT ag_catalog.create_elabel(@graph_name@, 'in_field');
SELECT ag_catalog.create_elabel(@graph_name@, 'includes');
SELECT ag_catalog.create_elabel(@graph_name@, 'field_of');

-- Key-value facts about this projection: the merge-rules fingerprint.
CREATE TABLE @graph@.hm_meta (
    name text PRIMARY KEY,
    value text NOT NULL
);

-- The projector's checkpoint: per feed, the sequence number of the next event to apply.
CREATE TABLE @graph@.hm_position (
    feed bytea PRIMARY KEY,
    next_seq bigint NOT NULL
);

CREATE TABLE @graph@.hm_dump (
    id bytea PRIMARY KEY,                       -- dump id (bin16)
    gid ag_catalog.graphid NOT NULL UNIQUE,     -- its vertex
    cells bytea NOT NULL                        -- msgpack map: property -> merge cell
);

CREATE TABLE @graph@.hm_field (
    gid ag_catalog.graphid PRIMARY KEY,
    dump bytea NOT NULL,
    col text NOT NULL,
    kind text NOT NULL,
    UNIQUE (dump, col, kind)
);

CREATE TABLE @graph@.hm_value (
    id bytea PRIMARY KEY,                       -- content id (model.clear_value_vid / blind_value_vid)
    gid ag_catalog.graphid NOT NULL,
    kind text NOT NULL,
    v text,                                     -- canonical value, when clear
    bi bytea,                                   -- blind index, when personal
    cells bytea NOT NULL,
    n bigint NOT NULL,                          -- sightings holding it
    egid ag_catalog.graphid                     -- its entity vertex, once it is a record's primary value
)
-- Room on each page for the new version of a value seen again (cells and n change with
-- every batch that sees it, no indexed column does): the update stays on its page (HOT)
-- and adds no entry to either index, where a full page moved it and added two.
WITH (fillfactor = 90);
-- gid -> content id without touching the table (co-occurring values rank ties by id).
CREATE UNIQUE INDEX hm_value_gid ON @graph@.hm_value (gid) INCLUDE (id);

CREATE TABLE @graph@.hm_subject (
    id bytea PRIMARY KEY,
    gid ag_catalog.graphid NOT NULL UNIQUE,
    cells bytea NOT NULL
);

CREATE TABLE @graph@.hm_sighting (
    gid ag_catalog.graphid NOT NULL,
    dump ag_catalog.graphid NOT NULL,
    part integer NOT NULL,
    pos bigint NOT NULL,
    seen_ms bigint NOT NULL,
    entity ag_catalog.graphid,                  -- the primary value's vertex (not the entity's)
    sealed bytea,                               -- msgpack union cell of encrypt-only fields
    -- The record's values: their distinct content ids (16 bytes each) end to end, so
    -- co-occurring values are counted from the sightings alone, without an edge and an id
    -- lookup per co-occurring value. One bytea, not bytea[]: the array's encoding and
    -- decoding cost the write path ~15%.
    vals bytea NOT NULL,
    -- "where was this value seen" reads dump and time of each sighting from the index alone
    PRIMARY KEY (gid) INCLUDE (dump, seen_ms),
    UNIQUE (dump, part, pos)
);

-- Reserve n consecutive entry ids of a label's sequence; returns the first. Run under the
-- store's transaction-level advisory lock, so ranges of two writers never interleave.
CREATE FUNCTION @graph@.hm_reserve(seq regclass, n bigint) RETURNS bigint
    LANGUAGE sql VOLATILE
    AS $$ SELECT setval(seq, nextval(seq) + n - 1) - n + 1 $$;

-- Vertex ids: what edges join on when cypher() follows them.
CREATE UNIQUE INDEX dump_id ON @graph@.dump (id);
CREATE UNIQUE INDEX field_id ON @graph@.field (id);
CREATE UNIQUE INDEX value_id ON @graph@.value (id);
CREATE UNIQUE INDEX sighting_id ON @graph@.sighting (id);
CREATE UNIQUE INDEX entity_id ON @graph@.entity (id);
CREATE UNIQUE INDEX subject_id ON @graph@.subject (id);

-- WHERE v.value = '...' is served by an index on the expression cypher() generates for
-- property access. Hash, not btree: equality is all an indicator lookup needs, and the
-- btree's agtype comparisons measured ~3x the insert cost. A hash index leaves out rows
-- without the key (personal values have "bi" instead), so only clear values pay for it.
-- No GIN index on value properties, and none on "bi": Heimdall's queries go through the
-- hm_ tables, and GIN was the largest single write cost of a record (~4 us per value row,
-- 2.5x the label table alone). A map pattern MATCH (v:value {value: '...'}) or a lookup
-- by blind index still answers, by a scan. docs/postgres-age.md has the numbers.
CREATE INDEX value_value ON @graph@.value USING hash
    (ag_catalog.agtype_access_operator(VARIADIC ARRAY[properties, '"value"'::ag_catalog.agtype]));
-- The small labels keep GIN for map patterns: a few rows per dump.
CREATE INDEX dump_props ON @graph@.dump USING gin (properties);
CREATE INDEX field_props ON @graph@.field USING gin (properties);
CREATE INDEX subject_props ON @graph@.subject USING gin (properties);

-- Edges, both directions. has_value (end_id, start_id) also serves "where was this value
-- seen" and "the newest sightings of this value" in SQL, from the index alone; (start_id,
-- end_id) serves cypher() going from a record to its values (the SQL query path reads
-- hm_sighting.vals instead); the unique pairs make in_field and includes
-- idempotent (INSERT ... ON CONFLICT DO NOTHING). Not indexed, because no query of
-- Heimdall follows them and each index costs every record a write (value -> entities
-- measured ~6 us of a record's ~60 us of server time): value -> entities (includes by
-- end_id), field -> values (in_field by end_id), dump -> sightings (in_dump by end_id).
-- Cypher still follows them, by a scan of the edge label.
CREATE INDEX has_value_end ON @graph@.has_value (end_id, start_id);
CREATE INDEX has_value_start ON @graph@.has_value (start_id, end_id);
CREATE INDEX in_dump_start ON @graph@.in_dump (start_id);
CREATE UNIQUE INDEX in_field_pair ON @graph@.in_field (start_id, end_id);
CREATE UNIQUE INDEX includes_pair ON @graph@.includes (start_id, end_id);
CREATE UNIQUE INDEX field_of_pair ON @graph@.field_of (start_id, end_id);
CREATE INDEX field_of_end ON @graph@.field_of (end_id);
