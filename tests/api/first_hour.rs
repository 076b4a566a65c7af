//! A newcomer's first hour with the binary: `--help` everywhere, `otpgate check`, every
//! configuration problem at once, warnings for misspelled variables and broken `.env` lines,
//! and a start-up line that says where the API and the docs are.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::cli::{otpgate, temp_dir};

#[test]
fn every_command_has_help_that_starts_nothing() {
    let dir = temp_dir();
    for args in [
        &["--help"][..],
        &["help"],
        &["serve", "--help"],
        &["check", "--help"],
        &["migrate", "--help"],
        &["healthcheck", "-h"],
        &["keygen", "--help"],
    ] {
        let out = otpgate(&dir).args(args).output().expect("run");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{args:?}: {out:?}");
        assert!(text.starts_with("usage: otpgate"), "{args:?}: {text}");
    }
    assert!(
        std::fs::read_dir(&dir).unwrap().next().is_none(),
        "help created files: {:?}",
        std::fs::read_dir(&dir).unwrap().collect::<Vec<_>>()
    );
    let out = otpgate(&dir).args(["serve", "--bogus"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bogus"));
}

#[test]
fn check_reports_every_problem_at_once_and_names_each_variable() {
    let dir = temp_dir();
    let out = otpgate(&dir)
        .arg("check")
        .env("ENVIRONMENT", "production")
        .env("PORT", "eighty")
        .env("OTP_LENGTH", "3")
        .env("OTP_LENGHT", "8")
        .env(
            "DATABASE_URL",
            "postgres://otpgate:hunter2-db@127.0.0.1:1/otpgate",
        )
        .env(
            "JWT_SECRET_KEY",
            "replace-with-at-least-32-random-bytes-0000",
        )
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    for line in [
        "warning: OTP_LENGHT is not an otpgate setting and is ignored; did you mean OTP_LENGTH?",
        "error: PORT: ",
        "error: OTP_LENGTH: must be between 4 and 10",
        "error: JWT_SECRET_KEY: this is the placeholder",
        "error: REDIS_URL: production needs Redis",
        "error: METRICS_PORT: ",
        "error: SEND_OTP_VIA_SMS: ",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    assert!(!text.contains("hunter2"), "a password was printed:\n{text}");
    assert!(
        std::fs::read_dir(&dir).unwrap().next().is_none(),
        "check created files"
    );
    // `serve` refuses the same configuration with the same list, and exits 2.
    let out = otpgate(&dir)
        .env("ENVIRONMENT", "production")
        .env("PORT", "eighty")
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("configuration errors:"), "{err}");
    assert!(err.contains("PORT:") && err.contains("REDIS_URL:"), "{err}");
}

#[test]
fn check_warns_about_dotenv_lines_and_unreachable_backends_without_passwords() {
    let dir = temp_dir();
    std::fs::write(
        dir.join(".env"),
        "OTP_LENGTH=6\nthis line is not a setting\nREDIS_URL=redis://:hunter2-redis@127.0.0.1:1\n",
    )
    .unwrap();
    let out = otpgate(&dir)
        .arg("check")
        .env(
            "DATABASE_URL",
            "postgres://otpgate:hunter2-db@127.0.0.1:1/otpgate",
        )
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for line in [
        "warning: .env line 2 is ignored: expected KEY=value",
        "store:       redis standalone at 127.0.0.1:1",
        "database:    postgres at 127.0.0.1:1/otpgate",
        "warning: redis standalone at 127.0.0.1:1 does not answer",
        "warning: postgres at 127.0.0.1:1/otpgate does not answer",
        "configuration valid: 3 warning(s)",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    assert!(!text.contains("hunter2"), "a password was printed:\n{text}");
}

#[test]
fn start_up_says_where_the_api_and_docs_are() {
    let dir = temp_dir();
    let mut child = otpgate(&dir)
        .env("PORT", "0")
        .env("LOG_FORMAT", "json")
        .env("OTP_LENGHT", "8")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().unwrap();
    // A watchdog: a server that prints nothing must not block the read below forever.
    let pid = child.id().to_string();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let finished = done.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(30));
        if !finished.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = std::process::Command::new("kill").arg(&pid).status();
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let mut ready = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if line.contains("listening: API at") {
            ready = Some(line);
            break;
        }
        seen.push(line);
        assert!(Instant::now() < deadline, "no start-up line in {seen:?}");
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = child.kill();
    let _ = child.wait();
    let line = ready.unwrap_or_else(|| panic!("no start-up line in {seen:?}"));
    let log: serde_json::Value = serde_json::from_str(&line).unwrap();
    let message = log["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!("otpgate {} listening", env!("CARGO_PKG_VERSION"))),
        "{message}"
    );
    assert!(message.contains("http://localhost:"), "{message}");
    assert!(message.contains("/docs"), "{message}");
    assert_eq!(log["store"], "memory (in-process)");
    assert_eq!(log["database"], "sqlite file otpgate.db");
    assert!(
        seen.iter()
            .any(|l| l.contains("OTP_LENGHT") && l.contains("did you mean OTP_LENGTH")),
        "no warning about OTP_LENGHT in {seen:?}"
    );
}
