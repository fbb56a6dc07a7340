//! `kafka://host:port[,host:port]?option=value&...` and what it turns into for librdkafka.

use std::time::Duration;

use choreo_core::{TransportUrl, UrlError};
use rdkafka::ClientConfig;

/// Settings of a Kafka transport, from its URL.
#[derive(Clone)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub bootstrap_servers: String,
    /// `client.id` (option `client.id`, default `choreo`).
    pub client_id: String,
    /// Partitions of topics the transport creates (option `partitions`, default 3).
    pub partitions: i32,
    /// Replication factor of topics it creates (option `replication`, default 1).
    pub replication: i32,
    /// Consumer group session timeout (option `session.timeout.ms`, default 10 000).
    pub session_timeout: Duration,
    /// How long a publish may wait for the broker's acknowledgement (option
    /// `message.timeout.ms`, default 30 000).
    pub message_timeout: Duration,
    /// How long `connect` waits for the cluster to answer (option `connect.timeout.ms`,
    /// default 10 000).
    pub connect_timeout: Duration,
    /// How often consumed offsets are committed (option `commit.interval.ms`, default 200).
    pub commit_interval: Duration,
    /// How long a consumer fetches again an offset the broker skipped before it takes the gap
    /// as final (option `offset.gap.wait.ms`, default 250; 0 takes every gap at once).
    pub offset_gap_wait: Duration,
    /// Suffix of dead-letter topics (option `dead.letter.suffix`, default `.dlq`).
    pub dead_letter_suffix: String,
    /// Security settings and `rdkafka.*` pass-through options, applied to every client.
    extra: Vec<(String, String)>,
    /// Whether a password is set; it lives in `extra` and is never printed.
    has_password: bool,
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let extra: Vec<_> = self
            .extra
            .iter()
            .map(|(key, value)| {
                if key == "sasl.password" {
                    (key.as_str(), "***")
                } else {
                    (key.as_str(), value.as_str())
                }
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("client_id", &self.client_id)
            .field("partitions", &self.partitions)
            .field("session_timeout", &self.session_timeout)
            .field("extra", &extra)
            .finish_non_exhaustive()
    }
}

