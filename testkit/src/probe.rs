//! Readiness probes that speak just enough of each protocol to know a server answers: a
//! port that accepts connections is not enough, as a container's port proxy accepts before
//! the broker inside listens.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Whether a Kafka broker at `address` answers an ApiVersions request.
pub(crate) async fn kafka_answers(address: &str) -> bool {
    let client_id = b"choreo-testkit";
    let mut request = Vec::new();
    request.extend_from_slice(&18i16.to_be_bytes()); // ApiVersions
    request.extend_from_slice(&0i16.to_be_bytes()); // version 0
    request.extend_from_slice(&7i32.to_be_bytes()); // correlation id
    request.extend_from_slice(&(client_id.len() as i16).to_be_bytes());
    request.extend_from_slice(client_id);
    let mut frame = (request.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&request);

    exchange(address, &frame, 8)
        .await
        .is_some_and(|reply| reply[4..8] == 7i32.to_be_bytes())
}

/// Whether an AMQP 0-9-1 broker at `address` answers the protocol header with
/// `Connection.Start`.
pub(crate) async fn amqp_answers(address: &str) -> bool {
    exchange(address, b"AMQP\x00\x00\x09\x01", 11)
        .await
        // A method frame (type 1) on channel 0 carrying class 10 (connection), method 10 (start).
        .is_some_and(|reply| reply[0] == 1 && reply[7..11] == [0, 10, 0, 10])
}

/// Whether a PostgreSQL server at `address` answers a StartupMessage (protocol 3.0, as
/// `user`) with an authentication request (`R`), rather than an error (`E`, e.g. "the
/// database system is starting up"). The probe never logs in.
#[cfg(feature = "postgres")]
pub(crate) async fn postgres_answers(address: &str, user: &str) -> bool {
    let mut body = 196_608_i32.to_be_bytes().to_vec(); // protocol 3.0
    for (key, value) in [("user", user), ("database", "postgres")] {
        body.extend_from_slice(key.as_bytes());
        body.push(0);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut message = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    message.extend_from_slice(&body);
    exchange(address, &message, 1)
        .await
        .is_some_and(|reply| reply[0] == b'R')
}

async fn exchange(address: &str, request: &[u8], reply_len: usize) -> Option<Vec<u8>> {
    let attempt = async {
        let mut stream = TcpStream::connect(address).await.ok()?;
        stream.write_all(request).await.ok()?;
        let mut reply = vec![0; reply_len];
        stream.read_exact(&mut reply).await.ok()?;
        Some(reply)
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}
