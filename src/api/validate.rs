//! Checks of what clients send: names, ids, and the parameters of a search.

use super::error::ApiError;
use crate::error::Code;
use crate::query::SearchParams;
use crate::store::SearchMode;
use crate::Core;

pub fn valid_collection(name: &str) -> Result<(), ApiError> {
    if crate::catalog::collection_name_ok(name) {
        Ok(())
    } else {
        Err(ApiError::new(
            Code::InvalidCollection,
            "collection names are 1-64 characters: letters, digits, '_', '-', '.', starting with a letter or digit",
        ))
    }
}

pub fn valid_conversation_id(id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            Code::InvalidConversationId,
            "conversation ids are 1-64 letters, digits, '-' or '_'",
        ))
    }
}

/// The parameters of a search or a question, checked, with the server's defaults filled in.
pub fn search_params(
    core: &Core,
    collection: Option<String>,
    query: &str,
    top_k: Option<usize>,
    mode: Option<String>,
    document_ids: Option<Vec<String>>,
) -> Result<SearchParams, ApiError> {
    let collection = collection.unwrap_or_else(|| "default".into());
    valid_collection(&collection)?;
    let q = query.trim();
    if q.is_empty() {
        return Err(ApiError::new(Code::EmptyQuestion, "the question is empty"));
    }
    let max = core.config.limits.max_question_chars;
    if q.chars().count() > max {
        return Err(ApiError::new(
            Code::QuestionTooLong,
            format!("the question is longer than {max} characters"),
        ));
    }
    let top_k = top_k.unwrap_or(core.config.retrieval.top_k);
    if top_k == 0 || top_k > 100 {
        return Err(ApiError::new(
            Code::InvalidTopK,
            "top_k must be between 1 and 100",
        ));
    }
    let mode = match mode {
        Some(m) => {
            SearchMode::parse(&m).map_err(|e| ApiError::new(Code::InvalidMode, e.to_string()))?
        }
        None => core.config.retrieval.mode,
    };
    Ok(SearchParams {
        collection,
        query: q.to_string(),
        top_k,
        mode,
        doc_ids: document_ids,
    })
}