impl KafkaConfig {
    /// Reads a `kafka://` URL. Unknown options are an error that names them.
    pub fn from_url(url: &TransportUrl) -> Result<Self, UrlError> {
        if url.scheme() != "kafka" {
            return Err(url.unsupported(&["kafka"]));
        }
        if url.hosts().is_empty() {
            return Err(url.invalid_option("host", "a kafka:// URL needs at least one host:port"));
        }
        let mut config = Self {
            bootstrap_servers: url.hosts().join(","),
            client_id: "choreo".to_owned(),
            partitions: 3,
            replication: 1,
            session_timeout: Duration::from_secs(10),
            message_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            commit_interval: Duration::from_millis(200),
            offset_gap_wait: Duration::from_millis(250),
            dead_letter_suffix: ".dlq".to_owned(),
            extra: Vec::new(),
            has_password: false,
        };
        let millis = |key: &str, value: &str| {
            value
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| url.invalid_option(key, "expected milliseconds"))
        };
        let count = |key: &str, value: &str| {
            value
                .parse::<i32>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| url.invalid_option(key, "expected a positive number"))
        };
        for (key, value) in url.options() {
            match key.as_str() {
                "client.id" => config.client_id = value,
                "partitions" => config.partitions = count(&key, &value)?,
                "replication" => config.replication = count(&key, &value)?,
                "session.timeout.ms" => config.session_timeout = millis(&key, &value)?,
                "message.timeout.ms" => config.message_timeout = millis(&key, &value)?,
                "connect.timeout.ms" => config.connect_timeout = millis(&key, &value)?,
                "commit.interval.ms" => config.commit_interval = millis(&key, &value)?,
                "offset.gap.wait.ms" => config.offset_gap_wait = millis(&key, &value)?,
                "dead.letter.suffix" => config.dead_letter_suffix = value,
                "security.protocol" => {
                    let protocol = value.to_ascii_lowercase();
                    if !["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"]
                        .contains(&protocol.as_str())
                    {
                        return Err(url.invalid_option(
                            &key,
                            "expected plaintext, ssl, sasl_plaintext or sasl_ssl",
                        ));
                    }
                    config.extra.push((key, protocol));
                }
                "sasl.mechanism"
                | "ssl.ca.location"
                | "ssl.certificate.location"
                | "ssl.key.location" => config.extra.push((key, value)),
                other => match other.strip_prefix("rdkafka.") {
                    Some(setting) if !setting.is_empty() => {
                        config.extra.push((setting.to_owned(), value));
                    }
                    _ => {
                        return Err(url.invalid_option(
                            other,
                            "unknown option; known: client.id, partitions, replication, \
                             session.timeout.ms, message.timeout.ms, connect.timeout.ms, \
                             commit.interval.ms, offset.gap.wait.ms, dead.letter.suffix, \
                             security.protocol, sasl.mechanism, ssl.ca.location, \
                             ssl.certificate.location, ssl.key.location, \
                             rdkafka.<librdkafka setting>",
                        ))
                    }
                },
            }
        }
        if let Some(user) = url.username() {
            config.extra.push(("sasl.username".to_owned(), user));
        }
        if let Some(password) = url.password() {
            config.extra.push(("sasl.password".to_owned(), password));
            config.has_password = true;
        }
        Ok(config)
    }

    /// Settings shared by every client of the transport.
    pub(crate) fn client(&self) -> ClientConfig {
        self.with_extra(ClientConfig::new())
    }

    /// `base` with the connection settings, then the URL's own settings, which win.
    fn with_extra(&self, mut base: ClientConfig) -> ClientConfig {
        base.set("bootstrap.servers", &self.bootstrap_servers)
            .set("client.id", &self.client_id);
        for (key, value) in &self.extra {
            base.set(key, value);
        }
        base
    }

    /// The producer's settings: idempotent, acknowledged by all in-sync replicas. Public so
    /// that code beside choreo (a tool, a benchmark's raw client) can match them.
    pub fn producer(&self) -> ClientConfig {
        let mut base = ClientConfig::new();
        base.set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                self.message_timeout.as_millis().to_string(),
            );
        self.with_extra(base)
    }

    /// A consumer of `group`: offsets committed by choreo only, from the earliest message
    /// for a new group.
    ///
    /// Public so that code beside choreo can match these settings.
    pub fn consumer(&self, group: &str) -> ClientConfig {
        let mut base = ClientConfig::new();
        base.set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set(
                "session.timeout.ms",
                self.session_timeout.as_millis().to_string(),
            )
            // Heartbeats must come well within the session timeout, or the member is evicted.
            .set(
                "heartbeat.interval.ms",
                (self.session_timeout.as_millis() / 3)
                    .clamp(100, 3_000)
                    .to_string(),
            );
        let mut client = self.with_extra(base);
        client.set("group.id", group);
        client
    }

    /// The producer's `message.max.bytes`: librdkafka's default (1 000 000) unless the URL
    /// sets `rdkafka.message.max.bytes`.
    pub fn max_message_bytes(&self) -> usize {
        self.extra
            .iter()
            .rev()
            .find(|(key, _)| key == "message.max.bytes")
            .and_then(|(_, value)| value.parse().ok())
            .unwrap_or(crate::oversize::DEFAULT_MAX_MESSAGE_BYTES)
    }

    /// The dead-letter topic of `topic`.
    pub fn dead_letter_topic(&self, topic: &str) -> String {
        format!("{topic}{}", self.dead_letter_suffix)
    }

    /// Whether the URL carried a password.
    pub fn has_password(&self) -> bool {
        self.has_password
    }

    /// The password, to scrub it from error texts.
    pub(crate) fn password(&self) -> Option<&str> {
        self.extra
            .iter()
            .find(|(key, _)| key == "sasl.password")
            .map(|(_, value)| value.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<KafkaConfig, UrlError> {
        KafkaConfig::from_url(&TransportUrl::parse(url).unwrap())
    }

    #[test]
    fn options_are_read_and_defaults_filled_in() {
        let config = parse(
            "kafka://k1:9092,k2:9093?partitions=6&session.timeout.ms=6000&rdkafka.linger.ms=2",
        )
        .unwrap();
        assert_eq!(config.bootstrap_servers, "k1:9092,k2:9093");
        assert_eq!(config.partitions, 6);
        assert_eq!(config.session_timeout, Duration::from_secs(6));
        assert_eq!(config.message_timeout, Duration::from_secs(30));
        assert_eq!(config.offset_gap_wait, Duration::from_millis(250));
        assert_eq!(config.extra, [("linger.ms".to_owned(), "2".to_owned())]);
        assert_eq!(config.dead_letter_topic("orders.saga"), "orders.saga.dlq");
        assert_eq!(config.max_message_bytes(), 1_000_000);
        let raised = parse("kafka://k:9092?rdkafka.message.max.bytes=16777216").unwrap();
        assert_eq!(raised.max_message_bytes(), 16_777_216);
    }

    #[test]
    fn unknown_or_bad_options_are_named() {
        let error = parse("kafka://k:9092?partitons=3")
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains("`partitons`") && error.contains("known: client.id"),
            "{error}"
        );
        let error = parse("kafka://k:9092?partitions=zero")
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("expected a positive number"), "{error}");
        let error = parse("kafka://k:9092?security.protocol=tls")
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("sasl_ssl"), "{error}");
    }

    #[test]
    fn credentials_become_sasl_settings_and_are_never_printed() {
        let config =
            parse("kafka://app:hunter2@k:9092?security.protocol=SASL_SSL&sasl.mechanism=PLAIN")
                .unwrap();
        assert!(config.has_password());
        assert!(config
            .extra
            .contains(&("sasl.username".to_owned(), "app".to_owned())));
        assert!(config
            .extra
            .contains(&("security.protocol".to_owned(), "sasl_ssl".to_owned())));
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
