//! Transport URLs: `memory://`, `kafka://host:9092?...`, `amqp://user:pass@host:5672/%2f`.
//!
//! One URL picks the transport, so a service moves between brokers with no code change.
//! Passwords never appear in `Debug`, `Display` or errors.

use std::fmt;
use std::str::FromStr;

use crate::transport::TransportError;

/// Schemes choreo knows, with the cargo feature that compiles each in.
pub(crate) const KNOWN_SCHEMES: [(&str, &str); 4] = [
    ("memory", "(always)"),
    ("kafka", "kafka"),
    ("amqp", "rabbitmq"),
    ("amqps", "rabbitmq"),
];

/// A parsed transport URL. Its password is redacted wherever it is printed.
#[derive(Clone, PartialEq, Eq)]
pub struct TransportUrl {
    url: url::Url,
    /// Every `host[:port]` of the authority; brokers like Kafka take a list.
    hosts: Vec<String>,
}

/// What a URL names: a transport or a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UrlOf {
    /// A transport (`choreo::connect`).
    Transport,
    /// A store (`choreo::open_store`).
    Store,
}

impl UrlOf {
    /// URLs a reader would recognise, for error messages.
    fn examples(self) -> &'static str {
        match self {
            Self::Transport => {
                "`memory://`, `kafka://host:9092` or `amqp://user:pass@host:5672/%2f`"
            }
            Self::Store => {
                "`memory://`, `sqlite://data/orders.db` or `postgres://user:pass@host:5432/db`"
            }
        }
    }
}

impl fmt::Display for UrlOf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Transport => "transport",
            Self::Store => "store",
        })
    }
}

/// Why a transport or store URL cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UrlError {
    /// Not a URL.
    #[error("invalid {of} URL `{url}`: {reason}; expected e.g. {}", of.examples())]
    Invalid {
        /// A transport's or a store's.
        of: UrlOf,
        /// The input, password redacted.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A scheme nothing answers to.
    #[error("unsupported {of} scheme `{scheme}://`; this build supports: {supported}")]
    UnsupportedScheme {
        /// A transport's or a store's.
        of: UrlOf,
        /// The scheme given.
        scheme: String,
        /// The schemes compiled in, e.g. `memory://, kafka://`.
        supported: String,
    },
    /// A scheme whose transport or store was not compiled in.
    #[error("`{scheme}://` needs choreo's `{feature}` cargo feature, which this build lacks; this build supports: {supported}")]
    FeatureDisabled {
        /// The scheme given.
        scheme: String,
        /// The cargo feature to enable.
        feature: String,
        /// The schemes compiled in.
        supported: String,
    },
    /// A query option the transport or store does not know, or a value it cannot use.
    #[error("invalid option `{option}` in `{url}`: {reason}")]
    InvalidOption {
        /// The URL, password redacted.
        url: String,
        /// The option.
        option: String,
        /// What is wrong.
        reason: String,
    },
}

/// Why `connect` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The URL cannot be used.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// The broker could not be reached.
    #[error("cannot connect to `{url}`: {source}")]
    Transport {
        /// The URL, password redacted.
        url: String,
        /// The failure.
        #[source]
        source: TransportError,
    },
}

