CREATE TABLE collections (
    name TEXT PRIMARY KEY,
    embed_model TEXT NOT NULL,
    dim INTEGER NOT NULL,
    -- bumped on every change of what the collection answers from (cache invalidation)
    index_version INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);

CREATE TABLE documents (
    id TEXT PRIMARY KEY,
    collection TEXT NOT NULL REFERENCES collections(name),
    name TEXT NOT NULL,
    live_version INTEGER,
    latest_version INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    UNIQUE (collection, name)
);

CREATE TABLE versions (
    doc_id TEXT NOT NULL REFERENCES documents(id),
    version INTEGER NOT NULL,
    content_hash TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    media_type TEXT,
    -- queued | processing | ready | failed | retired
    status TEXT NOT NULL,
    error TEXT,
    pages INTEGER,
    chunks INTEGER,
    tokens INTEGER,
    job_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (doc_id, version)
);
CREATE INDEX versions_hash ON versions(content_hash);
CREATE INDEX versions_job ON versions(job_id);

CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    doc_id TEXT NOT NULL REFERENCES documents(id),
    version INTEGER NOT NULL,
    -- queued | running | done | failed
    status TEXT NOT NULL,
    stage TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX jobs_status ON jobs(status);

-- Version keys (doc_id@version) whose points must still be removed from the index.
CREATE TABLE pending_deletes (
    version_key TEXT PRIMARY KEY,
    collection TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
