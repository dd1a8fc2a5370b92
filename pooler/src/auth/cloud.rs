//! Short-lived cloud credentials toward the server, free of I/O: when a token is due for
//! renewal, and what the cloud endpoints answer (AWS STS and the EKS Pod Identity agent,
//! the GCP metadata server, the Microsoft Entra token endpoint), read into tokens.

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use super::sigv4::AwsCredentials;

/// A credential and the span it is valid for.
#[derive(Clone, PartialEq, Eq)]
pub struct Expiring<T> {
    /// The credential.
    pub value: T,
    /// When it was obtained.
    pub issued: SystemTime,
    /// When it stops working; `None` for one that does not expire (static AWS keys).
    pub expires: Option<SystemTime>,
}

// Tokens never reach logs: only their lifetime is shown.
impl<T> fmt::Debug for Expiring<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Expiring")
            .field("issued", &self.issued)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

impl<T> Expiring<T> {
    /// When it is renewed: at 2/3 of its lifetime, so that a failed renewal leaves a third of
    /// it to retry in; never, for one without an expiry.
    pub fn renew_at(&self) -> Option<SystemTime> {
        let expires = self.expires?;
        let life = expires
            .duration_since(self.issued)
            .unwrap_or(Duration::ZERO);
        Some(self.issued + life * 2 / 3)
    }

    /// Whether it is time to get a new one.
    pub fn due(&self, now: SystemTime) -> bool {
        self.renew_at().is_some_and(|at| now >= at)
    }

    /// Whether it still works at `now`.
    pub fn valid(&self, now: SystemTime) -> bool {
        self.expires.is_none_or(|e| now < e)
    }
}

/// Why an endpoint's answer could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AnswerError(pub String);

/// An OAuth 2.0 token response (GCP metadata server, Microsoft Entra): the access token and
/// its lifetime in seconds from `now`.
pub fn oauth_token(body: &[u8], now: SystemTime) -> Result<Expiring<String>, AnswerError> {
    #[derive(Deserialize)]
    struct Answer {
        access_token: String,
        expires_in: u64,
    }
    let a: Answer = serde_json::from_slice(body).map_err(|e| {
        AnswerError(format!(
            "token response is not JSON with access_token and expires_in: {e}"
        ))
    })?;
    if a.access_token.is_empty() {
        return Err(AnswerError(
            "token response has an empty access_token".into(),
        ));
    }
    Ok(Expiring {
        value: a.access_token,
        issued: now,
        expires: Some(now + Duration::from_secs(a.expires_in)),
    })
}

/// The EKS Pod Identity agent's (container credentials endpoint's) JSON answer.
pub fn container_credentials(
    body: &[u8],
    now: SystemTime,
) -> Result<Expiring<AwsCredentials>, AnswerError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Answer {
        access_key_id: String,
        secret_access_key: String,
        token: Option<String>,
        expiration: Option<String>,
    }
    let a: Answer = serde_json::from_slice(body).map_err(|e| {
        AnswerError(format!(
            "container credentials are not JSON with AccessKeyId and SecretAccessKey: {e}"
        ))
    })?;
    Ok(Expiring {
        value: AwsCredentials {
            access_key_id: a.access_key_id,
            secret_access_key: a.secret_access_key,
            session_token: a.token,
        },
        issued: now,
        expires: a.expiration.as_deref().map(timestamp).transpose()?,
    })
}

/// STS `AssumeRoleWithWebIdentity`'s XML answer: the temporary credentials in it.
pub fn sts_credentials(
    body: &[u8],
    now: SystemTime,
) -> Result<Expiring<AwsCredentials>, AnswerError> {
    let text =
        std::str::from_utf8(body).map_err(|_| AnswerError("STS answer is not UTF-8".into()))?;
    let credentials = element(text, "Credentials")
        .ok_or_else(|| AnswerError("STS answer has no <Credentials>".into()))?;
    let field = |name: &str| {
        element(credentials, name)
            .map(xml_unescape)
            .ok_or_else(|| AnswerError(format!("STS answer has no <{name}> in <Credentials>")))
    };
    Ok(Expiring {
        value: AwsCredentials {
            access_key_id: field("AccessKeyId")?,
            secret_access_key: field("SecretAccessKey")?,
            session_token: Some(field("SessionToken")?),
        },
        issued: now,
        expires: Some(timestamp(&field("Expiration")?)?),
    })
}

