//! API keys (only their hashes) and the audit log of destructive and admin actions.

use super::*;

/// A key as listed: never the key itself.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct KeyInfo {
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
    /// Requests per minute it may make (0: no limit of its own).
    pub rpm: u32,
    /// Model tokens (prompt and completion) per minute, and per day (UTC), it may use.
    pub tpm: u64,
    pub daily_tokens: u64,
    pub created_at: String,
    /// When it was revoked (it no longer works), if it was.
    pub revoked_at: Option<String>,
}

/// What a key may use (0: no limit of its own).
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyLimits {
    pub rpm: u32,
    pub tpm: u64,
    pub daily_tokens: u64,
}

/// One recorded action.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub ts: String,
    /// The key that acted (absent when kb runs without keys, or for the CLI on the data dir).
    pub actor: Option<String>,
    pub action: String,
    pub target: String,
    pub detail: Option<String>,
}

fn key_info(r: &sqlx::sqlite::SqliteRow) -> KeyInfo {
    let scopes: String = r.get(2);
    KeyInfo {
        id: r.get(0),
        name: r.get(1),
        scopes: serde_json::from_str(&scopes).unwrap_or_default(),
        created_at: iso(r.get(3)),
        revoked_at: r.get::<Option<i64>, _>(4).map(iso),
        rpm: r.get::<i64, _>(5).clamp(0, u32::MAX as i64) as u32,
        tpm: r.get::<i64, _>(6).max(0) as u64,
        daily_tokens: r.get::<i64, _>(7).max(0) as u64,
    }
}

impl Catalog {
    pub async fn create_key(
        &self,
        id: &str,
        name: &str,
        hash: &str,
        scopes: &[String],
        limits: KeyLimits,
    ) -> Result<KeyInfo> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO api_keys (id, name, hash, scopes, created_at, rpm, tpm, daily_tokens)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(id)
        .bind(name)
        .bind(hash)
        .bind(serde_json::to_string(scopes).expect("strings serialise"))
        .bind(now)
        .bind(limits.rpm as i64)
        .bind(limits.tpm as i64)
        .bind(limits.daily_tokens as i64)
        .execute(&self.pool)
        .await?;
        Ok(KeyInfo {
            id: id.into(),
            name: name.into(),
            scopes: scopes.to_vec(),
            rpm: limits.rpm,
            tpm: limits.tpm,
            daily_tokens: limits.daily_tokens,
            created_at: iso(now),
            revoked_at: None,
        })
    }

    pub async fn keys(&self) -> Result<Vec<KeyInfo>> {
        let rows = sqlx::query(
            "SELECT id, name, scopes, created_at, revoked_at, rpm, tpm, daily_tokens FROM api_keys ORDER BY created_at",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(key_info).collect())
    }

    /// The live (not revoked) key with this hash.
    pub async fn key_by_hash(&self, hash: &str) -> Result<Option<KeyInfo>> {
        let row = sqlx::query(
            "SELECT id, name, scopes, created_at, revoked_at, rpm, tpm, daily_tokens FROM api_keys WHERE hash = ? AND revoked_at IS NULL",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(key_info))
    }

    /// Revoke a key; false when there is no such live key.
    pub async fn revoke_key(&self, id: &str) -> Result<bool> {
        let r =
            sqlx::query("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
                .bind(now_ms())
                .bind(id)
                .execute(&self.pool)
                .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Model tokens used for `key_id` since `since_ms`, and when the oldest of those calls was.
    pub async fn key_tokens_since(
        &self,
        key_id: &str,
        since_ms: i64,
    ) -> Result<(u64, Option<i64>)> {
        let r = sqlx::query(
            "SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0), MIN(ts) FROM usage
             WHERE key_id = ? AND ts >= ?",
        )
        .bind(key_id)
        .bind(since_ms)
        .fetch_one(&self.pool)
        .await?;
        Ok((r.get::<i64, _>(0).max(0) as u64, r.get(1)))
    }

    pub async fn audit(
        &self,
        actor: Option<&str>,
        action: &str,
        target: &str,
        detail: Option<&str>,
    ) -> Result<()> {
        sqlx::query("INSERT INTO audit (ts, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)")
            .bind(now_ms())
            .bind(actor)
            .bind(action)
            .bind(target)
            .bind(detail)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The newest `limit` entries, newest first.
    pub async fn audit_log(&self, limit: i64) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT ts, actor, action, target, detail FROM audit ORDER BY id DESC LIMIT ?",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| AuditEntry {
                ts: iso(r.get(0)),
                actor: r.get(1),
                action: r.get(2),
                target: r.get(3),
                detail: r.get(4),
            })
            .collect())
    }
}
