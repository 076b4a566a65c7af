//! Routing on evidence: the channel a code travelled by (kept in the code's mark beside the
//! pumping defence's network), and each channel's recent conversion (codes verified / codes
//! sent) per country, by which a login without a requested channel may pick its first one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::channel::Channel;
use super::pumping::PumpCounter;

/// The bits of a code's mark that hold the pumping defence's network
/// ([`super::pumping::Network`], below 2^50); the channel sits in the three bits above, so the
/// whole mark stays below 2^53 and a Lua script keeps it exact.
pub const NETWORK_MASK: u64 = (1 << 50) - 1;
const CHANNEL_SHIFT: u32 = 50;

/// `mark` with its channel set to `channel`.
pub fn with_channel(mark: u64, channel: Channel) -> u64 {
    let code: u64 = match channel {
        Channel::Sms => 1,
        Channel::Whatsapp => 2,
        Channel::Telegram => 3,
        Channel::Log => 4,
    };
    (mark & NETWORK_MASK) | (code << CHANNEL_SHIFT)
}

/// The channel a mark names (codes stored before marks held one name none).
pub fn channel_of(mark: u64) -> Option<Channel> {
    match mark >> CHANNEL_SHIFT {
        1 => Some(Channel::Sms),
        2 => Some(Channel::Whatsapp),
        3 => Some(Channel::Telegram),
        4 => Some(Channel::Log),
        _ => None,
    }
}

/// How a login without a requested channel picks its first one (`OTP_ROUTING`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutingMode {
    /// `OTP_CHANNEL_ORDER`, always (the default).
    Order,
    /// The configured channel with the best recent conversion for the number's country, once
    /// it has enough sends; `OTP_CHANNEL_ORDER` otherwise and for the fallbacks.
    Conversion,
}

/// The routing settings (`OTP_ROUTING*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoutingPolicy {
    /// `OTP_ROUTING`.
    pub mode: RoutingMode,
    /// `OTP_ROUTING_WINDOW_MINUTES`: how far back conversion is counted (sliding window).
    pub window: Duration,
    /// `OTP_ROUTING_MIN_SENDS`: sends of a channel to a country in the window before its
    /// conversion counts.
    pub min_sends: u64,
    /// `OTP_ROUTING_EXPLORE_PERCENT`: the share of logins that try a channel without enough
    /// evidence first, so every channel keeps being measured.
    pub explore_percent: u8,
}

/// One channel's evidence for one country, in the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evidence {
    /// The channel.
    pub channel: Channel,
    /// Codes sent by it.
    pub sent: u64,
    /// Codes sent by it and verified.
    pub verified: u64,
}

impl Evidence {
    /// Verified per mille of sent (at most 1000: a replica may see a verification of a code
    /// another one sent).
    pub fn permille(&self) -> u64 {
        (self.verified * 1000 / self.sent.max(1)).min(1000)
    }
}

/// Sends and verifications per (country, channel) seen by this process, in sliding windows.
/// Behind a load balancer every replica sees a fair sample of both, so each one's ratio
/// estimates the fleet's without a store round trip. Bounded: ISO country codes × channels.
pub struct ConversionStats {
    /// Counting only serves `OTP_ROUTING=conversion`; otherwise nothing is counted.
    counting: bool,
    window_ms: u64,
    counters: Mutex<HashMap<(String, Channel), PumpCounter>>,
}

