//! The login domain: phone numbers, codes, tokens and sessions. No HTTP types in here.
//!
//! Why this file is long: the login flow (login, verify, refresh, logout, me) is one service
//! whose steps share the same checks and metrics.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use sea_orm::DatabaseConnection;
use uuid::Uuid;

use crate::config::{
    AdminSettings, CaptchaSettings, EventSettings, LimitSettings, MessagingSettings, OtpSettings,
    SessionIp, TestNumbers, TokenSettings,
};
use crate::db::{self, identity, user};
use crate::delivery::{Delivery, Destination, OtpMessage, sms_segments};
use crate::domain::channel::Channel;
use crate::domain::pumping::{PumpCheck, PumpingMode, PumpingPolicy};
use crate::domain::quota::{Quota, QuotaPolicy, QuotaState};
use crate::domain::routing::with_channel;
use crate::error::Error;
use crate::store::{RefreshOutcome, SessionPut, Store, unix_ms};
use crate::telemetry::Metrics;

pub mod account;
pub mod admin;
pub mod app_attest;
pub mod captcha;
pub mod events;
pub mod integrity;
pub mod intents;
pub mod otp;
pub mod pumping;
pub mod receipts;
pub mod sessions;
pub mod tokens;

use self::captcha::{CaptchaGate, CaptchaInput};
use self::events::{EventKind, Events};
use self::otp::OtpService;
use self::sessions::ClientInfo;
use self::tokens::{Claims, TokenKind, TokenPair, TokenService};
use crate::domain::phone::Phone;

/// A code on its way to the user.
#[derive(Debug)]
pub struct LoginStarted {
    /// The normalised phone number.
    pub phone: Phone,
    /// The channel that delivered the code.
    pub channel: Channel,
    /// Seconds until the code expires.
    pub expires_in: u64,
    /// Seconds until another code may be requested.
    pub resend_after: u64,
    /// The code itself, only when `EXPOSE_OTP` is on.
    pub exposed_code: Option<String>,
    /// The quotas this send was charged to, and where each stands now.
    pub quotas: (Vec<Quota>, Vec<QuotaState>),
    /// A failure receipt that came before the send's answer: its fallback is claimed and run
    /// by [`AuthService::spawn_fallback`] (in the background, not in the request).
    pub early_receipt: Option<receipts::EarlyReceipt>,
}

/// How a user proved their number, as the audit's `login.succeeded` records it.
#[derive(Debug, Clone, Copy)]
pub enum LoginMethod<'a> {
    /// A code sent to this number was verified.
    Otp(&'a Phone),
    /// A login intent completed by a message on this channel.
    Intent(intents::IntentChannel),
    /// A signed Telegram Login Widget payload.
    TelegramWidget,
}

impl LoginMethod<'_> {
    /// The audit detail `method`.
    pub fn as_str(self) -> &'static str {
        match self {
            LoginMethod::Otp(_) => "otp",
            LoginMethod::Intent(intents::IntentChannel::Whatsapp) => "whatsapp_intent",
            LoginMethod::Intent(intents::IntentChannel::Telegram) => "telegram_intent",
            LoginMethod::TelegramWidget => "telegram_widget",
        }
    }
}

/// A new session: tokens plus the user they belong to.
#[derive(Debug)]
pub struct LoggedIn {
    /// The token pair.
    pub tokens: TokenPair,
    /// The user.
    pub user: user::Model,
}

/// Login, verification, refresh, logout and the current user.
pub struct AuthService {
    otp: OtpService,
    tokens: TokenService,
    store: Arc<dyn Store>,
    db: DatabaseConnection,
    /// The login's own connections on PostgreSQL (no pings around each statement).
    hot: Option<db::hot::HotPool>,
    /// Returning users' login times, written in the background in batches.
    touches: db::touches::LoginTouches,
    delivery: Delivery,
    quotas: QuotaPolicy,
    allowed_countries: Vec<String>,
    blocked_countries: Vec<String>,
    default_region: Option<phonenumber::country::Id>,
    /// `TEST_PHONE_NUMBERS`: fixed codes, never sent.
    test_numbers: TestNumbers,
    expose_otp: bool,
    refresh_grace: std::time::Duration,
    metrics: Arc<Metrics>,
    messaging: MessagingSettings,
    app_name: String,
    /// Numbers parsed lately, by the text the client sent: a verify parses the number its login
    /// parsed a minute before, and libphonenumber's classification is a dozen regex matches.
    recent_phones: std::sync::Mutex<std::collections::HashMap<String, Phone>>,
    /// The statement a login by code uses on this database, chosen once: at start-up when the
    /// database answers then ([`AuthService::prepare_database`]), else at the first login.
    login_sql: tokio::sync::OnceCell<db::LoginSql>,
    /// SHA-256 of each admin key (`ADMIN_API_KEYS`).
    admin_keys: Vec<[u8; 32]>,
    /// How much of the client address a session keeps.
    session_ip: SessionIp,
    /// How recent a session's login must be to change the number or delete the account.
    reauth_max_age: std::time::Duration,
    /// The audit log and the event webhook's outbox.
    events: Events,
    /// Recent sends' typical latency per channel (µs, an average weighted to the last few):
    /// answers that send nothing wait about as long (see [`AuthService::imitate_send`]).
    send_latency_us: [std::sync::atomic::AtomicU64; 4],
    /// The captcha gate before a code is sent, when `CAPTCHA_PROVIDER` is set.
    captcha: Option<CaptchaGate>,
    /// The Play Integrity gate, when `PLAY_INTEGRITY_PACKAGE` is set.
    integrity: Option<integrity::IntegrityGate>,
    /// The App Attest gate, when `APP_ATTEST_APP_ID` is set.
    app_attest: Option<app_attest::AppAttestGate>,
    /// The SMS-pumping defence (`PUMPING_*`).
    pumping: crate::domain::pumping::PumpingPolicy,
    /// Fallbacks running in the background, finished before the process ends.
    background: receipts::Background,
    /// Each channel's recent conversion per country, as this replica saw it (`OTP_ROUTING`).
    conversions: crate::domain::routing::ConversionStats,
}

