//! otpgate-loadtest: drives otpgate's real flows and reports throughput, latency per step and
//! errors by status, as a table and as JSON.
//!
//! Two load models:
//! - **closed** (`--concurrency N`): N workers, each starting its next flow when the last one
//!   ends — the maximum throughput;
//! - **open** (`--rate R`): flows start at a constant R per second whatever the answers do, and a
//!   flow's latency counts from when it was *due*, so a slow server cannot hide behind a
//!   throttled generator (no coordinated omission). Flows that would exceed `--max-in-flight`
//!   are counted as dropped, never silently skipped. A thread of its own starts each flow at its
//!   time (the runtime's timer ticks in whole milliseconds); how late flows started anyway is
//!   reported as `start lag`, and counts in the flow latency.
//!
//! The generator runs on one worker thread by default (`--threads`) and reports its own CPU
//! over the measured phase (`generator_cpu_ticks`), and how long its threads waited for a core
//! (`generator_wait_ns`): on one machine it competes with what it measures.
//!
//! Every offered flow ends up in exactly one of four counts: completed, failed, dropped (open
//! model, over `--max-in-flight`) or unfinished (still running when the `--drain` time after the
//! schedule ran out); the four add up to the offered number. Rates divide by the scheduled
//! `--duration`, not by the time the run took. Flows due during `--warmup` run but are left out
//! of every figure (reported apart). The result is **invalid** — the report says so and the exit
//! status is 1 — when a flow failed, was dropped or did not finish (unless `--allow-errors`), or
//! a code was accepted twice (always). A figure that was not measured is `null` in the JSON and
//! `n/a` in the table.
//!
//! Scenarios (`--scenario`): `login` (login → verify: the code is read from the response, so
//! the server runs with `EXPOSE_OTP=true`), `full` (login → verify → me → refresh → logout),
//! `verify` (login, three wrong codes, the right one), `refresh` (login → verify → five
//! refreshes), `webhook` (login intent → signed WhatsApp message → poll), `health`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use rand::RngExt;

mod http;
use serde_json::{Value, json};
use sha2::Sha256;

/// mimalloc, as in otpgate: in the open model each flow is a task of its own, whose future
/// glibc's allocator serves through aligned allocation and heap growth (`sysmalloc` showed in
/// the generator's profile); measured: 69–71 against 70–72 µs of generator CPU per flow.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "\
usage: otpgate-loadtest [options]
  --target URL          base URL (default http://127.0.0.1:8000)
  --scenario NAME       login | full | verify | refresh | webhook | health (default login)
  --rate R              open model: start R flows per second
  --concurrency N       closed model: N concurrent flows (default 64; ignored with --rate)
  --duration SECONDS    how long to start flows, measured (default 10)
  --warmup SECONDS      start flows this long first, left out of the figures (default 0)
  --drain SECONDS       after the schedule, wait this long for flows in flight (default 30);
                        flows still running then count as unfinished
  --max-in-flight N     open model: flows beyond this many in flight are dropped (default 20000)
  --threads N           the generator's worker threads (default 1: it shares the cores with
                        what it measures; one thread does ~10k requests/s on its own)
  --users N             draw phones from N numbers (returning users); default: a new number per flow
  --replay-check        after each successful verify, present the same code again: it must fail
  --webhook-secret S    WHATSAPP_WEBHOOK_SECRET of the server (webhook scenario)
  --allow-errors        failed, dropped or unfinished flows do not make the result invalid
                        (chaos runs check the failures themselves); a code accepted twice still does
  --json FILE           also write the report as JSON
  --quiet               no table, only the JSON file
exit status: 0 valid result, 1 invalid result (see the report), 2 bad arguments";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Login,
    Full,
    Verify,
    Refresh,
    Webhook,
    Health,
}

impl Scenario {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "login" => Scenario::Login,
            "full" => Scenario::Full,
            "verify" => Scenario::Verify,
            "refresh" => Scenario::Refresh,
            "webhook" => Scenario::Webhook,
            "health" => Scenario::Health,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Scenario::Login => "login",
            Scenario::Full => "full",
            Scenario::Verify => "verify",
            Scenario::Refresh => "refresh",
            Scenario::Webhook => "webhook",
            Scenario::Health => "health",
        }
    }
}

