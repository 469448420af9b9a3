//! A small blocking client of the admin API (the CLI's live mode; also usable by tests and
//! tools). Errors keep the API's message and its status class, so the CLI can say exactly
//! what went wrong and pick its exit code.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::model::Health;
use crate::im::directory::ChangeError;

/// Time allowed for one request (a user change hashes a password: well under a second).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Time allowed to probe whether a broker answers at all.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest response read (a retained list of many topics).
const MAX_RESPONSE: u64 = 1 << 30;

/// Why an API call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The API answered 400/404/409/500 with this error.
    #[error("{0}")]
    Refused(ChangeError),
    /// 401: the token is missing or wrong.
    #[error("the admin API at {url} refused the token: {message} (give --token, set TERN_ADMIN_TOKEN, or [admin] token in --config)")]
    Unauthorized { url: String, message: String },
    /// Nothing answered, or not HTTP.
    #[error("cannot reach the broker's admin API at {url}: {message} (is the broker running?)")]
    Unreachable { url: String, message: String },
    /// Another status, or a body that is not what the API sends.
    #[error("unexpected answer from the admin API at {url}: {message}")]
    Protocol { url: String, message: String },
}

/// The admin API of one broker.
#[derive(Clone)]
pub struct ApiClient {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("ApiClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// Percent-encodes one path segment (client ids, user ids and group ids may hold any
/// character but `/`... and client ids even that).
pub fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        // Loopback traffic must never go to an HTTP proxy from the environment.
        .proxy(None)
        .timeout_connect(Some(PROBE_TIMEOUT))
        .timeout_global(Some(timeout))
        .build()
        .into()
}

#[derive(serde::Deserialize)]
struct ErrorBody {
    error: String,
}

impl ApiClient {
    /// `base` is `http://host:port` (a trailing `/` is ignored).
    pub fn new(base: &str, token: Option<String>) -> ApiClient {
        ApiClient {
            base: base.trim_end_matches('/').to_string(),
            token,
            agent: agent(REQUEST_TIMEOUT),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET /v1/health` with a short timeout: whether a broker answers here.
    pub fn probe(&self) -> Result<Health, ClientError> {
        let url = format!("{}/v1/health", self.base);
        let response = agent(PROBE_TIMEOUT).get(&url).call();
        self.decode(&url, response)
    }

    pub fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.agent.get(&url);
        for (k, v) in query {
            request = request.query(*k, *v);
        }
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        self.decode(&url, request.call())
    }

    pub fn delete<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.agent.delete(&url);
        for (k, v) in query {
            request = request.query(*k, *v);
        }
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        self.decode(&url, request.call())
    }

    /// POST (`put == false`) or PUT a JSON body.
    pub fn send<T: DeserializeOwned>(
        &self,
        put: bool,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let body = serde_json::to_string(body).map_err(|e| ClientError::Protocol {
            url: url.clone(),
            message: format!("cannot encode the request: {e}"),
        })?;
        let mut request = if put {
            self.agent.put(&url)
        } else {
            self.agent.post(&url)
        };
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let response = request.content_type("application/json").send(body);
        self.decode(&url, response)
    }

    fn decode<T: DeserializeOwned>(
        &self,
        url: &str,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T, ClientError> {
        let mut response = response.map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            message: e.to_string(),
        })?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE)
            .read_to_string()
            .map_err(|e| ClientError::Unreachable {
                url: self.base.clone(),
                message: format!("reading the answer: {e}"),
            })?;
        let protocol = |message: String| ClientError::Protocol {
            url: url.to_string(),
            message,
        };
        if (200..300).contains(&status) {
            return serde_json::from_str(&text)
                .map_err(|e| protocol(format!("status {status}, body not understood: {e}")));
        }
        let message = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => body.error,
            Err(_) => return Err(protocol(format!("status {status}: {}", text.trim()))),
        };
        Err(match status {
            400 => ClientError::Refused(ChangeError::Invalid(message)),
            401 | 403 => ClientError::Unauthorized {
                url: self.base.clone(),
                message,
            },
            404 => ClientError::Refused(ChangeError::NotFound(message)),
            409 => ClientError::Refused(ChangeError::Exists(message)),
            500 => ClientError::Refused(ChangeError::Storage(message)),
            _ => protocol(format!("status {status}: {message}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(encode_segment("alice"), "alice");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
        assert_eq!(encode_segment("é"), "%C3%A9");
    }

    #[test]
    fn nobody_listening_is_unreachable() {
        // A port that was free a moment ago: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let client = ApiClient::new(&format!("http://127.0.0.1:{port}/"), None);
        assert_eq!(client.base(), format!("http://127.0.0.1:{port}"));
        assert!(matches!(
            client.probe(),
            Err(ClientError::Unreachable { .. })
        ));
    }
}