/// How many parsed numbers [`AuthService::parse_phone`] keeps (then it starts afresh).
const RECENT_PHONES: usize = 4096;

/// The sections of the settings the login domain reads.
#[derive(Clone, Copy)]
pub struct AuthConfig<'a> {
    /// Codes and the numbers they go to.
    pub otp: &'a OtpSettings,
    /// Token signing and lifetimes.
    pub tokens: &'a TokenSettings,
    /// Quotas and country lists.
    pub limits: &'a LimitSettings,
    /// Login intents.
    pub messaging: &'a MessagingSettings,
    /// `APP_NAME`, named in messages.
    pub app_name: &'a str,
    /// Admin keys and session details.
    pub admin: &'a AdminSettings,
    /// Audit retention and the event webhook.
    pub events: &'a EventSettings,
    /// The captcha gate, when configured.
    pub captcha: Option<&'a CaptchaSettings>,
    /// The Play Integrity gate, when configured.
    pub integrity: Option<&'a crate::config::IntegritySettings>,
    /// The App Attest gate, when configured.
    pub app_attest: Option<&'a crate::config::AppAttestSettings>,
}

impl AuthService {
    /// Wires the domain to its store, database and senders.
    pub fn new(
        config: AuthConfig<'_>,
        store: Arc<dyn Store>,
        db: DatabaseConnection,
        delivery: Delivery,
        metrics: Arc<Metrics>,
    ) -> Result<Self, Error> {
        let db_for_events = db.clone();
        let metrics_for_events = metrics.clone();
        // What an SMS costs in each language is known now: the code's length, its lifetime,
        // the app's name and the autofill lines do not change while the process runs.
        let sample = "0".repeat(config.otp.length as usize);
        let minutes = config.otp.ttl.as_secs() / 60;
        for locale in delivery.locales().all() {
            let tag = delivery.locales().tag(locale);
            let (encoding, segments) = sms_segments(&delivery.render(&sample, minutes, locale));
            metrics
                .sms_template_segments
                .with_label_values(&[tag, encoding.as_str()])
                .set(i64::from(segments));
            if segments > 1 {
                tracing::info!(
                    locale = tag,
                    encoding = encoding.as_str(),
                    segments,
                    "a code SMS in this locale takes more than one segment"
                );
            }
        }
        let conversions = crate::domain::routing::ConversionStats::new(delivery.routing());
        Ok(Self {
            otp: OtpService::new(config.otp, store.clone())?
                .delegate_to(delivery.twilio_verify().cloned()),
            tokens: TokenService::new(config.tokens).map_err(Error::Internal)?,
            store,
            hot: db::hot::HotPool::for_database(&db),
            touches: db::touches::LoginTouches::start(
                db.clone(),
                db::touches::QUEUE,
                metrics.last_login_dropped.clone(),
            ),
            db,
            delivery,
            quotas: config.limits.quotas.clone(),
            allowed_countries: config.limits.allowed_countries.clone(),
            blocked_countries: config.limits.blocked_countries.clone(),
            default_region: config.otp.default_region,
            test_numbers: config.otp.test_numbers.clone(),
            expose_otp: config.otp.expose,
            refresh_grace: config.tokens.refresh_reuse_grace,
            metrics,
            messaging: config.messaging.clone(),
            app_name: config.app_name.to_string(),
            recent_phones: Default::default(),
            login_sql: tokio::sync::OnceCell::new(),
            admin_keys: config.admin.key_hashes.clone(),
            session_ip: config.admin.session_ip,
            reauth_max_age: config.admin.reauth_max_age,
            events: Events::start(
                &db_for_events,
                config.events.webhook.as_ref(),
                config.events.audit_retention,
                &metrics_for_events,
            ),
            send_latency_us: Default::default(),
            captcha: config.captcha.map(CaptchaGate::new).transpose()?,
            pumping: config.limits.pumping.clone(),
            background: receipts::Background::default(),
            conversions,
            integrity: config
                .integrity
                .map(integrity::IntegrityGate::new)
                .transpose()?,
            app_attest: config
                .app_attest
                .map(app_attest::AppAttestGate::new)
                .transpose()?,
        })
    }

    fn send_latency(&self, channel: Channel) -> &std::sync::atomic::AtomicU64 {
        &self.send_latency_us[channel as usize % self.send_latency_us.len()]
    }

    /// Records how long a successful send on `channel` took.
    fn note_send(&self, channel: Channel, took: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let sample = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let latency = self.send_latency(channel);
        let old = latency.load(Relaxed);
        let new = if old == 0 {
            sample
        } else {
            old - old / 8 + sample / 8
        };
        latency.store(new, Relaxed);
    }

