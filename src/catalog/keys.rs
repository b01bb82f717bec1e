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
    pub created_at: String,
    /// When it was revoked (it no longer works), if it was.
    pub revoked_at: Option<String>,
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
    }
}

impl Catalog {
    pub async fn create_key(
        &self,
        id: &str,
        name: &str,
        hash: &str,
        scopes: &[String],
        rpm: u32,
    ) -> Result<KeyInfo> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO api_keys (id, name, hash, scopes, created_at, rpm) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(id)
        .bind(name)
        .bind(hash)
        .bind(serde_json::to_string(scopes).expect("strings serialise"))
        .bind(now)
        .bind(rpm as i64)
        .execute(&self.pool)
        .await?;
        Ok(KeyInfo {
            id: id.into(),
            name: name.into(),
            scopes: scopes.to_vec(),
            rpm,
            created_at: iso(now),
            revoked_at: None,
        })
    }

    pub async fn keys(&self) -> Result<Vec<KeyInfo>> {
        let rows = sqlx::query(
            "SELECT id, name, scopes, created_at, revoked_at, rpm FROM api_keys ORDER BY created_at",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(key_info).collect())
    }

    /// The live (not revoked) key with this hash.
    pub async fn key_by_hash(&self, hash: &str) -> Result<Option<KeyInfo>> {
        let row = sqlx::query(
            "SELECT id, name, scopes, created_at, revoked_at, rpm FROM api_keys WHERE hash = ? AND revoked_at IS NULL",
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
