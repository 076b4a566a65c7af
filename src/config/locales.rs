//! The code message in the user's language: the built-in templates, template files that
//! override or add to them, the default locale, and which locale a number's country gets.

use std::collections::BTreeMap;

use super::env::{ConfigError, Vars, invalid};

/// The built-in templates, by locale. Each is short enough for one SMS segment with a 6-digit
/// code and a short app name: GSM-7 (160 characters) for English and Indonesian; UCS-2 (70
/// units) where the script or an accent needs it.
pub const BUILT_IN_TEMPLATES: [(&str, &str); 6] = [
    (
        "en",
        "{code} is your {app} verification code. It expires in {minutes} minutes. Do not share it.",
    ),
    (
        "es",
        "{code} es tu código de {app}. Vence en {minutes} min. No lo compartas.",
    ),
    (
        "pt-BR",
        "{code} é seu código {app}. Expira em {minutes} min. Não compartilhe.",
    ),
    (
        "hi",
        "{code} आपका {app} कोड है। {minutes} मिनट तक मान्य। इसे साझा न करें।",
    ),
    (
        "ar",
        "{code} هو رمز التحقق من {app}. صالح لمدة {minutes} دقائق. لا تشاركه.",
    ),
    (
        "id",
        "{code} adalah kode verifikasi {app} Anda. Berlaku {minutes} menit. Jangan berikan kepada siapa pun.",
    ),
];

/// The locale a number's country gets when neither the request's `locale` nor its
/// `Accept-Language` names one we have. A tag here is matched like a requested one (`pt-PT`
/// finds `pt-BR` until a `pt-PT` template exists). India is left out on purpose: most Indian
/// code messages are English, and India's DLT rules refuse message texts not registered with
/// the operator; `OTP_COUNTRY_LOCALES=IN=hi` opts in.
pub const COUNTRY_LOCALES: &[(&str, &str)] = &[
    // Spanish
    ("AR", "es-AR"),
    ("BO", "es-BO"),
    ("CL", "es-CL"),
    ("CO", "es-CO"),
    ("CR", "es-CR"),
    ("CU", "es-CU"),
    ("DO", "es-DO"),
    ("EC", "es-EC"),
    ("ES", "es-ES"),
    ("GQ", "es-GQ"),
    ("GT", "es-GT"),
    ("HN", "es-HN"),
    ("MX", "es-MX"),
    ("NI", "es-NI"),
    ("PA", "es-PA"),
    ("PE", "es-PE"),
    ("PR", "es-PR"),
    ("PY", "es-PY"),
    ("SV", "es-SV"),
    ("UY", "es-UY"),
    ("VE", "es-VE"),
    // Portuguese
    ("BR", "pt-BR"),
    ("PT", "pt-PT"),
    ("AO", "pt-AO"),
    ("MZ", "pt-MZ"),
    ("CV", "pt-CV"),
    ("GW", "pt-GW"),
    ("ST", "pt-ST"),
    // Indonesian
    ("ID", "id"),
    // Arabic
    ("AE", "ar"),
    ("BH", "ar"),
    ("DZ", "ar"),
    ("EG", "ar"),
    ("IQ", "ar"),
    ("JO", "ar"),
    ("KW", "ar"),
    ("LB", "ar"),
    ("LY", "ar"),
    ("MA", "ar"),
    ("OM", "ar"),
    ("PS", "ar"),
    ("QA", "ar"),
    ("SA", "ar"),
    ("SD", "ar"),
    ("SY", "ar"),
    ("TN", "ar"),
    ("YE", "ar"),
];

/// The message templates and how a locale is chosen.
#[derive(Debug, Clone)]
pub struct LocaleSettings {
    /// Every template by canonical locale tag (`en`, `pt-BR`): the built-in ones, those of
    /// `OTP_TEMPLATES_DIR`, and `OTP_MESSAGE_TEMPLATE` for the default locale; only those of
    /// `OTP_LOCALES` when it is set.
    pub templates: BTreeMap<String, String>,
    /// `OTP_DEFAULT_LOCALE`: what a user gets when nothing else matches.
    pub default_locale: String,
    /// The built-in country map with `OTP_COUNTRY_LOCALES` on top: ISO country → locale tag.
    pub country_locales: BTreeMap<String, String>,
}