    /// An answer that sends nothing (a blocked number, `channel: telegram` for a number without
    /// a linked chat) waits about as long as recent sends on the `channel` it names took (their
    /// typical latency, ±50 %, at most 10 s), so its timing does not tell it from a send. (A
    /// replica that has not sent on that channel yet has nothing to imitate.)
    async fn imitate_send(&self, channel: Channel) {
        let typical = self
            .send_latency(channel)
            .load(std::sync::atomic::Ordering::Relaxed)
            .min(10_000_000);
        if typical > 0 {
            let wait = rand::random_range(typical / 2..=typical + typical / 2).min(10_000_000);
            tokio::time::sleep(Duration::from_micros(wait)).await;
        }
    }

    /// Chooses the login statement for this database now (one `SELECT VERSION()` on
    /// MySQL/MariaDB), so the first login does not; an error means the database does not
    /// answer yet, and the first login chooses instead.
    pub async fn prepare_database(&self) -> Result<db::LoginSql, sea_orm::DbErr> {
        if let Some(sql) = self.login_sql.get() {
            return Ok(*sql);
        }
        // Boxed: the first call's future is large, and every login's would carry it.
        Box::pin(self.login_sql.get_or_try_init(|| db::login_sql(&self.db)))
            .await
            .copied()
    }

    /// Runs a database query, timing it (`otpgate_db_query_duration_seconds{query}`).
    async fn db_query<T>(
        &self,
        query: &str,
        work: impl Future<Output = Result<T, sea_orm::DbErr>>,
    ) -> Result<T, Error> {
        let metrics = &self.metrics;
        Ok(Metrics::timed(&metrics.db_duration, query, work, |_| {
            metrics.db_errors.inc()
        })
        .await?)
    }

    /// Parses a phone number as the API accepts it. Valid numbers are remembered (a bounded
    /// map, cleared when full), so the answer is libphonenumber's either way.
    pub fn parse_phone(&self, input: &str) -> Result<Phone, Error> {
        let lock = || {
            self.recent_phones
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        };
        if let Some(phone) = lock().get(input).cloned() {
            return Ok(phone);
        }
        let phone = Phone::parse(input, self.default_region)?;
        let mut recent = lock();
        if recent.len() >= RECENT_PHONES {
            recent.clear();
        }
        recent.insert(input.to_string(), phone.clone());
        Ok(phone)
    }

    /// Refuses numbers codes must not go to: countries outside `OTP_ALLOWED_COUNTRIES` or in
    /// `OTP_BLOCKED_COUNTRIES`, and premium-rate, shared-cost and toll-free numbers.
    fn check_number_policy(&self, phone: &Phone) -> Result<(), Error> {
        let region = phone.region_code().unwrap_or_default();
        if (!self.allowed_countries.is_empty() && !self.allowed_countries.contains(&region))
            || self.blocked_countries.contains(&region)
        {
            return Err(Error::CountryNotAllowed);
        }
        if phone.is_unsupported() {
            return Err(Error::UnsupportedNumber);
        }
        Ok(())
    }

    /// The channels to try for `phone`, in order, and the Telegram chat when Telegram is one of
    /// them. A requested channel the server does not offer is `channel_unavailable`; a
    /// landline is never sent an SMS. `channel: telegram` for a number without a linked chat
    /// is planned like any other (an empty plan: the code is issued, quota spent, nothing
    /// delivered), so the answer does not tell who uses the bot.
    async fn delivery_plan(
        &self,
        phone: &Phone,
        requested: Option<Channel>,
    ) -> Result<(Vec<Channel>, Option<String>), Error> {
        let unavailable =
            || Error::ChannelUnavailable(requested.map_or("default", Channel::as_str).to_string());
        let mut plan = self.delivery.plan(requested).ok_or_else(unavailable)?;
        let telegram_chat = if plan.contains(&Channel::Telegram) {
            Box::pin(self.db_query(
                "telegram_chat_for_phone",
                db::telegram_chat_for_phone(&self.db, phone.as_str()),
            ))
            .await?
        } else {
            None
        };
        if telegram_chat.is_none() {
            if requested == Some(Channel::Telegram) {
                return Ok((Vec::new(), None));
            }
            plan.retain(|c| *c != Channel::Telegram);
        }
        if phone.kind() == phonenumber::Type::FixedLine {
            if requested == Some(Channel::Sms) {
                return Err(Error::UnsupportedNumber);
            }
            plan.retain(|c| *c != Channel::Sms);
        }
        if plan.is_empty() {
            return Err(if phone.kind() == phonenumber::Type::FixedLine {
                Error::UnsupportedNumber
            } else {
                unavailable()
            });
        }
        Ok((plan, telegram_chat))
    }