#[derive(Debug, Clone)]
struct Args {
    target: String,
    scenario: Scenario,
    rate: Option<f64>,
    concurrency: usize,
    duration: Duration,
    warmup: Duration,
    drain: Duration,
    allow_errors: bool,
    max_in_flight: usize,
    threads: usize,
    users: Option<u64>,
    replay_check: bool,
    webhook_secret: String,
    json: Option<String>,
    quiet: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        target: "http://127.0.0.1:8000".into(),
        scenario: Scenario::Login,
        rate: None,
        concurrency: 64,
        duration: Duration::from_secs(10),
        warmup: Duration::ZERO,
        drain: Duration::from_secs(30),
        allow_errors: false,
        max_in_flight: 20_000,
        threads: 1,
        users: None,
        replay_check: false,
        webhook_secret: String::new(),
        json: None,
        quiet: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match flag.as_str() {
            "--target" => args.target = value("--target")?.trim_end_matches('/').to_string(),
            "--scenario" => {
                let name = value("--scenario")?;
                args.scenario =
                    Scenario::parse(&name).ok_or_else(|| format!("unknown scenario {name:?}"))?;
            }
            "--rate" => {
                let rate: f64 = number(&value("--rate")?)?;
                // Finite, and at least one flow a day (a flow's due time must be a duration).
                if !rate.is_finite() || rate < 1.0 / 86_400.0 {
                    return Err("--rate must be a positive number (at least one flow a day)".into());
                }
                args.rate = Some(rate);
            }
            "--concurrency" => args.concurrency = number(&value("--concurrency")?)?,
            "--duration" => args.duration = seconds(&value("--duration")?)?,
            "--warmup" => args.warmup = seconds(&value("--warmup")?)?,
            "--drain" => args.drain = seconds(&value("--drain")?)?,
            "--allow-errors" => args.allow_errors = true,
            "--max-in-flight" => args.max_in_flight = number(&value("--max-in-flight")?)?,
            "--threads" => args.threads = number::<usize>(&value("--threads")?)?.max(1),
            "--users" => args.users = Some(number(&value("--users")?)?),
            "--replay-check" => args.replay_check = true,
            "--webhook-secret" => args.webhook_secret = value("--webhook-secret")?,
            "--json" => args.json = Some(value("--json")?),
            "--quiet" => args.quiet = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    if args.concurrency == 0 || args.users == Some(0) {
        return Err("--concurrency and --users must be positive".into());
    }
    if args.duration.is_zero() {
        return Err("--duration must be positive".into());
    }
    Ok(args)
}

fn number<T: std::str::FromStr>(text: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not a valid number"))
}

/// A non-negative, finite number of seconds.
fn seconds(text: &str) -> Result<Duration, String> {
    let value: f64 = number(text)?;
    Duration::try_from_secs_f64(value).map_err(|_| format!("{text:?} is not a valid duration"))
}

/// Latencies and statuses of one step (`login`, `verify`, …).
#[derive(Default)]
struct StepStats {
    /// Microseconds, every answered request.
    latencies: Vec<u32>,
    statuses: BTreeMap<u16, u64>,
    /// Connection failures and timeouts.
    transport_errors: u64,
    /// Microseconds until each transport error.
    transport_latencies: Vec<u32>,
}

/// Where every offered flow went. `offered = completed + failed + dropped + unfinished`, where
/// unfinished is what was still running when the report was taken.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    offered: u64,
    completed: u64,
    failed: u64,
    dropped: u64,
}

/// Everything a run measures.
struct Recorder {
    steps: Mutex<BTreeMap<&'static str, StepStats>>,
    /// Flow latency (from when the flow was due), microseconds: completed flows.
    flows: Mutex<Vec<u32>>,
    /// The same for failed flows (until the failure).
    failed_flows: Mutex<Vec<u32>>,
    /// Completed flows over 10 ms: when each was due (ms into the measured phase) and its
    /// latency (µs); the first 20,000.
    slow_flows: Mutex<Vec<(u64, u32)>>,
    /// From when each flow was due until it started (the generator's own lateness), microseconds.
    start_lags: Mutex<Vec<u32>>,
    /// When the measured phase starts (after the warm-up): the timeline's zero.
    measured_from: Instant,
    /// Measured flows; closed (no more updates) when the report is taken.
    counts: Mutex<Counts>,
    closed: AtomicBool,
    /// Flows due during the warm-up: offered, completed, failed, dropped.
    warmup: Mutex<Counts>,
    /// A verify accepted a code that had already been accepted once.
    double_accepts: AtomicU64,
    failures: Mutex<BTreeMap<String, u64>>,
    /// Per second since the start: completed flows, failed flows, 503 answers, other 5xx, and
    /// completed flows that took longer than 10 ms (where the tail sits in time).
    timeline: Mutex<Vec<[u64; 5]>>,
}

tokio::task_local! {
    /// Whether the flow running in this task is measured (not a warm-up flow).
    static MEASURED: bool;
}

fn measured() -> bool {
    MEASURED.try_with(|m| *m).unwrap_or(true)
}

fn micros(elapsed: Duration) -> u32 {
    u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX)
}

impl Recorder {
    fn new(measured_from: Instant) -> Self {
        Self {
            steps: Mutex::new(BTreeMap::new()),
            flows: Mutex::new(Vec::new()),
            failed_flows: Mutex::new(Vec::new()),
            slow_flows: Mutex::new(Vec::new()),
            start_lags: Mutex::new(Vec::new()),
            measured_from,
            counts: Mutex::new(Counts::default()),
            closed: AtomicBool::new(false),
            warmup: Mutex::new(Counts::default()),
            double_accepts: AtomicU64::new(0),
            failures: Mutex::new(BTreeMap::new()),
            timeline: Mutex::new(Vec::new()),
        }
    }

