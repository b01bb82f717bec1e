//! Access: the caller of each request (`Principal`), the `Host` and `Origin` checks, and the
//! admin routes for keys and the audit log.
//!
//! `authenticate` resolves `Authorization: Bearer KEY` on every protected path (`/v1/*`, and
//! `/metrics`, `/openapi.json` when configured) and puts the `Principal` in the request. The
//! extractor fails closed: a handler that asks for a `Principal` on a request that has none gets
//! 401 unless kb runs without keys. Each handler then checks the collection it touches
//! (`require_read`, `require_write`), and listings are filtered by what the caller may read.

use super::error::{ApiError, ErrorBody, JsonBody};
use super::http::AppState;
use crate::auth::{Principal, Scope};
use crate::catalog::{AuditEntry, KeyInfo};
use crate::config::AuthMode;
use crate::error::Code;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/keys", get(list_keys).post(create_key))
        .route("/v1/keys/{id}", delete(revoke_key))
        .route("/v1/audit", get(audit_log))
}

fn protected(core: &AppState, path: &str) -> bool {
    path.starts_with("/v1/")
        || (path == "/metrics" && core.config.auth.protect_metrics)
        || (path == "/openapi.json" && core.config.auth.protect_openapi)
}

/// Read (and drop) what the client is still sending, up to 8 MiB, so that it gets the refusal
/// rather than a reset connection while it writes an upload.
async fn drained(req: Request, resp: Response) -> Response {
    use futures::StreamExt;
    let mut body = req.into_body().into_data_stream();
    let mut n = 0usize;
    while let Some(Ok(chunk)) = body.next().await {
        n += chunk.len();
        if n > 8 << 20 {
            break;
        }
    }
    resp
}

fn unauthorized(msg: &str) -> Response {
    let mut r = ApiError::new(Code::Unauthorized, msg).into_response();
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// The caller, from the key in `Authorization: Bearer`.
pub async fn authenticate(State(core): State<AppState>, mut req: Request, next: Next) -> Response {
    if core.config.auth.mode == AuthMode::None || !protected(&core, req.uri().path()) {
        if core.config.auth.mode == AuthMode::None {
            req.extensions_mut().insert(Principal::Open);
        }
        return next.run(req).await;
    }
    let key = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| rest.trim().to_string())
        });
    let Some(key) = key.filter(|k| !k.is_empty()) else {
        let resp = unauthorized("this server needs an API key: send `Authorization: Bearer KEY`");
        return drained(req, resp).await;
    };
    let hash = crate::auth::hash_key(&core.auth_secret, &key);
    match core.catalog.key_by_hash(&hash).await {
        Ok(Some(k)) => {
            if k.rpm > 0 {
                let now = std::time::Instant::now();
                if let Err(wait) =
                    core.governor
                        .buckets()
                        .try_take(&format!("key:{}", k.id), k.rpm, 0, 0, now)
                {
                    let e = crate::error::ClientError::new(
                        Code::KeyRateLimited,
                        format!("this key may make {} requests per minute", k.rpm),
                    )
                    .with_retry_after(Some(wait));
                    return drained(req, ApiError(e).into_response()).await;
                }
            }
            match token_limit(&core, &k).await {
                Ok(None) => {}
                Ok(Some(e)) => return drained(req, ApiError(e).into_response()).await,
                Err(e) => return ApiError::internal(e).into_response(),
            }
            let scopes = k
                .scopes
                .iter()
                .flat_map(|s| Scope::parse(s).unwrap_or_default())
                .collect();
            req.extensions_mut().insert(Principal::Key {
                id: k.id,
                name: k.name,
                scopes,
            });
            next.run(req).await
        }
        Ok(None) => drained(req, unauthorized("unknown or revoked API key")).await,
        Err(e) => ApiError::internal(e).into_response(),
    }
}

/// The refusal when the key has used its model tokens for the minute or the day (UTC), counted
/// from the usage records (shared by replicas that share the catalog).
async fn token_limit(
    core: &AppState,
    k: &KeyInfo,
) -> Result<Option<crate::error::ClientError>, crate::catalog::CatalogError> {
    let now = crate::catalog::now_ms();
    if k.tpm > 0 {
        let (used, oldest) = core.catalog.key_tokens_since(&k.id, now - 60_000).await?;
        if used >= k.tpm {
            let wait = oldest.map_or(60_000, |t| (t + 60_000 - now).max(1_000));
            return Ok(Some(
                crate::error::ClientError::new(
                    Code::KeyRateLimited,
                    format!("this key may use {} model tokens per minute", k.tpm),
                )
                .with_retry_after(Some(std::time::Duration::from_millis(wait as u64))),
            ));
        }
    }
    if k.daily_tokens > 0 {
        let day = now - now.rem_euclid(86_400_000);
        let (used, _) = core.catalog.key_tokens_since(&k.id, day).await?;
        if used >= k.daily_tokens {
            let wait = day + 86_400_000 - now;
            return Ok(Some(
                crate::error::ClientError::new(
                    Code::TokenBudgetExhausted,
                    format!(
                        "this key has used its {} model tokens for today (UTC)",
                        k.daily_tokens
                    ),
                )
                .with_retry_after(Some(std::time::Duration::from_millis(wait as u64))),
            ));
        }
    }
    Ok(None)
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| ApiError::new(Code::Unauthorized, "an API key is needed"))
    }
}

