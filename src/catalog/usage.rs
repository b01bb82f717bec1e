//! Usage records: one row per model call (and per answer served from the cache), aggregated by
//! `GET /v1/usage`.

use super::{Catalog, Result};
use serde::Serialize;
use sqlx::Row;

#[derive(Debug, Clone, Default, Serialize)]
pub struct UsageRecord {
    /// Milliseconds since the epoch.
    pub ts: i64,
    pub request_id: Option<String>,
    pub collection: Option<String>,
    /// `answer`, `rewrite`, `summarize` or `embed`.
    pub task: String,
    pub model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub latency_ms: Option<u64>,
    pub first_token_ms: Option<u64>,
    /// Retries of the call, when the model client reports them.
    pub retries: Option<u32>,
    pub cache_hit: bool,
    /// `ok`, or the error code.
    pub outcome: String,
    pub cost_usd: f64,
    /// The API key the call was made for, if any.
    pub key_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct UsageAggregate {
    pub collection: Option<String>,
    pub model: String,
    pub requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_usd: f64,
    pub cache_hits: i64,
    pub errors: i64,
}

impl Catalog {
    pub async fn record_usage(&self, rows: &[UsageRecord]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for u in rows {
            sqlx::query(
                "INSERT INTO usage (ts, request_id, collection, task, model, prompt_tokens, completion_tokens,
                    latency_ms, first_token_ms, retries, cache_hit, outcome, cost_usd, key_id)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(u.ts)
            .bind(&u.request_id)
            .bind(&u.collection)
            .bind(&u.task)
            .bind(&u.model)
            .bind(u.prompt_tokens as i64)
            .bind(u.completion_tokens as i64)
            .bind(u.latency_ms.map(|x| x as i64))
            .bind(u.first_token_ms.map(|x| x as i64))
            .bind(u.retries.map(|x| x as i64))
            .bind(u.cache_hit)
            .bind(&u.outcome)
            .bind(u.cost_usd)
            .bind(&u.key_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Usage since `since_ms`, per collection and model. `requests` counts calls (and answers
    /// served from the cache); tokens and cost are sums.
    pub async fn usage_since(&self, since_ms: i64) -> Result<Vec<UsageAggregate>> {
        let rows = sqlx::query(
            "SELECT collection, model, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(cost_usd),
                    SUM(cache_hit), SUM(outcome <> 'ok')
             FROM usage WHERE ts >= ? GROUP BY collection, model ORDER BY collection, model",
        )
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| UsageAggregate {
                collection: r.get(0),
                model: r.get(1),
                requests: r.get(2),
                prompt_tokens: r.get(3),
                completion_tokens: r.get(4),
                cost_usd: r.get(5),
                cache_hits: r.get(6),
                errors: r.get(7),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn usage_aggregates_by_collection_and_model_since() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(&dir.path().join("c.db")).await.unwrap();
        let row = |ts, coll: &str, model: &str, p, hit, outcome: &str| UsageRecord {
            ts,
            collection: Some(coll.into()),
            task: "answer".into(),
            model: model.into(),
            prompt_tokens: p,
            completion_tokens: 2,
            cache_hit: hit,
            outcome: outcome.into(),
            cost_usd: p as f64 / 1000.0,
            ..Default::default()
        };
        c.record_usage(&[
            row(100, "a", "m", 10, false, "ok"),
            row(200, "a", "m", 20, false, "upstream_error"),
            row(300, "a", "m", 0, true, "ok"),
            row(300, "b", "m", 5, false, "ok"),
            row(50, "a", "m", 1000, false, "ok"),
        ])
        .await
        .unwrap();
        let agg = c.usage_since(100).await.unwrap();
        assert_eq!(agg.len(), 2);
        assert_eq!(agg[0].collection.as_deref(), Some("a"));
        assert_eq!(
            (
                agg[0].requests,
                agg[0].prompt_tokens,
                agg[0].completion_tokens
            ),
            (3, 30, 6)
        );
        assert_eq!((agg[0].cache_hits, agg[0].errors), (1, 1));
        assert!((agg[0].cost_usd - 0.03).abs() < 1e-9);
        assert_eq!(agg[1].requests, 1);
    }
}
