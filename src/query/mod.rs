//! Questions: retrieve (dense + BM25 fused), pack the context into a token budget, answer
//! (extractive or a chat model), as a stream of typed events.
//!
//! - `retrieve.rs`: `QueryEngine::search`, used by `/v1/search` and by every answer.
//! - `ask/`: `QueryEngine::ask`, the answer as named stages (`prepare` -> `retrieve` ->
//!   `answer` -> `finish`) handing typed values on; `events.rs` holds what clients receive.
//! - `context.rs` packs sources into the budget, `prompt.rs` builds the model's messages,
//!   `extractive/` answers without a model, `guard.rs` checks a model's answer against its
//!   sources, `conversation.rs` rewrites follow-ups and folds old turns into summaries.

mod ask;
pub mod context;
pub mod conversation;
mod engine;
mod events;
pub mod extractive;
pub mod guard;
pub mod prompt;
mod retrieve;
pub mod sanitize;
mod split;
mod visibility;

pub use ask::CachedAnswer;
pub use engine::{citations_in, QueryEngine, QueryError, SearchParams, Source};
pub use events::{
    AskEvent, AskParams, CacheInfo, CallUsage, ConversationInfo, Done, Meta, Timings, UsageOut,
};
pub use visibility::Visibility;
