//! Layer 1: plain types and rules, no I/O, no HTTP, nothing of the crate outside this folder.
//!
//! - [`phone`]: [`phone::Phone`] parsed from what clients send, and its [`phone::InvalidPhone`].
//! - [`phone_type`]: libphonenumber's number types, from patterns compiled once per region.
//! - [`channel`]: the delivery channels.
//! - [`quota`]: quotas, their states and refusals, GCRA, and the policy that picks them.
//! - [`net`]: CIDR blocks, the client IP behind proxies, IP buckets.
//! - [`country`]: ISO 3166 country codes and per-country caps.
//! - [`secret`]: values that never print, redacted connection strings.
//! - [`ids`]: random and time-ordered UUIDs from the thread-local CSPRNG.
//! - [`pumping`]: budgets of unverified codes and conversion blocks against SMS pumping.
//! - [`routing`]: the channel a code travelled by, and each channel's recent conversion.
//! - [`app_attest`]: Apple App Attest attestations and assertions, verified locally.
//! - [`webhook`]: Standard Webhooks secrets and signatures for outbound events.

pub mod admission;
pub mod app_attest;
pub mod channel;
pub mod country;
pub mod ids;
pub mod net;
pub mod phone;
pub mod phone_type;
pub mod pumping;
pub mod quota;
pub mod routing;
pub mod secret;
pub mod webhook;
