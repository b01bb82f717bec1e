//! The local generator: a real SmolLM2-135M-Instruct (GGUF) run in-process by llama.cpp,
//! through `kb serve` and through `LocalChat` directly. Needs the model from
//! `scripts/fetch-models.sh --llm` (scripts/test.sh fetches it).
#![cfg(feature = "local-llm")]

use crate::common::*;
use futures::StreamExt;
use kb::models::local_chat::{
    resolve_model_path, LocalChat, LocalChatOptions, DEFAULT_LOCAL_MODEL,
};
use kb::models::{ChatDelta, ChatModel, ChatRequest, Message, ModelError};
use serde_json::json;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

fn model_path() -> PathBuf {
    resolve_model_path(&models_dir(), DEFAULT_LOCAL_MODEL)
        .expect("SmolLM2-135M-Instruct missing: run scripts/fetch-models.sh --llm")
}

/// One loaded model shared by the direct tests (each load costs a second or two).
fn shared_chat() -> Arc<LocalChat> {
    static CHAT: OnceLock<Arc<LocalChat>> = OnceLock::new();
    CHAT.get_or_init(|| {
        Arc::new(
            LocalChat::load(
                &model_path(),
                LocalChatOptions {
                    threads: 1,
                    prefill_threads: 2,
                    context_tokens: 1024,
                    queue_size: 8,
                    flash_attention: None,
                },
            )
            .expect("load the local model"),
        )
    })
    .clone()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn request(question: &str, max_tokens: usize) -> ChatRequest {
    ChatRequest {
        messages: vec![
            Message::new("system", "You are a helpful assistant. Answer briefly."),
            Message::new("user", question),
        ],
        max_tokens,
        temperature: 0.0,
    }
}

async fn collect(
    chat: &LocalChat,
    req: ChatRequest,
) -> Result<(Vec<String>, kb::models::Usage), ModelError> {
    let mut s = chat.stream(req).await?;
    let mut pieces = Vec::new();
    let mut usage = None;
    while let Some(d) = s.next().await {
        match d? {
            ChatDelta::Text(t) => pieces.push(t),
            ChatDelta::Usage(u) => usage = Some(u),
        }
    }
    Ok((pieces, usage.expect("a usage record ends every answer")))
}

#[test]
fn generates_token_by_token_and_counts_usage() {
    let chat = shared_chat();
    let rt = rt();
    let prompt_tokens = chat
        .tokenize_chat(&request("What is the capital of France?", 24).messages)
        .unwrap()
        .len();
    let (pieces, usage) = rt
        .block_on(collect(
            &chat,
            request("What is the capital of France?", 24),
        ))
        .unwrap();
    let text: String = pieces.concat();
    assert!(pieces.len() >= 3, "streamed in pieces, got {pieces:?}");
    assert!(
        text.contains("Paris"),
        "a sane answer from the real model: {text:?}"
    );
    assert_eq!(usage.prompt_tokens as usize, prompt_tokens);
    assert!(usage.completion_tokens >= pieces.len() as u64 && usage.completion_tokens <= 24);
    assert!(chat.model_id().starts_with("local:SmolLM2-135M-Instruct"));

    // Greedy decoding is deterministic: the same question gives the same answer.
    let (again, _) = rt
        .block_on(collect(
            &chat,
            request("What is the capital of France?", 24),
        ))
        .unwrap();
    assert_eq!(again.concat(), text);
}

#[test]
fn a_prompt_longer_than_the_context_is_a_clear_error_and_the_model_keeps_working() {
    let chat = shared_chat();
    let rt = rt();
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(200);
    let err = rt.block_on(collect(&chat, request(&long, 32))).unwrap_err();
    assert!(matches!(err, ModelError::ContextLength(_)), "{err:?}");
    assert_eq!(err.code(), "context_length_exceeded");
    assert!(err.to_string().contains("1024"), "names the limit: {err}");
    // A prompt that leaves less room than asked for, but enough, is answered within the room.
    let medium = "The quick brown fox jumps over the lazy dog. ".repeat(70);
    let prompt = chat
        .tokenize_chat(&request(&medium, 8).messages)
        .unwrap()
        .len();
    assert!(prompt > 600 && prompt + 128 < 1024, "{prompt}");
    let (_, usage) = rt
        .block_on(collect(
            &chat,
            request(
                &format!("{medium}\nRepeat the sentence above many times."),
                1000,
            ),
        ))
        .unwrap();
    assert!(
        usage.completion_tokens as usize + usage.prompt_tokens as usize <= 1024,
        "{usage:?}"
    );
    let (pieces, _) = rt
        .block_on(collect(&chat, request("Say hello.", 8)))
        .unwrap();
    assert!(!pieces.concat().trim().is_empty());
}

#[test]
fn a_dropped_stream_stops_generation_and_a_full_queue_refuses() {
    // Its own instance: the queue limit must not be shared with the other tests.
    let chat = LocalChat::load(
        &model_path(),
        LocalChatOptions {
            threads: 1,
            prefill_threads: 2,
            context_tokens: 1024,
            queue_size: 1,
            flash_attention: Some(false),
        },
    )
    .unwrap();
    let rt = rt();
    rt.block_on(async {
        // Take the first token of a long answer, then walk away.
        let mut s = chat
            .stream(request("Write a long story about a dragon.", 400))
            .await
            .unwrap();
        assert!(matches!(s.next().await, Some(Ok(ChatDelta::Text(_)))));
        drop(s);
        // With queue_size 1: one request may wait while the worker is busy; while both the
        // worker and the queue are taken, a third is refused at once with Overloaded.
        let busy = chat.stream(request("Count from one to fifty in words.", 200));
        let waiting = chat.stream(request("Count from one to fifty in words.", 200));
        let third = chat.stream(request("Say hi.", 4));
        let (busy, waiting, third) = futures::join!(busy, waiting, third);
        let refused = [&busy, &waiting, &third]
            .iter()
            .filter(|r| matches!(r, Err(ModelError::Overloaded { .. })))
            .count();
        assert!(refused >= 1, "a full queue refuses");
        for r in [busy, waiting, third].into_iter().flatten() {
            drop(r);
        }
        // The dropped requests stop and free their places: a new one is taken at once and
        // answered promptly, not after 800 tokens.
        let started = std::time::Instant::now();
        let (pieces, _) = tokio::time::timeout(
            Duration::from_secs(120),
            collect(&chat, request("Say hello.", 8)),
        )
        .await
        .expect("the worker is not stuck")
        .unwrap();
        assert!(!pieces.is_empty());
        eprintln!("answered after the drops in {:?}", started.elapsed());
    });
}

#[test]
fn a_file_that_is_not_a_model_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken.gguf");
    std::fs::write(&bad, b"GGUF but not really a model file").unwrap();
    let err = LocalChat::load(
        &bad,
        LocalChatOptions {
            threads: 1,
            prefill_threads: 1,
            context_tokens: 512,
            queue_size: 1,
            flash_attention: None,
        },
    )
    .err()
    .expect("a broken file does not load");
    assert!(err.to_string().contains("broken.gguf"), "{err}");

    let err = resolve_model_path(dir.path(), "no-such-model").unwrap_err();
    assert!(err.to_string().contains("fetch-models.sh --llm"), "{err}");
    std::fs::write(dir.path().join("second.gguf"), b"x").unwrap();
    let err =
        resolve_model_path(dir.path().parent().unwrap(), dir.path().to_str().unwrap()).unwrap_err();
    assert!(err.to_string().contains("several .gguf files"), "{err}");
}

