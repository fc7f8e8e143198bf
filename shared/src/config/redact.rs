//! Secrets out of connection strings, for logs and `Debug` output.

/// Query parameters whose value is a secret (compared without case).
const SECRET_PARAMS: [&str; 9] = [
    "password",
    "pass",
    "pwd",
    "sslpassword",
    "token",
    "auth_token",
    "secret",
    "nkey",
    "jwt",
];

/// A secret setting as `Debug` shows it: whether it is set, never what.
pub fn secret(value: &str) -> &'static str {
    if value.is_empty() { "" } else { "***" }
}

/// Hides every secret a connection string may carry, for logs and `Debug`
/// output: the password of each URL of a comma-separated list, a NATS token
/// (`nats://<token>@host`), and secret query parameters (`?password=...`).
pub fn redact_url(url: &str) -> String {
    url.split(',').map(redact_one).collect::<Vec<_>>().join(",")
}

fn redact_one(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return redact_query(url);
    };
    let (authority, tail) = match rest.find(['/', '?', '#']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let tail = redact_query(tail);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            // NATS reads a lone user part as an authentication token.
            None if scheme.to_ascii_lowercase().starts_with("nats")
                || scheme.eq_ignore_ascii_case("tls")
                || scheme.to_ascii_lowercase().starts_with("ws") =>
            {
                format!("{scheme}://***@{host}{tail}")
            }
            None => format!("{scheme}://{userinfo}@{host}{tail}"),
        },
        None => format!("{scheme}://{authority}{tail}"),
    }
}

/// Replaces the values of secret query parameters in `tail` (a URL's path,
/// query and fragment, or a `key=value` connection string).
fn redact_query(tail: &str) -> String {
    let Some(q) = tail.find('?') else {
        return tail.to_owned();
    };
    let (path, query) = tail.split_at(q + 1);
    let (query, fragment) = match query.find('#') {
        Some(f) => query.split_at(f),
        None => (query, ""),
    };
    let params: Vec<String> = query
        .split('&')
        .map(|param| match param.split_once('=') {
            Some((key, _))
                if SECRET_PARAMS
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(key.trim())) =>
            {
                format!("{key}=***")
            }
            _ => param.to_owned(),
        })
        .collect();
    format!("{path}{}{fragment}", params.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://app:hunter2@db:5432/saga"),
            "postgres://app:***@db:5432/saga"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1/saga"),
            "postgres://postgres@127.0.0.1/saga"
        );
        assert_eq!(redact_url("redis://:pw@r:6379"), "redis://:***@r:6379");
        assert_eq!(redact_url("nats://h:4222"), "nats://h:4222");
    }

    #[test]
    fn no_secret_survives_in_lists_tokens_or_query_parameters() {
        assert_eq!(
            redact_url("nats://a:4222,nats://alice:s3cret@b:4222"),
            "nats://a:4222,nats://alice:***@b:4222"
        );
        assert_eq!(
            redact_url("nats://t0ken@h:4222,tls://other@h2:4222"),
            "nats://***@h:4222,tls://***@h2:4222"
        );
        assert_eq!(
            redact_url("postgres://app@db/saga?sslmode=require&password=s3cret&PassWord=x#f"),
            "postgres://app@db/saga?sslmode=require&password=***&PassWord=***#f"
        );
        assert_eq!(
            redact_url("postgres://db?password=s3cret"),
            "postgres://db?password=***"
        );
        assert_eq!(
            redact_url("redis://default:s3cret@r:6379/0?token=abc"),
            "redis://default:***@r:6379/0?token=***"
        );
        for url in [
            "nats://a:4222,nats://alice:s3cret@b:4222",
            "postgres://u:s3cret@h/d?password=s3cret",
            "nats://s3cret@h",
        ] {
            assert!(!redact_url(url).contains("s3cret"), "{url}");
        }
    }
}
