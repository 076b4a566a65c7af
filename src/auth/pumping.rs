//! The SMS-pumping defence on a login: budgets of unverified codes per country, number prefix
//! and client network, and blocks of prefixes and countries whose conversion falls too low
//! ([`crate::domain::pumping`] has the rules, the store the shared counters).
//!
//! A send is counted once its code is stored and before any provider is called; taken back
//! when no channel delivers it; a verified code is credited to the scopes its send was counted
//! in (the client network is kept beside the code). `record_only` counts and blocks without
//! refusing; `enforce` refuses with 429 `sends_paused`. Every refusal is counted
//! (`otpgate_pumping_refusals_total`), every new block too (`otpgate_pumping_blocks_total`)
//! and recorded as a `pumping.blocked` event.

use std::net::IpAddr;
use std::time::Duration;

use crate::domain::phone::Phone;
use crate::domain::pumping::{
    PumpBlock, PumpCheck, PumpOutcome, PumpingMode, PumpingPolicy, Scope,
};
use crate::domain::quota::whole_seconds;
use crate::error::Error;

use super::AuthService;
use super::admin::AdminActor;
use super::events::EventKind;
use super::sessions::ClientInfo;

impl AuthService {
    /// The pumping policy (`PUMPING_*`).
    pub fn pumping(&self) -> &PumpingPolicy {
        &self.pumping
    }

    /// The scopes a send to `phone` from `ip` counts in (none when off or allow-listed).
    pub(super) fn pump_checks(&self, phone: &Phone, ip: Option<IpAddr>) -> Vec<PumpCheck> {
        self.pumping.checks(phone, ip)
    }

    /// Counts a send in `checks`. In `enforce` mode a blocked scope or a spent budget refuses
    /// it (429 `sends_paused`, nothing counted) and a store failure is a 503; in `record_only`
    /// it is counted and let through, a store failure too. (Where the send is counted in the
    /// step that stores the code, [`crate::store::Store::pump_then_issue`], a store failure is
    /// the code's too: a 503 in both modes.)
    pub(super) async fn pump_send(
        &self,
        phone: &Phone,
        checks: &[PumpCheck],
        client: &ClientInfo,
    ) -> Result<(), Error> {
        if checks.is_empty() {
            return Ok(());
        }
        let policy = &self.pumping;
        let enforce = policy.mode == PumpingMode::Enforce;
        let outcome = match self.store.pump_send(checks, enforce, &policy.rules()).await {
            Ok(outcome) => outcome,
            Err(err) if !enforce => {
                tracing::warn!(error = %err, "a send was not counted by the pumping defence");
                return Ok(());
            }
            Err(err) => return Err(err.into()),
        };
        self.pump_counted(phone, checks, client, &outcome)
    }

    /// What a send counted in `checks` led to: each new block counted, logged and recorded,
    /// a refusal counted and logged, and in `enforce` mode refused (429 `sends_paused`).
    pub(super) fn pump_counted(
        &self,
        phone: &Phone,
        checks: &[PumpCheck],
        client: &ClientInfo,
        outcome: &PumpOutcome,
    ) -> Result<(), Error> {
        let policy = &self.pumping;
        let enforce = policy.mode == PumpingMode::Enforce;
        let mode = policy.mode.as_str();
        for &(index, _) in &outcome.blocked {
            let Some(check) = checks.get(index) else {
                continue;
            };
            self.metrics
                .pumping_blocks
                .with_label_values(&[check.scope.as_str(), mode])
                .inc();
            tracing::warn!(
                scope = check.scope.as_str(),
                key = %check.key,
                mode,
                "codes blocked: conversion fell below PUMPING_MIN_CONVERSION"
            );
            self.event(EventKind::PumpingBlocked)
                .client(client)
                .detail("scope", check.scope.as_str())
                .detail("key", check.key.as_str())
                .detail("mode", mode)
                .detail("by", "conversion")
                .detail("minutes", policy.cooldown.as_secs() / 60)
                .emit();
        }
        let Some(refusal) = &outcome.refused else {
            return Ok(());
        };
        let scope = checks
            .get(refusal.index)
            .map_or("unknown", |c| c.scope.as_str());
        self.metrics
            .pumping_refusals
            .with_label_values(&[scope, refusal.reason.as_str(), mode])
            .inc();
        tracing::info!(
            phone = %phone.masked(),
            scope,
            reason = refusal.reason.as_str(),
            mode,
            "send refused by the pumping defence"
        );
        if !enforce {
            return Ok(());
        }
        Err(Error::SendsPaused {
            retry_after: whole_seconds(refusal.retry_after),
        })
    }

