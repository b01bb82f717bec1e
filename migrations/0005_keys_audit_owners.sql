-- API keys (auth.mode = "keys"): only a keyed hash of each key is stored (sha256 of the install's
-- secret and the key); the key itself is shown once, at creation.
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    -- JSON array of scopes: "admin", "*", "read:NAME", "write:NAME" (NAME may be "*")
    scopes TEXT NOT NULL,
    -- requests per minute this key may make (0: no limit of its own)
    rpm INTEGER NOT NULL DEFAULT 0,
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
