//! Login without typing a code: login intents (`/api/auth/intents`), the Telegram Login Widget,
//! and the WhatsApp and Telegram webhooks that complete intents.

use std::sync::Arc;

use poem::Request;
use poem_openapi::param::{Header, Query};
use poem_openapi::payload::{Json, PlainText};
use poem_openapi::registry::{MetaMediaType, MetaRequest, MetaSchema, MetaSchemaRef, Registry};
use poem_openapi::types::Example;
use poem_openapi::{
    ApiExtractor, ApiExtractorType, ApiResponse, Enum, ExtractParamOptions, Object, OpenApi,
};

use super::ApiTags;
use super::auth::{TokenResponse, Tokens};
use super::body::Body;
use super::problem::{Fails, failures};
use super::text::{HexHashText, IntentIdText, PollTokenText, Text};
use crate::auth::AuthService;
use crate::auth::intents::{IntentChannel, PollResult};
use crate::messaging::Messaging;
use crate::messaging::telegram::WidgetLogin;

/// Login intents, the widget and the webhooks.
pub struct MessagingApi {
    pub(crate) auth: Arc<AuthService>,
    pub(crate) messaging: Arc<Messaging>,
}

/// Where the user completes a login intent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum IntentChannelName {
    /// Send a prefilled message to the business WhatsApp number.
    Whatsapp,
    /// Tap Start in the Telegram bot.
    Telegram,
}

/// Start a login by message.
#[derive(Debug, Object)]
#[oai(example)]
pub struct IntentRequest {
    /// The messaging app the user will confirm in.
    pub channel: IntentChannelName,
}

/// A login intent: open `deep_link` on the user's device, then poll.
#[derive(Debug, Object)]
#[oai(example)]
pub struct IntentResponse {
    /// The intent's id, for polling.
    pub intent_id: String,
    /// Secret proof that the poller created the intent; keep it on the device.
    pub poll_token: String,
    /// `https://wa.me/…?text=…` or `https://t.me/…?start=…`.
    pub deep_link: String,
    /// Seconds until the intent expires.
    pub expires_in: u64,
}

/// Poll a login intent.
#[derive(Debug, Object)]
#[oai(example)]
pub struct PollRequest {
    /// From the intent.
    pub intent_id: IntentIdText,
    /// From the intent (43 characters of base64url).
    pub poll_token: PollTokenText,
}

/// The user has not confirmed yet.
#[derive(Debug, Object)]
#[oai(example)]
pub struct PollPending {
    /// Always `pending`.
    pub status: String,
}

/// Poll answer.
#[derive(ApiResponse)]
pub enum PollReply {
    /// Confirmed: a new session (handed out once; later polls get 410).
    #[oai(status = 200)]
    LoggedIn(Json<TokenResponse>),
    /// Not confirmed yet: poll again in a second or two.
    #[oai(status = 202)]
    Pending(Json<PollPending>),
}

/// Intent created.
#[derive(ApiResponse)]
pub enum IntentCreated {
    /// The intent.
    #[oai(status = 201)]
    Created(Json<IntentResponse>),
}

/// The fields the Telegram Login Widget passes to its callback, unchanged.
#[derive(Debug, Object)]
#[oai(example)]
pub struct TelegramWidgetRequest {
    /// Telegram user id.
    pub id: i64,
    /// First name.
    pub first_name: Option<Text>,
    /// Last name.
    pub last_name: Option<Text>,
    /// Username.
    pub username: Option<Text>,
    /// Profile photo URL.
    pub photo_url: Option<Text>,
    /// Unix time of the authentication.
    pub auth_date: i64,
    /// Hex HMAC-SHA256 of the other fields (see Telegram's widget documentation).
    pub hash: HexHashText,
}

/// A webhook delivery was accepted.
#[derive(Debug, Object)]
#[oai(example)]
pub struct WebhookAck {
    /// Always `ok`.
    pub status: String,
}

impl Example for PollPending {
    fn example() -> Self {
        PollPending {
            status: "pending".into(),
        }
    }
}

impl Example for WebhookAck {
    fn example() -> Self {
        WebhookAck {
            status: "ok".into(),
        }
    }
}

