//! The fault suite's accounting: what every user got, and the report (one
//! table, the timeline, and what the processes logged about the faults).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use simplebank::queue::{Broker, TaskState};

use crate::common::{SmtpProcess, TestEnv};
use crate::load::Answers;
use crate::timeline::Faults;
use crate::{LOAD_FOR, RATE, SMTP_TIMEOUT};

/// What every user got, counted.
pub struct Tally {
    pub users: usize,
    pub outbox_rows: i64,
    pub delivered: u64,
    pub duplicates: u64,
    pub attributed: u64,
    pub lost: u64,
    pub refused: u64,
    pub archived_refused: u64,
    pub archived_other: u64,
    /// Archived with a last error about the sender (connect, AUTH, MAIL FROM).
    pub archived_sender_side: u64,
    /// Copies beyond one whose first copy went out while the final reply
    /// came late (or within its delay after).
    pub late_reply_copies: u64,
}

impl Tally {
    /// Accounting, per user: the users, their tasks and what the SMTP server
    /// received.
    pub async fn count(
        env: &TestEnv,
        broker: &Broker,
        smtp: &SmtpProcess,
        faults: &Faults,
    ) -> Self {
        let killed_at = faults.killed_at;
        let users: Vec<(String, String)> = sqlx::query_as("SELECT username, email FROM users")
            .fetch_all(&env.pool)
            .await
            .unwrap();
        let outbox_rows = env
            .count("SELECT count(*) FROM outbox WHERE kind = 'task:send_verify_email'")
            .await;
        let task_of: HashMap<String, i64> =
            sqlx::query_as::<_, (String, i64)>("SELECT payload->>'username', id FROM outbox")
                .fetch_all(&env.pool)
                .await
                .unwrap()
                .into_iter()
                .collect();
        let archived_tasks = broker
            .list("critical", TaskState::Archived, 0, 100_000)
            .await
            .unwrap();
        let archived: Vec<i64> = archived_tasks.iter().map(|t| t.id.get()).collect();
        let archived_sender_side = archived_tasks
            .iter()
            .filter(|t| {
                let e = t.last_error.as_deref().unwrap_or_default();
                ["at connect", "at AUTH", "at MAIL FROM"]
                    .iter()
                    .any(|p| e.contains(p))
            })
            .count() as u64;
        let (late_from, late_to) = faults.late_reply;
        let late_to = late_to + SMTP_TIMEOUT + Duration::from_secs(2);
        let mut late_reply_copies = 0u64;
        let received = received_by_recipient(smtp);
        let (mut delivered, mut duplicates, mut attributed, mut lost) = (0u64, 0u64, 0u64, 0u64);
        let (mut refused, mut archived_refused, mut archived_other) = (0u64, 0u64, 0u64);
        // A duplicate a crash explains: one extra copy, the first having arrived
        // within the send limit and ledger allowance before serve a was killed,
        // for a task a never logged as processed (its ledger row never came).
        let crash_window =
            SMTP_TIMEOUT + simplebank::tasks::LEDGER_ALLOWANCE + Duration::from_secs(1);
        let processed_by_a = |task: i64| {
            let id = format!("\"task_id\":{task}");
            faults
                .a_before_kill
                .lines()
                .any(|l| l.contains("processed task") && l.contains(&id))
        };
        for (username, email) in &users {
            let task = task_of[username];
            let is_archived = archived.contains(&task);
            if email.starts_with("refused") {
                refused += 1;
                archived_refused += u64::from(is_archived);
                assert!(
                    !received.contains_key(email),
                    "{email} was refused, yet received mail"
                );
                continue;
            }
            let mut copies = received.get(email).cloned().unwrap_or_default();
            copies.sort();
            match copies.len() {
                0 if is_archived => archived_other += 1,
                0 => lost += 1,
                n => {
                    delivered += 1;
                    let extra = n as u64 - 1;
                    duplicates += extra;
                    let first = copies[0];
                    let in_window = first <= killed_at + Duration::from_millis(500)
                        && killed_at.duration_since(first).unwrap_or_default() <= crash_window;
                    if extra == 1 && in_window && !processed_by_a(task) {
                        attributed += extra;
                    } else if first >= late_from && first <= late_to {
                        late_reply_copies += extra;
                    }
                }
            }
        }
        Self {
            users: users.len(),
            outbox_rows,
            delivered,
            duplicates,
            attributed,
            lost,
            refused,
            archived_refused,
            archived_other,
            archived_sender_side,
            late_reply_copies,
        }
    }

