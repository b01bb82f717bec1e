//! One way to open a Redis connection (the answer cache and the rate-limit buckets each keep
//! their own, with their own timeouts): connect within 10 s, then PING, so an unreachable or
//! wrong server is a start-up error.

use std::time::Duration;

pub async fn connect(
    url: &str,
    connect_timeout: Duration,
    response_timeout: Duration,
    retries: usize,
) -> anyhow::Result<redis::aio::ConnectionManager> {
    let client = redis::Client::open(url)?;
    let cfg = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(connect_timeout)
        .set_response_timeout(response_timeout)
        .set_number_of_retries(retries);
    let mut conn = tokio::time::timeout(
        Duration::from_secs(10),
        redis::aio::ConnectionManager::new_with_config(client, cfg),
    )
    .await
    .map_err(|_| anyhow::anyhow!("timed out connecting to Redis"))??;
    let _: String = redis::cmd("PING").query_async(&mut conn).await?;
    Ok(conn)
}