/// An RFC 3339 time such as `2019-11-01T20:26:47Z`.
fn timestamp(text: &str) -> Result<SystemTime, AnswerError> {
    let ts: jiff::Timestamp = text
        .trim()
        .parse()
        .map_err(|e| AnswerError(format!("bad expiration time {text:?}: {e}")))?;
    Ok(SystemTime::from(ts))
}

/// The text between `<name>` and `</name>` (the first such element; no attributes).
fn element<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&close)?;
    Some(xml[start..start + len].trim())
}

/// Undoes XML's five predefined entities (a session token may contain none of the others).
fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn a_token_is_renewed_at_two_thirds_of_its_life_and_used_until_it_expires() {
        let t = Expiring {
            value: (),
            issued: at(1000),
            expires: Some(at(1900)),
        };
        assert_eq!(t.renew_at(), Some(at(1600)));
        assert!(!t.due(at(1599)));
        assert!(t.due(at(1600)));
        assert!(t.valid(at(1899)));
        assert!(!t.valid(at(1900)));
        // Already expired when obtained (a clock step): due at once.
        let stale = Expiring {
            value: (),
            issued: at(1000),
            expires: Some(at(900)),
        };
        assert!(stale.due(at(1000)) && !stale.valid(at(1000)));
        let forever = Expiring {
            value: (),
            issued: at(0),
            expires: None,
        };
        assert!(!forever.due(at(u32::MAX.into())) && forever.valid(at(u32::MAX.into())));
    }

    #[test]
    fn oauth_answers_become_tokens() {
        let body = br#"{"access_token":"ya29.abc","expires_in":3599,"token_type":"Bearer"}"#;
        let t = oauth_token(body, at(10)).expect("token");
        assert_eq!(t.value, "ya29.abc");
        assert_eq!(t.expires, Some(at(3609)));
        assert!(!format!("{t:?}").contains("ya29"));
        assert!(oauth_token(br#"{"error":"invalid_client"}"#, at(0)).is_err());
        assert!(oauth_token(br#"{"access_token":"","expires_in":5}"#, at(0)).is_err());
        assert!(oauth_token(b"not json", at(0)).is_err());
    }

    #[test]
    fn sts_answers_become_temporary_credentials() {
        let body = br#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>system:serviceaccount:db:weir</SubjectFromWebIdentityToken>
    <Credentials>
      <AccessKeyId>ASIAEXAMPLE</AccessKeyId>
      <SecretAccessKey>wJalr/K7MDENG</SecretAccessKey>
      <SessionToken>FwoG&amp;token+/=</SessionToken>
      <Expiration>2019-11-01T20:26:47Z</Expiration>
    </Credentials>
  </AssumeRoleWithWebIdentityResult>
</AssumeRoleWithWebIdentityResponse>"#;
        let c = sts_credentials(body, at(0)).expect("credentials");
        assert_eq!(c.value.access_key_id, "ASIAEXAMPLE");
        assert_eq!(c.value.secret_access_key, "wJalr/K7MDENG");
        assert_eq!(c.value.session_token.as_deref(), Some("FwoG&token+/="));
        assert_eq!(c.expires, Some(at(1_572_640_007)));
        let error = br#"<ErrorResponse><Error><Code>AccessDenied</Code></Error></ErrorResponse>"#;
        assert!(sts_credentials(error, at(0)).is_err());
        let no_expiry = br#"<Credentials><AccessKeyId>A</AccessKeyId><SecretAccessKey>S</SecretAccessKey><SessionToken>T</SessionToken></Credentials>"#;
        assert!(sts_credentials(no_expiry, at(0)).is_err());
    }

    #[test]
    fn pod_identity_answers_become_credentials() {
        let body = br#"{"AccessKeyId":"ASIA1","SecretAccessKey":"s","Token":"t","AccountId":"1","Expiration":"2024-11-26T18:00:00Z"}"#;
        let c = container_credentials(body, at(0)).expect("credentials");
        assert_eq!(c.value.access_key_id, "ASIA1");
        assert_eq!(c.value.session_token.as_deref(), Some("t"));
        assert_eq!(c.expires, Some(at(1_732_644_000)));
        assert!(container_credentials(br#"{"AccessKeyId":"A"}"#, at(0)).is_err());
        assert!(container_credentials(
            br#"{"AccessKeyId":"A","SecretAccessKey":"s","Expiration":"soon"}"#,
            at(0)
        )
        .is_err());
    }
}
