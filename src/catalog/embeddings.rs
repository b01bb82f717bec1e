//! Chunk embeddings by (embedder model, content hash): a re-indexed document embeds only text
//! that this embedder has not embedded before. Vectors are little-endian f32 BLOBs.

use super::{now_ms, Catalog, Result};
use sqlx::Row;
use std::collections::HashMap;

fn to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn from_blob(b: &[u8], dim: usize) -> Option<Vec<f32>> {
    (b.len() == dim * 4).then(|| {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    })
}

impl Catalog {
    /// The cached embeddings among `hashes` (of `dim` dimensions; others are ignored).
    pub async fn cached_embeddings(
        &self,
        model: &str,
        dim: usize,
        hashes: &[String],
    ) -> Result<HashMap<String, Vec<f32>>> {
        let mut out = HashMap::new();
        for part in hashes.chunks(200) {
            let marks = vec!["?"; part.len()].join(",");
            let sql = format!(
                "SELECT content_hash, vector FROM embedding_cache WHERE model = ? AND content_hash IN ({marks})"
            );
            let mut q = sqlx::query(&sql).bind(model);
            for h in part {
                q = q.bind(h);
            }
            for r in q.fetch_all(&self.pool).await? {
                let blob: Vec<u8> = r.get(1);
                if let Some(v) = from_blob(&blob, dim) {
                    out.insert(r.get(0), v);
                }
            }
        }
        Ok(out)
    }

    pub async fn store_embeddings(&self, model: &str, items: &[(String, Vec<f32>)]) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        let now = now_ms();
        for (hash, v) in items {
            sqlx::query(
                "INSERT OR REPLACE INTO embedding_cache (model, content_hash, vector, created_at) VALUES (?, ?, ?, ?)",
            )
            .bind(model)
            .bind(hash)
            .bind(to_blob(v))
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn embeddings_round_trip_by_model_and_hash() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(&dir.path().join("c.db")).await.unwrap();
        let v = vec![0.5f32, -1.25, 3.0];
        c.store_embeddings("m1", &[("h1".into(), v.clone())])
            .await
            .unwrap();
        let got = c
            .cached_embeddings("m1", 3, &["h1".into(), "h2".into()])
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got["h1"], v);
        // Another embedder, or another dimension: not reused.
        assert!(c
            .cached_embeddings("m2", 3, &["h1".into()])
            .await
            .unwrap()
            .is_empty());
        assert!(c
            .cached_embeddings("m1", 4, &["h1".into()])
            .await
            .unwrap()
            .is_empty());
    }
}
