//! SMS-pumping defence: budgets of *unverified* codes (sent, never verified) per country, per
//! number prefix and per client network, over a sliding window every replica shares, and the
//! automatic block of a prefix or country whose conversion (verified / sent) falls too low.
//!
//! Here the rules and the arithmetic; the store keeps the counters ([`PumpCounter`] is what one
//! scope holds) and runs the same arithmetic in Lua.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use super::net::Cidr;
use super::phone::Phone;

/// `PUMPING_MODE`: what the budgets do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PumpingMode {
    /// Nothing counted.
    Off,
    /// Counted, blocks recorded (metrics, events, the admin list), nothing refused.
    RecordOnly,
    /// A send over a budget, or to a blocked prefix or country, is refused.
    Enforce,
}

impl PumpingMode {
    /// The `mode` label.
    pub fn as_str(self) -> &'static str {
        match self {
            PumpingMode::Off => "off",
            PumpingMode::RecordOnly => "record_only",
            PumpingMode::Enforce => "enforce",
        }
    }
}

/// What a budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The number's country (ISO code).
    Country,
    /// The number's first digits (`+91987`).
    Prefix,
    /// The client's network (/24 or /48).
    Network,
}

impl Scope {
    /// Every scope, in the order a send checks them.
    pub const ALL: [Scope; 3] = [Scope::Country, Scope::Prefix, Scope::Network];

    /// The `scope` label and the admin API's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Country => "country",
            Scope::Prefix => "prefix",
            Scope::Network => "network",
        }
    }

    /// The scope named `text`.
    pub fn parse(text: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// A client network as one number, so it fits beside a code in the store: IPv4 /24 and IPv6
/// /48, tagged by family, below 2^53 so a Lua script (whose numbers are doubles) keeps it exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Network(pub u64);

const V4_TAG: u64 = 1 << 48;
const V6_TAG: u64 = 2 << 48;
const TAG_MASK: u64 = !((1 << 48) - 1);

impl Network {
    /// A client whose address is unknown.
    pub const UNKNOWN: Network = Network(1);

    /// The network of `ip`: its /24 (IPv4, IPv4-mapped IPv6 included) or /48 (IPv6).
    pub fn of(ip: IpAddr) -> Network {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Network(V4_TAG | u64::from(u32::from(v4) >> 8)),
            IpAddr::V6(v6) => Network(V6_TAG | ((u128::from(v6) >> 80) as u64 & !TAG_MASK)),
        }
    }

    /// Whether this is a network at all (not [`Network::UNKNOWN`]).
    pub fn is_known(self) -> bool {
        matches!(self.0 & TAG_MASK, V4_TAG | V6_TAG)
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits = self.0 & !TAG_MASK;
        match self.0 & TAG_MASK {
            V4_TAG => write!(
                f,
                "{}/24",
                std::net::Ipv4Addr::from(((bits as u32) & 0x00ff_ffff) << 8)
            ),
            V6_TAG => write!(
                f,
                "{}/48",
                std::net::Ipv6Addr::from(u128::from(bits & 0xffff_ffff_ffff) << 80)
            ),
            _ => f.write_str("unknown"),
        }
    }
}

/// One scope a send is counted in: its key (`IN`, `+91987`, `203.0.113.0/24`), its budget of
/// unverified codes (0 = none) and the volume from which its conversion is judged (0 = never).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PumpCheck {
    /// What is counted.
    pub scope: Scope,
    /// The counted value.
    pub key: String,
    /// Unverified codes allowed in the window (0 = no budget).
    pub budget: u32,
    /// Sends in the window from which a low conversion blocks the key (0 = never blocked).
    pub min_volume: u32,
}

