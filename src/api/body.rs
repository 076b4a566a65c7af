//! JSON request bodies read strictly, with errors a newcomer can act on: a body that is not
//! JSON is a 400 `invalid_request` quoting the parser; a field with the wrong type, a value
//! outside its list, a broken rule or a missing field is a 422 `invalid_field` naming the field
//! and the rule in plain words (`otp_code must be a string of 4 to 10 digits, not a number`).
//!
//! The fast path is poem-openapi's own parsing; only a body that fails it is looked at again,
//! field by field, against the operation's registered schema.

use std::ops::Deref;

use poem::{FromRequest, Request, RequestBody};
use poem_openapi::impl_apirequest_for_payload;
use poem_openapi::payload::{ParsePayload, Payload};
use poem_openapi::registry::{MetaSchema, MetaSchemaRef, Registry};
use poem_openapi::types::{ParseFromJSON, Type};
use serde_json::Value;

use super::text::RULES;
use crate::error::Error;

/// A JSON request body of type `T` (`application/json`).
#[derive(Debug)]
pub struct Body<T>(pub T);

impl<T> Deref for Body<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: Type> Payload for Body<T> {
    const CONTENT_TYPE: &'static str = "application/json";

    fn check_content_type(content_type: &str) -> bool {
        let essence = content_type.split(';').next().unwrap_or("").trim();
        essence.eq_ignore_ascii_case("application/json")
            || essence
                .rsplit_once('+')
                .is_some_and(|(_, suffix)| suffix.eq_ignore_ascii_case("json"))
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: ParseFromJSON> ParsePayload for Body<T> {
    const IS_REQUIRED: bool = true;

    async fn from_request(request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let data = Vec::<u8>::from_request(request, body).await?;
        Ok(Self(parse::<T>(&data)?))
    }
}

impl_apirequest_for_payload!(Body<T>, T: ParseFromJSON);

/// `data` as a `T`, or the error that says what to change.
pub fn parse<T: ParseFromJSON>(data: &[u8]) -> Result<T, Error> {
    if data.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::InvalidRequest(
            "The body is empty: send a JSON object.".into(),
        ));
    }
    let value: Value = serde_json::from_slice(data)
        .map_err(|e| Error::InvalidRequest(format!("The body is not valid JSON: {e}.")))?;
    match T::parse_from_json(Some(value)) {
        Ok(parsed) => Ok(parsed),
        // Parse again (only on this path) to say which field is wrong.
        Err(err) => {
            let value: Value = serde_json::from_slice(data).unwrap_or_default();
            Err(
                diagnose::<T>(&value).unwrap_or_else(|| Error::InvalidField {
                    field: "(body)".into(),
                    problem: err.into_message(),
                }),
            )
        }
    }
}

/// The first field of `value` that breaks `T`'s schema, and how.
fn diagnose<T: Type>(value: &Value) -> Option<Error> {
    let mut registry = Registry::new();
    T::register(&mut registry);
    let root = T::schema_ref();
    let schema = resolve(&registry, &root)?;
    let Value::Object(fields) = value else {
        return Some(field_error(
            "(body)",
            format!("must be a JSON object, not {}", kind(value)),
        ));
    };
    for (name, property) in &schema.properties {
        let required = schema.required.contains(name);
        match fields.get(*name) {
            None | Some(Value::Null) if required => {
                return Some(field_error(name, "is required".into()));
            }
            None | Some(Value::Null) => {}
            Some(v) => {
                if let Some(problem) = check(&registry, property, v) {
                    return Some(field_error(name, problem));
                }
            }
        }
    }
    None
}

fn field_error(field: &str, problem: String) -> Error {
    Error::InvalidField {
        field: field.to_string(),
        problem,
    }
}

