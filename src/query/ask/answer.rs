//! Stage 3: the answer, as tokens and then the whole of it. Extractive without a model; with a
//! chat model, its streamed tokens and then the grounding guard's verdict.

use super::prepare::Prepared;
use super::retrieve::Retrieved;
use super::run::Run;
use crate::catalog::UsageRecord;
use crate::config::GuardMode;
use crate::error::ClientError;
use crate::models::{ChatDelta, ChatRequest, Usage};
use crate::query::engine::{QueryEngine, SearchParams, Source};
use crate::query::events::AskParams;
use crate::query::{extractive, guard, prompt, sanitize};
use futures::stream::BoxStream;
use futures::StreamExt;
use std::time::Instant;

/// What the answer stage sends: tokens, then the answer, or a failure with its usage row.
pub(super) enum Piece {
    Token(String),
    Answered(Box<Answered>),
    Failed(ClientError, Box<UsageRecord>),
}

/// Stage 3's result.
pub(super) struct Answered {
    pub text: String,
    /// `extractive` or `llm`.
    pub answerer: &'static str,
    pub first_token: Option<u64>,
    pub grounding: Option<extractive::Grounding>,
    pub guard: Option<guard::GuardReport>,
    /// The answer call's usage row.
    pub record: UsageRecord,
}

impl Run<'_> {
    pub(super) fn answer<'b>(
        &'b self,
        r: &'b Retrieved,
        prep: &'b Prepared,
    ) -> BoxStream<'b, Piece> {
        let (e, p, started) = (self.engine, self.p, self.started);
        let model = self.answer_model.as_str();
        let ms = move || started.elapsed().as_millis() as u64;
        let s = async_stream::stream! {
            let Some(chat) = &e.chat else {
                let (text, g) = e.extractive_answer(&r.search, &r.sources).await;
                let text = sanitize::neutralize(&text);
                let mut first_token = None;
                for piece in extractive::pieces(&text) {
                    first_token.get_or_insert_with(ms);
                    yield Piece::Token(piece);
                }
                let record = e.record(p, "answer", model, &Usage::default(), Some(ms()),
                    first_token, false, "ok");
                yield Piece::Answered(Box::new(Answered {
                    text, answerer: "extractive", first_token, grounding: Some(g), guard: None, record,
                }));
                return;
            };
            let messages = if prep.history.is_empty() {
                prompt::messages(&r.search.query, &r.sources)
            } else {
                prompt::messages_with_history(&r.search.query, &r.sources, &prep.history)
            };
            let req = ChatRequest {
                messages,
                max_tokens: e.max_answer_tokens,
                temperature: e.temperature,
            };
            let call_start = Instant::now();
            let call_ms = move || call_start.elapsed().as_millis() as u64;
            let mut stream = match chat.stream(req).await {
                Ok(s) => s,
                Err(err) => {
                    tracing::warn!(request_id = %p.request_id, error = %err, "chat model failed");
                    let record = e.record(p, "answer", model, &Usage::default(), Some(call_ms()),
                        None, false, err.code());
                    yield Piece::Failed(err.client_error(), Box::new(record));
                    return;
                }
            };
            let (mut text, mut usage) = (String::new(), Usage::default());
            let (mut first_token, mut call_first) = (None, None);
            // What the model writes goes out with images and unsafe links neutralised.
            let mut clean = sanitize::StreamSanitizer::default();
            while let Some(item) = stream.next().await {
                match item {
                    Ok(ChatDelta::Text(t)) => {
                        if first_token.is_none() {
                            first_token = Some(ms());
                            call_first = Some(call_ms());
                        }
                        let t = clean.push(&t);
                        if !t.is_empty() {
                            text.push_str(&t);
                            yield Piece::Token(t);
                        }
                    }
                    Ok(ChatDelta::Usage(u)) => usage = u,
                    Err(err) => {
                        tracing::warn!(request_id = %p.request_id, error = %err, "chat stream failed");
                        let record = e.record(p, "answer", model, &usage, Some(call_ms()),
                            call_first, false, err.code());
                        yield Piece::Failed(err.client_error(), Box::new(record));
                        return;
                    }
                }
            }
            let rest = clean.finish();
            if !rest.is_empty() {
                text.push_str(&rest);
                yield Piece::Token(rest);
            }
            let record = e.record(p, "answer", model, &usage, Some(call_ms()), call_first, false, "ok");
            let (guard, grounding) = e.apply_guard(p, &mut text, &r.search, &r.sources).await;
            // A replacement by the guard is quoted text too.
            let text = sanitize::neutralize(&text);
            yield Piece::Answered(Box::new(Answered {
                text, answerer: "llm", first_token, grounding, guard, record,
            }));
        };
        Box::pin(s)
    }
}

impl QueryEngine {
    /// The grounding guard on a generated answer: reports the sentences its sources do not
    /// support and, by `llm.guard`, keeps, declines or replaces the answer (with the extractive
    /// one, whose grounding then comes back too).
    async fn apply_guard(
        &self,
        p: &AskParams,
        answer: &mut String,
        search: &SearchParams,
        sources: &[Source],
    ) -> (Option<guard::GuardReport>, Option<extractive::Grounding>) {
        if self.guard == GuardMode::Off {
            return (None, None);
        }
        let (checked, unsupported) = guard::check(answer, sources, self.guard_min_support);
        let mut report = guard::GuardReport {
            checked,
            unsupported,
            action: "passed".into(),
            original_answer: None,
        };
        let mut grounding = None;
        if !report.unsupported.is_empty() {
            tracing::info!(request_id = %p.request_id,
                unsupported = report.unsupported.len(), mode = ?self.guard,
                "generated answer not supported by its sources");
            match self.guard {
                GuardMode::Off => {}
                GuardMode::Flag => report.action = "flagged".into(),
                GuardMode::Decline => {
                    report.original_answer =
                        Some(std::mem::replace(answer, extractive::DECLINE.to_string()));
                    report.action = "declined".into();
                }
                GuardMode::Fallback => {
                    let (text, g) = self.extractive_answer(search, sources).await;
                    grounding = Some(g);
                    report.original_answer = Some(std::mem::replace(answer, text));
                    report.action = "fallback_extractive".into();
                }
            }
        }
        (Some(report), grounding)
    }
}
