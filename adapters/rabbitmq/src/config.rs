//! `amqp://user:pass@host:port/vhost?option=value&...` and what it turns into for lapin.

use std::time::Duration;

use choreo_core::{TransportUrl, UrlError};

/// Settings of a RabbitMQ transport, from its URL.
#[derive(Clone)]
pub struct RabbitMqConfig {
    /// The AMQP URI lapin connects to (credentials included; never printed).
    uri: String,
    /// The URI with its password redacted, for messages.
    redacted: String,
    /// The durable topic exchange events are published to (option `exchange`, default
    /// `choreo.events`).
    pub exchange: String,
    /// Unacked deliveries a subscription may hold (option `prefetch`, default 64).
    pub prefetch: u16,
    /// How long connecting may take (option `connect.timeout.ms`, default 10 000).
    pub connect_timeout: Duration,
    /// How long a publish waits for the broker's confirm (option `publish.timeout.ms`,
    /// default 30 000).
    pub publish_timeout: Duration,
    /// Longest wait between reconnection attempts (option `reconnect.max.ms`, default 5 000).
    pub reconnect_max: Duration,
    /// Suffix of dead-letter topics (option `dead.letter.suffix`, default `.dlq`).
    pub dead_letter_suffix: String,
}

impl std::fmt::Debug for RabbitMqConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitMqConfig")
            .field("uri", &self.redacted)
            .field("exchange", &self.exchange)
            .field("prefetch", &self.prefetch)
            .finish_non_exhaustive()
    }
}

impl RabbitMqConfig {
    /// Reads an `amqp://` or `amqps://` URL. Unknown options are an error that names them.
    pub fn from_url(url: &TransportUrl) -> Result<Self, UrlError> {
        let scheme = url.scheme();
        if scheme != "amqp" && scheme != "amqps" {
            return Err(url.unsupported(&["amqp", "amqps"]));
        }
        let host = url
            .host()
            .ok_or_else(|| url.invalid_option("host", "an amqp:// URL needs a host"))?;
        let port = url
            .port()
            .unwrap_or(if scheme == "amqps" { 5671 } else { 5672 });
        let vhost = match url.path().as_str() {
            "" => "/".to_owned(),
            vhost => vhost.to_owned(),
        };
        let user = url.username().unwrap_or_else(|| "guest".to_owned());
        let password = url.password().unwrap_or_else(|| "guest".to_owned());
        let encode = |text: &str| {
            text.bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect::<String>()
        };
        let mut config = Self {
            uri: format!(
                "{scheme}://{}:{}@{host}:{port}/{}?heartbeat=10",
                encode(&user),
                encode(&password),
                encode(&vhost)
            ),
            redacted: format!("{scheme}://{user}:***@{host}:{port}/{}", encode(&vhost)),
            exchange: "choreo.events".to_owned(),
            prefetch: 64,
            connect_timeout: Duration::from_secs(10),
            publish_timeout: Duration::from_secs(30),
            reconnect_max: Duration::from_secs(5),
            dead_letter_suffix: ".dlq".to_owned(),
        };
        let millis = |key: &str, value: &str| {
            value
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| url.invalid_option(key, "expected milliseconds"))
        };
        for (key, value) in url.options() {
            match key.as_str() {
                "exchange" if !value.is_empty() => config.exchange = value,
                "prefetch" => {
                    config.prefetch = value
                        .parse::<u16>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| url.invalid_option(&key, "expected 1 to 65535"))?;
                }
                "connect.timeout.ms" => config.connect_timeout = millis(&key, &value)?,
                "publish.timeout.ms" => config.publish_timeout = millis(&key, &value)?,
                "reconnect.max.ms" => config.reconnect_max = millis(&key, &value)?,
                "dead.letter.suffix" => config.dead_letter_suffix = value,
                other => {
                    return Err(url.invalid_option(
                        other,
                        "unknown option; known: exchange, prefetch, connect.timeout.ms, \
                         publish.timeout.ms, reconnect.max.ms, dead.letter.suffix",
                    ))
                }
            }
        }
        Ok(config)
    }

    /// The AMQP URI to connect with, password included: never log it (see
    /// [`redacted`](Self::redacted)). Public so code beside choreo can open its own connection.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The URI with the password redacted.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// The dead-letter topic of `topic`.
    pub fn dead_letter_topic(&self, topic: &str) -> String {
        format!("{topic}{}", self.dead_letter_suffix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<RabbitMqConfig, UrlError> {
        RabbitMqConfig::from_url(&TransportUrl::parse(url).unwrap())
    }

    #[test]
    fn reads_credentials_vhost_and_options() {
        let config = parse("amqp://app:p%40ss@rabbit/%2fsales?prefetch=8&exchange=events").unwrap();
        assert_eq!(
            config.uri(),
            "amqp://app:p%40ss@rabbit:5672/%2Fsales?heartbeat=10"
        );
        assert_eq!(config.prefetch, 8);
        assert_eq!(config.exchange, "events");
        assert_eq!(config.redacted(), "amqp://app:***@rabbit:5672/%2Fsales");
        assert!(!format!("{config:?}").contains("p@ss"));
        assert!(parse("amqps://rabbit")
            .unwrap()
            .uri()
            .contains(":5671/%2F?"));
    }

    #[test]
    fn unknown_or_bad_options_are_named() {
        let error = parse("amqp://rabbit?prefech=8").err().unwrap().to_string();
        assert!(
            error.contains("`prefech`") && error.contains("known: exchange"),
            "{error}"
        );
        let error = parse("amqp://rabbit?prefetch=0").err().unwrap().to_string();
        assert!(error.contains("1 to 65535"), "{error}");
    }
}