    /// Issues a code for `phone` and sends it over the requested channel, falling back to the
    /// next configured channels when a provider fails. One store round trip (cooldown, every
    /// quota and the code in one script); when no channel delivers, the code, its cooldown and
    /// its quota charges are given back (a second round trip) and the answer is 503. A provider
    /// that will report the message's delivery adds one write (its record,
    /// [`receipts`]), as does a fallback within the login (the code's channel).
    ///
    /// The database is read only for Telegram (the linked chat), so for the other channels the
    /// answer is the same whether or not the number has an account (an App Attest assertion
    /// reads and updates its key's row, which says nothing about the number).
    ///
    /// With a captcha gate, `captcha` is checked once the number is known to be acceptable and
    /// before any quota is charged or anything sent; test numbers skip it.
    pub async fn login(
        &self,
        phone: &str,
        channel: Option<Channel>,
        client: &ClientInfo,
        captcha: CaptchaInput<'_>,
    ) -> Result<LoginStarted, Error> {
        let client_ip = client.ip;
        let phone = self.parse_phone(phone)?;
        self.check_number_policy(&phone)?;
        let (mut plan, telegram_chat) = self.delivery_plan(&phone, channel).await?;
        let country = phone.region().unwrap_or("unknown");
        if channel.is_none() {
            let roll = rand::random_range(0..100u8);
            self.conversions
                .prefer(self.delivery.routing(), country, &mut plan, unix_ms(), roll);
        }
        let subjects = self.otp.subjects(&phone);
        if let Some(code) = self.test_numbers.code_for(&phone, Utc::now()) {
            let started = self
                .login_test_number(phone, &subjects, code, &plan)
                .await?;
            self.event(EventKind::OtpSent)
                .phone(&started.phone)
                .client(client)
                .detail("channel", started.channel.as_str())
                .detail("outcome", "test_number")
                .emit();
            return Ok(started);
        }
        client
            .away(self.check_human(captcha, &phone, client))
            .await?;
        let quotas = self.quotas.for_send(&phone, &subjects, client_ip);
        // Counted before the code is stored, so a refusal leaves an earlier code alone, and the
        // same for every number (a blocked user's too: the answer must not tell them apart). A
        // send to nobody (`channel: telegram` without a linked chat) costs nothing, and a code a
        // user asked for by messaging us from their own account cannot be pumped: uncounted.
        let pump_checks = if plan.is_empty() || matches!(captcha, CaptchaInput::Exempt) {
            Vec::new()
        } else {
            self.pump_checks(&phone, client_ip)
        };
        // Where one store node holds the counts and the code, the send is counted in the same
        // step as the code is stored (one round trip; a refusal stores nothing there either).
        let in_one_step = !pump_checks.is_empty() && self.store.pumps_with_codes();
        if !in_one_step {
            self.pump_send(&phone, &pump_checks, client).await?;
        }
        // The mark names the channel tried first; a fallback within this login corrects it.
        let first_channel = plan
            .first()
            .and_then(|c| self.delivery.sender(*c))
            .map(|sender| sender.channel());
        let mut mark = PumpingPolicy::mark(&pump_checks, client_ip);
        if let Some(channel) = first_channel {
            mark = with_channel(mark, channel);
        }
        // Twilio Verify makes and checks the SMS codes: when it sends first, the store keeps its
        // marker (and our fresh code only serves a fallback channel).
        let verify_sms = self.delivery.twilio_verify().is_some();
        let delegated = verify_sms && plan.first() == Some(&Channel::Sms);
        let issued = if in_one_step {
            let enforce = self.pumping.mode == PumpingMode::Enforce;
            let (pumped, issued) = match self
                .otp
                .pump_then_issue(
                    &phone,
                    &subjects,
                    &quotas,
                    mark,
                    delegated,
                    &pump_checks,
                    enforce,
                    &self.pumping.rules(),
                )
                .await
            {
                Ok(both) => both,
                Err(err) => {
                    // The script may have run with its answer lost: a send counted for no code
                    // would weigh against the scopes, a send taken back once too often does not.
                    self.pump_unsend(&pump_checks).await;
                    return Err(err);
                }
            };
            self.pump_counted(&phone, &pump_checks, client, &pumped)?;
            // Absent only when the send was refused, which `pump_counted` answered.
            issued.ok_or_else(|| Error::Internal("a refused send was let through".into()))?
        } else {
            self.otp
                .issue(&phone, &subjects, &quotas, mark, delegated)
                .await
        };
        let mut issued = match issued {
            Ok(issued) => issued,
            Err(err) => {
                // Taken back already when counted in the same step.
                if !in_one_step {
                    self.pump_unsend(&pump_checks).await;
                }
                if let Error::RateLimited { policy, .. } = &err {
                    self.metrics.refused(policy);
                    tracing::info!(phone = %phone.masked(), policy, "send refused by a limit");
                }
                return Err(err);
            }
        };
        let locale = self.delivery.locales().choose(
            client.locale.as_deref(),
            client.accept_language.as_deref(),
            phone.region(),
        );
        let text = self
            .delivery
            .render(&issued.code, issued.expires_in.as_secs() / 60, locale);
        let message = OtpMessage {
            code: &issued.code,
            text: &text,
            locale: self.delivery.locales().tag(locale),
        };
        let destination = Destination {
            phone: &phone,
            telegram_chat: telegram_chat.as_deref(),
        };
        let mut delivered = None;
        if issued.blocked {
            // Blocked by an operator: answered as if sent, so the answer tells nothing.
            let channel = plan
                .iter()
                .find_map(|c| self.delivery.sender(*c))
                .map_or(Channel::Telegram, |sender| sender.channel());
            self.metrics
                .otp_sent
                .with_label_values(&[channel.as_str(), "blocked"])
                .inc();
            tracing::info!(phone = %phone.masked(), "no code sent: the user is blocked");
            client.away(self.imitate_send(channel)).await;
            self.event(EventKind::OtpSent)
                .phone(&phone)
                .client(client)
                .detail("channel", channel.as_str())
                .detail("outcome", "blocked")
                .emit();
            return Ok(LoginStarted {
                early_receipt: None,
                channel,
                expires_in: issued.expires_in.as_secs(),
                resend_after: issued.resend_after.as_secs(),
                exposed_code: None,
                quotas: (quotas, issued.quotas),
                phone,
            });
        }
        if plan.is_empty() {
            // `channel: telegram` for a number without a linked chat: answered as if sent.
            self.metrics
                .otp_sent
                .with_label_values(&[Channel::Telegram.as_str(), "unlinked"])
                .inc();
            client.away(self.imitate_send(Channel::Telegram)).await;
            delivered = Some(Channel::Telegram);
        }
        let mut via_verify = false;
        // A failure receipt that overtook the send's answer: acted on once we answered.
        let mut early_receipt = None;
        for (index, channel) in plan.iter().enumerate() {
            let Some(sender) = self.delivery.sender(*channel) else {
                continue;
            };
            via_verify = verify_sms && *channel == Channel::Sms;
            let wanted = match (verify_sms, via_verify) {
                (false, _) => None,
                (true, true) => Some(self.otp.delegated_hash(&phone)),
                (true, false) => Some(self.otp.hash(&phone, &issued.code)),
            };
            if let Some(wanted) = wanted.filter(|w| *w != issued.hash) {
                // Between Twilio Verify and another channel: the store's form of the code
                // follows the channel about to send it.
                match self
                    .store
                    .replace_code(
                        &subjects.phone,
                        &issued.hash,
                        &wanted,
                        issued.expires_in,
                        mark,
                        self.otp.max_attempts(),
                    )
                    .await
                {
                    Ok(true) => issued.hash = wanted,
                    Ok(false) => continue,
                    Err(err) => {
                        tracing::warn!(error = %err, "a code could not follow its channel");
                        continue;
                    }
                }
            }
            let label = sender.channel().as_str();
            let started = Instant::now();
            let sent = client.away(sender.send(&destination, &message)).await;
            self.metrics
                .delivery_duration
                .with_label_values(&[label])
                .observe(started.elapsed().as_secs_f64());
            let outcome = if sent.is_ok() { "sent" } else { "failed" };
            self.metrics
                .otp_sent
                .with_label_values(&[label, outcome])
                .inc();
            match sent {
                Ok(sent) => {
                    self.metrics
                        .codes_sent
                        .with_label_values(&[label, country])
                        .inc();
                    self.conversions.sent(country, sender.channel(), unix_ms());
                    let delivered_mark = with_channel(mark, sender.channel());
                    if delivered_mark != mark {
                        // An earlier channel failed: the code names the one that took it.
                        if let Err(err) = self
                            .store
                            .mark_code(&subjects.phone, &issued.hash, delivered_mark)
                            .await
                        {
                            tracing::warn!(error = %err, "a code's channel could not be noted");
                        }
                    }
                    let next = plan[index + 1..]
                        .iter()
                        .find_map(|c| self.delivery.sender(*c))
                        .map(|s| s.channel());
                    early_receipt = self
                        .record_sent(
                            &sent,
                            receipts::SentCode {
                                channel: sender.channel(),
                                phone: &phone,
                                subject: &subjects.phone,
                                hash: &issued.hash,
                                next,
                                locale: message.locale,
                                mark: delivered_mark,
                                ttl: issued.expires_in,
                            },
                        )
                        .await;
                    if sender.channel() == Channel::Sms && !via_verify {
                        let (encoding, segments) = sms_segments(&text);
                        self.metrics
                            .sms_segments
                            .with_label_values(&[encoding.as_str()])
                            .inc_by(u64::from(segments));
                    }
                    self.note_send(sender.channel(), started.elapsed());
                    delivered = Some(sender.channel());
                    break;
                }
                Err(err) => {
                    // Provider texts may quote the number: mask it before logging.
                    let reason = err
                        .reason
                        .replace(phone.as_str(), &phone.masked())
                        .replace(phone.as_str().trim_start_matches('+'), &phone.masked());
                    tracing::warn!(phone = %phone.masked(), channel = label, reason, "delivery failed");
                }
            }
        }
        let Some(channel) = delivered else {
            self.pump_unsend(&pump_checks).await;
            self.otp.release(&subjects, &issued, &quotas).await?;
            return Err(Error::DeliveryFailed);
        };
        tracing::info!(phone = %phone.masked(), channel = %channel, "code sent");
        self.event(EventKind::OtpSent)
            .phone(&phone)
            .client(client)
            .detail("channel", channel.as_str())
            .detail("outcome", "sent")
            .emit();
        Ok(LoginStarted {
            early_receipt,
            channel,
            expires_in: issued.expires_in.as_secs(),
            resend_after: issued.resend_after.as_secs(),
            // Twilio Verify's code never reaches us.
            exposed_code: (self.expose_otp && !via_verify).then_some(issued.code),
            quotas: (quotas, issued.quotas),
            phone,
        })
    }

