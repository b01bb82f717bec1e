//! `QueryEngine::ask`: a question answered as a stream of events, in four stages that hand
//! typed values on:
//!
//! 1. `prepare`  -> [`Prepared`]: history, standalone question, cache key, a cached answer;
//! 2. `retrieve` -> [`Retrieved`]: sources packed into the prompt's budget;
//! 3. `answer`   -> tokens, then [`Answered`]: extractive, or a chat model checked by the guard;
//! 4. `finish`   -> `Done`: cached, usage recorded, the conversation's turn stored.
//!
//! A cached answer skips 2 and 3 and replays through the same events.

mod answer;
mod calls;
mod finish;
mod prepare;
mod retrieve;
mod run;

pub use run::CachedAnswer;

use crate::error::ClientError;
use crate::query::engine::QueryEngine;
use crate::query::events::{AskEvent, AskParams};
use answer::Piece;
use futures::stream::BoxStream;
use futures::StreamExt;
use run::Run;
use std::sync::Arc;

impl QueryEngine {
    /// Answer a question as a stream of events: `Meta`, `Sources`, `Token`*, then `Done` or
    /// `Error`. Dropping the stream stops the work (and a model's generation) at once.
    pub fn ask(self: &Arc<Self>, p: AskParams) -> BoxStream<'static, AskEvent> {
        let this = self.clone();
        let s = async_stream::stream! {
            let mut run = Run::new(&this, &p);
            let prep = match run.prepare().await {
                Ok(x) => x,
                Err(e) => {
                    yield run.meta(false);
                    yield run.fail(e.client_error()).await;
                    return;
                }
            };
            if let Some(hit) = &prep.hit {
                yield run.meta(true);
                for ev in run.replay(hit, &prep).await {
                    yield ev;
                }
                return;
            }
            yield run.meta(false);
            let retrieved = match run.retrieve(&prep).await {
                Ok(r) => r,
                Err(e) => {
                    yield run.fail(e.client_error()).await;
                    return;
                }
            };
            yield AskEvent::Sources(retrieved.sources.clone());
            let (mut answered, mut failed) = (None, None);
            {
                let mut pieces = run.answer(&retrieved, &prep);
                while let Some(piece) = pieces.next().await {
                    match piece {
                        Piece::Token(t) => yield AskEvent::Token(t),
                        Piece::Answered(a) => answered = Some(*a),
                        Piece::Failed(e, record) => {
                            failed = Some((e, record));
                            break;
                        }
                    }
                }
            }
            if let Some((e, record)) = failed {
                run.calls.push(*record);
                yield run.fail(e).await;
                return;
            }
            let Some(answered) = answered else {
                yield run.fail(ClientError::internal("the answer stage ended without an answer")).await;
                return;
            };
            yield AskEvent::Done(Box::new(run.finish(prep, retrieved, answered).await));
        };
        Box::pin(s)
    }
}