impl ConversionStats {
    /// Empty statistics for `policy`: sliding windows of its window, counted only in the
    /// conversion mode.
    pub fn new(policy: &RoutingPolicy) -> Self {
        Self {
            counting: policy.mode == RoutingMode::Conversion,
            window_ms: u64::try_from(policy.window.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
            counters: Mutex::new(HashMap::new()),
        }
    }

    fn count(&self, country: &str, channel: Channel, now_ms: u64, verified: bool) {
        if !self.counting {
            return;
        }
        let mut counters = self
            .counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let counter = counters.entry((country.to_string(), channel)).or_default();
        counter.roll(now_ms, self.window_ms);
        if verified {
            counter.verified += 1;
        } else {
            counter.sent += 1;
        }
    }

    /// A code sent to `country` by `channel`.
    pub fn sent(&self, country: &str, channel: Channel, now_ms: u64) {
        self.count(country, channel, now_ms, false);
    }

    /// A code sent by `channel` to `country` verified.
    pub fn verified(&self, country: &str, channel: Channel, now_ms: u64) {
        self.count(country, channel, now_ms, true);
    }

    /// The evidence for `channel` in `country` now.
    pub fn evidence(&self, country: &str, channel: Channel, now_ms: u64) -> Evidence {
        let mut counters = self
            .counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (sent, verified) = match counters.get_mut(&(country.to_string(), channel)) {
            Some(counter) => {
                counter.roll(now_ms, self.window_ms);
                counter.estimate(now_ms, self.window_ms)
            }
            None => (0, 0),
        };
        Evidence {
            channel,
            sent,
            verified,
        }
    }

    /// Puts first in `plan` (the configured order) the channel with the best conversion for
    /// `country` among those with at least `min_sends`; on ties the earlier in the order wins.
    /// Telegram is never moved.
    /// When `roll` (0–99, random) falls below the explore share, a channel without enough
    /// evidence goes first instead. Without evidence the order stands.
    pub fn prefer(
        &self,
        policy: &RoutingPolicy,
        country: &str,
        plan: &mut [Channel],
        now_ms: u64,
        roll: u8,
    ) {
        if policy.mode != RoutingMode::Conversion || plan.len() < 2 {
            return;
        }
        // Telegram is in a plan only for numbers with a linked chat (an account): putting it
        // first would tell those numbers apart in the answer, so it is never a candidate.
        let evidence: Vec<Evidence> = plan
            .iter()
            .filter(|c| **c != Channel::Telegram)
            .map(|c| self.evidence(country, *c, now_ms))
            .collect();
        let measured = |e: &&Evidence| e.sent >= policy.min_sends.max(1);
        let first = if roll < policy.explore_percent {
            evidence.iter().find(|e| !measured(e))
        } else {
            None
        }
        .or_else(|| {
            evidence
                .iter()
                .filter(measured)
                .fold(None, |best: Option<&Evidence>, e| match best {
                    Some(b) if b.permille() >= e.permille() => Some(b),
                    _ => Some(e),
                })
        });
        if let Some(first) = first
            && let Some(at) = plan.iter().position(|c| *c == first.channel)
        {
            plan[..=at].rotate_right(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_keep_the_network_and_name_the_channel() {
        let network = (2u64 << 48) | 0xffff_ffff_ffff;
        for channel in [
            Channel::Sms,
            Channel::Whatsapp,
            Channel::Telegram,
            Channel::Log,
        ] {
            let mark = with_channel(network, channel);
            assert!(mark < 1 << 53, "exact in a double");
            assert_eq!(mark & NETWORK_MASK, network);
            assert_eq!(channel_of(mark), Some(channel));
            // Set again (a fallback): the channel changes, the network stays.
            let again = with_channel(mark, Channel::Whatsapp);
            assert_eq!(channel_of(again), Some(Channel::Whatsapp));
            assert_eq!(again & NETWORK_MASK, network);
        }
        assert_eq!(channel_of(network), None);
        assert_eq!(channel_of(0), None);
    }

    fn policy(explore: u8) -> RoutingPolicy {
        RoutingPolicy {
            mode: RoutingMode::Conversion,
            window: Duration::from_secs(3600),
            min_sends: 10,
            explore_percent: explore,
        }
    }

    #[test]
    fn the_best_measured_channel_goes_first() {
        let stats = ConversionStats::new(&policy(0));
        let now = 10_000_000;
        let order = [Channel::Sms, Channel::Whatsapp, Channel::Telegram];
        let mut plan = order.to_vec();
        stats.prefer(&policy(0), "IN", &mut plan, now, 50);
        assert_eq!(plan, order, "no evidence: the order stands");

        for i in 0..20 {
            stats.sent("IN", Channel::Sms, now);
            stats.sent("IN", Channel::Whatsapp, now);
            if i < 8 {
                stats.verified("IN", Channel::Sms, now);
            }
            if i < 17 {
                stats.verified("IN", Channel::Whatsapp, now);
            }
        }
        let mut plan = order.to_vec();
        stats.prefer(&policy(0), "IN", &mut plan, now, 50);
        assert_eq!(
            plan,
            [Channel::Whatsapp, Channel::Sms, Channel::Telegram],
            "WhatsApp converts 85 %, SMS 40 %; the rest keep their order"
        );
        // Another country has its own evidence.
        let mut plan = order.to_vec();
        stats.prefer(&policy(0), "BR", &mut plan, now, 50);
        assert_eq!(plan, order);
        // The explore share tries an unmeasured channel first, but never Telegram (only numbers
        // with an account have it in their plan), however well it converts.
        let mut plan = order.to_vec();
        stats.prefer(&policy(5), "IN", &mut plan, now, 4);
        assert_eq!(
            plan,
            [Channel::Whatsapp, Channel::Sms, Channel::Telegram],
            "only Telegram is unmeasured: the best measured goes first"
        );
        let mut plan = vec![Channel::Sms, Channel::Telegram, Channel::Whatsapp];
        for _ in 0..20 {
            stats.sent("IN", Channel::Telegram, now);
            stats.verified("IN", Channel::Telegram, now);
        }
        stats.prefer(&policy(0), "IN", &mut plan, now, 50);
        assert_eq!(plan, [Channel::Whatsapp, Channel::Sms, Channel::Telegram]);
        let stats2 = ConversionStats::new(&policy(5));
        let mut plan = vec![Channel::Sms, Channel::Telegram, Channel::Whatsapp];
        for _ in 0..20 {
            stats2.sent("IN", Channel::Sms, now);
        }
        stats2.prefer(&policy(5), "IN", &mut plan, now, 0);
        assert_eq!(plan, [Channel::Whatsapp, Channel::Sms, Channel::Telegram]);
        let mut plan = order.to_vec();
        stats.prefer(&policy(5), "IN", &mut plan, now, 5);
        assert_eq!(plan[0], Channel::Whatsapp);
        // The order mode never reorders; evidence fades with the window.
        let mut plan = order.to_vec();
        let fixed = RoutingPolicy {
            mode: RoutingMode::Order,
            ..policy(0)
        };
        stats.prefer(&fixed, "IN", &mut plan, now, 50);
        assert_eq!(plan, order);
        let later = now + 2 * 3_600_000;
        let mut plan = order.to_vec();
        stats.prefer(&policy(0), "IN", &mut plan, later, 50);
        assert_eq!(plan, order);
    }

    #[test]
    fn conversion_never_passes_one() {
        let e = Evidence {
            channel: Channel::Sms,
            sent: 3,
            verified: 7,
        };
        assert_eq!(e.permille(), 1000);
    }
}
