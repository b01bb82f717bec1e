//! Documents and their versions: registering uploads (dedup, new document, new version),
//! listing, deleting, and the version keys queries must not see.

use super::*;

impl Catalog {
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

    /// Delete a collection from the catalog: its documents, versions, jobs, conversations and
    /// pending deletes, in one transaction, leaving a `dropped_collections` row until its index
    /// is gone too. Returns the versions it had (their bytes may now be unreferenced), or None
    /// when there is no such collection.
    pub async fn delete_collection(&self, name: &str) -> Result<Option<Vec<VersionRow>>> {
        let mut tx = self.write_tx().await?;
        let exists = sqlx::query("SELECT 1 FROM collections WHERE name = ?")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if !exists {
            return Ok(None);
        }
        let of_docs = "doc_id IN (SELECT id FROM documents WHERE collection = ?)";
        let versions = Self::versions_where(&mut tx, of_docs, name).await?;
        for sql in [
            format!("DELETE FROM jobs WHERE {of_docs}"),
            format!("DELETE FROM versions WHERE {of_docs}"),
            "DELETE FROM documents WHERE collection = ?".into(),
            "DELETE FROM turns WHERE conversation_id IN (SELECT id FROM conversations WHERE collection = ?)".into(),
            "DELETE FROM conversations WHERE collection = ?".into(),
            "DELETE FROM pending_deletes WHERE collection = ?".into(),
            "DELETE FROM collections WHERE name = ?".into(),
        ] {
            sqlx::query(&sql).bind(name).execute(&mut *tx).await?;
        }
        sqlx::query(
            "INSERT INTO dropped_collections (name, created_at) VALUES (?, ?) ON CONFLICT(name) DO NOTHING",
        )
        .bind(name)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(versions))
    }

    /// Collections deleted whose index may still be on disk.
    pub async fn dropped_collections(&self) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT name FROM dropped_collections")
            .fetch_all(&self.pool)
            .await?)
    }

    /// The index of a deleted collection is gone.
    pub async fn collection_dropped(&self, name: &str) -> Result<()> {
        sqlx::query("DELETE FROM dropped_collections WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(())
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
}
