//! Stage 2 of a question: the search with the standalone question, then the sources packed
//! into the prompt's budget.

use super::prepare::Prepared;
use super::run::Run;
use crate::query::context;
use crate::query::engine::{QueryError, SearchParams, Source};

/// Stage 2's result: what the answer is drawn from.
pub(super) struct Retrieved {
    /// The search as run (the standalone question).
    pub search: SearchParams,
    pub sources: Vec<Source>,
    pub manifest: context::Manifest,
    pub retrieve_ms: u64,
}

impl Run<'_> {
    /// Stage 2: search with the standalone question, then pack the budget.
    pub async fn retrieve(&self, prep: &Prepared) -> Result<Retrieved, QueryError> {
        let e = self.engine;
        let mut search = self.p.search.clone();
        search.query = prep.standalone.clone();
        let hits = e.search_with(&search, prep.vector.clone()).await?;
        let retrieve_ms = self.elapsed_ms();
        let budget = context::budget(
            e.context_window,
            e.max_answer_tokens,
            &search.query,
            e.chat.is_some(),
        )
        .saturating_sub(prep.history_tokens);
        let (sources, manifest) = context::pack(hits, budget);
        Ok(Retrieved {
            search,
            sources,
            manifest,
            retrieve_ms,
        })
    }
}
