//! `kb eval`: run a QA set through retrieval (and answering), score it, store the run and
//! compare it with the previous run of the same set.

use super::remote::Remote;
use clap::Args;
use kb::config::Config;
use kb::store::SearchMode;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct EvalArgs {
    /// The QA set (JSONL: id, type, question, answers, evidence, unanswerable).
    #[arg(long)]
    qa: PathBuf,
    #[arg(long, short, default_value = "default")]
    collection: String,
    /// Cut-offs for hit@k.
    #[arg(long, default_value = "1,3,5,10", value_delimiter = ',')]
    k: Vec<usize>,
    /// Retrieval modes to score side by side (answers use the configured mode).
    #[arg(long, default_value = "hybrid,dense,sparse", value_delimiter = ',')]
    modes: Vec<String>,
    /// Score retrieval only; do not ask for answers.
    #[arg(long)]
    no_answers: bool,
    /// Output directory (default: eval-runs/<run id>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run history, one JSON line per run.
    #[arg(long, default_value = "eval-runs/history.jsonl")]
    history: PathBuf,
    /// Exit 3 when a metric is worse than the previous run by more than the tolerance.
    #[arg(long)]
    fail_on_regression: bool,
    /// Absolute drop in a metric (0-1) tolerated before it counts as a regression.
    #[arg(long, default_value_t = 0.02)]
    tolerance: f64,
    #[command(flatten)]
    remote: Remote,
    /// Print the run record as JSON instead of the report.
    #[arg(long)]
    json: bool,
}

/// Check the arguments, then run the set against the data dir or `--server`.
pub async fn run(cfg: Config, args: EvalArgs) -> anyhow::Result<ExitCode> {
    let EvalArgs {
        qa,
        collection,
        k,
        modes,
        no_answers,
        out,
        history,
        fail_on_regression,
        tolerance,
        remote,
        json,
    } = args;
    let mut ms = Vec::new();
    for m in modes {
        ms.push(SearchMode::parse(&m)?);
    }
    if k.is_empty() || k.iter().any(|&k| k == 0 || k > 100) {
        anyhow::bail!("--k takes cut-offs between 1 and 100");
    }
    let mut k = k;
    k.sort_unstable();
    k.dedup();
    let run_id = kb::eval::new_run_id();
    let opts = kb::eval::Options {
        out: out.unwrap_or_else(|| PathBuf::from("eval-runs").join(&run_id)),
        run_id,
        qa,
        collection,
        ks: k,
        modes: ms,
        answers: !no_answers,
        history,
        tolerance,
        progress: !json,
    };
    eval(cfg, opts, remote.server, fail_on_regression, json).await
}

async fn eval(
    cfg: Config,
    opts: kb::eval::Options,
    server: Option<String>,
    fail_on_regression: bool,
    json_out: bool,
) -> anyhow::Result<ExitCode> {
    use kb::eval::report;
    let run = match server {
        Some(base) => kb::eval::run(&kb::eval::RemoteTarget::new(&base), &base, &opts).await?,
        None => {
            let core = kb::Core::open(cfg.clone()).await?;
            let name = format!("data dir {}", cfg.data_dir.display());
            let r = kb::eval::run(&kb::eval::LocalTarget(core.clone()), &name, &opts).await;
            core.shutdown().await;
            r?
        }
    };
    let history = report::load_history(&opts.history)?;
    let prev = report::previous(&history, &run);
    let deltas = prev
        .map(|p| report::compare(p, &run, opts.tolerance))
        .unwrap_or_default();
    let md = report::markdown(&run, prev, &deltas);
    std::fs::write(opts.out.join("report.md"), &md)?;
    std::fs::write(
        opts.out.join("summary.json"),
        serde_json::to_string_pretty(
            &serde_json::json!({"run": run, "previous": prev.map(|p| &p.run_id), "changes": deltas}),
        )?,
    )?;
    report::append(&opts.history, &run)?;
    let regressions: Vec<&report::Delta> = deltas.iter().filter(|d| d.regression).collect();
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"run": run, "changes": deltas}))?
        );
    } else {
        print!("{md}");
        println!("\nper-item results and this report: {}", opts.out.display());
        if !regressions.is_empty() {
            println!(
                "regression against the previous run: {}",
                regressions
                    .iter()
                    .map(|d| format!("{} {:.3} -> {:.3}", d.metric, d.before, d.after))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    Ok(if fail_on_regression && !regressions.is_empty() {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}