    /// A login of a test number (`TEST_PHONE_NUMBERS`, until `TEST_PHONE_NUMBERS_VALID_UNTIL`):
    /// its fixed code is stored as any code is, with no quota charged and no cooldown, and no
    /// provider is called. The answer names the channel a real send would have tried first.
    async fn login_test_number(
        &self,
        phone: Phone,
        subjects: &crate::domain::quota::Subjects,
        code: &str,
        plan: &[Channel],
    ) -> Result<LoginStarted, Error> {
        let issued = self.otp.issue_fixed(&phone, subjects, code).await?;
        // An empty plan is `channel: telegram` for a number without a linked chat.
        let channel = plan
            .first()
            .and_then(|c| self.delivery.sender(*c))
            .map_or(Channel::Telegram, |sender| sender.channel());
        self.metrics
            .otp_sent
            .with_label_values(&[channel.as_str(), "test_number"])
            .inc();
        tracing::info!(phone = %phone.masked(), channel = %channel, "test number: code not sent");
        Ok(LoginStarted {
            early_receipt: None,
            channel,
            expires_in: issued.expires_in.as_secs(),
            resend_after: issued.resend_after.as_secs(),
            exposed_code: (self.expose_otp && !issued.blocked).then_some(issued.code),
            quotas: (Vec::new(), issued.quotas),
            phone,
        })
    }

