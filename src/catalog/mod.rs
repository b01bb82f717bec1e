//! The catalog: collections, documents and their versions, ingestion jobs. SQLite (WAL) under
//! the data directory by default.
//!
//! A *document* is a name in a collection; each upload of new bytes under that name is a
//! *version*. Exactly one version is `live` (searchable) at a time; a new version becomes live
//! only once fully indexed, in one transaction that also retires the old one.

mod conversations;
mod documents;
mod embeddings;
mod jobs;
mod keys;
mod usage;

pub use conversations::{ConversationRow, TurnRow};
pub use keys::{AuditEntry, KeyInfo, KeyLimits};
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
    include_str!("../../migrations/0004_dropped_collections.sql"),
    include_str!("../../migrations/0005_keys_audit_owners.sql"),
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

/// A collection name: 1-64 letters, digits, `_`, `-`, `.`, starting with a letter or digit.
pub fn collection_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
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
                    "c".to_string(),
                    0,
                    c.job(&job_id).await.unwrap().unwrap().attempts
                )]
            );
        }
        // Killed while splitting (in-process): one crash.
        c.job_started(&job_id).await.unwrap();
        c.job_progress(&job_id, "chunk", 0, 1).await.unwrap();
        let jobs = c.interrupted_jobs().await.unwrap();
        assert_eq!(jobs, vec![(job_id.clone(), "c".to_string(), 1, 3)]);
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
