//! Secrets written inside URLs (`redis://:password@host`, `https://user:token@host`, `?api_key=…`)
//! masked wherever the configuration is shown (`--validate-and-exit`). Pure functions.

use serde_json::Value;

const MASK: &str = "***";

/// `value` with every string's URL credentials masked.
pub fn redacted(value: Value) -> Value {
    match value {
        Value::String(text) => Value::String(redact(&text)),
        Value::Array(items) => Value::Array(items.into_iter().map(redacted).collect()),
        Value::Object(fields) => Value::Object(fields.into_iter().map(|(k, v)| (k, redacted(v))).collect()),
        other => other,
    }
}

/// `text` with the user information of each URL in it (`user:password@`) and the values of
/// query parameters that name a secret (`key`, `token`, `secret`, `password`, `signature`)
/// replaced by `***`.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, url) = rest.split_at(at + 3);
        out.push_str(before);
        let end = url
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(url.len());
        out.push_str(&redact_url(&url[..end]));
        rest = &url[end..];
    }
    out.push_str(rest);
    out
}

/// One URL after its `scheme://`.
fn redact_url(url: &str) -> String {
    let authority_end = url.find(['/', '?', '#']).unwrap_or(url.len());
    let (authority, path) = url.split_at(authority_end);
    let mut out = match authority.rfind('@') {
        Some(at) => format!("{MASK}{}", &authority[at..]),
        None => authority.to_string(),
    };
    let (path, fragment) = match path.find('#') {
        Some(hash) => path.split_at(hash),
        None => (path, ""),
    };
    match path.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, _)) if names_a_secret(name) => format!("{name}={MASK}"),
                    _ => pair.to_string(),
                })
                .collect();
            out.push_str(&pairs.join("&"));
        }
        None => out.push_str(path),
    }
    out.push_str(fragment);
    out
}

fn names_a_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["key", "token", "secret", "password", "signature", "sig", "auth"]
        .iter()
        .any(|secret| name.contains(secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_urls_are_masked_and_the_rest_is_kept() {
        let cases = [
            ("redis://:hunter2@cache:6379/0", "redis://***@cache:6379/0"),
            ("https://user:tok@api.example/v1", "https://***@api.example/v1"),
            (
                "openai:https://u:p@tei:8080/v1?api_key=sk-1&x=2#bge-small",
                "openai:https://***@tei:8080/v1?api_key=***&x=2#bge-small",
            ),
            ("http://qdrant:6334", "http://qdrant:6334"),
            ("data/collections", "data/collections"),
            (
                "a http://x:y@h/ and redis://:z@r",
                "a http://***@h/ and redis://***@r",
            ),
            ("https://h/p?Token=abc", "https://h/p?Token=***"),
        ];
        for (given, shown) in cases {
            assert_eq!(redact(given), shown, "{given}");
        }
    }

    #[test]
    fn every_string_of_a_document_is_redacted() {
        let config = serde_json::json!({"cache": {"redis": {"url": "redis://:pw@r:6379"}}, "n": 3, "l": ["https://a:b@h"]});
        assert_eq!(
            redacted(config),
            serde_json::json!({"cache": {"redis": {"url": "redis://***@r:6379"}}, "n": 3, "l": ["https://***@h"]})
        );
    }
}