/// 403 unless the caller may read `collection`.
pub fn require_read(p: &Principal, collection: &str) -> Result<(), ApiError> {
    if p.can_read(collection) {
        return Ok(());
    }
    Err(ApiError::new(
        Code::Forbidden,
        format!("this key may not read collection `{collection}`"),
    ))
}

/// 403 unless the caller may write `collection`.
pub fn require_write(p: &Principal, collection: &str) -> Result<(), ApiError> {
    if p.can_write(collection) {
        return Ok(());
    }
    Err(ApiError::new(
        Code::Forbidden,
        format!("this key may not write to collection `{collection}`"),
    ))
}

fn require_admin(p: &Principal) -> Result<(), ApiError> {
    if p.is_admin() {
        return Ok(());
    }
    Err(ApiError::new(Code::Forbidden, "this needs an admin key"))
}

/// Record a destructive or admin action (a failure to record is logged, not the client's).
pub async fn audit(core: &AppState, p: &Principal, action: &str, target: &str) {
    if let Err(e) = core.catalog.audit(p.key_id(), action, target, None).await {
        tracing::error!(error = %e, action, target, "audit entry not recorded");
    }
}

/// The host names a loopback listener answers to.
fn loopback_host(h: &str) -> bool {
    let name = if let Some(rest) = h.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        h.rsplit_once(':').map_or(h, |(n, _)| n)
    };
    matches!(
        name.to_ascii_lowercase().as_str(),
        "localhost" | "127.0.0.1" | "::1"
    ) || name.starts_with("127.")
}

fn host_allowed(core: &AppState, host: &str) -> bool {
    let allowed = &core.config.server.allowed_hosts;
    if !allowed.is_empty() {
        let name = host.rsplit_once(':').map_or(host, |(n, _)| n);
        return allowed
            .iter()
            .any(|a| a.eq_ignore_ascii_case(host) || a.eq_ignore_ascii_case(name));
    }
    !core.config.server.listens_on_loopback() || loopback_host(host)
}

/// Against DNS rebinding, `Host` must be a name this server answers to; against cross-site
/// requests (a multipart upload is a CORS "simple request" any page can send), a
/// state-changing request from a browser must come from the server's own origin or one
/// configured in `server.allowed_origins`.
pub async fn check_origin(State(core): State<AppState>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .map(|o| o.to_str().unwrap_or("null").to_string());
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let refusal = match (&host, &origin) {
        (Some(h), _) if !host_allowed(&core, h) => Some(ApiError::new(
            Code::HostNotAllowed,
            format!("this server does not answer to host `{h}` (server.allowed_hosts)"),
        )),
        (_, Some(o)) if !safe => {
            let own = host.as_deref().is_some_and(|h| {
                o.split_once("://")
                    .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(h))
            });
            let listed = core
                .config
                .server
                .allowed_origins
                .iter()
                .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(o));
            (!own && !listed).then(|| {
                ApiError::new(
                    Code::CrossOrigin,
                    format!("requests from pages at {o} are not accepted (server.allowed_origins)"),
                )
            })
        }
        _ => None,
    };
    match refusal {
        Some(e) => drained(req, e.into_response()).await,
        None => next.run(req).await,
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    pub name: String,
    /// `admin`, `*`, `read:COLLECTION`, `write:COLLECTION` (COLLECTION may be `*`).
    pub scopes: Vec<String>,
    /// Requests per minute the key may make (absent or 0: no limit of its own); shared by the
    /// replicas through Redis when `cache.redis_url` is set.
    #[serde(default)]
    pub rpm: u32,
    /// Model tokens per minute (absent or 0: no limit of its own).
    #[serde(default)]
    pub tpm: u64,
    /// Model tokens per day, UTC (absent or 0: no limit of its own).
    #[serde(default)]
    pub daily_tokens: u64,
}

/// A new key: `key` is shown this once.
#[derive(Serialize, ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub info: KeyInfo,
    pub key: String,
}

#[derive(Serialize, ToSchema)]
pub struct KeyList {
    pub keys: Vec<KeyInfo>,
}

#[derive(Serialize, ToSchema)]
pub struct AuditList {
    pub entries: Vec<AuditEntry>,
}

