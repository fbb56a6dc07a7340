//! `amqps://` with a CA of the application's own and a client certificate, against a RabbitMQ
//! whose TLS listener requires one (`verify_peer`, `fail_if_no_peer_cert`): certificates are
//! made by the test, the broker is started with them (docs/transports.md, TLS).
#![cfg(feature = "rabbitmq")]

use std::path::PathBuf;
use std::time::Duration;

use choreo::rabbitmq::RabbitMqTransport;
use choreo::{ConnectError, Headers, RawMessage, Transport, TransportError, TransportUrl};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use testcontainers::core::{CmdWaitFor, ExecCommand, IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

/// How long the broker may take to open its TLS listener.
const START: Duration = Duration::from_secs(90);
/// How long a message may take to come back.
const PATIENCE: Duration = Duration::from_secs(30);
const CLIENT_NAME: &str = "choreo-tls-test-client";
/// How a refused handshake can end when the broker closes first.
const BROKEN_PIPE: &str = "Broken pipe (os error 32)";

/// PEM files made for one test run.
struct Pki {
    dir: PathBuf,
    ca: String,
    server_cert: String,
    server_key: String,
}

impl Pki {
    /// A CA, a server certificate for `localhost` and `127.0.0.1` and a client certificate,
    /// all signed by the CA; the client's files are written to a fresh directory.
    fn make() -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "choreo-tls-test-ca");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf = |names: Vec<String>, common_name: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(names).unwrap();
            params
                .distinguished_name
                .push(DnType::CommonName, common_name);
            let cert = params.signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(
            vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
            "localhost",
        );
        let (client_cert, client_key) = leaf(Vec::new(), CLIENT_NAME);

        let dir = std::env::temp_dir().join(format!(
            "choreo-tls-rabbitmq-{}",
            uuid::Uuid::now_v7().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("client.pem"), client_cert).unwrap();
        std::fs::write(dir.join("client.key"), client_key).unwrap();
        Self {
            dir,
            ca: ca.pem(),
            server_cert,
            server_key,
        }
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A RabbitMQ whose only AMQP listener is TLS on 5671, requiring a client certificate
/// signed by the test's CA.
struct TlsBroker {
    container: ContainerAsync<GenericImage>,
    port: u16,
}

impl TlsBroker {
    /// `versions`: the TLS versions the listener offers (`ssl_options.versions`); all that
    /// Erlang's TLS supports when empty.
    async fn start(pki: &Pki, versions: &[&str]) -> Self {
        let image = std::env::var("CHOREO_RABBITMQ_IMAGE")
            .unwrap_or_else(|_| "rabbitmq:3-management".to_owned());
        let (name, tag) = image.rsplit_once(':').unwrap_or((&image, "latest"));
        let config = "loopback_users = none\n\
                      listeners.tcp = none\n\
                      listeners.ssl.default = 5671\n\
                      ssl_options.cacertfile = /etc/rabbitmq/ca.pem\n\
                      ssl_options.certfile = /etc/rabbitmq/server.pem\n\
                      ssl_options.keyfile = /etc/rabbitmq/server.key\n\
                      ssl_options.verify = verify_peer\n\
                      ssl_options.fail_if_no_peer_cert = true\n";
        let mut config = config.to_owned();
        for (n, version) in versions.iter().enumerate() {
            config.push_str(&format!("ssl_options.versions.{} = {version}\n", n + 1));
        }
        let container = GenericImage::new(name, tag)
            .with_exposed_port(5671.tcp())
            .with_wait_for(WaitFor::Nothing)
            .with_copy_to("/etc/rabbitmq/rabbitmq.conf", config.into_bytes())
            .with_copy_to("/etc/rabbitmq/ca.pem", pki.ca.clone().into_bytes())
            .with_copy_to(
                "/etc/rabbitmq/server.pem",
                pki.server_cert.clone().into_bytes(),
            )
            .with_copy_to(
                "/etc/rabbitmq/server.key",
                pki.server_key.clone().into_bytes(),
            )
            .start()
            .await
            .unwrap_or_else(|error| panic!("cannot start RabbitMQ from `{image}`: {error}"));
        let port = container
            .get_host_port_ipv4(5671.tcp())
            .await
            .unwrap_or_else(|error| panic!("no host port for 5671: {error}"));
        Self { container, port }
    }

    fn url(&self, options: &str) -> String {
        format!(
            "amqps://guest:guest@localhost:{}/%2f?connect.timeout.ms=5000&{options}",
            self.port
        )
    }

    /// Waits until a connection with `url` succeeds: the TLS listener is up.
    async fn connect_when_ready(&self, url: &str) -> RabbitMqTransport {
        let url = TransportUrl::parse(url).unwrap();
        let deadline = tokio::time::Instant::now() + START;
        loop {
            match RabbitMqTransport::connect(&url).await {
                Ok(transport) => return transport,
                Err(error) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(%error, "TLS listener not ready yet");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(error) => panic!("no TLS connection within {START:?}: {error}"),
            }
        }
    }

    /// `rabbitmqctl` in the container; its output.
    async fn rabbitmqctl(&self, args: &[&str]) -> String {
        let mut command = vec!["rabbitmqctl", "--quiet"];
        command.extend_from_slice(args);
        let mut run = self
            .container
            .exec(ExecCommand::new(command).with_cmd_ready_condition(CmdWaitFor::exit()))
            .await
            .unwrap();
        let stdout = run.stdout_to_vec().await.unwrap();
        assert_eq!(run.exit_code().await.unwrap(), Some(0));
        String::from_utf8(stdout).unwrap()
    }
}

/// Connecting with `url` fails as a transport error; the error as displayed.
async fn refused(url: &str) -> String {
    match choreo::connect(url).await {
        Ok(_) => panic!("connected to {url}"),
        Err(ConnectError::Transport {
            source: TransportError::Connection(message),
            ..
        }) => message,
        Err(other) => panic!("{other:?}"),
    }
}

/// With the CA and the client certificate, the transport connects over TLS `protocol` and
/// carries a message; without the client certificate the broker refuses with `no_certificate`,
/// and without the CA the client refuses the broker's certificate.
async fn check(versions: &[&str], protocol: &str, no_certificate: &str) {
    let pki = Pki::make();
    let broker = TlsBroker::start(&pki, versions).await;
    let (ca, cert, key) = (
        pki.file("ca.pem"),
        pki.file("client.pem"),
        pki.file("client.key"),
    );
    let identity = format!("ssl.certificate.location={cert}&ssl.key.location={key}");

    // (a) Trusting the CA and presenting the client certificate: publish, consume, ack.
    let transport = broker
        .connect_when_ready(&broker.url(&format!("ssl.ca.location={ca}&{identity}")))
        .await;
    let topic = format!("tls.{}", uuid::Uuid::now_v7().simple());
    let mut subscription = transport
        .subscribe("tls-test", std::slice::from_ref(&topic))
        .await
        .unwrap();
    let message = RawMessage {
        headers: Headers::from([("ce-id", "tls-1")]),
        body: b"{\"over\":\"tls\"}".to_vec(),
    };
    transport.publish_raw(&topic, &message).await.unwrap();
    let delivery = tokio::time::timeout(PATIENCE, subscription.next())
        .await
        .expect("the message within the patience")
        .unwrap();
    assert_eq!(delivery.topic, topic);
    assert_eq!(delivery.message.body, message.body);
    assert!(!delivery.redelivered);
    delivery.ack().await.unwrap();

    // The broker saw TLS and the client certificate on both connections of the transport
    // (publishing and consuming).
    let connection = format!("true\t{protocol}\tCN={CLIENT_NAME}\n");
    assert_eq!(
        broker
            .rabbitmqctl(&[
                "list_connections",
                "ssl",
                "ssl_protocol",
                "peer_cert_subject"
            ])
            .await,
        format!("ssl\tssl_protocol\tpeer_cert_subject\n{connection}{connection}")
    );

    let at = format!(
        "amqps://guest:***@localhost:{}/%2F: IO error: ",
        broker.port
    );
    // (b) Without a client certificate the broker refuses the handshake: its alert, or, when
    // the broker closed the socket while the client was still writing, the broken pipe.
    let message = refused(&broker.url(&format!("ssl.ca.location={ca}"))).await;
    assert!(
        [no_certificate, BROKEN_PIPE]
            .iter()
            .any(|error| message == format!("{at}{error}")),
        "{message}"
    );
    // (c) Without trusting the CA (only the system's roots), the client refuses the broker.
    assert_eq!(
        refused(&broker.url(&identity)).await,
        format!("{at}invalid peer certificate: UnknownIssuer")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_over_tls_1_3_needs_the_ca_and_the_client_certificate() {
    check(&[], "tlsv1.3", "received fatal alert: CertificateRequired").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_over_tls_1_2_needs_the_ca_and_the_client_certificate() {
    check(
        &["tlsv1.2"],
        "tlsv1.2",
        "received fatal alert: HandshakeFailure",
    )
    .await;
}

/// A TLS file that cannot be read, or is not what its option wants, fails `connect` before any
/// connection is tried, naming the option and the path, never the password.
#[tokio::test]
async fn a_bad_tls_file_is_a_url_error_naming_the_option_and_the_path() {
    let pki = Pki::make();
    let (ca, key) = (pki.file("ca.pem"), pki.file("client.key"));
    let missing = pki.file("missing.pem");
    // Nothing listens on port 1: only the URL is at fault.
    let base = "amqps://app:hunter2@localhost:1/%2f";
    let cases = [
        (
            format!("ssl.ca.location={missing}"),
            "ssl.ca.location",
            format!("cannot read `{missing}`: No such file or directory (os error 2)"),
        ),
        (
            format!("ssl.ca.location={key}"),
            "ssl.ca.location",
            format!("`{key}` holds no PEM certificate (-----BEGIN CERTIFICATE-----)"),
        ),
        (
            format!("ssl.certificate.location={ca}&ssl.key.location={ca}"),
            "ssl.key.location",
            format!("`{ca}` holds no PEM private key (PKCS#8, PKCS#1 or SEC1, unencrypted)"),
        ),
    ];
    for (options, option, reason) in cases {
        let error = match choreo::connect(&format!("{base}?{options}")).await {
            Err(ConnectError::Url(error)) => error,
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("connected with {options}"),
        };
        assert_eq!(
            error.to_string(),
            format!("invalid option `{option}` in `amqps://app:***@localhost:1/%2f?{options}`: {reason}")
        );
        assert!(!format!("{error:?}").contains("hunter2"), "{error:?}");
    }
}