/// A BCP 47 tag in canonical case (`pt-br` → `pt-BR`, `zh_hant_tw` → `zh-Hant-TW`), or `None`
/// when it is not one (a language of 2 or 3 letters, then subtags of 1 to 8 letters or digits).
pub fn canonical_tag(tag: &str) -> Option<String> {
    let tag = tag.trim();
    if tag.is_empty() || tag.len() > 35 {
        return None;
    }
    let mut out = String::with_capacity(tag.len());
    for (i, sub) in tag.split(['-', '_']).enumerate() {
        if sub.is_empty() || sub.len() > 8 || !sub.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        if i == 0 {
            if !(2..=3).contains(&sub.len()) || !sub.bytes().all(|b| b.is_ascii_alphabetic()) {
                return None;
            }
            out.push_str(&sub.to_ascii_lowercase());
            continue;
        }
        out.push('-');
        let alpha = sub.bytes().all(|b| b.is_ascii_alphabetic());
        match sub.len() {
            2 if alpha => out.push_str(&sub.to_ascii_uppercase()),
            4 if alpha => {
                out.push_str(&sub[..1].to_ascii_uppercase());
                out.push_str(&sub[1..].to_ascii_lowercase());
            }
            _ => out.push_str(&sub.to_ascii_lowercase()),
        }
    }
    Some(out)
}