/// Check and normalise scopes.
pub fn parse_scopes(scopes: &[String]) -> Result<Vec<String>, String> {
    if scopes.is_empty() {
        return Err("a key needs at least one scope".into());
    }
    let mut out: Vec<String> = Vec::new();
    for s in scopes {
        for sc in Scope::parse(s)? {
            let t = sc.as_string();
            if !out.contains(&t) {
                out.push(t);
            }
        }
    }
    Ok(out)
}

/// Make a key (and store only its hash).
pub async fn make_key(
    catalog: &crate::catalog::Catalog,
    secret: &[u8],
    name: &str,
    scopes: &[String],
    limits: crate::catalog::KeyLimits,
) -> Result<CreatedKey, String> {
    let name = name.trim();
    if name.is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
        return Err("a key's name is 1-100 printable characters".into());
    }
    let scopes = parse_scopes(scopes)?;
    let (id, key) = crate::auth::new_key();
    let info = catalog
        .create_key(
            &id,
            name,
            &crate::auth::hash_key(secret, &key),
            &scopes,
            limits,
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(CreatedKey { info, key })
}

#[utoipa::path(
    post,
    path = "/v1/keys",
    tag = "access",
    request_body = CreateKey,
    responses(
        (status = 201, description = "The key (shown only here) and its record", body = CreatedKey),
        (status = 400, description = "`invalid_request`: unknown scope or bad name; `malformed_json`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`forbidden`: not an admin key", body = ErrorBody),
        (status = 413, description = "`body_too_large` (over 2 MB)", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is not `application/json`", body = ErrorBody),
        (status = 422, description = "`invalid_request`: a field of the wrong type, a missing or an unknown one", body = ErrorBody),
    )
)]
pub(super) async fn create_key(
    State(core): State<AppState>,
    p: Principal,
    JsonBody(req): JsonBody<CreateKey>,
) -> Result<Response, ApiError> {
    require_admin(&p)?;
    let limits = crate::catalog::KeyLimits {
        rpm: req.rpm,
        tpm: req.tpm,
        daily_tokens: req.daily_tokens,
    };
    let created = make_key(
        &core.catalog,
        &core.auth_secret,
        &req.name,
        &req.scopes,
        limits,
    )
    .await
    .map_err(|m| ApiError::new(Code::InvalidRequest, m))?;
    audit(&core, &p, "key.create", &created.info.id).await;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/keys",
    tag = "access",
    responses(
        (status = 200, description = "Every key (never the key itself)", body = KeyList),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`forbidden`: not an admin key", body = ErrorBody),
    )
)]
pub(super) async fn list_keys(
    State(core): State<AppState>,
    p: Principal,
) -> Result<Json<KeyList>, ApiError> {
    require_admin(&p)?;
    Ok(Json(KeyList {
        keys: core.catalog.keys().await?,
    }))
}

#[utoipa::path(
    delete,
    path = "/v1/keys/{id}",
    tag = "access",
    params(("id" = String, Path, description = "Key id (`key_...`)")),
    responses(
        (status = 204, description = "Revoked: the key stops working at once"),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`forbidden`: not an admin key", body = ErrorBody),
        (status = 404, description = "`key_not_found`", body = ErrorBody),
    )
)]
pub(super) async fn revoke_key(
    State(core): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    require_admin(&p)?;
    if !core.catalog.revoke_key(&id).await? {
        return Err(ApiError::new(
            Code::KeyNotFound,
            format!("no live key `{id}`"),
        ));
    }
    audit(&core, &p, "key.revoke", &id).await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/v1/audit",
    tag = "access",
    responses(
        (status = 200, description = "Destructive and admin actions, newest first (the last 1000)", body = AuditList),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`forbidden`: not an admin key", body = ErrorBody),
    )
)]
pub(super) async fn audit_log(
    State(core): State<AppState>,
    p: Principal,
) -> Result<Json<AuditList>, ApiError> {
    require_admin(&p)?;
    Ok(Json(AuditList {
        entries: core.catalog.audit_log(1000).await?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names() {
        for ok in [
            "localhost:8080",
            "127.0.0.1:1",
            "[::1]:8080",
            "LOCALHOST",
            "127.0.0.2",
        ] {
            assert!(loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "10.0.0.1",
            "localhost.evil.example",
            "[::2]:80",
        ] {
            assert!(!loopback_host(bad), "{bad}");
        }
    }

    #[test]
    fn scopes_are_checked_and_normalised() {
        assert_eq!(
            parse_scopes(&["*".into(), "read:a".into()]).unwrap(),
            ["read:*", "write:*", "read:a"]
        );
        assert!(parse_scopes(&[]).is_err());
        assert!(parse_scopes(&["root".into()]).is_err());
    }
}