    /// Whether figures may still change: measured and not yet reported.
    fn recording(&self) -> bool {
        measured() && !self.closed.load(Ordering::Acquire)
    }

    fn tick(&self, column: usize) {
        let second = usize::try_from(self.measured_from.elapsed().as_secs()).unwrap_or(usize::MAX);
        let mut timeline = lock(&self.timeline);
        if timeline.len() <= second {
            timeline.resize(second + 1, [0; 5]);
        }
        timeline[second][column] += 1;
    }

    fn request(&self, step: &'static str, latency: Duration, status: Option<u16>) {
        if !self.recording() {
            return;
        }
        {
            let mut steps = lock(&self.steps);
            let stats = steps.entry(step).or_default();
            match status {
                Some(status) => {
                    stats.latencies.push(micros(latency));
                    *stats.statuses.entry(status).or_default() += 1;
                }
                None => {
                    stats.transport_errors += 1;
                    stats.transport_latencies.push(micros(latency));
                }
            }
        }
        match status {
            Some(503) => self.tick(2),
            Some(s) if s >= 500 => self.tick(3),
            _ => {}
        }
    }

    /// A flow due at `due` starts now.
    fn started(&self, due: Instant) {
        if self.recording() {
            lock(&self.start_lags).push(micros(due.elapsed()));
        }
    }

    /// A flow was due at `due`; `measured` is false for warm-up flows.
    fn offered(&self, measured: bool) {
        if measured {
            lock(&self.counts).offered += 1;
        } else {
            lock(&self.warmup).offered += 1;
        }
    }

    fn dropped(&self, measured: bool) {
        if measured {
            let mut counts = lock(&self.counts);
            if !self.closed.load(Ordering::Acquire) {
                counts.dropped += 1;
            }
        } else {
            lock(&self.warmup).dropped += 1;
        }
    }

    fn flow_done(&self, due: Instant, outcome: Result<(), String>) {
        if !measured() {
            let mut warmup = lock(&self.warmup);
            match outcome {
                Ok(()) => warmup.completed += 1,
                Err(_) => warmup.failed += 1,
            }
            return;
        }
        let latency = micros(due.elapsed());
        {
            // Counted under the lock that `close` takes: a flow is either in the report or
            // unfinished, never both.
            let mut counts = lock(&self.counts);
            if self.closed.load(Ordering::Acquire) {
                return;
            }
            match outcome {
                Ok(()) => {
                    counts.completed += 1;
                    lock(&self.flows).push(latency);
                }
                Err(ref why) => {
                    counts.failed += 1;
                    lock(&self.failed_flows).push(latency);
                    *lock(&self.failures).entry(why.clone()).or_default() += 1;
                }
            }
        }
        self.tick(if outcome.is_ok() { 0 } else { 1 });
        if outcome.is_ok() && latency > 10_000 {
            self.tick(4);
            let at = due
                .saturating_duration_since(self.measured_from)
                .as_millis();
            let mut slow = lock(&self.slow_flows);
            if slow.len() < 20_000 {
                slow.push((u64::try_from(at).unwrap_or(u64::MAX), latency));
            }
        }
    }

