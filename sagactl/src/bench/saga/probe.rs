//! What a run costs, read from the machine: CPU seconds per component (from
//! `/proc`) and Postgres transactions (from `pg_stat_database`).
//!
//! The services run in this process on a runtime of their own whose threads
//! are named [`SERVICE_THREADS`]; every other thread of this process is the
//! load generator. Postgres, NATS and Redis are found by process name.

use std::collections::BTreeMap;

use sqlx::PgPool;

/// The name of the services' runtime threads.
pub const SERVICE_THREADS: &str = "saga-services";

/// Clock ticks per second of `/proc` times (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// CPU seconds used so far by each thread of this process and each process
/// of a component, by (component, thread or process id).
#[derive(Clone, Debug, Default)]
pub struct Cpu(pub BTreeMap<(&'static str, u32), f64>);

/// (id, command name, user + system ticks) of a `/proc/.../stat` line.
fn stat_line(text: &str) -> Option<(u32, &str, u64)> {
    // "pid (comm) state ppid ..."; comm may hold spaces and parentheses.
    let open = text.find('(')?;
    let id: u32 = text[..open].trim().parse().ok()?;
    let close = text.rfind(')')?;
    let comm = &text[open + 1..close];
    let fields: Vec<&str> = text[close + 2..].split_whitespace().collect();
    // After the comm: state is field 3 of the line; utime 14 and stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((id, comm, utime + stime))
}

fn component(comm: &str) -> Option<&'static str> {
    match comm {
        "postgres" => Some("postgres"),
        "nats-server" => Some("nats-server"),
        "redis-server" => Some("redis-server"),
        _ => None,
    }
}

impl Cpu {
    /// Reads the CPU time of every component now.
    pub fn now() -> Self {
        let mut by = BTreeMap::new();
        let mut add = |who: &'static str, id: u32, ticks: u64| {
            by.insert((who, id), ticks as f64 / TICKS_PER_SEC);
        };
        if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
            for task in tasks.flatten() {
                let Ok(text) = std::fs::read_to_string(task.path().join("stat")) else {
                    continue;
                };
                if let Some((id, comm, ticks)) = stat_line(&text) {
                    let who = if comm.starts_with(SERVICE_THREADS) {
                        "services"
                    } else {
                        "load generator"
                    };
                    add(who, id, ticks);
                }
            }
        }
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for p in procs.flatten() {
                let Ok(text) = std::fs::read_to_string(p.path().join("stat")) else {
                    continue;
                };
                if let Some((id, who, ticks)) =
                    stat_line(&text).and_then(|(id, comm, t)| Some((id, component(comm)?, t)))
                {
                    add(who, id, ticks);
                }
            }
        }
        Self(by)
    }

    /// CPU seconds each component used between `earlier` and this
    /// reading, thread by thread and process by process: one that started
    /// in between counts from zero; one that ended in between is not seen,
    /// so what it used in between is missing (and nothing else is).
    pub fn since(&self, earlier: &Cpu) -> BTreeMap<&'static str, f64> {
        let mut by: BTreeMap<&'static str, f64> = BTreeMap::new();
        for (key, s) in &self.0 {
            let before = earlier.0.get(key).copied().unwrap_or(0.0);
            *by.entry(key.0).or_default() += (s - before).max(0.0);
        }
        by
    }
}

/// Transactions committed or rolled back in `database` so far (Postgres
/// reports them at most about a second late).
pub async fn transactions(pool: &PgPool, database: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = $1",
    )
    .bind(database)
    .fetch_one(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_its_name_and_cpu_ticks() {
        let line = "4242 (saga-services 1) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 \
                    100 0 0";
        assert_eq!(stat_line(line), Some((4242, "saga-services 1", 300)));
        let odd = "7 (a) b) R 1 7 7 0 -1 0 0 0 0 0 5 6 0";
        assert_eq!(stat_line(odd), Some((7, "a) b", 11)));
        assert_eq!(stat_line("garbage"), None);
    }

    #[test]
    fn this_process_is_seen() {
        let cpu = Cpu::now();
        assert!(
            cpu.0.keys().any(|(who, _)| *who == "load generator"),
            "{cpu:?}"
        );
    }

    #[test]
    fn a_process_that_ended_takes_none_of_the_others_time_with_it() {
        // At the start: postgres 100 used 9 s, 101 used 1 s. At the end:
        // 100 has ended, 101 used 2 s more, 102 started and used 0.5 s.
        let before = Cpu(BTreeMap::from([
            (("postgres", 100), 9.0),
            (("postgres", 101), 1.0),
        ]));
        let after = Cpu(BTreeMap::from([
            (("postgres", 101), 3.0),
            (("postgres", 102), 0.5),
        ]));
        assert_eq!(after.since(&before), BTreeMap::from([("postgres", 2.5)]));
    }
}
