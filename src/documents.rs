//! Documents in and out of a collection, and collections out of the index: what an upload
//! registers, what a delete removes (durably: the catalog first, then the index).

use crate::catalog::{self, NewUpload};
use crate::{store, Core};
use anyhow::Context;
use std::collections::BTreeSet;
use std::path::Path;

/// Where an upload stands after registration.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct UploadResult {
    pub name: String,
    pub document_id: String,
    pub job_id: String,
    pub version: i64,
    /// The same bytes were already in the collection: nothing new was created.
    pub duplicate: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("collection `{collection}` was built with `{have}`; this server embeds with `{want}`")]
    EmbedderMismatch {
        collection: String,
        have: String,
        want: String,
    },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl Core {
    /// Register bytes already written to `tmp` (with their sha256) as a document of
    /// `collection`, and queue its ingestion.
    pub async fn register(
        &self,
        collection: &str,
        name: &str,
        tmp: &Path,
        hash: &str,
        size: u64,
    ) -> Result<UploadResult, UploadError> {
        let model = self.embedder.model_id();
        // Not while the collection of that name is being deleted; and a name deleted before a
        // crash loses its old index before it is used again.
        let dropping = self.collections_lock.lock().await;
        if self
            .catalog
            .dropped_collections()
            .await
            .map_err(anyhow::Error::from)?
            .iter()
            .any(|n| n == collection)
        {
            self.finish_drop(collection).await?;
        }
        let (have, _dim) = self
            .catalog
            .ensure_collection(collection, &model, self.embedder.dim())
            .await
            .map_err(anyhow::Error::from)?;
        if have != model {
            let _ = std::fs::remove_file(tmp);
            return Err(UploadError::EmbedderMismatch {
                collection: collection.to_string(),
                have,
                want: model,
            });
        }
        self.store
            .ensure_collection(&store::CollectionSpec {
                name: collection.to_string(),
                dim: self.embedder.dim(),
                model: model.clone(),
            })
            .await
            .map_err(anyhow::Error::from)?;
        drop(dropping);
        // Blob placement and registration together, so a concurrent blob GC cannot remove the
        // bytes between the two.
        let blob_guard = self.ingestor.blob_lock.lock().await;
        self.ingestor
            .blobs
            .put(tmp, hash)
            .context("storing the upload")?;
        let doc_id = uuid::Uuid::new_v4().to_string();
        let job_id = uuid::Uuid::new_v4().to_string();
        let r = self
            .catalog
            .register_upload(collection, name, hash, size as i64, &doc_id, &job_id)
            .await
            .map_err(anyhow::Error::from)?;
        drop(blob_guard);
        Ok(match r {
            NewUpload::Existing(d) => UploadResult {
                name: d.name,
                document_id: d.id,
                job_id: d.job_id,
                version: d.version,
                duplicate: true,
            },
            NewUpload::Created {
                doc_id,
                version,
                job_id,
                ..
            } => {
                self.query
                    .visibility
                    .hide(collection, &catalog::version_key(&doc_id, version));
                self.queue.submit(collection, &job_id);
                UploadResult {
                    name: name.to_string(),
                    document_id: doc_id,
                    job_id,
                    version,
                    duplicate: false,
                }
            }
        })
    }

    /// Delete a document and all its chunks. Returns false if it did not exist.
    pub async fn delete_document(&self, id: &str) -> anyhow::Result<bool> {
        let Some((collection, versions)) = self.catalog.delete_document(id).await? else {
            return Ok(false);
        };
        for v in &versions {
            self.query.visibility.hide(&collection, &v.key());
        }
        for v in &versions {
            self.ingestor.purge(&collection, &v.key()).await;
        }
        for v in &versions {
            self.ingestor.gc_blob(&v.content_hash).await;
        }
        Ok(true)
    }

    /// Delete a collection: its documents, conversations and index. The catalog goes first (in
    /// one transaction, which records the drop); the index after, also on the next start if kb
    /// stops in between, and always before the name is used again. Returns false if there was
    /// no such collection.
    pub async fn delete_collection(&self, name: &str) -> anyhow::Result<bool> {
        let _g = self.collections_lock.lock().await;
        let Some(versions) = self.catalog.delete_collection(name).await? else {
            return Ok(false);
        };
        self.finish_drop(name).await?;
        let hashes: BTreeSet<&str> = versions.iter().map(|v| v.content_hash.as_str()).collect();
        for h in hashes {
            self.ingestor.gc_blob(h).await;
        }
        Ok(true)
    }

    /// Remove the index of a collection the catalog has dropped.
    pub(crate) async fn finish_drop(&self, name: &str) -> anyhow::Result<()> {
        self.store
            .drop_collection(name)
            .await
            .with_context(|| format!("removing the index of collection {name}"))?;
        self.query.visibility.forget(name);
        self.catalog.collection_dropped(name).await?;
        Ok(())
    }
}
