-- API keys (auth.mode = "keys"): only a keyed hash of each key is stored (sha256 of the install's
-- secret and the key); the key itself is shown once, at creation.
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    -- JSON array of scopes: "admin", "*", "read:NAME", "write:NAME" (NAME may be "*")
    scopes TEXT NOT NULL,
    -- requests and model tokens per minute, and model tokens per day (UTC), this key may use
    -- (0: no limit of its own)
    rpm INTEGER NOT NULL DEFAULT 0,
    tpm INTEGER NOT NULL DEFAULT 0,
    daily_tokens INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);

-- Who did what, for every destructive or admin action.
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts INTEGER NOT NULL,
    -- the key's id; NULL when kb runs without keys (auth.mode = "none") or from the CLI
    actor TEXT,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX audit_ts ON audit(ts);

-- A conversation belongs to the key that created it (NULL: created without keys).
ALTER TABLE conversations ADD COLUMN owner TEXT;

-- The key a model call was made for: its token limits are counted from here.
ALTER TABLE usage ADD COLUMN key_id TEXT;
CREATE INDEX usage_key_ts ON usage(key_id, ts);
