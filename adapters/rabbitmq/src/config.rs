//! `amqp://user:pass@host:port/vhost?option=value&...` and what it turns into for lapin.

use std::time::Duration;

use choreo_core::{TransportUrl, UrlError};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

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
    /// What `amqps://` trusts and presents beside the system's trust roots: options
    /// `ssl.ca.location`, `ssl.certificate.location` and `ssl.key.location`, read when the URL
    /// is.
    tls: OwnedTLSConfig,
    /// The files `tls` was read from, for `Debug`.
    tls_files: Vec<(&'static str, String)>,
}

impl std::fmt::Debug for RabbitMqConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitMqConfig")
            .field("uri", &self.redacted)
            .field("exchange", &self.exchange)
            .field("prefetch", &self.prefetch)
            .field("tls_files", &self.tls_files)
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
            tls: OwnedTLSConfig::default(),
            tls_files: Vec::new(),
        };
        let millis = |key: &str, value: &str| {
            value
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| url.invalid_option(key, "expected milliseconds"))
        };
        let (mut ca, mut certificate, mut key_file) = (None, None, None);
        for (key, value) in url.options() {
            match key.as_str() {
                "ssl.ca.location" => ca = Some(value),
                "ssl.certificate.location" => certificate = Some(value),
                "ssl.key.location" => key_file = Some(value),
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
                         publish.timeout.ms, reconnect.max.ms, dead.letter.suffix, \
                         ssl.ca.location, ssl.certificate.location, ssl.key.location",
                    ))
                }
            }
        }
        config.read_tls_files(url, ca, certificate, key_file)?;
        Ok(config)
    }

    /// Reads and checks the TLS files named by the URL's `ssl.*` options.
    fn read_tls_files(
        &mut self,
        url: &TransportUrl,
        ca: Option<String>,
        certificate: Option<String>,
        key: Option<String>,
    ) -> Result<(), UrlError> {
        const CA: &str = "ssl.ca.location";
        const CERTIFICATE: &str = "ssl.certificate.location";
        const KEY: &str = "ssl.key.location";
        for (option, given) in [(CA, &ca), (CERTIFICATE, &certificate), (KEY, &key)] {
            if given.is_some() && url.scheme() != "amqps" {
                return Err(url.invalid_option(option, "TLS files need an amqps:// URL"));
            }
        }
        let read = |option: &'static str, path: &str| {
            if path.is_empty() {
                return Err(url.invalid_option(option, "expected the path of a PEM file"));
            }
            std::fs::read(path).map_err(|error| {
                url.invalid_option(option, format!("cannot read `{path}`: {error}"))
            })
        };
        let certificates = |option: &'static str, path: &str, pem: &[u8]| {
            match CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>() {
                Ok(certificates) if !certificates.is_empty() => Ok(()),
                Ok(_) => Err(url.invalid_option(
                    option,
                    format!("`{path}` holds no PEM certificate (-----BEGIN CERTIFICATE-----)"),
                )),
                Err(error) => {
                    Err(url.invalid_option(option, format!("`{path}` is not valid PEM: {error}")))
                }
            }
        };
        if let Some(path) = ca {
            let pem = read(CA, &path)?;
            certificates(CA, &path, &pem)?;
            // Only PEM blocks were found above, which are ASCII.
            self.tls.cert_chain = Some(String::from_utf8_lossy(&pem).into_owned());
            self.tls_files.push((CA, path));
        }
        match (certificate, key) {
            (Some(certificate), Some(key)) => {
                let pem = read(CERTIFICATE, &certificate)?;
                certificates(CERTIFICATE, &certificate, &pem)?;
                let key_pem = read(KEY, &key)?;
                // The parser's error is not shown: it could quote the key file.
                if PrivateKeyDer::from_pem_slice(&key_pem).is_err() {
                    return Err(url.invalid_option(
                        KEY,
                        format!(
                            "`{key}` holds no PEM private key (PKCS#8, PKCS#1 or SEC1, \
                             unencrypted)"
                        ),
                    ));
                }
                self.tls.identity = Some(OwnedIdentity::PKCS8 { pem, key: key_pem });
                self.tls_files.push((CERTIFICATE, certificate));
                self.tls_files.push((KEY, key));
            }
            (Some(_), None) => {
                return Err(url.invalid_option(CERTIFICATE, format!("needs {KEY} too")))
            }
            (None, Some(_)) => {
                return Err(url.invalid_option(KEY, format!("needs {CERTIFICATE} too")))
            }
            (None, None) => {}
        }
        Ok(())
    }

    /// What `amqps://` trusts beside the system's roots and the client certificate it
    /// presents, as lapin takes them (`Connection::connect_with_config`). Public so code
    /// beside choreo can open its own connection.
    pub fn tls_config(&self) -> &OwnedTLSConfig {
        &self.tls
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

    #[test]
    fn tls_files_are_read_and_checked_naming_the_option_and_the_path() {
        let dir = std::env::temp_dir().join(format!(
            "choreo-rabbitmq-tls-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        // Any base64 body parses as a PEM block; the handshake is what checks the contents.
        let cert = write(
            "cert.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        let key = write(
            "key.pem",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        );
        let not_pem = write("notes.txt", "not a certificate\n");
        let missing = dir.join("missing.pem").display().to_string();
        let url = |options: &str| format!("amqps://app:s3cret@rabbit/%2f?{options}");

        let config = parse(&url(&format!(
            "ssl.ca.location={cert}&ssl.certificate.location={cert}&ssl.key.location={key}"
        )))
        .unwrap();
        let tls = config.tls_config();
        assert!(tls
            .cert_chain
            .as_deref()
            .unwrap()
            .contains("BEGIN CERTIFICATE"));
        assert!(matches!(tls.identity, Some(OwnedIdentity::PKCS8 { .. })));
        let debug = format!("{config:?}");
        assert!(debug.contains(&key) && !debug.contains("s3cret"), "{debug}");
        assert!(parse("amqps://rabbit")
            .unwrap()
            .tls_config()
            .identity
            .is_none());

        let cases = [
            (
                format!("ssl.ca.location={missing}"),
                "ssl.ca.location",
                format!("cannot read `{missing}`: "),
            ),
            (
                format!("ssl.ca.location={not_pem}"),
                "ssl.ca.location",
                format!("`{not_pem}` holds no PEM certificate"),
            ),
            (
                format!("ssl.ca.location={key}"),
                "ssl.ca.location",
                format!("`{key}` holds no PEM certificate"),
            ),
            (
                format!("ssl.certificate.location={not_pem}&ssl.key.location={key}"),
                "ssl.certificate.location",
                format!("`{not_pem}` holds no PEM certificate"),
            ),
            (
                format!("ssl.certificate.location={cert}&ssl.key.location={cert}"),
                "ssl.key.location",
                format!("`{cert}` holds no PEM private key"),
            ),
            (
                format!("ssl.certificate.location={cert}&ssl.key.location={missing}"),
                "ssl.key.location",
                format!("cannot read `{missing}`: "),
            ),
            (
                format!("ssl.certificate.location={cert}"),
                "ssl.certificate.location",
                "needs ssl.key.location too".to_owned(),
            ),
            (
                format!("ssl.key.location={key}"),
                "ssl.key.location",
                "needs ssl.certificate.location too".to_owned(),
            ),
            (
                "ssl.ca.location=".to_owned(),
                "ssl.ca.location",
                "expected the path of a PEM file".to_owned(),
            ),
        ];
        for (options, option, reason) in cases {
            let error = parse(&url(&options)).err().unwrap();
            match &error {
                UrlError::InvalidOption {
                    option: named,
                    reason: said,
                    url,
                } => {
                    assert_eq!(named, option, "{error}");
                    assert!(said.starts_with(&reason), "{error}");
                    assert_eq!(url, &format!("amqps://app:***@rabbit/%2f?{options}"));
                }
                other => panic!("{other:?}"),
            }
            assert!(
                !format!("{error} {error:?}").contains("s3cret"),
                "{error:?}"
            );
        }
        let error = parse(&format!("amqp://rabbit?ssl.ca.location={cert}"))
            .err()
            .unwrap();
        assert!(
            matches!(&error, UrlError::InvalidOption { option, reason, .. }
            if option == "ssl.ca.location" && reason == "TLS files need an amqps:// URL"),
            "{error:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