    /// Checks the code and opens a session: the code check, then one SQL statement on
    /// PostgreSQL and MariaDB, two on MySQL, a `SELECT` (+ `INSERT` for a new user) on SQLite
    /// ([`db::LoginSql`]), then the session put; a returning user's `last_login_at` is written
    /// in the background. On PostgreSQL with one Redis node (standalone or Sentinel) and the
    /// pumping defence off, the session is put with the code check, for the id a new user gets
    /// ([`db::LoginSession::proposed_user`]): a new user's login takes two round trips (Redis,
    /// PostgreSQL); a returning user's moves that session to them after the statement (one
    /// round trip), as many as before.
    ///
    /// A database outage answers 503 and leaves the code usable: on MySQL/MariaDB and SQLite the
    /// database is reached before the code is spent; on PostgreSQL the code goes back when the
    /// login's statement fails, and once one has failed for want of the database, the next
    /// logins reach it before their code check (no attempt charged while it stays away).
    pub async fn verify(
        &self,
        phone: &str,
        code: &str,
        client: &ClientInfo,
    ) -> Result<LoggedIn, Error> {
        let client_ip = client.ip;
        let phone = self.parse_phone(phone)?;
        let session = self
            .db_query("login_start", async {
                let sql = self.prepare_database().await?;
                db::login_start(&self.db, self.hot.as_ref(), sql, phone.as_str()).await
            })
            .await?;
        let subjects = self.otp.subjects(&phone);
        let (attempts, failures) = self.quotas.for_verify(&subjects, client_ip);
        // The user a new account would get is known before the statement (PostgreSQL): where
        // one store node holds every key, its session is recorded with the code check, and
        // kept when the statement creates that user (a returning user's login drops it and
        // records its own). Not with the pumping defence on: the credit a verified code earns
        // depends on what the check reads.
        let proposed = session
            .proposed_user()
            .filter(|_| {
                self.store.pumps_with_codes()
                    && self.pumping.mode == crate::domain::pumping::PumpingMode::Off
            })
            .map(|id| {
                (
                    id.to_string(),
                    crate::domain::ids::random_uuid().to_string(),
                    self.session_meta(client),
                )
            });
        let draft = proposed
            .as_ref()
            .map(|(user, sid, meta)| crate::store::SessionDraft {
                user,
                sid,
                meta,
                ttl: self.tokens.longest_lifetime(),
                max: sessions::MAX_SESSIONS,
            });
        let mut spent = match self
            .check_code(
                client,
                &phone,
                &subjects,
                code,
                (&attempts, &failures),
                draft,
            )
            .await
        {
            Ok(spent) => spent,
            Err(err) => {
                let outcome = match &err {
                    Error::InvalidOtp { .. } | Error::InvalidField { .. } => Some("invalid"),
                    Error::OtpExpired => Some("expired"),
                    Error::TooManyAttempts => Some("burned"),
                    Error::VerifierUnavailable => Some("verifier_unavailable"),
                    Error::RateLimited { policy, .. } => {
                        self.metrics.refused(policy);
                        Some("rate_limited")
                    }
                    _ => None,
                };
                if let Some(outcome) = outcome {
                    self.metrics
                        .otp_verifications
                        .with_label_values(&[outcome])
                        .inc();
                }
                tracing::info!(phone = %phone.masked(), outcome = err.code(), "verification refused");
                if outcome.is_some() {
                    self.event(EventKind::OtpFailed)
                        .phone(&phone)
                        .client(client)
                        .detail("reason", err.code())
                        .emit();
                }
                return Err(err);
            }
        };
        // A test number's success is counted apart, so store review and CI do not raise the
        // success rate of real users; its refusals count as any other.
        let outcome = if self.test_numbers.code_for(&phone, Utc::now()).is_some() {
            "test_number"
        } else {
            "success"
        };
        self.metrics
            .otp_verifications
            .with_label_values(&[outcome])
            .inc();
        let finished = self
            .db_query(
                "complete_login",
                db::login_finish(&self.db, session, phone.as_str(), Utc::now(), &self.touches),
            )
            .await;
        // The session is recorded before the code counts as used: a store failure there (503)
        // puts the code back too. The pumping defence's credit for the code is made with the
        // session (one step where one store node holds both). A failure after that (revoking a
        // session pushed out by the cap, a 503 that puts the code back) lets the retry credit
        // it again: one unverified send of those scopes counted as verified, a budget looser
        // by one, only while the store fails; never a block.
        let credit = if outcome == "success" {
            self.pumping.credits(&phone, spent.mark())
        } else {
            Vec::new()
        };
        let opened = match finished {
            Ok((user, created)) => {
                let id = user.id;
                let method = LoginMethod::Otp(&phone);
                // The user proposed before the check (a new one): the session recorded with it
                // stands. Another user (a returning one): that session moves to them.
                match spent.take_session() {
                    Some(early) if early.user == id.to_string() && user.blocked_at.is_none() => {
                        self.session_opened(
                            user,
                            created,
                            client,
                            method,
                            early.sid,
                            SessionPut::Recorded(early.evicted),
                        )
                        .await
                    }
                    Some(early) => {
                        self.move_session(user, created, client, method, early)
                            .await
                    }
                    None => {
                        self.open_session(user, created, client, method, &credit)
                            .await
                    }
                }
                .map_err(|err| (err, Some(id)))
            }
            Err(err) => Err((err, None)),
        };
        let session = match opened {
            Ok(opened) => {
                let mark = spent.mark();
                spent.keep();
                // Counted once the login stands (a 503 puts the code back for a retry).
                if outcome == "success" {
                    self.count_verified(&phone, mark);
                }
                opened
            }
            // Blocked: the code was right; it stays used.
            Err((Error::UserBlocked, _)) => {
                spent.keep();
                return Err(Error::UserBlocked);
            }
            Err((err, _)) => {
                // No login happened: the code goes back, so the client's retry (after a 503)
                // works with the same code.
                match spent.restore().await {
                    Ok(restored) => tracing::warn!(
                        phone = %phone.masked(), restored, "login failed after the code check"
                    ),
                    Err(restore) => tracing::error!(
                        phone = %phone.masked(), error = %restore,
                        "login failed after the code check; the code could not be put back"
                    ),
                }
                return Err(err);
            }
        };
        tracing::info!(phone = %phone.masked(), user_id = %session.user.id, "code verified");
        Ok(session)
    }

