-- Collections deleted from the catalog whose index has not been removed yet (a crash between the
-- two): the index goes at the next start, or before the name is used again.
CREATE TABLE dropped_collections (
    name TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL
);
