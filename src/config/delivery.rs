//! Delivery: the providers (Twilio, WhatsApp Cloud API, Telegram Bot API), the channel order,
//! and the message text (its languages: [`super::locales`]).

use std::time::Duration;

use super::env::{ConfigError, Vars, base_url, invalid, required};
use super::locales::LocaleSettings;
use crate::domain::channel::Channel;
use crate::domain::routing::{RoutingMode, RoutingPolicy};
use crate::domain::secret::Secret;

/// Twilio SMS (`SEND_OTP_VIA_SMS=true`).
#[derive(Debug, Clone)]
pub struct TwilioSettings {
    /// `TWILIO_ACCOUNT_SID`.
    pub account_sid: String,
    /// `TWILIO_AUTH_TOKEN`.
    pub auth_token: Secret,
    /// `TWILIO_PHONE_NUMBER`: the sender number (`From`).
    pub from: Option<String>,
    /// `TWILIO_MESSAGING_SERVICE_SID`: send through a messaging service instead of `From`.
    pub messaging_service_sid: Option<String>,
    /// `TWILIO_API_BASE`.
    pub api_base: String,
    /// `{PUBLIC_BASE_URL}/api/twilio/status`: where Twilio reports each message's delivery
    /// (sent as `StatusCallback`, and the URL its signature covers); `None` without
    /// `PUBLIC_BASE_URL`.
    pub status_callback: Option<String>,
}

/// Twilio Verify (`SMS_PROVIDER=twilio_verify`): Twilio generates, sends and checks the SMS
/// codes (keeping its Fraud Guard and per-success pricing).
#[derive(Debug, Clone)]
pub struct TwilioVerifySettings {
    /// `TWILIO_ACCOUNT_SID`.
    pub account_sid: String,
    /// `TWILIO_AUTH_TOKEN`.
    pub auth_token: Secret,
    /// `TWILIO_VERIFY_SERVICE_SID`: the Verify service (`VA…`).
    pub service_sid: String,
    /// `TWILIO_VERIFY_API_BASE`.
    pub api_base: String,
}

/// A team's own SMS gateway (`SMS_PROVIDER=http`): each code is POSTed to it as JSON, signed
/// the Standard Webhooks way.
#[derive(Clone)]
pub struct HttpSmsSettings {
    /// `SMS_HTTP_URL`.
    pub url: String,
    /// The HMAC key: the decoded bytes of `SMS_HTTP_SECRET` (`whsec_<base64>`).
    pub key: Vec<u8>,
    /// `SMS_HTTP_SECRET` as given (for the production check against published secrets).
    pub secret: Secret,
}

impl std::fmt::Debug for HttpSmsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL without its query, which may carry a token.
        let url = self.url.split(['?', '#']).next().unwrap_or("");
        f.debug_struct("HttpSmsSettings")
            .field("url", &url)
            .finish_non_exhaustive()
    }
}

/// WhatsApp Cloud API.
#[derive(Debug, Clone)]
pub struct WhatsappSettings {
    /// `WHATSAPP_ACCESS_TOKEN`.
    pub access_token: Secret,
    /// `WHATSAPP_PHONE_NUMBER_ID`.
    pub phone_number_id: String,
    /// `WHATSAPP_OTP_TEMPLATE`: an approved authentication template; unset = text messages.
    pub template: Option<String>,
    /// `WHATSAPP_TEMPLATE_LANGUAGE`.
    pub template_language: String,
    /// `WHATSAPP_API_BASE`.
    pub api_base: String,
}

/// Telegram Bot API.
#[derive(Debug, Clone)]
pub struct TelegramSettings {
    /// `TELEGRAM_BOT_TOKEN`.
    pub bot_token: Secret,
    /// `TELEGRAM_API_BASE`.
    pub api_base: String,
}

/// How codes are delivered.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// SMS through Twilio; `None` = the `sms` channel writes to the log (development) or is
    /// off (production).
    pub twilio: Option<TwilioSettings>,
    /// SMS through the team's own gateway (`SMS_PROVIDER=http`).
    pub http_sms: Option<HttpSmsSettings>,
    /// SMS codes generated and checked by Twilio Verify (`SMS_PROVIDER=twilio_verify`).
    pub twilio_verify: Option<TwilioVerifySettings>,
    /// WhatsApp, when configured.
    pub whatsapp: Option<WhatsappSettings>,
    /// Telegram, when configured.
    pub telegram: Option<TelegramSettings>,
    /// `DELIVERY_TIMEOUT_MS`: bound on one provider request.
    pub timeout: Duration,
    /// `OTP_CHANNEL_ORDER`: default channel first, then the fallbacks.
    pub channel_order: Vec<Channel>,
    /// The message templates by locale (`OTP_MESSAGE_TEMPLATE`, `OTP_TEMPLATES_DIR`, …), each
    /// with `{code}`, `{minutes}`, `{app}`.
    pub locales: LocaleSettings,
    /// `APP_NAME`: `{app}` in messages.
    pub app_name: String,
    /// `OTP_ANDROID_APP_HASH`: the 11-character SMS Retriever hash line.
    pub android_app_hash: Option<String>,
    /// `OTP_WEBOTP_DOMAIN`: adds the WebOTP line `@domain #code`.
    pub webotp_domain: Option<String>,
    /// Whether the development `log` channel may stand in for SMS (never in production).
    pub log_channel: bool,
    /// `SEND_OTP_VIA_SMS`: the seed's switch; false keeps codes on the `log` channel.
    pub send_otp_via_sms: bool,
    /// `OTP_ROUTING*`: how a login without a requested channel picks its first one.
    pub routing: RoutingPolicy,
    /// `OTP_RECEIPT_FALLBACK`: a delivery receipt reporting a failure, within the code's life,
    /// sends a new code by the next channel (once).
    pub receipt_fallback: bool,
}

