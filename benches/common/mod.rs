//! Helpers shared by the bench targets: plain `Instant` timing (no criterion), environment
//! knobs, percentiles and a small text table.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The workspace root (the `kb` package directory).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn env_usize(key: &str, default: usize) -> usize {
    match std::env::var(key) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| {
            eprintln!("note: {key}={v:?} is not a number; using {default}");
            default
        }),
        Err(_) => default,
    }
}

/// Words on the command line select sections (`cargo bench --bench ingest -- chunk`);
/// flags such as the `--bench` cargo passes are ignored.
pub fn sections() -> Vec<String> {
    std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect()
}

pub fn wanted(sections: &[String], name: &str) -> bool {
    sections.is_empty() || sections.iter().any(|s| name.starts_with(s.as_str()))
}

/// Seconds per call of `f`: calls it until `min` has passed (at least once, so a long workload
/// runs exactly once) and returns the mean with the last call's result.
pub fn time_per_call<T>(min: Duration, mut f: impl FnMut() -> T) -> (f64, T) {
    let start = Instant::now();
    let mut calls = 0u32;
    loop {
        let out = std::hint::black_box(f());
        calls += 1;
        let spent = start.elapsed();
        if spent >= min {
            return (spent.as_secs_f64() / calls as f64, out);
        }
    }
}

/// Nearest-rank percentile of an ascending slice.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A number with about three significant digits.
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// `amount / secs`, or NaN (printed as "-") when nothing was measured.
pub fn per_sec(amount: f64, secs: f64) -> f64 {
    if secs.is_finite() && secs > 0.0 {
        amount / secs
    } else {
        f64::NAN
    }
}

/// `a / b` as "1.23x".
pub fn ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "-".into()
    }
}

pub fn mb(bytes: usize) -> f64 {
    bytes as f64 / 1e6
}

/// Total size of the files under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// A text table: first column left-aligned, the others right-aligned, notes underneath.
pub struct Table {
    title: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    notes: Vec<String>,
}

impl Table {
    pub fn new(title: impl Into<String>, header: &[&str]) -> Table {
        Table {
            title: title.into(),
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    pub fn print(&self) {
        let cols = self.header.len();
        let mut width: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(cols) {
                width[i] = width[i].max(c.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::new();
            for (i, &w) in width.iter().enumerate() {
                let c = cells.get(i).map(String::as_str).unwrap_or("");
                if i == 0 {
                    s.push_str(&format!("{c:<w$}"));
                } else {
                    s.push_str(&format!("  {c:>w$}"));
                }
            }
            println!("{}", s.trim_end());
        };
        println!("\n== {}", self.title);
        line(&self.header);
        let total: usize = width.iter().sum::<usize>() + 2 * (cols - 1);
        println!("{}", "-".repeat(total));
        for r in &self.rows {
            line(r);
        }
        for n in &self.notes {
            println!("  {n}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// CPU pinning of the timing thread.
//
// On some VMs the CPUs do not share one good clock: seen on a 2-vCPU Firecracker guest,
// CLOCK_MONOTONIC read on one vCPU advanced in 4-20 ms steps while the other's was fine, and
// the two differed by 2-13 ms. A thread that migrates between its two clock readings then
// measures noise (or zero: `Instant` saturates). So the thread that reads the clock is pinned to
// the CPU with the finest clock; threads it starts must be unpinned again (they inherit the pin).

static ALL_CPUS: OnceLock<Vec<usize>> = OnceLock::new();
static TIMER_CPU: OnceLock<Option<usize>> = OnceLock::new();

/// The CPUs the process started with.
fn all_cpus() -> &'static [usize] {
    ALL_CPUS.get_or_init(|| unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    })
}

fn set_affinity(cpus: &[usize]) -> bool {
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

fn monotonic_ns() -> i128 {
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// Smallest step of CLOCK_MONOTONIC seen on the calling thread's CPU, in ns (None: no step in
/// a few million readings).
fn clock_step_ns() -> Option<i128> {
    let mut last = monotonic_ns();
    let (mut steps, mut min) = (0, i128::MAX);
    for _ in 0..2_000_000 {
        let now = monotonic_ns();
        if now != last {
            min = min.min((now - last).abs());
            last = now;
            steps += 1;
            if steps == 50 {
                break;
            }
        }
    }
    (steps > 0).then_some(min)
}

/// Offset of CLOCK_MONOTONIC on `cpu` relative to `base`, in ms (median of a few round trips:
/// read, migrate, read, migrate back, read).
fn clock_offset_ms(base: usize, cpu: usize) -> f64 {
    let mut offsets = Vec::new();
    for _ in 0..9 {
        set_affinity(&[base]);
        let a = monotonic_ns();
        set_affinity(&[cpu]);
        let b = monotonic_ns();
        set_affinity(&[base]);
        let c = monotonic_ns();
        offsets.push((((b - a) - (c - b)) / 2) as f64 / 1e6);
    }
    offsets.sort_by(f64::total_cmp);
    offsets[offsets.len() / 2]
}

/// Survey the CPUs' clocks once, say what was found, and pick the CPU with the finest clock for
/// timing (None when pinning is off: `KB_BENCH_PIN=0`, or a single CPU).
fn timer_cpu() -> Option<usize> {
    *TIMER_CPU.get_or_init(|| {
        let all = all_cpus();
        if std::env::var("KB_BENCH_PIN").as_deref() == Ok("0") || all.len() < 2 {
            return None;
        }
        let mut survey = Vec::new();
        for &cpu in all {
            if set_affinity(&[cpu]) {
                survey.push((cpu, clock_step_ns().unwrap_or(i128::MAX)));
            }
        }
        let best = survey
            .iter()
            .min_by_key(|(_, step)| *step)
            .map(|(cpu, _)| *cpu);
        let skew = match best {
            Some(b) => all
                .iter()
                .filter(|&&c| c != b)
                .map(|&c| clock_offset_ms(b, c).abs())
                .fold(0.0, f64::max),
            None => 0.0,
        };
        set_affinity(all);
        let steps: Vec<String> = survey
            .iter()
            .map(|(cpu, step)| match *step {
                i128::MAX => format!("CPU {cpu}: no tick"),
                s if s >= 1_000_000 => format!("CPU {cpu}: {:.1} ms", s as f64 / 1e6),
                s => format!("CPU {cpu}: {:.2} us", s as f64 / 1e3),
            })
            .collect();
        println!(
            "clock: finest monotonic step {}; offset between CPUs up to {skew:.3} ms; \
             timing thread pinned to CPU {} (KB_BENCH_PIN=0: no pinning)",
            steps.join(", "),
            best.map_or("-".into(), |c| c.to_string())
        );
        best
    })
}

/// Pin the calling thread to the CPU with the finest clock (see above).
pub fn pin_current_thread() -> Option<usize> {
    let cpu = timer_cpu()?;
    set_affinity(&[cpu]).then_some(cpu)
}

/// Let the calling thread run on every CPU the process started with.
pub fn unpin_current_thread() {
    let all = all_cpus();
    if !all.is_empty() {
        set_affinity(all);
    }
}

/// Pin the thread that reads the clock; the first call surveys the clocks and reports.
pub fn pin_timer_thread() {
    pin_current_thread();
}