#[test]
fn the_server_answers_with_the_local_model_over_sse() {
    let path = model_path();
    let server = Server::start_with(&[
        ("KB_LLM__PROVIDER", "local"),
        ("KB_LLM__GUARD", "flag"),
        ("KB_LLM__MAX_ANSWER_TOKENS", "96"),
    ]);
    // The shipped Q4_1 file is re-quantised once to a Q8_0 copy beside it.
    let copy = path.with_file_name(format!(
        "{}.kb-q8_0",
        path.file_name().unwrap().to_string_lossy()
    ));
    assert!(copy.is_file(), "Q8_0 copy at {}", copy.display());

    let doc = "Zorblat servers store their backups in the vault directory. \
               The vault directory is /var/lib/zorblat/vault and backups run every night at 02:00. \
               To restore a backup, stop the server and run `zorblat restore --from vault`.";
    let (code, body) = server.upload("docs", &[("zorblat.txt", doc.as_bytes().to_vec())]);
    assert_eq!(code, 202, "{body}");
    let job = server.wait_job(body["documents"][0]["job_id"].as_str().unwrap());
    assert_eq!(job["status"], "done", "{job}");

    let events = server.ask_sse(&json!({
        "collection": "docs",
        "question": "Where does Zorblat store its backups?"
    }));
    let tokens: Vec<&str> = events
        .iter()
        .filter(|(e, _)| e == "token")
        .map(|(_, v)| v["text"].as_str().unwrap())
        .collect();
    assert!(tokens.len() >= 3, "streamed token by token: {events:?}");
    let (_, done) = events
        .iter()
        .find(|(e, _)| e == "done")
        .expect("done event");
    assert_eq!(done["answerer"], "llm", "{done}");
    assert!(
        done["usage"]["prompt_tokens"].as_u64().unwrap() > 50,
        "{done}"
    );
    assert!(
        done["usage"]["completion_tokens"].as_u64().unwrap() > 0,
        "{done}"
    );
    assert!(
        done["usage"]["calls"][0]["model"]
            .as_str()
            .unwrap_or_default()
            .starts_with("local:SmolLM2"),
        "{done}"
    );
    assert!(
        done["guard"].is_object(),
        "the guard judged the answer: {done}"
    );
    let answer: String = tokens.concat();
    assert!(!answer.trim().is_empty());
    eprintln!("local answer: {answer}\nguard: {}", done["guard"]);
}