impl TransportUrl {
    /// Parses `input`.
    pub fn parse(input: &str) -> Result<Self, UrlError> {
        if !input.contains("://") {
            return Err(UrlError::Invalid {
                of: UrlOf::Transport,
                url: redact(input),
                reason: "it has no `scheme://`".to_owned(),
            });
        }
        let input = input.trim();
        // `url` takes one host; a list `h1:p1,h2:p2` is parsed with its first host.
        let (scheme, rest) = input.split_once("://").unwrap_or((input, ""));
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let (userinfo, host_list) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, authority),
        };
        let hosts: Vec<String> = host_list
            .split(',')
            .filter(|host| !host.is_empty())
            .map(str::to_owned)
            .collect();
        let first = hosts.first().map(String::as_str).unwrap_or_default();
        let single = match userinfo {
            Some(userinfo) => format!("{scheme}://{userinfo}@{first}{tail}"),
            None => format!("{scheme}://{first}{tail}"),
        };
        let url = url::Url::parse(&single).map_err(|error| UrlError::Invalid {
            of: UrlOf::Transport,
            url: redact(input),
            reason: error.to_string(),
        })?;
        for host in hosts.iter().skip(1) {
            url::Url::parse(&format!("{scheme}://{host}")).map_err(|error| UrlError::Invalid {
                of: UrlOf::Transport,
                url: redact(input),
                reason: format!("host `{host}`: {error}"),
            })?;
        }
        Ok(Self { url, hosts })
    }

    /// The scheme, lower case (`memory`, `kafka`, `amqp`, `amqps`).
    pub fn scheme(&self) -> &str {
        self.url.scheme()
    }

    /// The first host, if any.
    pub fn host(&self) -> Option<&str> {
        self.url.host_str().filter(|host| !host.is_empty())
    }

    /// The port, if given.
    pub fn port(&self) -> Option<u16> {
        self.url.port()
    }

    /// Every `host[:port]` given, in order (`kafka://k1:9092,k2:9092` has two).
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// The user name, if any (percent-decoded).
    pub fn username(&self) -> Option<String> {
        let user = self.url.username();
        (!user.is_empty()).then(|| decode(user))
    }

    /// The password, if any (percent-decoded). Handle with care: never log it.
    pub fn password(&self) -> Option<String> {
        self.url.password().map(decode)
    }

    /// The path without its leading `/`, percent-decoded (e.g. the AMQP vhost).
    pub fn path(&self) -> String {
        decode(self.url.path().trim_start_matches('/'))
    }

    /// The query options in order.
    pub fn options(&self) -> Vec<(String, String)> {
        self.url
            .query_pairs()
            .map(|(key, value)| (key.into_owned(), value.into_owned()))
            .collect()
    }

    /// The URL with its password and secret options replaced by `***`.
    pub fn redacted(&self) -> String {
        redact(self.url.as_str())
    }

    /// The error for a scheme this build does not support.
    pub fn unsupported(&self, compiled_in: &[&str]) -> UrlError {
        unsupported(UrlOf::Transport, self.scheme(), compiled_in, &KNOWN_SCHEMES)
    }

    /// The error for an option the transport cannot use.
    pub fn invalid_option(&self, option: &str, reason: impl Into<String>) -> UrlError {
        UrlError::InvalidOption {
            url: self.redacted(),
            option: option.to_owned(),
            reason: reason.into(),
        }
    }
}

impl FromStr for TransportUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for TransportUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for TransportUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TransportUrl({})", self.redacted())
    }
}

/// The error for `scheme`, which this build does not support: naming its cargo feature if
/// `known` lists it, and the schemes `compiled_in` either way.
pub(crate) fn unsupported(
    of: UrlOf,
    scheme: &str,
    compiled_in: &[&str],
    known: &[(&str, &str)],
) -> UrlError {
    let scheme = scheme.to_owned();
    let supported = compiled_in
        .iter()
        .map(|scheme| format!("{scheme}://"))
        .collect::<Vec<_>>()
        .join(", ");
    match known.iter().find(|(name, _)| *name == scheme) {
        Some((_, feature)) => UrlError::FeatureDisabled {
            scheme,
            feature: (*feature).to_owned(),
            supported,
        },
        None => UrlError::UnsupportedScheme {
            of,
            scheme,
            supported,
        },
    }
}

pub(crate) fn decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// Options whose values are secrets.
fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "token", "key"]
        .iter()
        .any(|word| key.contains(word))
        && !key.ends_with("location")
        && !key.ends_with("file")
}