/// The pumping defence's settings.
#[derive(Debug, Clone)]
pub struct PumpingPolicy {
    /// `PUMPING_MODE`.
    pub mode: PumpingMode,
    /// `PUMPING_WINDOW_MINUTES`: the sliding window the counts cover.
    pub window: Duration,
    /// `PUMPING_COUNTRY_BUDGET`: unverified codes per country per window (0 = none).
    pub country_budget: u32,
    /// `PUMPING_PREFIX_BUDGET`: unverified codes per number prefix per window (0 = none).
    pub prefix_budget: u32,
    /// `PUMPING_NETWORK_BUDGET`: unverified codes per client /24 or /48 per window (0 = none).
    pub network_budget: u32,
    /// `PUMPING_PREFIX_DIGITS`: digits of the national number that make a prefix.
    pub prefix_digits: u8,
    /// `PUMPING_MIN_CONVERSION`: the verified / sent ratio below which a prefix or country
    /// with enough volume is blocked.
    pub min_conversion: f64,
    /// `PUMPING_COUNTRY_MIN_VOLUME`: sends per window before a country's conversion counts.
    pub country_min_volume: u32,
    /// `PUMPING_PREFIX_MIN_VOLUME`: sends per window before a prefix's conversion counts.
    pub prefix_min_volume: u32,
    /// `PUMPING_BLOCK_MINUTES`: how long an automatic block lasts.
    pub cooldown: Duration,
    /// `PUMPING_GRACE_SECONDS`: sends this recent (one to two of these) are left out of
    /// conversion, their codes may still be verified.
    pub grace: Duration,
    /// `PUMPING_ALLOW_CIDRS`: clients that always pass, uncounted.
    pub allow_cidrs: Vec<Cidr>,
    /// `PUMPING_ALLOW_COUNTRIES`: countries that always pass, uncounted.
    pub allow_countries: Vec<String>,
    /// `PUMPING_ALLOW_PREFIXES`: E.164 prefixes (`+1555`) that always pass, uncounted.
    pub allow_prefixes: Vec<String>,
}

impl PumpingPolicy {
    /// The policy of `PUMPING_MODE=off`.
    pub fn off() -> Self {
        Self {
            mode: PumpingMode::Off,
            window: Duration::from_secs(3600),
            country_budget: 0,
            prefix_budget: 0,
            network_budget: 0,
            prefix_digits: 4,
            min_conversion: 0.0,
            country_min_volume: 0,
            prefix_min_volume: 0,
            cooldown: Duration::from_secs(3600),
            grace: Duration::from_secs(60),
            allow_cidrs: Vec::new(),
            allow_countries: Vec::new(),
            allow_prefixes: Vec::new(),
        }
    }

    /// Whether a send to `phone` from `ip` is on an allow-list (then it is neither counted nor
    /// refused).
    pub fn allowed(&self, phone: &Phone, ip: Option<IpAddr>) -> bool {
        ip.is_some_and(|ip| self.allow_cidrs.iter().any(|c| c.contains(ip)))
            || phone
                .region()
                .is_some_and(|r| self.allow_countries.iter().any(|c| c == r))
            || self
                .allow_prefixes
                .iter()
                .any(|p| phone.as_str().starts_with(p.as_str()))
    }

    /// The scopes a send to `phone` from `network` counts in; none when the defence is off or
    /// the send is allow-listed. A number without a known country has no country scope; an
    /// unknown client no network scope.
    pub fn checks(&self, phone: &Phone, ip: Option<IpAddr>) -> Vec<PumpCheck> {
        if self.mode == PumpingMode::Off || self.allowed(phone, ip) {
            return Vec::new();
        }
        let mut checks = Vec::with_capacity(3);
        if let Some(region) = phone.region() {
            checks.push(PumpCheck {
                scope: Scope::Country,
                key: region.to_string(),
                budget: self.country_budget,
                min_volume: self.country_min_volume,
            });
        }
        checks.push(PumpCheck {
            scope: Scope::Prefix,
            key: phone
                .national_prefix(usize::from(self.prefix_digits))
                .to_string(),
            budget: self.prefix_budget,
            min_volume: self.prefix_min_volume,
        });
        if let Some(ip) = ip {
            checks.push(PumpCheck {
                scope: Scope::Network,
                key: Network::of(ip).to_string(),
                budget: self.network_budget,
                min_volume: 0,
            });
        }
        checks
    }

    /// What a code sent with `checks` keeps beside it, for [`PumpingPolicy::credits`]: 0 when
    /// the send was not counted, else the client's network ([`Network::UNKNOWN`] without one).
    pub fn mark(checks: &[PumpCheck], ip: Option<IpAddr>) -> u64 {
        if checks.is_empty() {
            0
        } else {
            ip.map_or(Network::UNKNOWN, Network::of).0
        }
    }