impl Example for TelegramWidgetRequest {
    fn example() -> Self {
        TelegramWidgetRequest {
            id: 123_456_789,
            first_name: Some(Text("Asha".into())),
            last_name: None,
            username: Some(Text("asha".into())),
            photo_url: None,
            auth_date: 1_767_225_600,
            hash: HexHashText("3f".repeat(32)),
        }
    }
}

impl Example for IntentRequest {
    fn example() -> Self {
        IntentRequest {
            channel: IntentChannelName::Whatsapp,
        }
    }
}

impl Example for IntentResponse {
    fn example() -> Self {
        IntentResponse {
            intent_id: "3f2a9c0e5b7d41a8b6c2d9e0f1a2b3c4".into(),
            poll_token: "n3Vq0c8yFh2kXb1eP5sZr7tW9aLm4dGj6uYiQoKxE0c".into(),
            deep_link: "https://wa.me/15550001234?text=Log%20me%20in%20to%20otpgate.%20Code%3A%207KQ2M9XW4HTA3C8R"
                .into(),
            expires_in: 300,
        }
    }
}

impl Example for PollRequest {
    fn example() -> Self {
        PollRequest {
            intent_id: IntentIdText("3f2a9c0e5b7d41a8b6c2d9e0f1a2b3c4".into()),
            poll_token: PollTokenText("n3Vq0c8yFh2kXb1eP5sZr7tW9aLm4dGj6uYiQoKxE0c".into()),
        }
    }
}

