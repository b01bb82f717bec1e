//! Ingestion jobs: their rows, progress, failures and crashes, and the activation of the
//! version a job indexed.

use super::*;

const JOB_SELECT: &str =
    "SELECT j.id, j.doc_id, j.version, d.collection, d.name, j.status, j.stage, j.done, j.total,
            j.attempts, j.error, j.created_at, j.updated_at, COALESCE(v.content_hash, ''),
            j.embedded, j.reused
     FROM jobs j JOIN documents d ON d.id = j.doc_id
     LEFT JOIN versions v ON v.doc_id = j.doc_id AND v.version = j.version";

fn job_row(r: &sqlx::sqlite::SqliteRow) -> JobRow {
    JobRow {
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
    }
}

impl Catalog {
    pub async fn job(&self, id: &str) -> Result<Option<JobRow>> {
        let row = sqlx::query(&format!("{JOB_SELECT} WHERE j.id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| job_row(&r)))
    }

    /// The jobs among `ids` that exist, in one query per 500 ids (unknown ids are left out).
    pub async fn jobs(&self, ids: &[String]) -> Result<Vec<JobRow>> {
        let mut out = Vec::with_capacity(ids.len());
        for part in ids.chunks(500) {
            let marks = vec!["?"; part.len()].join(",");
            let sql = format!("{JOB_SELECT} WHERE j.id IN ({marks})");
            let mut q = sqlx::query(&sql);
            for id in part {
                q = q.bind(id);
            }
            out.extend(q.fetch_all(&self.pool).await?.iter().map(job_row));
        }
        Ok(out)
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
    /// Returns the unfinished jobs, oldest first, with (collection, crashes, attempts).
    pub async fn interrupted_jobs(&self) -> Result<Vec<(String, String, i64, i64)>> {
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
            "SELECT j.id, d.collection, j.crashes, j.attempts FROM jobs j JOIN documents d ON d.id = j.doc_id
             WHERE j.status = 'queued' ORDER BY j.created_at",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect())
    }

    /// The job cannot go on for now (the disk is nearly full): back to `queued` with the reason
    /// shown, not a failure.
    pub async fn job_waiting(&self, id: &str, note: &str) -> Result<()> {
        sqlx::query(
            "UPDATE jobs SET status = 'queued', error = ?, updated_at = ? WHERE id = ? AND status IN ('queued', 'running')",
        )
        .bind(note)
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
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