    /// The scopes a verified code is credited to: the keys its send was counted in, from the
    /// `mark` kept beside the code (nothing when the send was not counted).
    pub fn credits(&self, phone: &Phone, mark: u64) -> Vec<PumpCheck> {
        let mark = mark & super::routing::NETWORK_MASK;
        if self.mode == PumpingMode::Off || mark == 0 {
            return Vec::new();
        }
        let mut checks = self.checks(phone, None);
        let network = Network(mark);
        if network.is_known() {
            checks.push(PumpCheck {
                scope: Scope::Network,
                key: network.to_string(),
                budget: self.network_budget,
                min_volume: 0,
            });
        }
        checks
    }

    /// The minimum conversion in per mille, as the store compares it.
    pub fn min_conversion_permille(&self) -> u32 {
        (self.min_conversion * 1000.0).round().clamp(0.0, 1000.0) as u32
    }

    /// The rules a send is counted and judged by.
    pub fn rules(&self) -> PumpRules {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        PumpRules {
            window_ms: ms(self.window).max(1),
            min_permille: self.min_conversion_permille(),
            cooldown_ms: ms(self.cooldown).max(1),
            grace_ms: ms(self.grace),
        }
    }
}

/// Why a send was (or, in `record_only`, would have been) refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PumpReason {
    /// The scope's unverified codes reached its budget.
    OverBudget,
    /// The scope is blocked (its conversion fell too low, or an operator blocked it).
    Blocked,
}

impl PumpReason {
    /// The `verdict` label.
    pub fn as_str(self) -> &'static str {
        match self {
            PumpReason::OverBudget => "over_budget",
            PumpReason::Blocked => "blocked",
        }
    }
}

/// A scope that refused a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PumpRefusal {
    /// Which of the checks refused (its index).
    pub index: usize,
    /// Why.
    pub reason: PumpReason,
    /// When a send would pass again (the block's end; for a budget, the end of the current
    /// window, by which older unverified codes weigh less).
    pub retry_after: Duration,
}

/// What recording a send found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PumpOutcome {
    /// The scope that refused, the one that waits longest when several do (in `enforce`
    /// nothing was recorded then; otherwise the send was recorded anyway).
    pub refused: Option<PumpRefusal>,
    /// The checks (indexes) this send blocked, with the block's end (Unix ms): their
    /// conversion fell below the minimum.
    pub blocked: Vec<(usize, u64)>,
}

/// A scope blocked now, as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PumpBlock {
    /// Its scope.
    pub scope: Scope,
    /// Its key.
    pub key: String,
    /// When the block ends (Unix ms).
    pub until_ms: u64,
    /// Codes sent in the window when it was blocked.
    pub sent: u64,
    /// Codes verified in the window when it was blocked.
    pub verified: u64,
}

/// The counters of one scope: sends and verifications of the current window and the one
/// before, weighted by how much of the previous window the sliding window still covers. The
/// Redis script does the same arithmetic (`lua/pump.lua`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PumpCounter {
    /// The current window's index (`now / window`).
    pub index: u64,
    /// Sends in the current window.
    pub sent: u64,
    /// Verifications in the current window.
    pub verified: u64,
    /// Sends in the previous window.
    pub prev_sent: u64,
    /// Verifications in the previous window.
    pub prev_verified: u64,
    /// When a block ends (Unix ms; 0 = not blocked).
    pub blocked_until: u64,
    /// Sends in the window when it was blocked.
    pub blocked_sent: u64,
    /// Verifications in the window when it was blocked.
    pub blocked_verified: u64,
    /// The current grace slot's index (`now / grace`): sends this recent may still be verified,
    /// so conversion leaves them out.
    pub slot: u64,
    /// Sends in the current grace slot.
    pub slot_sent: u64,
    /// Sends in the previous grace slot.
    pub prev_slot_sent: u64,
}

/// How the counters of a send are kept and judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PumpRules {
    /// The sliding window (ms).
    pub window_ms: u64,
    /// The conversion below which a scope with its volume is blocked (per mille).
    pub min_permille: u32,
    /// How long an automatic block lasts (ms).
    pub cooldown_ms: u64,
    /// Sends younger than one to two of these (ms) are left out of conversion: their codes
    /// may still be verified (0 = all count).
    pub grace_ms: u64,
}