/// A request body kept byte for byte (its signature covers those bytes), documented with its
/// media type.
macro_rules! raw_body {
    ($(#[$doc:meta])* $name:ident, $content_type:literal, $description:literal, $schema:literal) => {
        $(#[$doc])*
        pub struct $name(pub Vec<u8>);

        impl<'a> ApiExtractor<'a> for $name {
            const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];

            type ParamType = ();
            type ParamRawType = ();

            fn register(_registry: &mut Registry) {}

            fn request_meta() -> Option<MetaRequest> {
                Some(MetaRequest {
                    description: Some($description),
                    content: vec![MetaMediaType {
                        content_type: $content_type,
                        schema: MetaSchemaRef::Inline(Box::new(MetaSchema::new($schema))),
                    }],
                    required: true,
                })
            }

            async fn from_request(
                request: &'a Request,
                body: &mut poem::RequestBody,
                _param_opts: ExtractParamOptions<Self::ParamType>,
            ) -> poem::Result<Self> {
                let bytes = <Vec<u8> as poem::FromRequest>::from_request(request, body).await?;
                Ok($name(bytes))
            }
        }
    };
}

raw_body!(
    /// A webhook's JSON body, byte for byte (its signature covers those bytes).
    RawJson,
    "application/json",
    "The platform's JSON notification, byte for byte as sent.",
    "object"
);

raw_body!(
    /// A webhook's form body, byte for byte (its signature covers every field).
    RawForm,
    "application/x-www-form-urlencoded",
    "Twilio's status callback form (MessageSid, MessageStatus, To, ErrorCode, ...), as sent.",
    "object"
);

fn ack() -> WebhookHandled {
    WebhookHandled::Ok(Json(WebhookAck {
        status: "ok".into(),
    }))
}

failures! {
    /// `POST /api/auth/intents`.
    IntentFailures: ["channel_unavailable", "store_unavailable"];
    /// `POST /api/auth/intents/poll`.
    PollFailures: [
        "invalid_poll_token",
        "intent_expired",
        "intent_consumed",
        "user_blocked",
        "store_unavailable",
        "database_unavailable",
    ];
    /// `POST /api/auth/telegram/widget`.
    WidgetFailures: [
        "invalid_telegram_auth",
        "telegram_auth_expired",
        "channel_unavailable",
        "user_blocked",
        "store_unavailable",
        "database_unavailable",
    ];
    /// `GET /api/whatsapp/webhook` (Meta's handshake; not behind the front door).
    HandshakeFailures { BODY = false, FRONT_DOOR = false }: ["invalid_signature"];
    /// The webhooks: signed, not behind the front door; 503 makes the platform retry.
    WebhookFailures { FRONT_DOOR = false }: [
        "invalid_signature",
        "rate_limited",
        "store_unavailable",
        "database_unavailable",
    ];
    /// `POST /api/twilio/status`: signed by Twilio, not behind the front door.
    StatusCallbackFailures { FRONT_DOOR = false }: ["invalid_signature", "not_found"];
}

/// A webhook call was handled.
#[derive(ApiResponse)]
pub enum WebhookHandled {
    /// Accepted (also for updates that need no action, so the platform does not retry them).
    #[oai(status = 200)]
    Ok(Json<WebhookAck>),
}

/// The handshake answer.
#[derive(ApiResponse)]
pub enum Handshake {
    /// `hub.challenge`, echoed.
    #[oai(status = 200)]
    Challenge(PlainText<String>),
}

#[OpenApi]
impl MessagingApi {
    /// Start a login by WhatsApp or Telegram message
    ///
    /// Creates a login intent. Open `deep_link` on the user's device: WhatsApp opens with a
    /// prefilled message to the business number, Telegram opens the bot. When the user sends
    /// the message (or taps Start), the platform tells otpgate who they are, and the next poll
    /// returns tokens. No code to type.
    #[oai(
        path = "/api/auth/intents",
        method = "post",
        operation_id = "createIntent",
        tag = "ApiTags::Messaging"
    )]
    async fn create_intent(
        &self,
        req: &poem::Request,
        body: Body<IntentRequest>,
    ) -> Result<IntentCreated, Fails<IntentFailures>> {
        let channel = match body.channel {
            IntentChannelName::Whatsapp => IntentChannel::Whatsapp,
            IntentChannelName::Telegram => IntentChannel::Telegram,
        };
        let client_ip = req
            .extensions()
            .get::<crate::domain::net::ClientIp>()
            .map(|c| c.0);
        let intent = self.auth.create_intent(channel, client_ip).await?;
        Ok(IntentCreated::Created(Json(IntentResponse {
            intent_id: intent.intent_id,
            poll_token: intent.poll_token,
            deep_link: intent.deep_link,
            expires_in: intent.expires_in,
        })))
    }

    /// Poll a login intent
    ///
    /// 202 until the user has sent the message, then 200 with the same body as
    /// `verify-otp` (exactly once), then 410. Works on any replica.
    #[oai(
        path = "/api/auth/intents/poll",
        method = "post",
        operation_id = "pollIntent",
        tag = "ApiTags::Messaging"
    )]
    async fn poll_intent(
        &self,
        req: &poem::Request,
        body: Body<PollRequest>,
    ) -> Result<PollReply, Fails<PollFailures>> {
        match self
            .auth
            .poll_intent(
                &body.intent_id,
                &body.poll_token,
                &super::auth::client_info(req, None),
            )
            .await?
        {
            PollResult::Pending => Ok(PollReply::Pending(Json(PollPending {
                status: "pending".into(),
            }))),
            PollResult::LoggedIn(session) => Ok(PollReply::LoggedIn(Json((*session).into()))),
        }
    }

    /// Log in with the Telegram Login Widget
    ///
    /// Send the widget's callback fields unchanged. They must be signed by the bot and at
    /// most `TELEGRAM_AUTH_MAX_AGE_SECONDS` old; each signed login works once.
    #[oai(
        path = "/api/auth/telegram/widget",
        method = "post",
        operation_id = "telegramWidgetLogin",
        tag = "ApiTags::Messaging"
    )]
    async fn telegram_widget(
        &self,
        req: &poem::Request,
        body: Body<TelegramWidgetRequest>,
    ) -> Result<Tokens, Fails<WidgetFailures>> {
        let body = body.0;
        let mut fields = vec![
            ("id".to_string(), body.id.to_string()),
            ("auth_date".to_string(), body.auth_date.to_string()),
        ];
        for (name, value) in [
            ("first_name", body.first_name),
            ("last_name", body.last_name),
            ("username", body.username),
            ("photo_url", body.photo_url),
        ] {
            if let Some(value) = value {
                fields.push((name.to_string(), value.0));
            }
        }
        let session = self
            .messaging
            .telegram_widget(
                WidgetLogin {
                    fields,
                    id: body.id,
                    auth_date: body.auth_date,
                    hash: body.hash.0,
                },
                &super::auth::client_info(req, None),
            )
            .await?;
        Ok(Tokens::Issued(Json(session.into())))
    }

    /// WhatsApp webhook verification
    ///
    /// Meta's subscription handshake: echoes `hub.challenge` when `hub.mode` is `subscribe`
    /// and `hub.verify_token` equals `WHATSAPP_VERIFY_TOKEN`; otherwise 403.
    #[oai(
        path = "/api/whatsapp/webhook",
        method = "get",
        operation_id = "whatsappWebhookVerify",
        tag = "ApiTags::Webhooks"
    )]
    async fn whatsapp_verify(
        &self,
        #[oai(name = "hub.mode")] mode: Query<Option<String>>,
        #[oai(name = "hub.verify_token")] token: Query<Option<String>>,
        #[oai(name = "hub.challenge")] challenge: Query<Option<String>>,
    ) -> Result<Handshake, Fails<HandshakeFailures>> {
        Ok(self
            .messaging
            .whatsapp_handshake(mode.0.as_deref(), token.0.as_deref(), challenge.0)
            .map(|c| Handshake::Challenge(PlainText(c)))?)
    }

    /// WhatsApp webhook
    ///
    /// Notifications from the WhatsApp Cloud API, signed with `X-Hub-Signature-256`
    /// (HMAC-SHA256 of the raw body with `WHATSAPP_WEBHOOK_SECRET`); unsigned calls are 403.
    /// Messages: a login-intent code binds the intent; `OTP` or `CODE` sends a code by
    /// WhatsApp; anything else gets a short help reply.
    #[oai(
        path = "/api/whatsapp/webhook",
        method = "post",
        operation_id = "whatsappWebhook",
        tag = "ApiTags::Webhooks"
    )]
    async fn whatsapp_webhook(
        &self,
        #[oai(name = "X-Hub-Signature-256")] signature: Header<Option<String>>,
        body: RawJson,
    ) -> Result<WebhookHandled, Fails<WebhookFailures>> {
        self.messaging
            .whatsapp_notification(&body.0, signature.0.as_deref())
            .await?;
        Ok(ack())
    }

    /// Telegram webhook
    ///
    /// Bot updates, authenticated by `X-Telegram-Bot-Api-Secret-Token` (=
    /// `TELEGRAM_WEBHOOK_SECRET`, given to `setWebhook`); other calls are 403. `/start <code>`
    /// binds a login intent; a shared own contact links the phone; `/otp` sends a code to the
    /// chat.
    #[oai(
        path = "/api/telegram/webhook",
        method = "post",
        operation_id = "telegramWebhook",
        tag = "ApiTags::Webhooks"
    )]
    async fn telegram_webhook(
        &self,
        #[oai(name = "X-Telegram-Bot-Api-Secret-Token")] secret: Header<Option<String>>,
        body: RawJson,
    ) -> Result<WebhookHandled, Fails<WebhookFailures>> {
        self.messaging
            .telegram_update(&body.0, secret.0.as_deref())
            .await?;
        Ok(ack())
    }

    /// Twilio status callback
    ///
    /// Delivery receipts of the SMS otpgate sent through Twilio: with `PUBLIC_BASE_URL` set,
    /// every SMS asks Twilio to report to `{PUBLIC_BASE_URL}/api/twilio/status`. Signed with
    /// `X-Twilio-Signature` (base64 HMAC-SHA1, under `TWILIO_AUTH_TOKEN`, of that URL followed
    /// by every field's name and value sorted by name); unsigned calls are 403 and nothing is
    /// recorded. 404 when the server has no Twilio or no `PUBLIC_BASE_URL`.
    #[oai(
        path = "/api/twilio/status",
        method = "post",
        operation_id = "twilioStatusCallback",
        tag = "ApiTags::Webhooks"
    )]
    async fn twilio_status(
        &self,
        #[oai(name = "X-Twilio-Signature")] signature: Header<Option<String>>,
        body: RawForm,
    ) -> Result<WebhookHandled, Fails<StatusCallbackFailures>> {
        self.messaging
            .twilio_status(&body.0, signature.0.as_deref())
            .await?;
        Ok(ack())
    }
}
