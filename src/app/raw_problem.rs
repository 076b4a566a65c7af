//! Problem documents written straight to a socket, below the framework: for errors hyper
//! answers by itself (a head it cannot parse) and for the request-head deadline.

/// The status of `buf` when it is a whole HTTP/1 error response that hyper wrote itself: a
/// 4xx/5xx head with an empty body and no `x-request-id` (which every application response
/// carries).
pub(super) fn hypers_own_error(buf: &[u8]) -> Option<u16> {
    let rest = buf
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| buf.strip_prefix(b"HTTP/1.0 "))?;
    let status: u16 = std::str::from_utf8(rest.get(..3)?).ok()?.parse().ok()?;
    if !(400..600).contains(&status) || !buf.ends_with(b"\r\n\r\n") {
        return None;
    }
    let head = String::from_utf8_lossy(buf).to_ascii_lowercase();
    if head.contains("\r\nx-request-id:") || !head.contains("\r\ncontent-length: 0\r\n") {
        return None;
    }
    // Exactly one head in the buffer.
    (head.find("\r\n\r\n")? + 4 == head.len()).then_some(status)
}

/// A complete HTTP/1.1 problem+json response for an error hyper or the head deadline produced;
/// the connection closes after it.
pub(super) fn problem_bytes(status: u16) -> Vec<u8> {
    let (code, reason, detail) = match status {
        408 => (
            "request_timeout",
            "Request Timeout",
            "The request head was not received in time.",
        ),
        413 => (
            "payload_too_large",
            "Payload Too Large",
            "The request is too large.",
        ),
        414 => (
            "uri_too_long",
            "URI Too Long",
            "The request URI is too long.",
        ),
        431 => (
            "headers_too_large",
            "Request Header Fields Too Large",
            "The request headers are too large.",
        ),
        505 => (
            "http_version_not_supported",
            "HTTP Version Not Supported",
            "Use HTTP/1.1 or HTTP/2.",
        ),
        s if s >= 500 => (
            "internal_error",
            "Internal Server Error",
            "Internal server error.",
        ),
        _ => (
            "invalid_request",
            "Bad Request",
            "The request could not be parsed as HTTP.",
        ),
    };
    let body = serde_json::json!({
        "type": format!("urn:otpgate:problem:{code}"),
        "title": crate::api::problem::title_of(code),
        "status": status,
        "detail": detail,
        "code": code,
    })
    .to_string();
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/problem+json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyper_errors_are_recognised() {
        let hyper_431 = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Sun, 29 Nov 2026 05:00:00 GMT\r\n\r\n";
        assert_eq!(hypers_own_error(hyper_431), Some(431));
        let ours = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nx-request-id: abc\r\n\r\n";
        assert_eq!(hypers_own_error(ours), None);
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(hypers_own_error(ok), None);
        let with_body = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(hypers_own_error(with_body), None);
    }

    #[test]
    fn problem_bytes_are_a_complete_response() {
        let text = String::from_utf8(problem_bytes(414)).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 414 URI Too Long\r\n"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["code"], "uri_too_long");
        assert_eq!(body["status"], 414);
    }
}