impl PumpCounter {
    /// Moves the counters to the window of `now_ms`.
    pub fn roll(&mut self, now_ms: u64, window_ms: u64) {
        let index = now_ms / window_ms.max(1);
        if index == self.index {
            return;
        }
        if index == self.index + 1 {
            self.prev_sent = self.sent;
            self.prev_verified = self.verified;
        } else {
            self.prev_sent = 0;
            self.prev_verified = 0;
        }
        self.sent = 0;
        self.verified = 0;
        self.index = index;
    }

    /// Sends and verifications in the sliding window ending at `now_ms` (after
    /// [`PumpCounter::roll`]), whole numbers rounded down.
    pub fn estimate(&self, now_ms: u64, window_ms: u64) -> (u64, u64) {
        let window_ms = window_ms.max(1);
        let left = window_ms.saturating_sub(now_ms.saturating_sub(self.index * window_ms));
        let weigh = |prev: u64| prev * left / window_ms;
        (
            self.sent + weigh(self.prev_sent),
            self.verified + weigh(self.prev_verified),
        )
    }

    /// Checks one more send against `check` (after [`PumpCounter::roll`]): `Err` with the
    /// reason and the wait (ms) until a send would pass, when it must be refused.
    pub fn admits(
        &self,
        check: &PumpCheck,
        now_ms: u64,
        window_ms: u64,
    ) -> Result<(), (PumpReason, u64)> {
        if self.blocked_until > now_ms {
            return Err((PumpReason::Blocked, self.blocked_until - now_ms));
        }
        let (sent, verified) = self.estimate(now_ms, window_ms);
        let budget = u64::from(check.budget);
        if budget == 0 || sent.saturating_sub(verified) < budget {
            return Ok(());
        }
        Err((
            PumpReason::OverBudget,
            self.wait_for_budget(budget, now_ms, window_ms),
        ))
    }

    /// When the unverified count falls below `budget` if nothing else happens: the previous
    /// window's part fades through this window, then the current one's through the next.
    fn wait_for_budget(&self, budget: u64, now_ms: u64, window_ms: u64) -> u64 {
        let window_ms = window_ms.max(1);
        let elapsed = now_ms.saturating_sub(self.index * window_ms);
        let current = self.sent.saturating_sub(self.verified);
        let previous = self.prev_sent.saturating_sub(self.prev_verified);
        // Within this window: current + previous × (window − t) / window < budget.
        if current < budget && previous > 0 {
            let room = budget - current;
            // The first whole ms t with previous × (window − t) < room × window.
            let t = window_ms * (previous - room.min(previous)) / previous + 1;
            let t = t.min(window_ms);
            if t < window_ms {
                return t.saturating_sub(elapsed).max(1);
            }
        }
        // In the next window, this one's count fades: current × (window − t) < budget × window.
        let t = window_ms * (current - budget.min(current)) / current.max(1) + 1;
        (window_ms - elapsed.min(window_ms) + t.min(window_ms)).max(1)
    }

    /// Moves the grace slots to `now_ms`.
    fn roll_slots(&mut self, now_ms: u64, grace_ms: u64) {
        if grace_ms == 0 {
            return;
        }
        let slot = now_ms / grace_ms;
        if slot == self.slot {
            return;
        }
        self.prev_slot_sent = if slot == self.slot + 1 {
            self.slot_sent
        } else {
            0
        };
        self.slot_sent = 0;
        self.slot = slot;
    }

    /// Records one send (after [`PumpCounter::roll`]), then judges `check`'s conversion
    /// ([`PumpCounter::judge`]). Whether it blocked it.
    pub fn record_send(&mut self, check: &PumpCheck, now_ms: u64, rules: &PumpRules) -> bool {
        self.sent += 1;
        self.roll_slots(now_ms, rules.grace_ms);
        if rules.grace_ms > 0 {
            self.slot_sent += 1;
        }
        self.judge(check, now_ms, rules)
    }

