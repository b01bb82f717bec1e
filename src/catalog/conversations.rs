//! Conversations: turns (question, the standalone question retrieved with, answer, citations,
//! sources) and a running summary of the older turns.

use super::{iso, now_ms, Catalog, Result};
use serde::Serialize;
use sqlx::Row;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ConversationRow {
    pub id: String,
    pub collection: String,
    pub turn_count: i64,
    /// The summary of turns 1..=summarized_upto, which are no longer sent verbatim.
    pub summary: Option<String>,
    pub summarized_upto: i64,
    /// The first question, as a title for lists.
    pub title: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// The key that created it (kb's own: not shown).
    #[serde(skip)]
    pub owner: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TurnRow {
    pub n: i64,
    pub question: String,
    pub standalone_question: String,
    pub answer: String,
    /// The `[n]` sources the answer cites.
    #[schema(value_type = Vec<usize>)]
    pub citations: serde_json::Value,
    #[schema(value_type = Vec<TurnSource>)]
    pub sources: serde_json::Value,
    pub created_at: String,
}

/// The shape of a stored turn's source (`TurnRow::sources`), as the query engine writes it:
/// the citation data of a `Source`, without its text. Documentation only.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct TurnSource {
    n: usize,
    doc_id: String,
    doc_name: String,
    chunk_id: String,
    page: Option<u32>,
    heading: Option<String>,
}

const CONV_SELECT: &str =
    "SELECT c.id, c.collection, c.summary, c.summarized_upto, c.created_at, c.updated_at,
        (SELECT COUNT(*) FROM turns t WHERE t.conversation_id = c.id),
        (SELECT question FROM turns t WHERE t.conversation_id = c.id ORDER BY n LIMIT 1), c.owner
     FROM conversations c";

fn conv(r: &sqlx::sqlite::SqliteRow) -> ConversationRow {
    ConversationRow {
        id: r.get(0),
        collection: r.get(1),
        summary: r.get(2),
        summarized_upto: r.get(3),
        created_at: iso(r.get(4)),
        updated_at: iso(r.get(5)),
        turn_count: r.get(6),
        title: r.get(7),
        owner: r.get(8),
    }
}

impl Catalog {
    /// The conversation, creating it (in `collection`, owned by `owner`) when it does not exist.
    pub async fn ensure_conversation(
        &self,
        id: &str,
        collection: &str,
        owner: Option<&str>,
    ) -> Result<ConversationRow> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO conversations (id, collection, summarized_upto, created_at, updated_at, owner)
             VALUES (?, ?, 0, ?, ?, ?) ON CONFLICT(id) DO NOTHING",
        )
        .bind(id)
        .bind(collection)
        .bind(now)
        .bind(now)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(self.conversation(id).await?.expect("just created"))
    }

    pub async fn conversation(&self, id: &str) -> Result<Option<ConversationRow>> {
        let sql = format!("{CONV_SELECT} WHERE c.id = ?");
        let r = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(r.as_ref().map(conv))
    }

    /// Newest first; only those of `owner` when one is given.
    pub async fn conversations(
        &self,
        limit: i64,
        owner: Option<&str>,
    ) -> Result<Vec<ConversationRow>> {
        let sql = format!(
            "{CONV_SELECT} WHERE (? IS NULL OR c.owner = ?) ORDER BY c.updated_at DESC, c.id LIMIT ?"
        );
        let rows = sqlx::query(&sql)
            .bind(owner)
            .bind(owner)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(conv).collect())
    }

    pub async fn turns(&self, id: &str) -> Result<Vec<TurnRow>> {
        let rows = sqlx::query(
            "SELECT n, question, standalone, answer, citations, sources, created_at FROM turns
             WHERE conversation_id = ? ORDER BY n",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| TurnRow {
                n: r.get(0),
                question: r.get(1),
                standalone_question: r.get(2),
                answer: r.get(3),
                citations: serde_json::from_str(&r.get::<String, _>(4)).unwrap_or_default(),
                sources: serde_json::from_str(&r.get::<String, _>(5)).unwrap_or_default(),
                created_at: iso(r.get(6)),
            })
            .collect())
    }

    /// Append a turn; returns its number (from 1).
    #[allow(clippy::too_many_arguments)]
    pub async fn add_turn(
        &self,
        id: &str,
        question: &str,
        standalone: &str,
        answer: &str,
        citations: &serde_json::Value,
        sources: &serde_json::Value,
    ) -> Result<i64> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let n: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(n), 0) + 1 FROM turns WHERE conversation_id = ?",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO turns (conversation_id, n, question, standalone, answer, citations, sources, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(id)
        .bind(n)
        .bind(question)
        .bind(standalone)
        .bind(answer)
        .bind(citations.to_string())
        .bind(sources.to_string())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE conversations SET updated_at = ? WHERE id = ?")
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(n)
    }

    /// Replace the summary: it now covers turns 1..=upto.
    pub async fn set_summary(&self, id: &str, summary: &str, upto: i64) -> Result<()> {
        sqlx::query("UPDATE conversations SET summary = ?, summarized_upto = ? WHERE id = ?")
            .bind(summary)
            .bind(upto)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Returns false when there was no such conversation.
    pub async fn delete_conversation(&self, id: &str) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM turns WHERE conversation_id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let r = sqlx::query("DELETE FROM conversations WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(r.rows_affected() > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn turns_summary_list_delete() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(&dir.path().join("c.db")).await.unwrap();
        c.ensure_conversation("x", "coll", None).await.unwrap();
        let j = serde_json::json!([1]);
        assert_eq!(c.add_turn("x", "q1", "q1", "a1", &j, &j).await.unwrap(), 1);
        assert_eq!(
            c.add_turn("x", "q2", "q2 s", "a2", &j, &j).await.unwrap(),
            2
        );
        c.set_summary("x", "sum", 1).await.unwrap();
        let conv = c.ensure_conversation("x", "other", None).await.unwrap();
        assert_eq!(
            (
                conv.collection.as_str(),
                conv.turn_count,
                conv.summarized_upto
            ),
            ("coll", 2, 1)
        );
        assert_eq!(conv.title.as_deref(), Some("q1"));
        let t = c.turns("x").await.unwrap();
        assert_eq!(t[1].standalone_question, "q2 s");
        c.ensure_conversation("y", "coll", None).await.unwrap();
        assert_eq!(c.conversations(10, None).await.unwrap().len(), 2);
        assert!(c.delete_conversation("x").await.unwrap());
        assert!(!c.delete_conversation("x").await.unwrap());
        assert!(c.turns("x").await.unwrap().is_empty());
    }
}
