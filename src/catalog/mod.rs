//! The catalog: collections, documents and their versions, ingestion jobs. SQLite (WAL) under
//! the data directory by default.
//!
//! A *document* is a name in a collection; each upload of new bytes under that name is a
//! *version*. Exactly one version is `live` (searchable) at a time; a new version becomes live
//! only once fully indexed, in one transaction that also retires the old one.

mod conversations;
mod embeddings;
mod usage;

pub use conversations::{ConversationRow, TurnRow};
pub use usage::{UsageAggregate, UsageRecord};

use serde::Serialize;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use std::path::Path;
use std::str::FromStr;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("the catalog schema version {0} is newer than this kb understands")]
    TooNew(i64),
}

pub type Result<T> = std::result::Result<T, CatalogError>;

#[derive(Clone)]
pub struct Catalog {
    pool: SqlitePool,
}

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/0001_init.sql"),
    include_str!("../../migrations/0002_caches_usage_conversations.sql"),
    include_str!("../../migrations/0003_job_failures_and_crashes.sql"),
];

async fn migrate(pool: &SqlitePool) -> Result<()> {
    let mut conn = pool.acquire().await?;
    let have: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(&mut *conn)
        .await?;
    if have > MIGRATIONS.len() as i64 {
        return Err(CatalogError::TooNew(have));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(have as usize) {
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        sqlx::raw_sql(sql).execute(&mut *tx).await?;
        sqlx::raw_sql(&format!("PRAGMA user_version = {}", i + 1))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    Ok(())
}

async fn insert_pending_delete(
    conn: &mut sqlx::SqliteConnection,
    collection: &str,
    key: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT OR IGNORE INTO pending_deletes (version_key, collection, created_at) VALUES (?, ?, ?)",
    )
    .bind(key)
    .bind(collection)
    .bind(now_ms())
    .execute(conn)
    .await?;
    Ok(())
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// Version status values.
pub mod status {
    pub const QUEUED: &str = "queued";
    pub const PROCESSING: &str = "processing";
    pub const LIVE: &str = "ready";
    pub const FAILED: &str = "failed";
    /// Replaced by a newer version; its points are being removed.
    pub const RETIRED: &str = "retired";
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CollectionInfo {
    pub name: String,
    pub embed_model: String,
    pub dim: usize,
    pub index_version: i64,
    pub documents: i64,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct VersionRow {
    pub doc_id: String,
    pub version: i64,
    pub content_hash: String,
    pub size_bytes: i64,
    pub media_type: Option<String>,
    pub status: String,
    pub error: Option<String>,
    pub pages: Option<i64>,
    pub chunks: Option<i64>,
    pub tokens: Option<i64>,
    pub job_id: String,
    pub created_at: i64,
    pub updated_at: i64,
}

impl VersionRow {
    /// The key carried by every point of this version (`doc_id@version`).
    pub fn key(&self) -> String {
        version_key(&self.doc_id, self.version)
    }
}

pub fn version_key(doc_id: &str, version: i64) -> String {
    format!("{doc_id}@{version}")
}

/// A document as the API shows it: its live version (if any) and its newest one.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DocumentView {
    pub id: String,
    pub collection: String,
    pub name: String,
    /// `processing`, `ready` or `failed` (of the newest version).
    pub status: String,
    pub error: Option<String>,
    pub version: i64,
    pub live_version: Option<i64>,
    pub media_type: Option<String>,
    pub size_bytes: i64,
    pub pages: Option<i64>,
    pub chunks: Option<i64>,
    pub tokens: Option<i64>,
    pub content_hash: String,
    pub job_id: String,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobRow {
    pub id: String,
    pub doc_id: String,
    pub version: i64,
    pub collection: String,
    pub doc_name: String,
    /// `queued`, `running`, `done` or `failed`.
    pub status: String,
    /// `queued`, `extract`, `chunk`, `embed`, `index`, `done`.
    pub stage: String,
    pub done: i64,
    pub total: i64,
    pub attempts: i64,
    pub error: Option<String>,
    pub content_hash: String,
    /// Chunks the embed step sent to the embedder, and chunks whose embedding was reused from
    /// the embedding cache (same embedder, same text).
    pub embedded: i64,
    pub reused: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

pub enum NewUpload {
    /// The same bytes are already in the collection.
    Existing(Box<DocumentView>),
    /// A new document or a new version was registered, with its job.
    Created {
        doc_id: String,
        version: i64,
        job_id: String,
        created_document: bool,
    },
}

impl Catalog {
    pub async fn open(path: &Path) -> Result<Catalog> {
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(std::time::Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await?;
        migrate(&pool).await?;
        Ok(Catalog { pool })
    }

    /// A write transaction that takes the write lock up front (`BEGIN IMMEDIATE`): a deferred
    /// transaction that reads first and writes later fails with SQLITE_BUSY_SNAPSHOT when
    /// another connection wrote in between, and busy_timeout cannot retry that.
    async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    // ---- collections ----

    /// Create the collection if missing. Returns (embed_model, dim) as recorded.
    pub async fn ensure_collection(
        &self,
        name: &str,
        model: &str,
        dim: usize,
    ) -> Result<(String, usize)> {
        sqlx::query(
            "INSERT INTO collections (name, embed_model, dim, index_version, created_at) VALUES (?, ?, ?, 0, ?)
             ON CONFLICT(name) DO NOTHING",
        )
        .bind(name)
        .bind(model)
        .bind(dim as i64)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        let row = sqlx::query("SELECT embed_model, dim FROM collections WHERE name = ?")
            .bind(name)
            .fetch_one(&self.pool)
            .await?;
        Ok((row.get::<String, _>(0), row.get::<i64, _>(1) as usize))
    }

    const COLLECTION_SELECT: &'static str =
        "SELECT c.name, c.embed_model, c.dim, c.index_version, c.created_at,
            (SELECT COUNT(*) FROM documents d WHERE d.collection = c.name)
         FROM collections c";

    fn collection_info(r: &sqlx::sqlite::SqliteRow) -> CollectionInfo {
        CollectionInfo {
            name: r.get(0),
            embed_model: r.get(1),
            dim: r.get::<i64, _>(2) as usize,
            index_version: r.get(3),
            created_at: iso(r.get(4)),
            documents: r.get(5),
        }
    }

    /// One collection (on every search and ask: a keyed lookup, not a scan of all of them).
    pub async fn collection(&self, name: &str) -> Result<Option<CollectionInfo>> {
        let sql = format!("{} WHERE c.name = ?", Self::COLLECTION_SELECT);
        let row = sqlx::query(&sql)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(Self::collection_info))
    }

    pub async fn collections(&self) -> Result<Vec<CollectionInfo>> {
        let sql = format!("{} ORDER BY c.name", Self::COLLECTION_SELECT);
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(Self::collection_info).collect())
    }

    /// Chunks of the live versions of a collection's documents.
    pub async fn live_chunks(&self, collection: &str) -> Result<i64> {
        let n: Option<i64> = sqlx::query_scalar(
            "SELECT SUM(v.chunks) FROM versions v JOIN documents d ON d.id = v.doc_id
             WHERE d.collection = ? AND v.status = 'ready'",
        )
        .bind(collection)
        .fetch_one(&self.pool)
        .await?;
        Ok(n.unwrap_or(0))
    }

    // ---- documents ----

    /// Register an upload: dedup by content hash within the collection, else a new document or
    /// a new version of the document with this name, plus its ingestion job.
    pub async fn register_upload(
        &self,
        collection: &str,
        name: &str,
        content_hash: &str,
        size_bytes: i64,
        new_doc_id: &str,
        new_job_id: &str,
    ) -> Result<NewUpload> {
        let mut tx = self.write_tx().await?;
        // Same bytes already present (and not failed or retired) in this collection?
        let dup = sqlx::query(
            "SELECT v.doc_id FROM versions v JOIN documents d ON d.id = v.doc_id
             WHERE d.collection = ? AND v.content_hash = ? AND v.status IN ('queued','processing','ready')
               AND v.version = d.latest_version
             ORDER BY v.version DESC LIMIT 1",
        )
        .bind(collection)
        .bind(content_hash)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = dup {
            let id: String = row.get(0);
            let sql = format!("{} WHERE d.id = ?", Self::DOC_SELECT);
            let view = sqlx::query(&sql).bind(&id).fetch_one(&mut *tx).await?;
            tx.commit().await?;
            return Ok(NewUpload::Existing(Box::new(Self::doc_view(&view))));
        }
        let now = now_ms();
        let existing = sqlx::query(
            "SELECT id, latest_version FROM documents WHERE collection = ? AND name = ?",
        )
        .bind(collection)
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        let (doc_id, version, created) = match existing {
            Some(r) => (r.get::<String, _>(0), r.get::<i64, _>(1) + 1, false),
            None => (new_doc_id.to_string(), 1, true),
        };
        if created {
            sqlx::query(
                "INSERT INTO documents (id, collection, name, live_version, latest_version, created_at, updated_at)
                 VALUES (?, ?, ?, NULL, 1, ?, ?)",
            )
            .bind(&doc_id)
            .bind(collection)
            .bind(name)
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        } else {
            sqlx::query("UPDATE documents SET latest_version = ?, updated_at = ? WHERE id = ?")
                .bind(version)
                .bind(now)
                .bind(&doc_id)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "INSERT INTO versions (doc_id, version, content_hash, size_bytes, status, job_id, created_at, updated_at)
             VALUES (?, ?, ?, ?, 'queued', ?, ?, ?)",
        )
        .bind(&doc_id)
        .bind(version)
        .bind(content_hash)
        .bind(size_bytes)
        .bind(new_job_id)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO jobs (id, doc_id, version, status, stage, done, total, attempts, created_at, updated_at)
             VALUES (?, ?, ?, 'queued', 'queued', 0, 0, 0, ?, ?)",
        )
        .bind(new_job_id)
        .bind(&doc_id)
        .bind(version)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(NewUpload::Created {
            doc_id,
            version,
            job_id: new_job_id.to_string(),
            created_document: created,
        })
    }

    const DOC_SELECT: &'static str = "SELECT d.id, d.collection, d.name, d.live_version, d.latest_version,
            v.status, v.error, v.media_type, v.size_bytes, v.pages, v.chunks, v.tokens, v.content_hash,
            v.job_id, d.created_at, v.updated_at, lv.pages, lv.chunks, lv.tokens
         FROM documents d
         JOIN versions v ON v.doc_id = d.id AND v.version = d.latest_version
         LEFT JOIN versions lv ON lv.doc_id = d.id AND lv.version = d.live_version";

    fn doc_view(r: &sqlx::sqlite::SqliteRow) -> DocumentView {
        let vstatus: String = r.get(5);
        let status = match vstatus.as_str() {
            status::QUEUED | status::PROCESSING => "processing",
            status::FAILED => "failed",
            _ => "ready",
        }
        .to_string();
        // While a new version is processing, show the live version's counts.
        let pick = |i: usize, j: usize| -> Option<i64> { r.get::<Option<i64>, _>(i).or(r.get(j)) };
        DocumentView {
            id: r.get(0),
            collection: r.get(1),
            name: r.get(2),
            live_version: r.get(3),
            version: r.get(4),
            status,
            error: r.get(6),
            media_type: r.get(7),
            size_bytes: r.get(8),
            pages: pick(9, 16),
            chunks: pick(10, 17),
            tokens: pick(11, 18),
            content_hash: r.get(12),
            job_id: r.get(13),
            created_at: iso(r.get(14)),
            updated_at: iso(r.get(15)),
        }
    }

    pub async fn document(&self, id: &str) -> Result<Option<DocumentView>> {
        let sql = format!("{} WHERE d.id = ?", Self::DOC_SELECT);
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(Self::doc_view))
    }

    pub async fn documents(&self, collection: &str) -> Result<Vec<DocumentView>> {
        let sql = format!(
            "{} WHERE d.collection = ? ORDER BY d.name",
            Self::DOC_SELECT
        );
        let rows = sqlx::query(&sql)
            .bind(collection)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(Self::doc_view).collect())
    }

    /// Names of documents by id, for decorating search hits.
    pub async fn document_names(
        &self,
        ids: &[String],
    ) -> Result<std::collections::HashMap<String, String>> {
        let mut out = std::collections::HashMap::new();
        for id in ids {
            if out.contains_key(id) {
                continue;
            }
            if let Some(r) = sqlx::query("SELECT name FROM documents WHERE id = ?")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
            {
                out.insert(id.clone(), r.get(0));
            }
        }
        Ok(out)
    }

    /// Remove a document and its versions and jobs from the catalog. Returns the version keys
    /// whose points must be deleted, or None if the document does not exist.
    pub async fn delete_document(&self, id: &str) -> Result<Option<(String, Vec<VersionRow>)>> {
        let mut tx = self.write_tx().await?;
        let Some(row) = sqlx::query("SELECT collection FROM documents WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(None);
        };
        let collection: String = row.get(0);
        let versions = Self::versions_where(&mut tx, "doc_id = ?", id).await?;
        sqlx::query("DELETE FROM jobs WHERE doc_id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM versions WHERE doc_id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM documents WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        for v in &versions {
            insert_pending_delete(&mut tx, &collection, &v.key()).await?;
        }
        sqlx::query("UPDATE collections SET index_version = index_version + 1 WHERE name = ?")
            .bind(&collection)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some((collection, versions)))
    }

    async fn versions_where(
        tx: &mut sqlx::SqliteConnection,
        cond: &str,
        arg: &str,
    ) -> Result<Vec<VersionRow>> {
        let sql = format!(
            "SELECT doc_id, version, content_hash, size_bytes, media_type, status, error, pages, chunks, tokens,
                    job_id, created_at, updated_at FROM versions WHERE {cond}"
        );
        let rows = sqlx::query(&sql).bind(arg).fetch_all(&mut *tx).await?;
        Ok(rows
            .into_iter()
            .map(|r| VersionRow {
                doc_id: r.get(0),
                version: r.get(1),
                content_hash: r.get(2),
                size_bytes: r.get(3),
                media_type: r.get(4),
                status: r.get(5),
                error: r.get(6),
                pages: r.get(7),
                chunks: r.get(8),
                tokens: r.get(9),
                job_id: r.get(10),
                created_at: r.get(11),
                updated_at: r.get(12),
            })
            .collect())
    }

    /// Version keys that queries must not see: versions not yet live, and retired ones whose
    /// points are still being removed.
    pub async fn hidden_version_keys(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT d.collection, v.doc_id || '@' || v.version FROM versions v JOIN documents d ON d.id = v.doc_id
             WHERE v.status IN ('queued', 'processing', 'retired')
             UNION ALL SELECT collection, version_key FROM pending_deletes",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Points of these version keys are still to be deleted (crash recovery).
    pub async fn pending_deletes(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT collection, version_key FROM pending_deletes
             UNION ALL SELECT d.collection, v.doc_id || '@' || v.version FROM versions v JOIN documents d ON d.id = v.doc_id
             WHERE v.status = 'retired'",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Points of `key` are gone: forget it. Returns the content hash of a retired version
    /// removed here (its bytes may now be unreferenced).
    pub async fn deletion_done(&self, key: &str) -> Result<Option<String>> {
        sqlx::query("DELETE FROM pending_deletes WHERE version_key = ?")
            .bind(key)
            .execute(&self.pool)
            .await?;
        let Some((doc, ver)) = key.rsplit_once('@') else {
            return Ok(None);
        };
        let ver = ver.parse::<i64>().unwrap_or(-1);
        let hash: Option<String> = sqlx::query_scalar(
            "SELECT content_hash FROM versions WHERE doc_id = ? AND version = ? AND status = 'retired'",
        )
        .bind(doc)
        .bind(ver)
        .fetch_optional(&self.pool)
        .await?;
        sqlx::query("DELETE FROM versions WHERE doc_id = ? AND version = ? AND status = 'retired'")
            .bind(doc)
            .bind(ver)
            .execute(&self.pool)
            .await?;
        Ok(hash)
    }

    /// Whether any version still refers to these bytes.
    pub async fn hash_in_use(&self, content_hash: &str) -> Result<bool> {
        let r = sqlx::query("SELECT 1 FROM versions WHERE content_hash = ? LIMIT 1")
            .bind(content_hash)
            .fetch_optional(&self.pool)
            .await?;
        Ok(r.is_some())
    }

    // ---- jobs ----

    pub async fn job(&self, id: &str) -> Result<Option<JobRow>> {
        let row = sqlx::query(
            "SELECT j.id, j.doc_id, j.version, d.collection, d.name, j.status, j.stage, j.done, j.total,
                    j.attempts, j.error, j.created_at, j.updated_at, COALESCE(v.content_hash, ''),
                    j.embedded, j.reused
             FROM jobs j JOIN documents d ON d.id = j.doc_id
             LEFT JOIN versions v ON v.doc_id = j.doc_id AND v.version = j.version WHERE j.id = ?",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| JobRow {
            id: r.get(0),
            doc_id: r.get(1),
            version: r.get(2),
            collection: r.get(3),
            doc_name: r.get(4),
            status: r.get(5),
            stage: r.get(6),
            done: r.get(7),
            total: r.get(8),
            attempts: r.get(9),
            error: r.get(10),
            created_at: r.get(11),
            updated_at: r.get(12),
            content_hash: r.get(13),
            embedded: r.get(14),
            reused: r.get(15),
        }))
    }

    /// A run of the job starts: `attempts` (runs started) goes up. Returns it.
    pub async fn job_started(&self, id: &str) -> Result<i64> {
        let now = now_ms();
        sqlx::query("UPDATE jobs SET status = 'running', attempts = attempts + 1, error = NULL, updated_at = ? WHERE id = ?")
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "UPDATE versions SET status = 'processing', updated_at = ? WHERE job_id = ? AND status IN ('queued','processing')",
        )
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        let r = sqlx::query("SELECT attempts FROM jobs WHERE id = ?")
            .bind(id)
            .fetch_one(&self.pool)
            .await?;
        Ok(r.get(0))
    }

    /// Start-up, before jobs are queued again: every job the previous process left `running`
    /// was interrupted. An interruption while the job was splitting its document into chunks
    /// (in-process) counts as a crash of that job; one anywhere else does not (extraction runs
    /// in a child process with limits, so a crash of kb there is not the document's doing).
    /// Returns the unfinished jobs, oldest first, with (crashes, attempts).
    pub async fn interrupted_jobs(&self) -> Result<Vec<(String, i64, i64)>> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "UPDATE jobs SET crashes = crashes + 1 WHERE status = 'running' AND stage = 'chunk'",
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE jobs SET status = 'queued' WHERE status = 'running'")
            .execute(&mut *tx)
            .await?;
        let rows = sqlx::query(
            "SELECT id, crashes, attempts FROM jobs WHERE status = 'queued' ORDER BY created_at",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    /// A run was stopped by a graceful shutdown: not a failure, not a crash.
    pub async fn job_interrupted(&self, id: &str) -> Result<()> {
        sqlx::query(
            "UPDATE jobs SET status = 'queued', updated_at = ? WHERE id = ? AND status = 'running'",
        )
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The run failed with an error worth retrying: the job goes back to `queued` with the
    /// reason, to be run again later. Returns its failures so far (this one included).
    pub async fn job_retry_later(&self, id: &str, error: &str) -> Result<i64> {
        sqlx::query(
            "UPDATE jobs SET status = 'queued', stage = 'queued', done = 0, failures = failures + 1,
                 error = ?, updated_at = ? WHERE id = ? AND status = 'running'",
        )
        .bind(error)
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        let n: Option<i64> = sqlx::query_scalar("SELECT failures FROM jobs WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(n.unwrap_or(0))
    }

    /// Failures of the job itself so far.
    pub async fn job_failures(&self, id: &str) -> Result<i64> {
        let n: Option<i64> = sqlx::query_scalar("SELECT failures FROM jobs WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(n.unwrap_or(0))
    }

    /// Chunks embedded and reused by the job's current attempt.
    pub async fn job_embed_counts(&self, id: &str, embedded: i64, reused: i64) -> Result<()> {
        sqlx::query("UPDATE jobs SET embedded = ?, reused = ? WHERE id = ?")
            .bind(embedded)
            .bind(reused)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Bump a collection's index version: cached answers computed before are never found again.
    /// Activation bumps it in its transaction and again once the new version is visible to
    /// queries, so an answer computed between the two is not served either.
    pub async fn bump_index_version(&self, collection: &str) -> Result<()> {
        sqlx::query("UPDATE collections SET index_version = index_version + 1 WHERE name = ?")
            .bind(collection)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn job_progress(&self, id: &str, stage: &str, done: i64, total: i64) -> Result<()> {
        sqlx::query("UPDATE jobs SET stage = ?, done = ?, total = ?, updated_at = ? WHERE id = ?")
            .bind(stage)
            .bind(done)
            .bind(total)
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Record what extraction found (media type, pages).
    pub async fn version_extracted(
        &self,
        job_id: &str,
        media_type: &str,
        pages: Option<i64>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE versions SET media_type = ?, pages = ?, updated_at = ? WHERE job_id = ?",
        )
        .bind(media_type)
        .bind(pages)
        .bind(now_ms())
        .bind(job_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn job_failed(&self, id: &str, error: &str) -> Result<()> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        sqlx::query("UPDATE jobs SET status = 'failed', error = ?, updated_at = ? WHERE id = ?")
            .bind(error)
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE versions SET status = 'failed', error = ?, updated_at = ? WHERE job_id = ?",
        )
        .bind(error)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        // Whatever an attempt indexed must go, durably: a pending delete survives a crash.
        sqlx::query(
            "INSERT OR IGNORE INTO pending_deletes (version_key, collection, created_at)
             SELECT j.doc_id || '@' || j.version, d.collection, ? FROM jobs j JOIN documents d ON d.id = j.doc_id
             WHERE j.id = ?",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Record that the points of `key` must be removed (survives a crash until `deletion_done`).
    pub async fn add_pending_delete(&self, collection: &str, key: &str) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        insert_pending_delete(&mut conn, collection, key).await
    }

    /// Make the job's version live in one transaction: the previous live version is retired
    /// (its points are deleted afterwards). Returns (collection, new key, retired key).
    pub async fn activate(
        &self,
        job_id: &str,
        chunks: i64,
        tokens: i64,
    ) -> Result<(String, String, Option<String>)> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let r = sqlx::query(
            "SELECT v.doc_id, v.version, d.live_version, d.collection FROM versions v JOIN documents d ON d.id = v.doc_id
             WHERE v.job_id = ?",
        )
        .bind(job_id)
        .fetch_one(&mut *tx)
        .await?;
        let doc_id: String = r.get(0);
        let version: i64 = r.get(1);
        let live: Option<i64> = r.get(2);
        let collection: String = r.get(3);
        // A newer version may already be live (uploads raced): then this one retires at once.
        let newer_live = live.is_some_and(|l| l > version);
        let (new_status, retired) = if newer_live {
            (status::RETIRED, Some(version))
        } else {
            (status::LIVE, live)
        };
        sqlx::query(
            "UPDATE versions SET status = ?, chunks = ?, tokens = ?, error = NULL, updated_at = ? WHERE job_id = ?",
        )
        .bind(new_status)
        .bind(chunks)
        .bind(tokens)
        .bind(now)
        .bind(job_id)
        .execute(&mut *tx)
        .await?;
        if !newer_live {
            if let Some(old) = live {
                sqlx::query("UPDATE versions SET status = 'retired', updated_at = ? WHERE doc_id = ? AND version = ?")
                    .bind(now)
                    .bind(&doc_id)
                    .bind(old)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query("UPDATE documents SET live_version = ?, updated_at = ? WHERE id = ?")
                .bind(version)
                .bind(now)
                .bind(&doc_id)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("UPDATE jobs SET status = 'done', stage = 'done', updated_at = ? WHERE id = ?")
            .bind(now)
            .bind(job_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE collections SET index_version = index_version + 1 WHERE name = ?")
            .bind(&collection)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((
            collection,
            version_key(&doc_id, version),
            retired.map(|v| version_key(&doc_id, v)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn open() -> (tempfile::TempDir, Catalog) {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(&dir.path().join("catalog.db")).await.unwrap();
        c.ensure_collection("c", "m", 4).await.unwrap();
        (dir, c)
    }

    #[tokio::test]
    async fn dedup_versions_and_atomic_activation() {
        let (_d, c) = open().await;
        let NewUpload::Created {
            doc_id,
            version,
            job_id,
            created_document,
        } = c
            .register_upload("c", "a.txt", "h1", 10, "d1", "j1")
            .await
            .unwrap()
        else {
            panic!("expected a new document")
        };
        assert_eq!(
            (doc_id.as_str(), version, created_document),
            ("d1", 1, true)
        );
        // Same bytes: the existing document.
        match c
            .register_upload("c", "other-name.txt", "h1", 10, "d2", "j2")
            .await
            .unwrap()
        {
            NewUpload::Existing(v) => assert_eq!(v.id, "d1"),
            _ => panic!("duplicate bytes made a new document"),
        }
        assert_eq!(
            c.hidden_version_keys().await.unwrap(),
            vec![("c".into(), "d1@1".into())]
        );
        c.job_started(&job_id).await.unwrap();
        let (_, key, retired) = c.activate(&job_id, 3, 30).await.unwrap();
        assert_eq!((key.as_str(), retired), ("d1@1", None));
        assert!(c.hidden_version_keys().await.unwrap().is_empty());

        // New bytes, same name: version 2 of the same document, hidden until activated.
        let NewUpload::Created {
            doc_id,
            version,
            job_id,
            created_document,
        } = c
            .register_upload("c", "a.txt", "h2", 12, "d3", "j3")
            .await
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (doc_id.as_str(), version, created_document),
            ("d1", 2, false)
        );
        let view = c.document("d1").await.unwrap().unwrap();
        assert_eq!(
            (view.status.as_str(), view.live_version, view.chunks),
            ("processing", Some(1), Some(3))
        );
        assert_eq!(
            c.hidden_version_keys().await.unwrap(),
            vec![("c".into(), "d1@2".into())]
        );
        let (_, key, retired) = c.activate(&job_id, 5, 50).await.unwrap();
        assert_eq!((key.as_str(), retired.as_deref()), ("d1@2", Some("d1@1")));
        assert_eq!(
            c.pending_deletes().await.unwrap(),
            vec![("c".into(), "d1@1".into())]
        );
        c.deletion_done("d1@1").await.unwrap();
        assert!(c.pending_deletes().await.unwrap().is_empty());

        // A failed version: hidden only until its points are gone.
        let NewUpload::Created { job_id, .. } = c
            .register_upload("c", "b.txt", "h9", 3, "d9", "j9")
            .await
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(
            c.hidden_version_keys().await.unwrap(),
            vec![("c".into(), "d9@1".into())]
        );
        c.job_failed(&job_id, "boom").await.unwrap();
        // Its points (if an attempt wrote any) are pending deletion, durably; hidden till then.
        assert_eq!(
            c.pending_deletes().await.unwrap(),
            vec![("c".into(), "d9@1".into())]
        );
        assert_eq!(
            c.hidden_version_keys().await.unwrap(),
            vec![("c".into(), "d9@1".into())]
        );
        c.deletion_done("d9@1").await.unwrap();
        assert!(c.hidden_version_keys().await.unwrap().is_empty());
        assert_eq!(c.document("d9").await.unwrap().unwrap().status, "failed");

        let (coll, versions) = c.delete_document("d1").await.unwrap().unwrap();
        assert_eq!((coll.as_str(), versions.len()), ("c", 1));
        assert_eq!(
            c.pending_deletes().await.unwrap(),
            vec![("c".into(), "d1@2".into())]
        );
        assert!(c.document("d1").await.unwrap().is_none());
        assert!(c.delete_document("d1").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn only_crashes_while_chunking_count_against_a_job() {
        let (_d, c) = open().await;
        let NewUpload::Created { job_id, .. } = c
            .register_upload("c", "a.txt", "h1", 10, "d1", "j1")
            .await
            .unwrap()
        else {
            panic!()
        };
        // Killed while embedding, twice: not the document's doing.
        for _ in 0..2 {
            c.job_started(&job_id).await.unwrap();
            c.job_progress(&job_id, "embed", 3, 10).await.unwrap();
            let jobs = c.interrupted_jobs().await.unwrap();
            assert_eq!(
                jobs,
                vec![(
                    job_id.clone(),
                    0,
                    c.job(&job_id).await.unwrap().unwrap().attempts
                )]
            );
        }
        // Killed while splitting (in-process): one crash.
        c.job_started(&job_id).await.unwrap();
        c.job_progress(&job_id, "chunk", 0, 1).await.unwrap();
        let jobs = c.interrupted_jobs().await.unwrap();
        assert_eq!(jobs, vec![(job_id.clone(), 1, 3)]);
        assert_eq!(c.job(&job_id).await.unwrap().unwrap().status, "queued");
        // A failure of its own is counted apart, and the job goes back to the queue.
        c.job_started(&job_id).await.unwrap();
        assert_eq!(
            c.job_retry_later(&job_id, "disk full; will retry")
                .await
                .unwrap(),
            1
        );
        let j = c.job(&job_id).await.unwrap().unwrap();
        assert_eq!(
            (j.status.as_str(), j.error.as_deref()),
            ("queued", Some("disk full; will retry"))
        );
        assert_eq!(c.job_failures(&job_id).await.unwrap(), 1);
    }
}