impl DeliverySettings {
    pub(crate) fn from_env(env: &Vars<'_>, production: bool) -> Result<Self, ConfigError> {
        let send_otp_via_sms = env.bool("SEND_OTP_VIA_SMS", false)?;
        delivery_settings(env, send_otp_via_sms, production)
    }
}

fn delivery_settings(
    env: &Vars<'_>,
    send_otp_via_sms: bool,
    production: bool,
) -> Result<DeliverySettings, ConfigError> {
    // `SMS_PROVIDER` names the SMS provider; unset, the seed's `SEND_OTP_VIA_SMS=true` means
    // Twilio. Set, it turns real SMS on whatever `SEND_OTP_VIA_SMS` says.
    let provider = match env
        .get("SMS_PROVIDER")
        .map(|p| p.trim().to_ascii_lowercase())
    {
        None if send_otp_via_sms => Some("twilio"),
        None => None,
        Some(p) if p == "twilio" => Some("twilio"),
        Some(p) if p == "http" => Some("http"),
        Some(p) if p == "twilio_verify" => Some("twilio_verify"),
        Some(p) => {
            env.report(invalid(
                "SMS_PROVIDER",
                format!("{p:?} is not one of twilio, twilio_verify, http"),
            ));
            None
        }
    };
    let http_sms = if provider == Some("http") {
        let url = required(env, "SMS_HTTP_URL", "when SMS_PROVIDER=http")?;
        let url = url.trim().to_string();
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            env.report(invalid(
                "SMS_HTTP_URL",
                "must start with https:// (or http://)",
            ));
        }
        let secret = required(
            env,
            "SMS_HTTP_SECRET",
            "when SMS_PROVIDER=http: whsec_ followed by base64 (for example \
             `whsec_$(openssl rand -base64 32)`)",
        )?;
        let key = if secret.is_empty() {
            Vec::new() // reported as missing already
        } else {
            crate::domain::webhook::parse_secret(&secret)
                .map_err(|e| invalid("SMS_HTTP_SECRET", e.to_string()))?
        };
        Some(HttpSmsSettings {
            url,
            key,
            secret: Secret::new(secret.trim()),
        })
    } else {
        None
    };
    let public_base_url = match env.get("PUBLIC_BASE_URL") {
        None => None,
        Some(url) => {
            let mut url = url.trim().trim_end_matches('/').to_string();
            // Twilio signs the URL as it calls it: without the scheme's default port.
            for (scheme, port) in [("https://", ":443"), ("http://", ":80")] {
                if let Some(rest) = url.strip_prefix(scheme) {
                    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                    if let Some(bare) = host.strip_suffix(port) {
                        url = format!("{scheme}{bare}{path}");
                    }
                }
            }
            let valid = (url.starts_with("https://") || url.starts_with("http://"))
                && !url.contains(['?', '#'])
                && !url.contains(char::is_whitespace)
                && url.split("://").nth(1).is_some_and(|rest| !rest.is_empty());
            if !valid {
                env.report(invalid(
                    "PUBLIC_BASE_URL",
                    "must be the service's public URL, e.g. https://auth.example.com",
                ));
            }
            Some(url)
        }
    };
    let twilio = if provider == Some("twilio") {
        let because = "when SEND_OTP_VIA_SMS=true or SMS_PROVIDER=twilio";
        let from = env.get("TWILIO_PHONE_NUMBER");
        let messaging_service_sid = env.get("TWILIO_MESSAGING_SERVICE_SID");
        if from.is_none() && messaging_service_sid.is_none() {
            env.report(invalid(
                "TWILIO_PHONE_NUMBER",
                "Twilio SMS needs TWILIO_PHONE_NUMBER or TWILIO_MESSAGING_SERVICE_SID",
            ));
        }
        Some(TwilioSettings {
            account_sid: required(env, "TWILIO_ACCOUNT_SID", because)?,
            auth_token: Secret::new(required(env, "TWILIO_AUTH_TOKEN", because)?),
            from,
            messaging_service_sid,
            api_base: base_url(env, "TWILIO_API_BASE", "https://api.twilio.com")?,
            status_callback: public_base_url
                .as_ref()
                .map(|base| format!("{base}/api/twilio/status")),
        })
    } else {
        None
    };
    let twilio_verify = if provider == Some("twilio_verify") {
        let because = "when SMS_PROVIDER=twilio_verify";
        let service_sid = required(env, "TWILIO_VERIFY_SERVICE_SID", because)?;
        let service_sid = service_sid.trim().to_string();
        if !(service_sid.len() == 34
            && service_sid.starts_with("VA")
            && service_sid[2..].bytes().all(|b| b.is_ascii_hexdigit()))
        {
            env.report(invalid(
                "TWILIO_VERIFY_SERVICE_SID",
                "must be a Verify service SID: VA followed by 32 hex digits",
            ));
        }
        Some(TwilioVerifySettings {
            account_sid: required(env, "TWILIO_ACCOUNT_SID", because)?,
            auth_token: Secret::new(required(env, "TWILIO_AUTH_TOKEN", because)?),
            service_sid,
            api_base: base_url(env, "TWILIO_VERIFY_API_BASE", "https://verify.twilio.com")?,
        })
    } else {
        None
    };
    let whatsapp = match (
        env.get("WHATSAPP_ACCESS_TOKEN"),
        env.get("WHATSAPP_PHONE_NUMBER_ID"),
    ) {
        (None, None) => None,
        (Some(token), Some(id)) => Some(WhatsappSettings {
            access_token: Secret::new(token),
            phone_number_id: id,
            template: env.get("WHATSAPP_OTP_TEMPLATE"),
            template_language: env
                .get("WHATSAPP_TEMPLATE_LANGUAGE")
                .unwrap_or_else(|| "en_US".into()),
            api_base: base_url(env, "WHATSAPP_API_BASE", "https://graph.facebook.com/v21.0")?,
        }),
        (Some(_), None) => {
            env.report(invalid(
                "WHATSAPP_PHONE_NUMBER_ID",
                "required with WHATSAPP_ACCESS_TOKEN",
            ));
            None
        }
        (None, Some(_)) => {
            env.report(invalid(
                "WHATSAPP_ACCESS_TOKEN",
                "required with WHATSAPP_PHONE_NUMBER_ID",
            ));
            None
        }
    };
    let telegram = match env.get("TELEGRAM_BOT_TOKEN") {
        None => None,
        Some(token) => Some(TelegramSettings {
            bot_token: Secret::new(token),
            api_base: base_url(env, "TELEGRAM_API_BASE", "https://api.telegram.org")?,
        }),
    };
    let channel_order = match env.get("OTP_CHANNEL_ORDER") {
        None => vec![Channel::Sms],
        Some(_) => env
            .list("OTP_CHANNEL_ORDER")
            .iter()
            .map(|name| match name.to_ascii_lowercase().as_str() {
                "sms" => Ok(Channel::Sms),
                "whatsapp" => Ok(Channel::Whatsapp),
                "telegram" => Ok(Channel::Telegram),
                other => Err(invalid(
                    "OTP_CHANNEL_ORDER",
                    format!("{other:?} is not one of sms, whatsapp, telegram"),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    let locales = LocaleSettings::from_env(env)?;
    let android_app_hash = env
        .get("OTP_ANDROID_APP_HASH")
        .map(|h| h.trim().to_string());
    if let Some(hash) = &android_app_hash
        && (hash.len() != 11
            || !hash
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/'))
    {
        env.report(invalid(
            "OTP_ANDROID_APP_HASH",
            "must be the 11-character app hash",
        ));
    }
    let webotp_domain = env.get("OTP_WEBOTP_DOMAIN").map(|d| d.trim().to_string());
    if let Some(domain) = &webotp_domain
        && !domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'))
    {
        env.report(invalid(
            "OTP_WEBOTP_DOMAIN",
            "must be a host name such as example.com",
        ));
    }
    let timeout_ms: u64 = env.ranged("DELIVERY_TIMEOUT_MS", 5000, 1..=60_000)?;
    let mode = match env
        .get("OTP_ROUTING")
        .map(|m| m.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("" | "order") => RoutingMode::Order,
        Some("conversion") => RoutingMode::Conversion,
        Some(other) => {
            return Err(invalid(
                "OTP_ROUTING",
                format!("{other:?} is not one of order, conversion"),
            ));
        }
    };
    let routing = RoutingPolicy {
        mode,
        window: Duration::from_secs(
            60 * env.ranged::<u64>("OTP_ROUTING_WINDOW_MINUTES", 60, 1..=10_080)?,
        ),
        min_sends: env.ranged("OTP_ROUTING_MIN_SENDS", 20, 1..=1_000_000)?,
        explore_percent: env.ranged("OTP_ROUTING_EXPLORE_PERCENT", 5, 0..=50)?,
    };
    Ok(DeliverySettings {
        twilio,
        http_sms,
        twilio_verify,
        whatsapp,
        telegram,
        timeout: Duration::from_millis(timeout_ms),
        channel_order,
        locales,
        app_name: env.get("APP_NAME").unwrap_or_else(|| "otpgate".into()),
        android_app_hash,
        webotp_domain,
        log_channel: !production && provider.is_none(),
        send_otp_via_sms,
        routing,
        receipt_fallback: env.bool("OTP_RECEIPT_FALLBACK", true)?,
    })
}
