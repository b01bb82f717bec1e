//! `kb keys create|list|revoke`: API keys, on the data directory (works while a server runs on
//! it: only the catalog is touched) or through `--server` with an admin key in `KB_API_KEY`.

use super::remote::{api_error, http, Remote};
use anyhow::Context;
use clap::Subcommand;
use kb::config::Config;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum KeysCmd {
    /// Make a key. It is printed once (the last line of output; with --json, as `key`): only
    /// its hash is stored.
    Create {
        #[arg(long)]
        name: String,
        /// admin, *, read:COLLECTION, write:COLLECTION (COLLECTION may be *); repeat for several.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Requests per minute the key may make (0: no limit of its own).
        #[arg(long, default_value_t = 0)]
        rpm: u32,
        /// Model tokens per minute the key may use (0: no limit of its own).
        #[arg(long, default_value_t = 0)]
        tpm: u64,
        /// Model tokens per day (UTC) the key may use (0: no limit of its own).
        #[arg(long, default_value_t = 0)]
        daily_tokens: u64,
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        json: bool,
    },
    /// List the keys (never the keys themselves).
    List {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by id: it stops working at once.
    Revoke {
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
}

async fn catalog(cfg: &Config) -> anyhow::Result<(kb::catalog::Catalog, Vec<u8>)> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data dir {}", cfg.data_dir.display()))?;
    let catalog = kb::catalog::Catalog::open(&cfg.data_dir.join("catalog.db")).await?;
    let secret = kb::auth::install_secret(&cfg.data_dir)?;
    Ok((catalog, secret))
}

async fn send(req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
    let resp = req.send().await.context("cannot reach the server")?;
    if !resp.status().is_success() {
        anyhow::bail!(api_error(resp).await);
    }
    Ok(resp)
}

pub async fn run(cfg: Config, cmd: KeysCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        KeysCmd::Create {
            name,
            scopes,
            rpm,
            tpm,
            daily_tokens,
            remote,
            json,
        } => {
            let limits = kb::catalog::KeyLimits {
                rpm,
                tpm,
                daily_tokens,
            };
            let created: serde_json::Value = match remote.server {
                Some(base) => {
                    let body = serde_json::json!({"name": name, "scopes": scopes, "rpm": rpm, "tpm": tpm, "daily_tokens": daily_tokens});
                    send(http().post(format!("{base}/v1/keys")).json(&body))
                        .await?
                        .json()
                        .await?
                }
                None => {
                    let (catalog, secret) = catalog(&cfg).await?;
                    let k = kb::api::make_key(&catalog, &secret, &name, &scopes, limits)
                        .await
                        .map_err(anyhow::Error::msg)?;
                    let _ = catalog
                        .audit(None, "key.create", &k.info.id, Some("cli"))
                        .await;
                    serde_json::to_value(&k)?
                }
            };
            if json {
                println!("{created}");
            } else {
                let scopes: Vec<&str> = created["scopes"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
                    .unwrap_or_default();
                println!(
                    "{}  {}  {}",
                    created["id"].as_str().unwrap_or(""),
                    created["name"].as_str().unwrap_or(""),
                    scopes.join(" ")
                );
                println!("The key (shown only now):");
                println!("{}", created["key"].as_str().unwrap_or(""));
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCmd::List { remote, json } => {
            let keys: serde_json::Value = match remote.server {
                Some(base) => {
                    send(http().get(format!("{base}/v1/keys")))
                        .await?
                        .json()
                        .await?
                }
                None => {
                    let (catalog, _) = catalog(&cfg).await?;
                    serde_json::json!({"keys": catalog.keys().await?})
                }
            };
            if json {
                println!("{keys}");
                return Ok(ExitCode::SUCCESS);
            }
            for k in keys["keys"].as_array().into_iter().flatten() {
                let scopes: Vec<&str> = k["scopes"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
                    .unwrap_or_default();
                let state = match k["revoked_at"].as_str() {
                    Some(t) => format!("revoked {t}"),
                    None => "live".into(),
                };
                println!(
                    "{}  {}  {}  {}  {}",
                    k["id"].as_str().unwrap_or(""),
                    state,
                    k["created_at"].as_str().unwrap_or(""),
                    k["name"].as_str().unwrap_or(""),
                    scopes.join(" ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCmd::Revoke { id, remote } => {
            match remote.server {
                Some(base) => {
                    send(http().delete(format!("{base}/v1/keys/{id}"))).await?;
                }
                None => {
                    let (catalog, _) = catalog(&cfg).await?;
                    if !catalog.revoke_key(&id).await? {
                        eprintln!("kb: no live key {id}");
                        return Ok(ExitCode::from(5));
                    }
                    let _ = catalog.audit(None, "key.revoke", &id, Some("cli")).await;
                }
            }
            println!("revoked {id}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
