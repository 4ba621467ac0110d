//! What the scenario benches (`pg_switchover`, `recovery`) record and how
//! they read it: every write (or request) with its start, end and outcome,
//! and the first clean second after a moment.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::mysql::MySqlDatabaseError;

/// A write that takes longer than this spoils the seconds it spans.
pub const SLOW: Duration = Duration::from_secs(1);

/// One finished write or request.
#[derive(Debug, Clone)]
pub struct Done {
    /// Since the timeline's origin.
    pub start: Duration,
    pub end: Duration,
    /// `None`: it succeeded; otherwise what it failed with.
    pub failed: Option<String>,
}

impl Done {
    pub fn ok(&self) -> bool {
        self.failed.is_none()
    }

    pub fn latency(&self) -> Duration {
        self.end.saturating_sub(self.start)
    }
}

/// The record of one run: finished writes, and the ones in flight per
/// worker (so a write still hanging at the end counts as bad).
pub struct Timeline {
    pub origin: Instant,
    done: Mutex<Vec<Done>>,
    /// Per worker: the start of the write in flight, in nanoseconds since
    /// the origin plus one; 0 when idle.
    in_flight: Vec<AtomicU64>,
}

impl Timeline {
    pub fn new(workers: usize) -> Self {
        Timeline {
            origin: Instant::now(),
            done: Mutex::new(Vec::with_capacity(16 * 1024)),
            in_flight: (0..workers).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Marks worker `worker`'s write as started; returns its start.
    pub fn begin(&self, worker: usize) -> Duration {
        let start = self.now();
        self.in_flight[worker].store(start.as_nanos() as u64 + 1, Ordering::Relaxed);
        start
    }

    pub fn end(&self, worker: usize, start: Duration, failed: Option<String>) {
        let end = self.now();
        self.in_flight[worker].store(0, Ordering::Relaxed);
        self.done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Done { start, end, failed });
    }

    /// Everything finished, plus one failed record ending at `until` for
    /// every write still in flight.
    pub fn finish(&self, until: Duration) -> Vec<Done> {
        let mut all = self.done.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for slot in &self.in_flight {
            let started = slot.load(Ordering::Relaxed);
            if started != 0 {
                all.push(Done {
                    start: Duration::from_nanos(started - 1),
                    end: until,
                    failed: Some("still in flight at the end".into()),
                });
            }
        }
        all.sort_by_key(|d| d.end);
        all
    }
}

/// The earliest `t >= from` such that the second `[t, t + 1 s]` ends by
/// `until`, has at least one successful write ending in it, no failed write
/// ending in it, and overlaps no write that took longer than [`SLOW`].
/// Returned as `t - from`, at 1 ms resolution (rounded up).
pub fn first_clean_second(done: &[Done], from: Duration, until: Duration) -> Option<Duration> {
    if until <= from + Duration::from_secs(1) {
        return None;
    }
    let ms = |d: Duration| -> usize { (d.saturating_sub(from).as_millis()) as usize };
    let buckets = ms(until) + 1;
    let mut bad = vec![0u32; buckets + 1];
    let mut ok = vec![0u32; buckets + 1];
    for d in done {
        if d.end < from && d.latency() <= SLOW {
            continue;
        }
        let spoiled = if d.latency() > SLOW {
            Some((ms(d.start), ms(d.end)))
        } else if !d.ok() {
            Some((ms(d.end), ms(d.end)))
        } else {
            None
        };
        match spoiled {
            Some((a, b)) => {
                for slot in &mut bad[a.min(buckets)..=b.min(buckets)] {
                    *slot += 1;
                }
            }
            None if d.end >= from => ok[ms(d.end).min(buckets)] += 1,
            None => {}
        }
    }
    let prefix = |v: &[u32]| -> Vec<u64> {
        let mut p = Vec::with_capacity(v.len() + 1);
        p.push(0u64);
        for x in v {
            p.push(p.last().copied().unwrap_or(0) + u64::from(*x));
        }
        p
    };
    let (bad, ok) = (prefix(&bad), prefix(&ok));
    // Window [b, b + 999] in 1 ms buckets; the bucket of a failure at the
    // exact start counts (rounding up by at most 1 ms).
    let last = ms(until);
    (0..=last.saturating_sub(1000)).find_map(|b| {
        let e = b + 1000;
        (bad[e] - bad[b] == 0 && ok[e] - ok[b] > 0).then(|| Duration::from_millis(b as u64))
    })
}

/// Failures ending at or after `from`, by kind, most frequent first.
pub fn failures_by_kind(done: &[Done], from: Duration) -> Vec<(String, usize)> {
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for d in done.iter().filter(|d| d.end >= from) {
        if let Some(kind) = &d.failed {
            *kinds.entry(kind.clone()).or_default() += 1;
        }
    }
    let mut kinds: Vec<_> = kinds.into_iter().collect();
    kinds.sort_by_key(|kind| std::cmp::Reverse(kind.1));
    kinds
}

pub fn failed_between(done: &[Done], from: Duration, until: Duration) -> usize {
    done.iter()
        .filter(|d| !d.ok() && d.end >= from && d.end < until)
        .count()
}

pub fn ok_between(done: &[Done], from: Duration, until: Duration) -> usize {
    done.iter()
        .filter(|d| d.ok() && d.end >= from && d.end < until)
        .count()
}

/// The slowest write that ended at or after `from`.
pub fn max_latency_after(done: &[Done], from: Duration) -> Duration {
    done.iter()
        .filter(|d| d.end >= from)
        .map(Done::latency)
        .max()
        .unwrap_or_default()
}

/// A short name for a `sqlx::Error`: the SQLSTATE (or SQLite code) of a
/// database error (MySQL's: its error number), the I/O error kind, or the
/// variant.
pub fn kind_of(err: &sqlx::Error) -> String {
    match err {
        // MySQL's SQLSTATE is generic (`HY000` for a read-only server):
        // its error number tells the errors apart.
        sqlx::Error::Database(db) => match db.try_downcast_ref::<MySqlDatabaseError>() {
            Some(my) => format!("db {}", my.number()),
            None => db
                .code()
                .map_or_else(|| "db".into(), |code| format!("db {code}")),
        },
        sqlx::Error::Io(io) => format!("io {:?}", io.kind()),
        sqlx::Error::PoolClosed => "PoolClosed".into(),
        sqlx::Error::PoolTimedOut => "PoolTimedOut".into(),
        sqlx::Error::Protocol(_) => "Protocol".into(),
        other => {
            let debug = format!("{other:?}");
            debug
                .split(|c: char| !c.is_alphanumeric())
                .next()
                .unwrap_or("other")
                .to_string()
        }
    }
}

/// Median (upper) and maximum of `values`; `None` stands for "never" and
/// sorts last.
pub fn median_max(values: &[Option<Duration>]) -> (Option<Duration>, Option<Duration>) {
    let mut sorted: Vec<Option<Duration>> = values.to_vec();
    sorted.sort_by(|a, b| match (a, b) {
        (Some(a), Some(b)) => a.cmp(b),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    });
    let median = sorted.get(sorted.len() / 2).copied().flatten();
    let max = sorted.last().copied().flatten();
    (median, max)
}

pub fn median_max_count(values: &[usize]) -> (usize, usize) {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    (
        sorted.get(sorted.len() / 2).copied().unwrap_or(0),
        sorted.last().copied().unwrap_or(0),
    )
}

pub fn secs(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!("{:.2} s", d.as_secs_f64()),
        None => "never".into(),
    }
}