impl LocaleSettings {
    pub(crate) fn from_env(env: &Vars<'_>) -> Result<Self, ConfigError> {
        let mut templates: BTreeMap<String, String> = BUILT_IN_TEMPLATES
            .iter()
            .map(|(tag, text)| (tag.to_string(), text.to_string()))
            .collect();
        if let Some(dir) = env.get("OTP_TEMPLATES_DIR") {
            let entries = std::fs::read_dir(dir.trim()).map_err(|e| {
                invalid("OTP_TEMPLATES_DIR", format!("{dir:?} cannot be read: {e}"))
            })?;
            for entry in entries {
                let path = entry
                    .map_err(|e| invalid("OTP_TEMPLATES_DIR", e.to_string()))?
                    .path();
                if path.extension().and_then(|e| e.to_str()) != Some("txt") {
                    continue;
                }
                let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
                let Some(tag) = canonical_tag(stem) else {
                    env.report(invalid(
                        "OTP_TEMPLATES_DIR",
                        format!(
                            "{} is not named after a locale (es.txt, pt-BR.txt)",
                            path.display()
                        ),
                    ));
                    continue;
                };
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    invalid(
                        "OTP_TEMPLATES_DIR",
                        format!("{} cannot be read: {e}", path.display()),
                    )
                })?;
                templates.insert(tag, text.trim_end_matches(['\r', '\n']).to_string());
            }
        }
        let default_locale = match env.get("OTP_DEFAULT_LOCALE") {
            None => "en".to_string(),
            Some(value) => canonical_tag(&value).ok_or_else(|| {
                invalid(
                    "OTP_DEFAULT_LOCALE",
                    format!("{value:?} is not a language tag such as en or pt-BR"),
                )
            })?,
        };
        // The built-in English text, which every .env.example carried before messages had
        // languages, is no custom message: it does not switch the translations off.
        let custom = env
            .get("OTP_MESSAGE_TEMPLATE")
            .filter(|t| t.trim() != BUILT_IN_TEMPLATES[0].1);
        if let Some(template) = custom {
            templates.insert(default_locale.clone(), template);
            if env.get("OTP_LOCALES").is_none() && env.get("OTP_TEMPLATES_DIR").is_none() {
                // A team's own message, set before messages had languages (perhaps the text
                // its carrier registered): it stays the only one until they ask for more.
                templates.retain(|tag, _| *tag == default_locale);
            }
        }
        if env.get("OTP_LOCALES").is_some() {
            let mut wanted = Vec::new();
            for value in env.list("OTP_LOCALES") {
                match canonical_tag(&value) {
                    Some(tag) if templates.contains_key(&tag) => wanted.push(tag),
                    _ => env.report(invalid(
                        "OTP_LOCALES",
                        format!(
                            "{value:?} has no template (built in: en, es, pt-BR, hi, ar, id; \
                             others come from OTP_TEMPLATES_DIR)"
                        ),
                    )),
                }
            }
            templates.retain(|tag, _| wanted.contains(tag) || *tag == default_locale);
        }
        if !templates.contains_key(&default_locale) {
            env.report(invalid(
                "OTP_DEFAULT_LOCALE",
                format!(
                    "{default_locale} has no template (add {default_locale}.txt to \
                     OTP_TEMPLATES_DIR, or set OTP_MESSAGE_TEMPLATE)"
                ),
            ));
        }
        for (tag, template) in &templates {
            if !template.contains("{code}") {
                let source = if *tag == default_locale && env.get("OTP_MESSAGE_TEMPLATE").is_some()
                {
                    "OTP_MESSAGE_TEMPLATE"
                } else {
                    "OTP_TEMPLATES_DIR"
                };
                env.report(invalid(
                    source,
                    format!("the {tag} template must contain {{code}}"),
                ));
            }
        }
        let mut country_locales: BTreeMap<String, String> = COUNTRY_LOCALES
            .iter()
            .map(|(c, l)| (c.to_string(), l.to_string()))
            .collect();
        for pair in env.list("OTP_COUNTRY_LOCALES") {
            let parsed = pair.split_once('=').and_then(|(country, tag)| {
                let country = country.trim().to_ascii_uppercase();
                let ok = country.len() == 2 && country.bytes().all(|b| b.is_ascii_alphabetic());
                Some((country, canonical_tag(tag)?)).filter(|_| ok)
            });
            match parsed {
                Some((country, tag)) => {
                    country_locales.insert(country, tag);
                }
                None => env.report(invalid(
                    "OTP_COUNTRY_LOCALES",
                    format!("{pair:?} is not COUNTRY=locale, e.g. IN=hi"),
                )),
            }
        }
        Ok(Self {
            templates,
            default_locale,
            country_locales,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::canonical_tag;
    use crate::config::settings_from;

    /// A fresh folder of template files.
    fn folder(files: &[(&str, &str)]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("otpgate-templates-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn template_files_replace_and_add_locales() {
        let dir = folder(&[
            ("fr.txt", "{code} est votre code {app}.\n"),
            ("ES.txt", "Código {code}"),
            ("notes.md", "not a template"),
        ]);
        let dir_text = dir.display().to_string();
        let s = settings_from(&[("OTP_TEMPLATES_DIR", dir_text.as_str())]).unwrap();
        let t = &s.delivery.locales.templates;
        assert_eq!(
            t["fr"], "{code} est votre code {app}.",
            "the final newline is dropped"
        );
        assert_eq!(t["es"], "Código {code}");
        assert!(
            t["pt-BR"].contains("{code}"),
            "the other built-in ones stay"
        );
        assert_eq!(t.len(), 7);
        // OTP_MESSAGE_TEMPLATE is the default locale's; OTP_LOCALES keeps those and the default.
        let s = settings_from(&[
            ("OTP_TEMPLATES_DIR", dir_text.as_str()),
            ("OTP_DEFAULT_LOCALE", "fr"),
            ("OTP_MESSAGE_TEMPLATE", "Votre code : {code}"),
            ("OTP_LOCALES", "es, id"),
        ])
        .unwrap();
        let t = &s.delivery.locales.templates;
        assert_eq!(t.keys().collect::<Vec<_>>(), ["es", "fr", "id"]);
        assert_eq!(t["fr"], "Votre code : {code}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A custom `OTP_MESSAGE_TEMPLATE` alone is every user's message, as it was before
    /// languages; `OTP_LOCALES` adds the others back.
    #[test]
    fn a_custom_message_alone_is_the_only_one() {
        let custom = ("OTP_MESSAGE_TEMPLATE", "Your Acme code: {code}");
        let s = settings_from(&[custom]).unwrap();
        let t = &s.delivery.locales.templates;
        assert_eq!(t.keys().collect::<Vec<_>>(), ["en"]);
        assert_eq!(t["en"], "Your Acme code: {code}");
        let s = settings_from(&[custom, ("OTP_LOCALES", "en,es,hi")]).unwrap();
        let t = &s.delivery.locales.templates;
        assert_eq!(t.keys().collect::<Vec<_>>(), ["en", "es", "hi"]);
        assert_eq!(t["en"], "Your Acme code: {code}");
        assert_eq!(
            settings_from(&[]).unwrap().delivery.locales.templates.len(),
            6
        );
        // The built-in English text (the old .env.example's value) is not a custom message.
        let old_example = ("OTP_MESSAGE_TEMPLATE", super::BUILT_IN_TEMPLATES[0].1);
        let s = settings_from(&[old_example]).unwrap();
        assert_eq!(s.delivery.locales.templates.len(), 6);
    }

    #[test]
    fn bad_locale_settings_stop_start_up() {
        let var = |pairs: &[(&str, &str)]| settings_from(pairs).unwrap_err().first().var;
        let no_code = folder(&[("es.txt", "tu código")]);
        let no_code = no_code.display().to_string();
        assert_eq!(
            var(&[("OTP_TEMPLATES_DIR", no_code.as_str())]),
            "OTP_TEMPLATES_DIR"
        );
        let misnamed = folder(&[("spanish-language.txt", "{code}")]);
        let misnamed = misnamed.display().to_string();
        assert_eq!(
            var(&[("OTP_TEMPLATES_DIR", misnamed.as_str())]),
            "OTP_TEMPLATES_DIR"
        );
        assert_eq!(
            var(&[("OTP_TEMPLATES_DIR", "/nonexistent/otpgate-templates")]),
            "OTP_TEMPLATES_DIR"
        );
        assert_eq!(var(&[("OTP_DEFAULT_LOCALE", "fr")]), "OTP_DEFAULT_LOCALE");
        assert_eq!(
            var(&[("OTP_DEFAULT_LOCALE", "not a tag")]),
            "OTP_DEFAULT_LOCALE"
        );
        assert_eq!(var(&[("OTP_LOCALES", "en,klingon")]), "OTP_LOCALES");
        assert_eq!(
            var(&[("OTP_COUNTRY_LOCALES", "India=hi")]),
            "OTP_COUNTRY_LOCALES"
        );
        assert_eq!(var(&[("OTP_COUNTRY_LOCALES", "IN")]), "OTP_COUNTRY_LOCALES");
        assert_eq!(
            var(&[
                ("OTP_DEFAULT_LOCALE", "es"),
                ("OTP_MESSAGE_TEMPLATE", "sin código")
            ]),
            "OTP_MESSAGE_TEMPLATE"
        );
        let _ = std::fs::remove_dir_all(no_code);
        let _ = std::fs::remove_dir_all(misnamed);
    }

    #[test]
    fn tags_are_put_in_canonical_case() {
        assert_eq!(canonical_tag("pt-br").as_deref(), Some("pt-BR"));
        assert_eq!(canonical_tag("PT_BR").as_deref(), Some("pt-BR"));
        assert_eq!(canonical_tag("zh-hant-tw").as_deref(), Some("zh-Hant-TW"));
        assert_eq!(canonical_tag(" es-419 ").as_deref(), Some("es-419"));
        assert_eq!(canonical_tag("EN").as_deref(), Some("en"));
        for bad in [
            "",
            "e",
            "english",
            "en-",
            "-en",
            "1a",
            "en-US!",
            "es--MX",
            "x-klingon-too-long-subtag",
        ] {
            assert_eq!(canonical_tag(bad), None, "{bad:?}");
        }
    }
}