    /// Stops recording and returns the final counts.
    fn close(&self) -> Counts {
        let counts = lock(&self.counts);
        self.closed.store(true, Ordering::Release);
        *counts
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The HTTP side: keep-alive connections to the target.
struct Driver {
    http: http::Http,
    recorder: Arc<Recorder>,
    phones: AtomicU64,
    phone_base: u64,
    users: Option<u64>,
    replay_check: bool,
    webhook_secret: String,
}

/// An answer: status and JSON body (`Null` when the body is not JSON).
struct Answer {
    status: u16,
    body: Value,
}

impl Driver {
    async fn call(
        &self,
        step: &'static str,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<Answer, String> {
        let body = body.unwrap_or_default();
        let started = Instant::now();
        let sent = tokio::time::timeout(
            Duration::from_secs(30),
            self.http.send(method, path, headers, &body),
        )
        .await;
        match sent {
            Ok(Ok(reply)) => {
                self.recorder
                    .request(step, started.elapsed(), Some(reply.status));
                Ok(Answer {
                    status: reply.status,
                    body: serde_json::from_slice(&reply.body).unwrap_or(Value::Null),
                })
            }
            Ok(Err(_)) | Err(_) => {
                self.recorder.request(step, started.elapsed(), None);
                Err(format!("{step} transport"))
            }
        }
    }

    async fn post(&self, step: &'static str, path: &str, body: &Value) -> Result<Answer, String> {
        self.call(step, "POST", path, Some(body.to_string().into_bytes()), &[])
            .await
    }

    /// The next phone: a new number per flow, or one of `--users` numbers.
    fn phone(&self) -> String {
        let n = self.phones.fetch_add(1, Ordering::Relaxed);
        let n = match self.users {
            Some(users) => n % users,
            None => n,
        };
        format!("+919{:09}", (self.phone_base + n) % 1_000_000_000)
    }

    /// `method path` with the access token of `tokens` as bearer; 200 expected.
    async fn authorized(
        &self,
        step: &'static str,
        method: &str,
        path: &str,
        tokens: &Value,
    ) -> Result<Answer, String> {
        let bearer = format!("Bearer {}", text(tokens, "access_token")?);
        expect(
            self.call(step, method, path, None, &[("authorization", &bearer)])
                .await?,
            step,
            200,
        )
    }

    /// Presents `code` for `phone` as step `step`, expecting `status`.
    async fn verify(
        &self,
        step: &'static str,
        phone: &str,
        code: &str,
        status: u16,
    ) -> Result<Answer, String> {
        let body = json!({ "phone": phone, "otp_code": code });
        expect(
            self.post(step, "/api/auth/verify-otp", &body).await?,
            step,
            status,
        )
    }

    /// Login → verify; returns the token response.
    async fn sign_in(&self) -> Result<Value, String> {
        let phone = self.phone();
        let login = expect(
            self.post("login", "/api/auth/login", &json!({ "phone": phone }))
                .await?,
            "login",
            200,
        )?;
        let code = login.body["otp_code"]
            .as_str()
            .ok_or("login: no otp_code (run the server with EXPOSE_OTP=true)")?
            .to_string();
        let tokens = self.verify("verify", &phone, &code, 200).await?;
        if self.replay_check {
            let replay = self
                .post(
                    "replay",
                    "/api/auth/verify-otp",
                    &json!({ "phone": phone, "otp_code": code }),
                )
                .await?;
            if replay.status == 200 {
                if self.recorder.recording() {
                    self.recorder.double_accepts.fetch_add(1, Ordering::Relaxed);
                }
                return Err("replay 200: a code was accepted twice".into());
            }
        }
        Ok(tokens.body)
    }

    async fn flow(&self, scenario: Scenario) -> Result<(), String> {
        match scenario {
            Scenario::Health => {
                expect(
                    self.call("health", "GET", "/health", None, &[]).await?,
                    "health",
                    200,
                )?;
            }
            Scenario::Login => {
                self.sign_in().await?;
            }
            Scenario::Full => {
                let tokens = self.sign_in().await?;
                self.authorized("me", "GET", "/api/auth/me", &tokens)
                    .await?;
                let pair = expect(
                    self.post(
                        "refresh",
                        "/api/auth/refresh-token",
                        &json!({ "refresh_token": text(&tokens, "refresh_token")? }),
                    )
                    .await?,
                    "refresh",
                    200,
                )?;
                self.authorized("logout", "POST", "/api/auth/logout", &pair.body)
                    .await?;
            }
            Scenario::Verify => {
                let phone = self.phone();
                let login = expect(
                    self.post("login", "/api/auth/login", &json!({ "phone": phone }))
                        .await?,
                    "login",
                    200,
                )?;
                let code = text(&login.body, "otp_code")?.to_string();
                for _ in 0..3 {
                    self.verify("verify_wrong", &phone, &wrong_code(&code), 400)
                        .await?;
                }
                self.verify("verify", &phone, &code, 200).await?;
            }
            Scenario::Refresh => {
                let mut refresh = text(&self.sign_in().await?, "refresh_token")?.to_string();
                for _ in 0..5 {
                    let pair = expect(
                        self.post(
                            "refresh",
                            "/api/auth/refresh-token",
                            &json!({ "refresh_token": refresh }),
                        )
                        .await?,
                        "refresh",
                        200,
                    )?;
                    refresh = text(&pair.body, "refresh_token")?.to_string();
                }
            }
            Scenario::Webhook => self.webhook_flow().await?,
        }
        Ok(())
    }

    /// Login intent → a signed WhatsApp message carrying its code → poll until the tokens come.
    async fn webhook_flow(&self) -> Result<(), String> {
        let intent = expect(
            self.post(
                "intent",
                "/api/auth/intents",
                &json!({ "channel": "whatsapp" }),
            )
            .await?,
            "intent",
            201,
        )?;
        let link = text(&intent.body, "deep_link")?;
        let code = link
            .rsplit("%20")
            .next()
            .ok_or("intent: no code in the deep link")?
            .to_string();
        let phone = self.phone();
        let message_id = format!("wamid.{:032x}", rand::rng().random::<u128>());
        let body = json!({
            "object": "whatsapp_business_account",
            "entry": [{ "id": "1", "changes": [{ "field": "messages", "value": {
                "messaging_product": "whatsapp",
                "metadata": { "display_phone_number": "15550001234", "phone_number_id": "1" },
                "messages": [{
                    "from": phone.trim_start_matches('+'), "id": message_id,
                    "timestamp": std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs())
                        .to_string(),
                    "type": "text",
                    "text": { "body": format!("Log me in. Code: {code}") }
                }]
            }}]}]
        })
        .to_string()
        .into_bytes();
        let mut mac = Hmac::<Sha256>::new_from_slice(self.webhook_secret.as_bytes())
            .map_err(|e| e.to_string())?;
        mac.update(&body);
        let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        expect(
            self.call(
                "webhook",
                "POST",
                "/api/whatsapp/webhook",
                Some(body),
                &[("x-hub-signature-256", &signature)],
            )
            .await?,
            "webhook",
            200,
        )?;
        let poll = json!({ "intent_id": intent.body["intent_id"], "poll_token": intent.body["poll_token"] });
        for _ in 0..50 {
            let answer = self.post("poll", "/api/auth/intents/poll", &poll).await?;
            match answer.status {
                200 => return Ok(()),
                202 => tokio::time::sleep(Duration::from_millis(5)).await,
                other => return Err(format!("poll {other}")),
            }
        }
        Err("poll: still pending".into())
    }
}

fn expect(answer: Answer, step: &str, status: u16) -> Result<Answer, String> {
    if answer.status == status {
        Ok(answer)
    } else {
        Err(format!("{step} {}", answer.status))
    }
}

fn text<'a>(body: &'a Value, name: &str) -> Result<&'a str, String> {
    body[name]
        .as_str()
        .ok_or_else(|| format!("{name} missing in the answer"))
}