/// Redacts the password of `input`, and secret query values, without needing it to parse.
///
/// The user information ends at the last `@`: a password may hold `/`, `?` or `#` left
/// unencoded, and then the host, path and query follow that `@`. An `@` in a query without
/// any user information before it makes more of the URL hidden, never less.
pub(crate) fn redact(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    let rest = match input.split_once("://") {
        Some((scheme, rest)) => {
            out.push_str(scheme);
            out.push_str("://");
            match rest.rsplit_once('@') {
                Some((userinfo, after)) => {
                    match userinfo.split_once(':') {
                        Some((user, _password)) => {
                            out.push_str(user);
                            out.push_str(":***");
                        }
                        None => out.push_str(userinfo),
                    }
                    out.push('@');
                    after
                }
                None => rest,
            }
        }
        None => input,
    };
    let (head, query) = match rest.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (rest, None),
    };
    out.push_str(head);
    if let Some(query) = query {
        out.push('?');
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if is_secret(key) => format!("{key}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_parts_adapters_need() {
        let url: TransportUrl = "amqp://app:s3cr%40t@rabbit:5672/%2f?prefetch=32"
            .parse()
            .unwrap();
        assert_eq!(url.scheme(), "amqp");
        assert_eq!(url.host(), Some("rabbit"));
        assert_eq!(url.port(), Some(5672));
        assert_eq!(url.username().as_deref(), Some("app"));
        assert_eq!(url.password().as_deref(), Some("s3cr@t"));
        assert_eq!(url.path(), "/");
        assert_eq!(url.options(), [("prefetch".to_owned(), "32".to_owned())]);
    }

    #[test]
    fn a_list_of_hosts_is_kept_in_order() {
        let url = TransportUrl::parse("kafka://k1:9092,k2:9093?group=g").unwrap();
        assert_eq!(url.hosts(), ["k1:9092", "k2:9093"]);
        assert_eq!(url.host(), Some("k1"));
        assert_eq!(url.port(), Some(9092));
        assert_eq!(url.options(), [("group".to_owned(), "g".to_owned())]);
        assert!(TransportUrl::parse("kafka://k1:9092,k2:port").is_err());
    }

    #[test]
    fn memory_urls_parse_with_and_without_a_name() {
        assert_eq!(TransportUrl::parse("memory://").unwrap().host(), None);
        assert_eq!(
            TransportUrl::parse("memory://bus-a").unwrap().host(),
            Some("bus-a")
        );
    }

    #[test]
    fn passwords_never_print() {
        let input = "amqp://app:hunter2@rabbit:5672/%2f?sasl.password=hunter3&group=x";
        let url = TransportUrl::parse(input).unwrap();
        for printed in [format!("{url}"), format!("{url:?}"), url.redacted()] {
            assert!(!printed.contains("hunter"), "{printed}");
            assert!(printed.contains("app:***@rabbit:5672"), "{printed}");
            assert!(printed.contains("group=x"), "{printed}");
        }
        let error = url.invalid_option("group", "bad");
        assert!(!error.to_string().contains("hunter"));
    }

    #[test]
    fn a_password_holding_url_delimiters_never_prints() {
        for input in [
            "postgres://app:pa/ss?wo#rd@db:5432/orders?sslmode=disable",
            "amqp://app:a@b/c@rabbit:5672/%2f",
            "kafka://user:s3cr3t/key@k1:9092",
        ] {
            let redacted = redact(input);
            for secret in ["pa/ss", "wo#rd", "a@b/c", "s3cr3t"] {
                assert!(!redacted.contains(secret), "{input} -> {redacted}");
            }
            assert!(redacted.contains(":***@"), "{input} -> {redacted}");
        }
        assert_eq!(
            redact("postgres://app:pa/ss@db:5432/orders?password=x&sslmode=disable"),
            "postgres://app:***@db:5432/orders?password=***&sslmode=disable"
        );
    }

    #[test]
    fn an_unparsable_url_names_what_was_expected_without_its_password() {
        let error = TransportUrl::parse("amqp://app:hunter2@[bad/").unwrap_err();
        let message = error.to_string();
        assert!(message.contains("expected e.g. `memory://`"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
        assert!(TransportUrl::parse("localhost:9092").is_err());
    }

    #[test]
    fn unknown_and_disabled_schemes_name_what_is_compiled_in() {
        let error = TransportUrl::parse("nats://x")
            .unwrap()
            .unsupported(&["memory"]);
        assert_eq!(
            error.to_string(),
            "unsupported transport scheme `nats://`; this build supports: memory://"
        );
        let error = TransportUrl::parse("kafka://x:9092")
            .unwrap()
            .unsupported(&["memory"]);
        assert!(matches!(&error, UrlError::FeatureDisabled { feature, .. } if feature == "kafka"));
        assert!(error.to_string().contains("`kafka` cargo feature"));
    }
}
