//! The fault suite's load: steady sign-ups alternating between the two
//! `serve` processes, and what they answered.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::{LOAD_FOR, RATE, REFUSED_EVERY};

/// What the load saw.
#[derive(Default)]
pub struct Answers {
    pub by_status: BTreeMap<u16, u64>,
    pub no_answer: u64,
    /// The first few answers other than 200 and 503, for the report.
    pub samples: Vec<String>,
}

/// The load: RATE sign-ups a second for LOAD_FOR, alternating between the
/// two `bases`, their answers noted in `answers`. Ends with the number of
/// sign-ups offered, once every one was answered.
pub fn spawn_load(
    answers: Arc<Mutex<Answers>>,
    http: reqwest::Client,
    bases: [String; 2],
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let requests = tokio_util::task::TaskTracker::new();
        let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE));
        let started = Instant::now();
        let mut n: u64 = 0;
        while started.elapsed() < LOAD_FOR {
            tick.tick().await;
            let email = if n % REFUSED_EVERY == REFUSED_EVERY - 1 {
                format!("refused_{n}@example.com")
            } else {
                format!("f{n}@example.com")
            };
            let body = serde_json::json!({
                "username": format!("fault{n}"),
                "full_name": "Fault Test",
                "email": email,
                "password": "secret123",
            });
            let url = format!("{}/v1/create_user", bases[(n % 2) as usize]);
            let (answers, http) = (answers.clone(), http.clone());
            requests.spawn(async move {
                let res = http.post(url).json(&body).send().await;
                let answer = match res {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let text = r.text().await.unwrap_or_default();
                        Some((status, text))
                    }
                    Err(_) => None,
                };
                let mut answers = answers.lock().unwrap();
                match answer {
                    Some((status, text)) => {
                        *answers.by_status.entry(status).or_default() += 1;
                        if ![200, 503].contains(&status) && answers.samples.len() < 5 {
                            answers.samples.push(format!("{status} {text}"));
                        }
                    }
                    None => answers.no_answer += 1,
                }
            });
            n += 1;
        }
        requests.close();
        requests.wait().await;
        n
    })
}

/// The answers other than 200 and 503, as "n x status, ..."; "0" if none.
pub fn other_statuses(answers: &Answers) -> String {
    let other: Vec<String> = answers
        .by_status
        .iter()
        .filter(|(c, _)| ![200, 503].contains(*c))
        .map(|(c, n)| format!("{n} x {c}"))
        .collect();
    if other.is_empty() {
        "0".to_owned()
    } else {
        other.join(", ")
    }
}