/// A code of the same length that is not `code`.
fn wrong_code(code: &str) -> String {
    code.chars()
        .map(|c| if c == '0' { '1' } else { '0' })
        .collect()
}

/// The latency summary of `micros` in milliseconds.
fn summary(micros: &mut [u32]) -> Value {
    if micros.is_empty() {
        return json!({ "count": 0 });
    }
    micros.sort_unstable();
    let at = |q: f64| {
        let i = ((micros.len() as f64 * q).ceil() as usize).clamp(1, micros.len()) - 1;
        f64::from(micros[i]) / 1000.0
    };
    json!({
        "count": micros.len(),
        "p50_ms": at(0.50),
        "p90_ms": at(0.90),
        "p99_ms": at(0.99),
        "max_ms": f64::from(micros[micros.len() - 1]) / 1000.0,
    })
}

async fn run(args: Args) -> Result<Value, String> {
    let http = http::Http::new(&args.target).await?;
    let started = Instant::now();
    let measured_from = started + args.warmup;
    let deadline = measured_from + args.duration;
    let recorder = Arc::new(Recorder::new(measured_from));
    let driver = Arc::new(Driver {
        http,
        recorder: recorder.clone(),
        phones: AtomicU64::new(0),
        phone_base: rand::rng().random_range(0..1_000_000_000),
        users: args.users,
        replay_check: args.replay_check,
        webhook_secret: args.webhook_secret.clone(),
    });
    let in_flight = Arc::new(AtomicUsize::new(0));
    let ticks_at_start = tokio::spawn(async move {
        tokio::time::sleep_until(measured_from.into()).await;
        (own_cpu_ticks(), own_wait_ns())
    });
    let mut tasks = tokio::task::JoinSet::new();
    // One flow, due at `due`, in its own task-local measured/warm-up context.
    let scenario = args.scenario;
    let one_flow = move |driver: Arc<Driver>, in_flight: Arc<AtomicUsize>, due: Instant| {
        let measured = due >= measured_from;
        MEASURED.scope(measured, async move {
            driver.recorder.started(due);
            let outcome = driver.flow(scenario).await;
            driver.recorder.flow_done(due, outcome);
            in_flight.fetch_sub(1, Ordering::AcqRel);
        })
    };
    match args.rate {
        Some(rate) => {
            // Open model: flow i is due at start + i / rate. A thread of its own starts each
            // flow at its time: the runtime's timer ticks in whole milliseconds, and the 1 ms
            // sleep loop this replaced started flows up to 2 ms late, lateness that counted in
            // every flow's latency although no server had seen the flow yet. What lateness
            // remains (a starved box) still counts, and is reported apart as `start lag`.
            let runtime = tokio::runtime::Handle::current();
            let driver = driver.clone();
            let in_flight = in_flight.clone();
            let recorder = recorder.clone();
            let max_in_flight = args.max_in_flight;
            let scheduler = tokio::task::spawn_blocking(move || {
                let mut tasks = tokio::task::JoinSet::new();
                let mut next: u64 = 0;
                loop {
                    let due = started + Duration::from_secs_f64(next as f64 / rate);
                    if due >= deadline {
                        break;
                    }
                    next += 1;
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    let measured = due >= measured_from;
                    recorder.offered(measured);
                    if in_flight.load(Ordering::Acquire) >= max_in_flight {
                        recorder.dropped(measured);
                        continue;
                    }
                    in_flight.fetch_add(1, Ordering::AcqRel);
                    tasks.spawn_on(one_flow(driver.clone(), in_flight.clone(), due), &runtime);
                }
                tasks
            });
            match scheduler.await {
                Ok(spawned) => tasks = spawned,
                // Its flows were aborted with it: not a result to report.
                Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
                Err(_) => {}
            }
        }
        None => {
            for _ in 0..args.concurrency {
                let driver = driver.clone();
                let in_flight = in_flight.clone();
                let recorder = recorder.clone();
                tasks.spawn(async move {
                    loop {
                        let due = Instant::now();
                        if due >= deadline {
                            break;
                        }
                        recorder.offered(due >= measured_from);
                        in_flight.fetch_add(1, Ordering::AcqRel);
                        one_flow(driver.clone(), in_flight.clone(), due).await;
                    }
                });
            }
            while Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    // Let the flows in flight finish, for at most `--drain`; the rest are unfinished.
    let drain = Instant::now() + args.drain;
    while in_flight.load(Ordering::Acquire) > 0 && Instant::now() < drain {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let counts = recorder.close();
    let at_start = ticks_at_start.await.unwrap_or((None, None));
    // Growth of a counter over the measured phase, when it was read at both ends.
    let grew = |end: Option<u64>, start: Option<u64>| Some(end?.saturating_sub(start?));
    let cpu_ticks = grew(own_cpu_ticks(), at_start.0);
    let wait_ns = grew(own_wait_ns(), at_start.1);
    let elapsed = started.elapsed().as_secs_f64() - args.warmup.as_secs_f64();
    tasks.abort_all();
    let mut report = report(&args, &recorder, counts, elapsed);
    // The generator competes for the same cores as what it measures: its own CPU over the
    // measured phase, in clock ticks (`getconf CLK_TCK`), for `cluster.sh`.
    report["generator_cpu_ticks"] = measured_or_null(cpu_ticks);
    report["generator_threads"] = json!(args.threads);
    // And how long its threads waited, ready, for a core (ns).
    report["generator_wait_ns"] = measured_or_null(wait_ns);
    Ok(report)
}

/// This process's user + system CPU so far, in clock ticks (`/proc/self/stat`, Linux only).
fn own_cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15, i.e. the 12th and 13th after the name.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// How long this process's threads have waited, ready to run, for a core (ns), summed over the
/// threads alive now (`/proc/self/task/*/schedstat`, Linux only; `None` without it).
fn own_wait_ns() -> Option<u64> {
    let mut total = None;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let path = task.ok()?.path().join("schedstat");
        let Ok(stat) = std::fs::read_to_string(path) else {
            continue; // the thread ended meanwhile
        };
        total = Some(total.unwrap_or(0) + run_queue_wait(&stat)?);
    }
    total
}

/// The run-queue wait (ns) of one thread's `schedstat`: its second field (the first is the time
/// it ran, the third how many times it ran).
fn run_queue_wait(schedstat: &str) -> Option<u64> {
    schedstat.split_whitespace().nth(1)?.parse().ok()
}

/// `value` as JSON, or `null` when it was not measured.
fn measured_or_null<T: Into<Value>>(value: Option<T>) -> Value {
    value.map_or(Value::Null, Into::into)
}

fn report(args: &Args, recorder: &Recorder, counts: Counts, elapsed: f64) -> Value {
    let scheduled = args.duration.as_secs_f64();
    let mut steps = serde_json::Map::new();
    let mut requests: u64 = 0;
    let mut non_503_5xx: u64 = 0;
    let mut transport_errors: u64 = 0;
    for (name, stats) in lock(&recorder.steps).iter_mut() {
        let answered: u64 = stats.statuses.values().sum();
        requests += answered + stats.transport_errors;
        transport_errors += stats.transport_errors;
        non_503_5xx += stats
            .statuses
            .iter()
            .filter(|(s, _)| **s >= 500 && **s != 503)
            .map(|(_, n)| n)
            .sum::<u64>();
        let mut entry = summary(&mut stats.latencies);
        entry["statuses"] = json!(
            stats
                .statuses
                .iter()
                .map(|(s, n)| (s.to_string(), *n))
                .collect::<BTreeMap<_, _>>()
        );
        entry["transport_errors"] = json!(stats.transport_errors);
        entry["transport_error_latency"] = summary(&mut stats.transport_latencies);
        steps.insert((*name).to_string(), entry);
    }
    let unfinished = counts.offered - counts.completed - counts.failed - counts.dropped;
    let double_accepts = args
        .replay_check
        .then(|| recorder.double_accepts.load(Ordering::Relaxed));
    let warmup = *lock(&recorder.warmup);
    let mut invalid = Vec::new();
    if counts.offered == 0 {
        invalid.push("no flow was offered".to_string());
    }
    if !args.allow_errors {
        for (n, what) in [
            (counts.failed, "failed"),
            (counts.dropped, "dropped"),
            (unfinished, "unfinished"),
            (warmup.failed, "failed during the warm-up"),
        ] {
            if n > 0 {
                invalid.push(format!("{n} flow(s) {what}"));
            }
        }
    }
    if let Some(n) = double_accepts.filter(|n| *n > 0) {
        invalid.push(format!("{n} code(s) accepted twice"));
    }
    let timeline: Vec<Value> = lock(&recorder.timeline)
        .iter()
        .enumerate()
        .map(|(t, [ok, failed, s503, s5xx, slow])| {
            json!({ "t": t, "completed": ok, "failed": failed, "status_503": s503, "other_5xx": s5xx, "over_10ms": slow })
        })
        .collect();
    json!({
        "scenario": args.scenario.name(),
        "model": if args.rate.is_some() { "open" } else { "closed" },
        "rate": args.rate,
        "concurrency": if args.rate.is_some() { Value::Null } else { json!(args.concurrency) },
        "target": args.target,
        "seconds": scheduled,
        "elapsed_seconds": elapsed,
        "warmup_seconds": args.warmup.as_secs_f64(),
        "valid": invalid.is_empty(),
        "invalid_because": invalid,
        "flows": {
            "offered": counts.offered,
            "completed": counts.completed,
            "failed": counts.failed,
            "dropped": counts.dropped,
            "unfinished": unfinished,
            "per_second": counts.completed as f64 / scheduled,
            "latency": summary(&mut lock(&recorder.flows)),
            "failed_latency": summary(&mut lock(&recorder.failed_flows)),
            "start_lag": summary(&mut lock(&recorder.start_lags)),
        },
        "warmup": {
            "offered": warmup.offered,
            "completed": warmup.completed,
            "failed": warmup.failed,
            "dropped": warmup.dropped,
        },
        "requests": { "total": requests, "per_second": requests as f64 / scheduled },
        "steps": steps,
        "failures": *lock(&recorder.failures),
        "non_503_5xx": non_503_5xx,
        "transport_errors": transport_errors,
        "double_accepts": measured_or_null(double_accepts),
        "timeline": timeline,
        "slow_flows": *lock(&recorder.slow_flows),
    })
}

/// A number for the table: `n/a` when it was not measured.
fn shown(value: &Value) -> String {
    match value {
        Value::Null => "n/a".to_string(),
        Value::Number(n) if n.is_f64() => format!("{:.2}", n.as_f64().unwrap_or(0.0)),
        other => other.to_string(),
    }
}

fn print_table(report: &Value) {
    println!(
        "scenario {} ({} model{}), {:.1} s scheduled (+{:.1} s warm-up) against {}",
        report["scenario"].as_str().unwrap_or(""),
        report["model"].as_str().unwrap_or(""),
        match (&report["rate"], &report["concurrency"]) {
            (Value::Number(r), _) => format!(", {r} flows/s offered"),
            (_, Value::Number(c)) => format!(", concurrency {c}"),
            _ => String::new(),
        },
        report["seconds"].as_f64().unwrap_or(0.0),
        report["warmup_seconds"].as_f64().unwrap_or(0.0),
        report["target"].as_str().unwrap_or(""),
    );
    let flows = &report["flows"];
    println!(
        "flows: {} offered = {} completed + {} failed + {} dropped + {} unfinished; \
         {:.1} completed/s; requests: {} ({:.1}/s)",
        flows["offered"],
        flows["completed"],
        flows["failed"],
        flows["dropped"],
        flows["unfinished"],
        flows["per_second"].as_f64().unwrap_or(0.0),
        report["requests"]["total"],
        report["requests"]["per_second"].as_f64().unwrap_or(0.0),
    );
    let warmup = &report["warmup"];
    if warmup["offered"].as_u64().unwrap_or(0) > 0 {
        println!(
            "warm-up (not in the figures): {} offered, {} completed, {} failed, {} dropped",
            warmup["offered"], warmup["completed"], warmup["failed"], warmup["dropped"]
        );
    }
    println!(
        "{:<16} {:>9} {:>9} {:>9} {:>9} {:>9}  statuses",
        "step", "count", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
    let mut rows: Vec<(String, &Value)> = vec![
        ("flow".into(), &flows["latency"]),
        ("flow (failed)".into(), &flows["failed_latency"]),
        ("start lag".into(), &flows["start_lag"]),
    ];
    if let Some(steps) = report["steps"].as_object() {
        for (name, step) in steps {
            rows.push((name.clone(), step));
            if step["transport_errors"].as_u64().unwrap_or(0) > 0 {
                rows.push((
                    format!("{name} (transport)"),
                    &step["transport_error_latency"],
                ));
            }
        }
    }
    for (name, s) in rows {
        println!(
            "{:<16} {:>9} {:>9} {:>9} {:>9} {:>9}  {}",
            name,
            s["count"].to_string(),
            shown(&s["p50_ms"]),
            shown(&s["p90_ms"]),
            shown(&s["p99_ms"]),
            shown(&s["max_ms"]),
            if s["statuses"].is_null() {
                String::new()
            } else {
                s["statuses"].to_string()
            }
        );
    }
    if report["failures"]
        .as_object()
        .is_some_and(|m| !m.is_empty())
    {
        println!("failures: {}", report["failures"]);
    }
    println!(
        "non-503 5xx: {}, transport errors: {}, codes accepted twice: {}",
        report["non_503_5xx"],
        report["transport_errors"],
        shown(&report["double_accepts"])
    );
    if report["valid"] == json!(true) {
        println!("result: valid");
    } else {
        println!(
            "result: INVALID ({})",
            report["invalid_because"]
                .as_array()
                .map(|r| r
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("; "))
                .unwrap_or_default()
        );
    }
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("otpgate-loadtest: {message}");
            }
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("otpgate-loadtest: cannot start the runtime: {err}");
            std::process::exit(1);
        }
    };
    let report = match runtime.block_on(run(args.clone())) {
        Ok(report) => report,
        Err(err) => {
            eprintln!("otpgate-loadtest: {err}");
            std::process::exit(2);
        }
    };
    if !args.quiet {
        print_table(&report);
    }
    if let Some(path) = &args.json
        && let Err(err) = std::fs::write(path, format!("{report:#}\n"))
    {
        eprintln!("otpgate-loadtest: cannot write {path}: {err}");
        std::process::exit(1);
    }
    if report["valid"] != json!(true) {
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(allow_errors: bool, replay_check: bool) -> Args {
        Args {
            target: "http://127.0.0.1:1".into(),
            scenario: Scenario::Login,
            rate: Some(10.0),
            concurrency: 1,
            duration: Duration::from_secs(4),
            warmup: Duration::ZERO,
            drain: Duration::ZERO,
            allow_errors,
            max_in_flight: 1,
            threads: 1,
            users: None,
            replay_check,
            webhook_secret: String::new(),
            json: None,
            quiet: true,
        }
    }

    /// 6 offered: 3 completed, 1 failed, 1 dropped, 1 still running at the report.
    fn recorded() -> (Recorder, Counts) {
        let recorder = Recorder::new(Instant::now());
        for _ in 0..6 {
            recorder.offered(true);
        }
        let due = Instant::now();
        for _ in 0..3 {
            recorder.flow_done(due, Ok(()));
        }
        recorder.flow_done(due, Err("login 502".into()));
        recorder.dropped(true);
        let counts = recorder.close();
        // After the report is taken, a late flow changes nothing.
        recorder.flow_done(due, Ok(()));
        (recorder, counts)
    }

    #[test]
    fn the_run_queue_wait_is_the_second_field_of_schedstat() {
        assert_eq!(run_queue_wait("8123456 4567 89\n"), Some(4567));
        assert_eq!(run_queue_wait("8123456\n"), None);
        assert_eq!(run_queue_wait(""), None);
    }

    /// More busy threads than cores: they use CPU, and some of them wait for a core.
    #[test]
    fn the_generator_reads_its_own_cpu_and_run_queue_wait() {
        let (cpu, wait) = (own_cpu_ticks().expect("cpu"), own_wait_ns().expect("wait"));
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let busy: Vec<_> = (0..cores + 2)
            .map(|_| {
                std::thread::spawn(|| {
                    let until = Instant::now() + Duration::from_millis(300);
                    let mut spins = 0u64;
                    while Instant::now() < until {
                        spins = std::hint::black_box(spins + 1);
                    }
                })
            })
            .collect();
        // Read while the threads are alive: a thread's share goes with it.
        std::thread::sleep(Duration::from_millis(250));
        let (cpu_now, wait_now) = (own_cpu_ticks().expect("cpu"), own_wait_ns().expect("wait"));
        for thread in busy {
            thread.join().expect("busy thread");
        }
        assert!(cpu_now > cpu, "CPU ticks {cpu} -> {cpu_now}");
        assert!(wait_now > wait, "run-queue wait {wait} -> {wait_now} ns");
    }

    #[test]
    fn every_offered_flow_is_accounted_for_and_rates_use_the_schedule() {
        let (recorder, counts) = recorded();
        let report = report(&args(true, false), &recorder, counts, 40.0);
        let flows = &report["flows"];
        assert_eq!(flows["offered"], 6);
        assert_eq!(flows["completed"], 3);
        assert_eq!(flows["failed"], 1);
        assert_eq!(flows["dropped"], 1);
        assert_eq!(flows["unfinished"], 1);
        // 3 completed over the scheduled 4 s, not over the 40 s the run took.
        assert_eq!(flows["per_second"], 0.75);
        assert_eq!(flows["failed_latency"]["count"], 1);
        assert_eq!(report["double_accepts"], Value::Null, "not measured");
        assert_eq!(report["valid"], true, "--allow-errors");
    }

    #[test]
    fn failures_make_the_result_invalid() {
        let (recorder, counts) = recorded();
        let report = report(&args(false, true), &recorder, counts, 4.0);
        assert_eq!(report["valid"], false);
        let reasons = report["invalid_because"].to_string();
        for what in [
            "1 flow(s) failed",
            "1 flow(s) dropped",
            "1 flow(s) unfinished",
        ] {
            assert!(reasons.contains(what), "{reasons}");
        }
        assert_eq!(report["double_accepts"], 0, "measured with --replay-check");
    }

    #[test]
    fn a_code_accepted_twice_is_invalid_even_with_allow_errors() {
        let recorder = Recorder::new(Instant::now());
        recorder.offered(true);
        recorder.flow_done(Instant::now(), Ok(()));
        recorder.double_accepts.fetch_add(1, Ordering::Relaxed);
        let counts = recorder.close();
        let report = report(&args(true, true), &recorder, counts, 4.0);
        assert_eq!(report["valid"], false);
        assert_eq!(report["double_accepts"], 1);
    }
}