/// What is wrong with `value` against `schema`, if anything.
fn check(registry: &Registry, schema: &MetaSchemaRef, value: &Value) -> Option<String> {
    let schema = resolve(registry, schema)?;
    let expected = schema.ty;
    let fits = match expected {
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        _ => true,
    };
    if !fits {
        let article = if expected == "integer" || expected == "array" || expected == "object" {
            "an"
        } else {
            "a"
        };
        let hint = if expected == "string" && value.is_number() {
            " (put it in quotes)"
        } else {
            ""
        };
        return Some(format!(
            "must be {article} {expected}, not {}{hint}",
            kind(value)
        ));
    }
    if !schema.enum_items.is_empty() && !schema.enum_items.contains(value) {
        let allowed: Vec<String> = schema
            .enum_items
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
            .collect();
        return Some(format!("must be one of: {}", allowed.join(", ")));
    }
    if let Some(number) = value.as_f64() {
        if let Some(min) = schema.minimum.filter(|min| number < *min) {
            return Some(format!("must be at least {min}"));
        }
        if let Some(max) = schema.maximum.filter(|max| number > *max) {
            return Some(format!("must be at most {max}"));
        }
    }
    let text = value.as_str()?;
    if let Some(pattern) = &schema.pattern
        && let Some((_, ok, rule)) = RULES.iter().find(|(p, _, _)| p == pattern)
        && !ok(text)
    {
        return Some(format!("must be {rule}"));
    }
    let chars = text.chars().count();
    if let Some(max) = schema.max_length.filter(|max| chars > *max) {
        return Some(format!("must be at most {max} characters long"));
    }
    if let Some(min) = schema.min_length.filter(|min| chars < *min) {
        return Some(format!("must be at least {min} characters long"));
    }
    None
}

/// The schema behind a reference (or a nullable/optional wrapper of one).
fn resolve<'a>(registry: &'a Registry, schema: &'a MetaSchemaRef) -> Option<&'a MetaSchema> {
    match schema {
        MetaSchemaRef::Reference(name) => registry.schemas.get(name),
        MetaSchemaRef::Inline(inline) => {
            let wrapped = inline
                .all_of
                .iter()
                .chain(&inline.any_of)
                .chain(&inline.one_of)
                .find(|s| !matches!(s, MetaSchemaRef::Inline(i) if i.ty == "null"));
            match wrapped {
                Some(inner) if inline.properties.is_empty() && inline.enum_items.is_empty() => {
                    resolve(registry, inner)
                }
                _ => Some(inline),
            }
        }
    }
}

/// A JSON value's kind in words.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::auth::{LoginRequest, VerifyRequest};

    fn problem<T: ParseFromJSON>(body: &str) -> (u16, String, String) {
        let err = parse::<T>(body.as_bytes()).err().expect("refused");
        let field = match &err {
            Error::InvalidField { field, .. } => field.clone(),
            _ => String::new(),
        };
        (err.status(), field, err.to_string())
    }

    #[test]
    fn field_errors_name_the_field_and_the_rule() {
        let (status, field, text) = problem::<LoginRequest>(r#"{"phone": 919876543218}"#);
        assert_eq!((status, field.as_str()), (422, "phone"));
        assert_eq!(
            text,
            "`phone` must be a string, not a number (put it in quotes)"
        );
        let (status, field, text) =
            problem::<VerifyRequest>(r#"{"phone": "+919876543210", "otp_code": 123456}"#);
        assert_eq!((status, field.as_str()), (422, "otp_code"));
        assert!(text.contains("must be a string, not a number"), "{text}");
        let (_, field, text) =
            problem::<VerifyRequest>(r#"{"phone": "+919876543210", "otp_code": "12ab"}"#);
        assert_eq!(field, "otp_code");
        assert!(text.contains("4 to 10 digits"), "{text}");
        let (_, field, text) =
            problem::<LoginRequest>(r#"{"phone": "+919876543210", "channel": "pigeon"}"#);
        assert_eq!(field, "channel");
        assert_eq!(text, "`channel` must be one of: sms, whatsapp, telegram");
        let (_, field, text) = problem::<VerifyRequest>(r#"{"phone": "+919876543210"}"#);
        assert_eq!(
            (field.as_str(), text.as_str()),
            ("otp_code", "`otp_code` is required")
        );
        let (_, field, text) = problem::<LoginRequest>(r#"["+919876543210"]"#);
        assert_eq!(field, "(body)");
        assert!(
            text.contains("must be a JSON object, not an array"),
            "{text}"
        );
        for text in [
            problem::<LoginRequest>(r#"{"phone": 9198}"#).2,
            problem::<LoginRequest>(r#"{"channel": "pigeon"}"#).2,
        ] {
            assert!(
                !text.contains("parse") && !text.contains("optional_"),
                "framework words in {text}"
            );
        }
    }

    #[test]
    fn bodies_that_are_not_json_are_400() {
        for body in ["", "  ", "{", "phone=+91", "{\"phone\": }"] {
            let err = parse::<LoginRequest>(body.as_bytes()).err().unwrap();
            assert_eq!(err.status(), 400, "{body:?}");
            assert_eq!(err.code(), "invalid_request");
        }
        assert!(parse::<LoginRequest>(br#"{"phone": "+919876543210"}"#).is_ok());
    }
}