    /// Blocks `check` until `now_ms + cooldown` when its conversion (verified / sent, sends
    /// of the grace slots left out) is below the minimum with its volume reached, and no block
    /// runs. Whether it did.
    pub fn judge(&mut self, check: &PumpCheck, now_ms: u64, rules: &PumpRules) -> bool {
        self.roll_slots(now_ms, rules.grace_ms);
        let (sent, verified) = self.estimate(now_ms, rules.window_ms);
        let matured = sent.saturating_sub(self.slot_sent + self.prev_slot_sent);
        if check.min_volume == 0
            || matured < u64::from(check.min_volume)
            || self.blocked_until > now_ms
            || verified * 1000 >= matured * u64::from(rules.min_permille)
        {
            return false;
        }
        self.blocked_until = now_ms + rules.cooldown_ms;
        self.blocked_sent = sent;
        self.blocked_verified = verified;
        true
    }

    /// Counts a verified code: in this window while it has more sends than verifications, else
    /// in the previous one (the send was there), else nowhere. So verifications never outnumber
    /// sends, and a window boundary cannot turn credits into spare budget.
    pub fn credit(&mut self) {
        if self.verified < self.sent {
            self.verified += 1;
        } else if self.prev_verified < self.prev_sent {
            self.prev_verified += 1;
        }
    }