    /// Checks a presented code ([`OtpService::verify`]); with Twilio Verify checking SMS codes,
    /// outside the request's place in the in-flight bound (a slow Twilio must not fill it).
    pub(crate) async fn check_code(
        &self,
        client: &ClientInfo,
        phone: &Phone,
        subjects: &crate::domain::quota::Subjects,
        code: &str,
        quotas: (&[Quota], &[Quota]),
        session: Option<crate::store::SessionDraft<'_>>,
    ) -> Result<otp::SpentOtp, Error> {
        let check = self.otp.verify(phone, subjects, code, quotas, session);
        if self.delivery.twilio_verify().is_some() {
            client.away(check).await
        } else {
            check.await
        }
    }

    /// Opens a new session for `user`: a fresh session id, recorded in the user's session index
    /// with what `client` tells, and a token pair. A blocked user gets none. The audit's
    /// `login.succeeded` names `method` (for a code, it is the verification's record too); a
    /// user `created` by this login gets its `user.created` first. `credit`: the pumping
    /// scopes a verified code is credited to once the session is recorded (none for other
    /// logins).
    pub async fn open_session(
        &self,
        user: user::Model,
        created: bool,
        client: &ClientInfo,
        method: LoginMethod<'_>,
        credit: &[PumpCheck],
    ) -> Result<LoggedIn, Error> {
        if user.blocked_at.is_some() {
            tracing::info!(user_id = %user.id, "login refused: the user is blocked");
            return Err(Error::UserBlocked);
        }
        let sid = crate::domain::ids::random_uuid().to_string();
        let ttl = self.tokens.longest_lifetime();
        let put = self
            .store
            .put_session_credited(
                &user.id.to_string(),
                &sid,
                &self.session_meta(client),
                ttl,
                sessions::MAX_SESSIONS,
                credit,
                self.pumping.window,
            )
            .await?;
        self.session_opened(user, created, client, method, sid, put)
            .await
    }

    /// [`AuthService::open_session`] for a login whose session was recorded with its code
    /// check for the user it proposed, when it opened another (a returning user): the session
    /// moves to them (its entry dropped and theirs put, one step where one Redis node holds
    /// both). A blocked user gets none; the entry goes all the same.
    async fn move_session(
        &self,
        user: user::Model,
        created: bool,
        client: &ClientInfo,
        method: LoginMethod<'_>,
        early: otp::EarlySession,
    ) -> Result<LoggedIn, Error> {
        if user.blocked_at.is_some() {
            if let Err(err) = self.store.drop_session(&early.user, &early.sid).await {
                tracing::warn!(error = %err, "a session recorded with its code check was not dropped");
            }
            tracing::info!(user_id = %user.id, "login refused: the user is blocked");
            return Err(Error::UserBlocked);
        }
        let put = match self
            .store
            .move_session(
                &early.user,
                &user.id.to_string(),
                &early.sid,
                &self.session_meta(client),
                self.tokens.longest_lifetime(),
                sessions::MAX_SESSIONS,
            )
            .await
        {
            Ok(put) => put,
            Err(err) => {
                // The move may not have run: the entry goes, as far as the store lets it.
                if let Err(err) = self.store.drop_session(&early.user, &early.sid).await {
                    tracing::warn!(error = %err, "a session recorded with its code check was not dropped");
                }
                return Err(err.into());
            }
        };
        self.session_opened(user, created, client, method, early.sid, put)
            .await
    }

