//! The monitor's JSON API, as the commands call it.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A running monitor, by its base URL.
pub(crate) struct Client {
    base: String,
    http: reqwest::Client,
}

/// Why a command could not get its answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    /// No monitor answers at that address.
    #[error("cannot reach the monitor at {base} ({reason}); start one with `choreo monitor`, or point to it with --monitor or CHOREO_MONITOR")]
    Unreachable { base: String, reason: String },
    /// The monitor answered with an error.
    #[error("{message} (HTTP {status})")]
    Api { status: u16, message: String },
    /// The monitor's answer is not what this command expects.
    #[error("unexpected answer from the monitor: {0}")]
    Answer(String),
}

impl Client {
    pub(crate) fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
        }
    }

    /// The monitor's URL as an error shows it: a password in it left out.
    fn shown(&self) -> String {
        match reqwest::Url::parse(&self.base) {
            Ok(mut url) if url.password().is_some() => {
                let _ = url.set_password(Some("***"));
                url.as_str().trim_end_matches('/').to_owned()
            }
            _ => self.base.clone(),
        }
    }

    /// GETs `path` (with `query`) and decodes the JSON answer.
    pub(crate) async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, ClientError> {
        let request = self.http.get(format!("{}{path}", self.base)).query(query);
        self.answer(request).await
    }

    /// POSTs `body` as JSON to `path` and decodes the JSON answer.
    pub(crate) async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, ClientError> {
        let request = self.http.post(format!("{}{path}", self.base)).json(body);
        self.answer(request).await
    }

    async fn answer<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let response = request
            .send()
            .await
            .map_err(|error| ClientError::Unreachable {
                base: self.shown(),
                reason: root_cause(&error),
            })?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|error| ClientError::Answer(root_cause(&error)))?;
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|value| value.get("error")?.as_str().map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            return Err(ClientError::Api {
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_slice(&body).map_err(|error| ClientError::Answer(error.to_string()))
    }
}

/// The innermost cause of `error`, which says what happened (e.g. connection refused).
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}
