-- Embeddings by (embedder model, chunk content hash): re-indexing embeds only new text.
-- vector: dim little-endian f32s.
CREATE TABLE embedding_cache (
    model TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    vector BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (model, content_hash)
) WITHOUT ROWID;

-- What a job's embed step did: chunks embedded by the model, and reused from embedding_cache.
ALTER TABLE jobs ADD COLUMN embedded INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN reused INTEGER NOT NULL DEFAULT 0;

-- One row per model call (and per answer served from the cache).
CREATE TABLE usage (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts INTEGER NOT NULL,
    request_id TEXT,
    collection TEXT,
    -- answer | rewrite | summarize | embed
    task TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    latency_ms INTEGER,
    first_token_ms INTEGER,
    retries INTEGER,
    cache_hit INTEGER NOT NULL DEFAULT 0,
    -- ok | an error code
    outcome TEXT NOT NULL,
    cost_usd REAL NOT NULL DEFAULT 0
);
CREATE INDEX usage_ts ON usage(ts);

CREATE TABLE conversations (
    id TEXT PRIMARY KEY,
    collection TEXT NOT NULL,
    -- summary of turns 1..=summarized_upto (those are no longer sent verbatim)
    summary TEXT,
    summarized_upto INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX conversations_updated ON conversations(updated_at);

CREATE TABLE turns (
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    n INTEGER NOT NULL,
    question TEXT NOT NULL,
    -- the question as retrieved with (rewritten when the follow-up referred back)
    standalone TEXT NOT NULL,
    answer TEXT NOT NULL,
    citations TEXT NOT NULL,
    sources TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, n)
);