    /// The rest of [`AuthService::open_session`] once session `sid` was put (`put`): the
    /// sessions evicted beyond the cap revoked, the token pair, the metrics and the audit.
    async fn session_opened(
        &self,
        user: user::Model,
        created: bool,
        client: &ClientInfo,
        method: LoginMethod<'_>,
        sid: String,
        put: SessionPut,
    ) -> Result<LoggedIn, Error> {
        let ttl = self.tokens.longest_lifetime();
        match put {
            SessionPut::Blocked => {
                tracing::info!(user_id = %user.id, "login refused: the user is blocked");
                return Err(Error::UserBlocked);
            }
            SessionPut::Recorded(evicted) => {
                // Beyond the cap the oldest sessions end, as if signed out.
                for old in evicted {
                    self.store.revoke_session(&old, ttl).await?;
                    self.metrics.session("revoked");
                }
            }
        }
        let tokens = self.tokens.issue_pair(user.id, &sid)?;
        self.metrics.session("issued");
        tracing::info!(user_id = %user.id, "session opened");
        if created {
            tracing::info!(user_id = %user.id, "user created");
            let event = self
                .event(EventKind::UserCreated)
                .user(user.id)
                .client(client)
                .detail("method", method.as_str());
            match method {
                LoginMethod::Otp(phone) => event.phone(phone),
                _ => event,
            }
            .emit();
        }
        let event = self
            .event(EventKind::LoginSucceeded)
            .user(user.id)
            .client(client)
            .detail("method", method.as_str())
            .detail("session_id", sid.as_str());
        match method {
            LoginMethod::Otp(phone) => event.phone(phone),
            _ => event,
        }
        .emit();
        Ok(LoggedIn { tokens, user })
    }

    /// The senders, for replies to inbound messages.
    pub fn delivery(&self) -> &Delivery {
        &self.delivery
    }

    /// The application name users see in messages (`APP_NAME`).
    pub fn app_name(&self) -> &str {
        &self.app_name
    }

    /// Rotates a refresh token: the presented one is spent. A spent token presented again
    /// within the grace window gets the same successor refresh token again (concurrent mobile
    /// refreshes; one chain per session); later, the whole session is revoked. The user (one
    /// lookup by primary key; a deleted user's tokens are refused), then one store round trip.
    pub async fn refresh(
        &self,
        refresh_token: &str,
        client: &ClientInfo,
    ) -> Result<LoggedIn, Error> {
        let claims = self.tokens.decode(refresh_token, TokenKind::Refresh)?;
        let user_id = Uuid::parse_str(&claims.sub).map_err(|_| Error::InvalidToken)?;
        // The user first: a database outage answers 503 with the token not spent, so the
        // client's retry is not taken for a reuse.
        let user = self
            .db_query("find_user_by_id", db::find_user_by_id(&self.db, user_id))
            .await?
            .ok_or(Error::InvalidToken)?;
        if user.blocked_at.is_some() {
            return Err(Error::UserBlocked);
        }
        // Revoked by "log out everywhere", a block or the session's own revocation: refused
        // without spending; otherwise its last use is now.
        if !self
            .store
            .session_stands(
                &claims.sub,
                &claims.sid,
                true,
                self.tokens.longest_lifetime(),
            )
            .await?
        {
            return Err(Error::InvalidToken);
        }
        let outcome = self
            .store
            .spend_refresh(
                &claims.sid,
                &claims.jti,
                self.refresh_grace,
                self.tokens.longest_lifetime(),
            )
            .await?;
        match outcome {
            RefreshOutcome::Rotated { spent_at_ms } | RefreshOutcome::Grace { spent_at_ms } => {
                let tokens = self.tokens.issue_successor(
                    user_id,
                    &claims.sid,
                    &claims.jti,
                    spent_at_ms / 1000,
                )?;
                self.metrics.session("refreshed");
                self.event(EventKind::TokenRefreshed)
                    .user(user_id)
                    .client(client)
                    .detail("session_id", claims.sid.as_str())
                    .emit();
                Ok(LoggedIn { tokens, user })
            }
            RefreshOutcome::Reused => {
                // Off the list too (best effort: the revocation itself is done).
                let _ = self.store.drop_session(&claims.sub, &claims.sid).await;
                self.metrics.session("reuse_detected");
                tracing::warn!(user_id = %user_id, "refresh token reuse: session revoked");
                self.event(EventKind::TokenReused)
                    .user(user_id)
                    .client(client)
                    .detail("session_id", claims.sid.as_str())
                    .emit();
                Err(Error::TokenReused)
            }
            RefreshOutcome::Revoked => Err(Error::InvalidToken),
        }
    }

    /// Checks an access token: signature, claims, kind, and that its session is not revoked.
    pub async fn authenticate(&self, access_token: &str) -> Result<Claims, Error> {
        let claims = self.tokens.decode(access_token, TokenKind::Access)?;
        if !self
            .store
            .session_stands(
                &claims.sub,
                &claims.sid,
                false,
                self.tokens.longest_lifetime(),
            )
            .await?
        {
            return Err(Error::InvalidToken);
        }
        Ok(claims)
    }

    /// The user of an authenticated session, with linked identities.
    pub async fn me(&self, claims: &Claims) -> Result<(user::Model, Vec<identity::Model>), Error> {
        let id = Uuid::parse_str(&claims.sub).map_err(|_| Error::InvalidToken)?;
        self.db_query("find_user", db::find_user(&self.db, id))
            .await?
            .ok_or(Error::InvalidToken)
    }

    /// The public keys tokens are verified with (JWKS; empty for HS256).
    pub fn jwks(&self) -> serde_json::Value {
        self.tokens.jwks()
    }
}
