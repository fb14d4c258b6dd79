//! What the parts share: the processes they start and stop, the numbers
//! they read from tools' output and URLs, and the results table.

use super::*;

pub(crate) fn http_addr_from_log(serve: &mut Child) -> anyhow::Result<String> {
    let stdout = BufReader::new(serve.stdout.take().context("serve's stdout")?);
    let (tx, rx) = std::sync::mpsc::channel();
    // Reads the log to its end so serve never blocks on a full pipe.
    // Only the line that can hold the address is parsed: the harness should
    // take as little of the machine as it can from the service it measures.
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if line.contains("start HTTP server")
                && let Ok(event) = serde_json::from_str::<serde_json::Value>(&line)
            {
                let _ = tx.send(event["addr"].as_str().unwrap_or_default().to_owned());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .context("serve did not log its address")
}

pub(crate) async fn wait_ready(addr: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    for _ in 0..300 {
        if let Ok(r) = client.get(format!("http://{addr}/readyz")).send().await
            && r.status() == 200
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("serve not ready after 30 s")
}

/// SIGTERM, then SIGKILL if it is still there after 15 s.
pub(crate) fn stop(child: &mut Child) {
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    for _ in 0..150 {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits for `child` (its output read to the end), killing it after `limit`.
pub(crate) fn wait_bounded(child: Child, limit: Duration) -> anyhow::Result<std::process::Output> {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => Ok(out?),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            bail!("gave up after {limit:?}")
        }
    }
}

/// VmHWM (peak resident set) of a process, in KiB.
pub(crate) fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    find_number(&status, "VmHWM:")
        .map(|v| v as u64)
        .context("VmHWM in /proc status")
}

pub(crate) fn find_number(text: &str, after: &str) -> Option<f64> {
    let rest = &text[text.find(after)? + after.len()..];
    rest.split_whitespace()
        .next()?
        .trim_end_matches(',')
        .parse()
        .ok()
}

pub(crate) fn with_path(url: &str, path: &str) -> anyhow::Result<String> {
    let mut url = url::Url::parse(url)?;
    url.set_path(path);
    Ok(url.into())
}

pub(crate) fn url_host_port(url: &str) -> anyhow::Result<(String, u16)> {
    let url = url::Url::parse(url)?;
    Ok((
        url.host_str().context("host")?.to_owned(),
        url.port().unwrap_or(6379),
    ))
}

pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("machine: {cores} cores, {cpu}")
}

/// The middle value (the upper one of an even count).
pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub(crate) fn per_s(v: f64) -> String {
    let s = format!("{v:.0}");
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

pub(crate) fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

pub(crate) fn table(rows: &[Row]) -> String {
    let mut t = String::from(
        "| measure | result | limit, same run | ratio | target | met |\n|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} |",
            r.what,
            r.ours,
            r.limit,
            r.ratio.map(|x| format!("{x:.2}")).unwrap_or_default(),
            r.target,
            match r.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "",
            }
        );
    }
    t
}

/// A hash in argon2's format, for bench users nobody logs in as.
pub(crate) const BENCH_HASH: &str =
    "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";

/// A create_user without the HTTP and the hashing: the same transaction
/// (the user row, then a task of `kind` on the critical queue, through the
/// outbox, which wakes the relays after the commit). Returns the task's id.
pub(crate) async fn sign_up(
    outbox: &Outbox,
    name: &str,
    kind: &'static str,
) -> anyhow::Result<TaskId> {
    let task = NewTask {
        kind,
        queue: "critical".into(),
        payload: serde_json::json!({ "username": name }),
        max_retry: 3,
        timeout: Duration::from_secs(30),
        process_in: Duration::ZERO,
        request_id: None,
    };
    let signup = SignUp::parse(
        name.to_owned(),
        "Bench User".into(),
        format!("{name}@example.com"),
        "bench-password".into(),
    )
    .map_err(|v| anyhow::anyhow!("bench user {name}: {v:?}"))?;
    let mut tx = outbox.begin().await?;
    repo::insert(&mut tx, &signup, BENCH_HASH).await?;
    let id = tx.insert(&task).await?;
    tx.commit().await?;
    Ok(id)
}

/// The CPU time (user + system, seconds) process `pid` has used.
pub(crate) fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').context("/proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are the 14th and 15th fields, 12th and 13th after ")".
    Ok((ticks(11) + ticks(12)) / 100.0)
}

/// The CPU time (seconds, all cores) the machine has spent busy: user,
/// nice, system, irq and softirq, from /proc/stat.
pub(crate) fn machine_busy_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("/proc/stat")?;
    let ticks: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    // user nice system idle iowait irq softirq: all but idle and iowait.
    let busy = [0, 1, 2, 5, 6]
        .iter()
        .filter_map(|&i| ticks.get(i))
        .sum::<f64>();
    Ok(busy / 100.0)
}