    /// Takes back a send counted by [`AuthService::pump_send`] that sent nothing (refused by a
    /// limit, or no channel delivered it).
    pub(super) async fn pump_unsend(&self, checks: &[PumpCheck]) {
        if checks.is_empty() {
            return;
        }
        if let Err(err) = self.store.pump_unsend(checks, self.pumping.window).await {
            tracing::warn!(error = %err, "a code not sent stays counted by the pumping defence");
        }
    }

    /// Credits a verified code of `phone`, whose send left `mark`, to the scopes it was
    /// counted in. A store failure is logged: the login stands.
    pub(super) async fn pump_credit(&self, phone: &Phone, mark: u64) {
        let checks = self.pumping.credits(phone, mark);
        if checks.is_empty() {
            return;
        }
        if let Err(err) = self.store.pump_verified(&checks, self.pumping.window).await {
            tracing::warn!(error = %err, "a verified code was not credited to the pumping defence");
        }
    }

    /// The blocks standing now.
    pub async fn pumping_blocks(&self) -> Result<Vec<PumpBlock>, Error> {
        Ok(self.store.pump_blocks().await?)
    }

    /// Blocks `scope`/`key` for `duration` on every replica (an operator's block).
    pub async fn pumping_block(
        &self,
        actor: &AdminActor,
        client: &ClientInfo,
        scope: Scope,
        key: &str,
        duration: Duration,
    ) -> Result<(), Error> {
        let key = canonical_key(scope, key, self.pumping.prefix_digits)?;
        self.store
            .pump_block(scope, &key, duration, self.pumping.window)
            .await?;
        let mode = self.pumping.mode.as_str();
        self.metrics
            .pumping_blocks
            .with_label_values(&[scope.as_str(), mode])
            .inc();
        self.event(EventKind::PumpingBlocked)
            .client(client)
            .detail("scope", scope.as_str())
            .detail("key", key.as_str())
            .detail("mode", mode)
            .detail("by", "admin")
            .detail("actor", actor.key_id.as_str())
            .detail("minutes", duration.as_secs() / 60)
            .emit();
        Ok(())
    }

    /// Lifts the block on `scope`/`key` and forgets its counts (404 when none stood).
    pub async fn pumping_lift(
        &self,
        actor: &AdminActor,
        client: &ClientInfo,
        scope: Scope,
        key: &str,
    ) -> Result<(), Error> {
        let key = canonical_key(scope, key, self.pumping.prefix_digits)?;
        if !self.store.pump_lift(scope, &key).await? {
            return Err(Error::NotFound);
        }
        self.event(EventKind::AdminAction)
            .client(client)
            .detail("action", "pumping.lift")
            .detail("scope", scope.as_str())
            .detail("key", key.as_str())
            .detail("actor", actor.key_id.as_str())
            .emit();
        Ok(())
    }
}

/// The key of `scope` as the defence writes it: an ISO country code in capitals, `+` and
/// digits of a prefix, a network's /24 or /48 (any address in it is accepted).
pub fn canonical_key(scope: Scope, key: &str, prefix_digits: u8) -> Result<String, Error> {
    let key = key.trim();
    let invalid = |problem: &str| Error::InvalidField {
        field: "key".into(),
        problem: problem.into(),
    };
    match scope {
        Scope::Country => crate::domain::country::parse_country(key)
            .map_err(|_| invalid("must be an ISO 3166 alpha-2 country code (IN, BR)")),
        Scope::Prefix => {
            let digits = key.strip_prefix('+').unwrap_or(key);
            let valid = digits.bytes().all(|b| b.is_ascii_digit()) && digits.len() <= 15;
            // Country calling codes are prefix-free: the first 1 to 3 digits naming one.
            let code_len = (1..=3.min(digits.len())).find(|n| {
                digits[..*n]
                    .parse::<u16>()
                    .is_ok_and(|code| phonenumber::metadata::DATABASE.by_code(&code).is_some())
            });
            match code_len {
                Some(n)
                    if valid && (1..=usize::from(prefix_digits)).contains(&(digits.len() - n)) =>
                {
                    Ok(format!("+{digits}"))
                }
                _ => Err(invalid(&format!(
                    "must be a country calling code and 1 to {prefix_digits} digits of the national \
                     number (PUMPING_PREFIX_DIGITS), as the blocks list and events show them: +91987"
                ))),
            }
        }
        Scope::Network => {
            let address = key.split_once('/').map_or(key, |(address, _)| address);
            address
                .parse::<IpAddr>()
                .map(|ip| crate::domain::pumping::Network::of(ip).to_string())
                .map_err(|_| invalid("must be an IP address or its /24 (IPv4) or /48 (IPv6)"))
        }
    }
}