    /// The report's table: the load's answers (`other` those neither 200
    /// nor 503) and this tally.
    pub fn table(
        &self,
        offered: u64,
        answers: &Answers,
        other: &str,
        settled_in: Duration,
    ) -> String {
        let count = |code| answers.by_status.get(&code).copied().unwrap_or(0);
        let Self {
            users,
            outbox_rows,
            delivered,
            duplicates,
            attributed,
            lost,
            refused,
            archived_refused,
            archived_other,
            archived_sender_side,
            late_reply_copies,
        } = self;
        let mut table = String::new();
        table.push_str("| sign-ups offered | 200 | 503 | other status | no answer | users created | outbox rows | emails delivered (users) | copies beyond one | of which from a crash between SMTP accept and its record | of which during the late final reply | lost | refused (550), archived | archived for sender-side reasons | other archived | settled after load |\n");
        table.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        table.push_str(&format!(
        "| {offered} | {} | {} | {other} | {} | {} | {outbox_rows} | {delivered} | {duplicates} | {attributed} | {late_reply_copies} | {lost} | {refused}, {archived_refused} | {archived_sender_side} | {archived_other} | {:.0} s |\n",
        count(200),
        count(503),
        answers.no_answer,
        users,
        settled_in.as_secs_f64(),
    ));
        table
    }
}

/// Prints the timeline and `table`, what the faults did inside the
/// processes (from their `logs`), and keeps the report in faults.md.
pub fn print_report(offered: u64, timeline: &[String], table: &str, logs: [&Path; 2]) {
    println!(
        "\nfault suite: {} sign-ups offered at {RATE}/s for {} s\n",
        offered,
        LOAD_FOR.as_secs()
    );
    for line in timeline {
        println!("{line}");
    }
    println!("\n{table}");
    // What the faults did inside the processes, from their logs.
    let events = [
        ("task failed; will retry", "failed attempts, retried"),
        ("recovered tasks whose lease expired", "lease recoveries"),
        ("lease lost", "runs stopped by a lost lease"),
        ("task handed back to pending", "tasks handed back"),
        ("already completed", "deliveries skipped by the ledger"),
        ("relay cannot forward", "relay outages"),
        ("queue refuses tasks", "queues held back"),
        (
            "keep finding what they need down",
            "breaker openings (sender refused, server away)",
        ),
        (
            "handed back, no attempt counted",
            "sends handed back uncounted (sender side)",
        ),
        ("outcome unknown", "sends with an unknown outcome"),
    ];
    let logs: String = logs
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect();
    for (needle, what) in events {
        println!("{what}: {}", logs.matches(needle).count());
    }
    let internal: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("internal error"))
        .collect();
    println!("internal errors (500): {}", internal.len());
    for line in internal.iter().take(3) {
        println!("  {line}");
    }
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("faults.md");
    let _ = std::fs::write(&out, format!("{}\n\n{table}", timeline.join("\n")));
    println!("(also in {})", out.display());
}

/// When each recipient was sent a message, per recipient.
fn received_by_recipient(smtp: &SmtpProcess) -> HashMap<String, Vec<SystemTime>> {
    let mut received: HashMap<String, Vec<SystemTime>> = HashMap::new();
    for (at, raw) in smtp.received() {
        let to = mail_parser::MessageParser::default()
            .parse(raw.as_bytes())
            .and_then(|m| Some(m.to()?.first()?.address()?.to_owned()))
            .expect("a message with a recipient");
        received.entry(to).or_default().push(at);
    }
    received
}