    /// Takes back a send: from this window while it has unverified sends, else from the
    /// previous one.
    pub fn uncount(&mut self) {
        if self.sent > self.verified {
            self.sent -= 1;
        } else if self.prev_sent > self.prev_verified {
            self.prev_sent -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_print_and_round_trip_their_block() {
        let v4 = Network::of("203.0.113.77".parse().unwrap());
        assert_eq!(v4.to_string(), "203.0.113.0/24");
        assert_eq!(v4, Network::of("203.0.113.1".parse().unwrap()));
        assert_ne!(v4, Network::of("203.0.114.1".parse().unwrap()));
        assert_eq!(v4, Network::of("::ffff:203.0.113.9".parse().unwrap()));
        let v6 = Network::of("2001:db8:abcd:12::1".parse().unwrap());
        assert_eq!(v6.to_string(), "2001:db8:abcd::/48");
        assert_eq!(v6, Network::of("2001:db8:abcd:ffff::2".parse().unwrap()));
        assert!(v6.is_known() && !Network::UNKNOWN.is_known() && !Network(0).is_known());
        // Exact as a double (Lua's numbers).
        let top = Network::of("ffff:ffff:ffff::1".parse().unwrap());
        assert_eq!(top.to_string(), "ffff:ffff:ffff::/48");
        for n in [v4, v6, top, Network::of("255.255.255.255".parse().unwrap())] {
            assert!(n.0 < 1 << 53 && (n.0 as f64) as u64 == n.0, "{n}");
        }
    }

    #[test]
    fn the_window_slides() {
        let w = 1000;
        let mut c = PumpCounter::default();
        c.roll(10_500, w);
        c.sent = 10;
        c.verified = 4;
        // Half-way into the next window, half of the previous one still counts.
        c.roll(11_500, w);
        assert_eq!(c.estimate(11_500, w), (5, 2));
        // Two windows on, nothing.
        c.roll(13_000, w);
        assert_eq!(c.estimate(13_000, w), (0, 0));
    }

    fn rules(window_ms: u64, grace_ms: u64) -> PumpRules {
        PumpRules {
            window_ms,
            min_permille: 200,
            cooldown_ms: 5_000,
            grace_ms,
        }
    }

    fn check(budget: u32, min_volume: u32) -> PumpCheck {
        PumpCheck {
            scope: Scope::Prefix,
            key: "+91987".into(),
            budget,
            min_volume,
        }
    }

    #[test]
    fn a_budget_counts_unverified_codes() {
        let w = 60_000;
        let mut c = PumpCounter::default();
        c.roll(0, w);
        for _ in 0..3 {
            assert!(c.admits(&check(3, 0), 10, w).is_ok());
            c.record_send(&check(3, 0), 10, &rules(w, 0));
        }
        // Three unverified now: the window must end (then one fades at once).
        assert_eq!(
            c.admits(&check(3, 0), 10, w),
            Err((PumpReason::OverBudget, 59_991))
        );
        c.credit();
        assert!(c.admits(&check(3, 0), 10, w).is_ok());
        // Credits never outnumber sends; a take-back undoes a send.
        for _ in 0..5 {
            c.credit();
        }
        assert_eq!((c.sent, c.verified), (3, 3));
        c.uncount();
        assert_eq!(
            (c.sent, c.verified),
            (3, 3),
            "no unverified send to take back"
        );
    }

    #[test]
    fn waits_end_when_the_count_has_faded() {
        let w = 1000;
        let check = check(10, 0);
        let mut c = PumpCounter::default();
        c.roll(5_000, w);
        c.sent = 12;
        // 12 unverified of budget 10 at the window's start: this window must pass, then
        // 3/12 of the next (12 × (1000 − t) < 10 000 from t = 167).
        let (_, wait) = c.admits(&check, 5_000, w).unwrap_err();
        assert_eq!(wait, 1000 + 167);
        c.roll(6_000, w);
        assert!(c.admits(&check, 6_166, w).is_err());
        assert!(c.admits(&check, 6_167, w).is_ok());
        // Credits to the previous window once this one has none to match.
        let mut d = PumpCounter::default();
        d.roll(5_000, w);
        d.sent = 2;
        d.roll(6_000, w);
        d.sent = 1;
        d.credit();
        d.credit();
        d.credit();
        assert_eq!(
            (d.sent, d.verified, d.prev_sent, d.prev_verified),
            (1, 1, 2, 2)
        );
        d.credit();
        assert_eq!((d.verified, d.prev_verified), (1, 2));
    }

    #[test]
    fn low_conversion_with_volume_blocks() {
        let w = 60_000;
        let mut c = PumpCounter::default();
        let ch = check(0, 10);
        c.roll(0, w);
        for i in 0..9 {
            assert!(!c.record_send(&ch, i, &rules(w, 0)), "below the volume");
        }
        c.credit();
        // 10 sent, 1 verified: 10 % < 20 %.
        assert!(c.record_send(&ch, 9, &rules(w, 0)));
        assert_eq!(c.admits(&ch, 10, w), Err((PumpReason::Blocked, 4_999)));
        assert_eq!((c.blocked_sent, c.blocked_verified), (10, 1));
        // A good conversion never blocks.
        let mut good = PumpCounter::default();
        good.roll(0, w);
        good.verified = 5;
        for i in 0..20 {
            assert!(!good.record_send(&ch, i, &rules(w, 0)));
        }
        // A burst of sends not verified yet is no low conversion: with a grace of 1 s, only
        // sends older than that count.
        let mut burst = PumpCounter::default();
        burst.roll(0, w);
        for i in 0..30 {
            assert!(!burst.record_send(&ch, i, &rules(w, 1_000)));
        }
        // Two seconds later nothing was verified: now it blocks.
        assert!(burst.judge(&ch, 2_500, &rules(w, 1_000)));
    }

    #[test]
    fn allow_lists_and_scopes() {
        let mut policy = PumpingPolicy::off();
        let phone = Phone::parse("+919876543210", None).unwrap();
        let ip = Some("203.0.113.7".parse().unwrap());
        assert!(policy.checks(&phone, ip).is_empty(), "off counts nothing");
        policy.mode = PumpingMode::Enforce;
        policy.prefix_digits = 3;
        let keys: Vec<_> = policy
            .checks(&phone, ip)
            .into_iter()
            .map(|c| (c.scope, c.key))
            .collect();
        assert_eq!(
            keys,
            [
                (Scope::Country, "IN".to_string()),
                (Scope::Prefix, "+91987".to_string()),
                (Scope::Network, "203.0.113.0/24".to_string()),
            ]
        );
        // At most the national number without its last five digits.
        policy.prefix_digits = 12;
        let prefix = |p: &PumpingPolicy, number: &str| {
            let phone = Phone::parse(number, None).unwrap();
            p.checks(&phone, None)
                .into_iter()
                .find(|c| c.scope == Scope::Prefix)
                .unwrap()
                .key
        };
        assert_eq!(prefix(&policy, "+919876543210"), "+9198765");
        assert_eq!(prefix(&policy, "+6591234567"), "+65912");
        policy.prefix_digits = 3;
        policy.allow_prefixes = vec!["+9198".into()];
        assert!(policy.checks(&phone, ip).is_empty());
        policy.allow_prefixes.clear();
        policy.allow_cidrs = vec!["203.0.113.0/24".parse().unwrap()];
        assert!(policy.checks(&phone, ip).is_empty());
        assert_eq!(policy.checks(&phone, None).len(), 2);
        policy.allow_countries = vec!["IN".into()];
        assert!(policy.checks(&phone, None).is_empty());
    }
}
