//! kb's integration tests, in one test binary: each file here is a module, and all of them
//! share one link of kb and its dependencies (candle, Qdrant Edge, llama.cpp) instead of one
//! per file. Most tests start their own `kb serve` (see `common`), so they run in any order.

mod common;

mod access;
mod api_errors;
mod bad_input;
mod caches;
mod cli;
mod conversations;
mod crash;
mod disk;
mod embed;
mod eval;
mod full_loop;
mod governor;
mod injection;
mod limits;
mod llm;
mod local_llm;
mod openai;
mod openapi;
mod redis_buckets;
mod reliability;
mod secrets;
