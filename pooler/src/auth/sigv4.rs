//! AWS Signature Version 4 in its presigned-URL form, and the RDS/Aurora IAM authentication
//! token built with it: `host:port/?Action=connect&DBUser=…&X-Amz-…` (no scheme), signed for
//! service `rds-db`, valid for 15 minutes, which PostgreSQL on RDS takes as the password.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// How long an RDS token is valid; RDS accepts no longer.
pub const RDS_TOKEN_LIFETIME: Duration = Duration::from_secs(900);

/// The service name RDS IAM tokens are signed for.
const RDS_SERVICE: &str = "rds-db";

/// AWS credentials: an access key, its secret and, for temporary ones, the session token.
#[derive(Clone, PartialEq, Eq)]
pub struct AwsCredentials {
    /// `AKIA…` / `ASIA…`.
    pub access_key_id: String,
    /// The secret the signature is keyed with.
    pub secret_access_key: String,
    /// STS session token of temporary credentials.
    pub session_token: Option<String>,
}

// The secret and the session token never reach logs.
impl fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// What a presigned GET request is for: where it goes and what it says.
#[derive(Debug, Clone, Copy)]
pub struct Presign<'a> {
    /// The `Host` header, with `:port` unless it is the scheme's default.
    pub host: &'a str,
    /// The request's own query parameters (unencoded), before the `X-Amz-*` ones.
    pub params: &'a [(&'a str, &'a str)],
    /// The signing region, e.g. `us-east-1`.
    pub region: &'a str,
    /// The signing service name, e.g. `rds-db`.
    pub service: &'a str,
    /// Signing time, whole seconds since the Unix epoch.
    pub time: SystemTime,
    /// `X-Amz-Expires`.
    pub expires: Duration,
}

/// The query string of a presigned GET of `/`: every parameter, sorted and encoded as SigV4
/// canonicalises them, the session token included in the signature (as the SDKs do), and
/// `X-Amz-Signature` last.
pub fn presigned_query(req: &Presign<'_>, creds: &AwsCredentials) -> String {
    let (date, stamp) = amz_date(req.time);
    let scope = format!("{date}/{}/{}/aws4_request", req.region, req.service);
    let credential = format!("{}/{scope}", creds.access_key_id);
    let expires = req.expires.as_secs().to_string();
    let mut params: Vec<(String, String)> = req
        .params
        .iter()
        .map(|(k, v)| (uri_encode(k), uri_encode(v)))
        .collect();
    let mut amz = vec![
        ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
        ("X-Amz-Credential", credential.as_str()),
        ("X-Amz-Date", stamp.as_str()),
        ("X-Amz-Expires", expires.as_str()),
        ("X-Amz-SignedHeaders", "host"),
    ];
    if let Some(token) = &creds.session_token {
        amz.push(("X-Amz-Security-Token", token));
    }
    params.extend(amz.iter().map(|(k, v)| (uri_encode(k), uri_encode(v))));
    params.sort();
    let query = params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let empty_body = hex(&Sha256::digest(b""));
    let canonical = format!("GET\n/\n{query}\nhost:{}\n\nhost\n{empty_body}", req.host);
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{}",
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let key = signing_key(&creds.secret_access_key, &date, req.region, req.service);
    let signature = hex(&hmac(&key, to_sign.as_bytes()));
    format!("{query}&X-Amz-Signature={signature}")
}

/// The RDS IAM authentication token for `user` at `host:port` in `region`, signed at `time`
/// with `creds`: what `aws rds generate-db-auth-token` prints.
pub fn rds_auth_token(
    host: &str,
    port: u16,
    user: &str,
    region: &str,
    creds: &AwsCredentials,
    time: SystemTime,
) -> String {
    let host = format!("{host}:{port}");
    let req = Presign {
        host: &host,
        params: &[("Action", "connect"), ("DBUser", user)],
        region,
        service: RDS_SERVICE,
        time,
        expires: RDS_TOKEN_LIFETIME,
    };
    format!("{host}/?{}", presigned_query(&req, creds))
}

/// `kSigning`: the secret narrowed to one day, region and service.
fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    hmac(&k_service, b"aws4_request")
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `YYYYMMDD` and `YYYYMMDD'T'HHMMSS'Z'` of `time` in UTC (times before 1970 count as 1970).
fn amz_date(time: SystemTime) -> (String, String) {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let ts = jiff::Timestamp::from_second(secs).unwrap_or(jiff::Timestamp::MAX);
    (
        ts.strftime("%Y%m%d").to_string(),
        ts.strftime("%Y%m%dT%H%M%SZ").to_string(),
    )
}

/// SigV4's URI encoding: everything but `A-Z a-z 0-9 - _ . ~` as `%XX`, upper-case hex.
pub fn uri_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn creds(id: &str, secret: &str, token: Option<&str>) -> AwsCredentials {
        AwsCredentials {
            access_key_id: id.into(),
            secret_access_key: secret.into(),
            session_token: token.map(str::to_owned),
        }
    }

    /// AWS SDK for Rust, `aws-sdk-rds` `auth_token.rs`, test `signing_works`.
    #[test]
    fn matches_the_rust_sdk_rds_vector() {
        let token = rds_auth_token(
            "prod-instance.us-east-1.rds.amazonaws.com",
            3306,
            "peccy",
            "us-east-1",
            &creds("akid", "secret", None),
            at(1_724_709_600),
        );
        assert_eq!(
            token,
            "prod-instance.us-east-1.rds.amazonaws.com:3306/?Action=connect&DBUser=peccy\
             &X-Amz-Algorithm=AWS4-HMAC-SHA256\
             &X-Amz-Credential=akid%2F20240826%2Fus-east-1%2Frds-db%2Faws4_request\
             &X-Amz-Date=20240826T220000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host\
             &X-Amz-Signature=dd0cba843009474347af724090233265628ace491ea17ce3eb3da098b983ad89"
        );
    }

    /// botocore `tests/unit/test_signers.py`, `TestGenerateDBAuthToken.test_generate_db_auth_token`
    /// (2016-11-07T17:39:33Z); botocore orders the parameters differently, which RDS ignores,
    /// so the parameters are compared as a set.
    #[test]
    fn matches_the_botocore_rds_vector() {
        let token = rds_auth_token(
            "prod-instance.us-east-1.rds.amazonaws.com",
            3306,
            "someusername",
            "us-east-1",
            &creds("akid", "skid", None),
            at(1_478_540_373),
        );
        let expected = "prod-instance.us-east-1.rds.amazonaws.com:3306/?Action=connect\
            &DBUser=someusername&X-Amz-Algorithm=AWS4-HMAC-SHA256\
            &X-Amz-Date=20161107T173933Z&X-Amz-SignedHeaders=host\
            &X-Amz-Expires=900&X-Amz-Credential=akid%2F20161107%2F\
            us-east-1%2Frds-db%2Faws4_request&X-Amz-Signature\
            =d1138cdbc0ca63eec012ec0fc6c2267e03642168f5884a7795320d4c18374c61";
        let params = |t: &str| {
            let (base, query) = t.split_once('?').expect("a query");
            let mut p: Vec<String> = query.split('&').map(str::to_owned).collect();
            p.sort();
            (base.to_owned(), p)
        };
        assert_eq!(params(&token), params(expected));
    }

    /// The AWS SigV4 test suite, `get-vanilla-query-order-key-case`, presigned form
    /// (`.qpsreq` in aws-sigv4's copy of the suite).
    #[test]
    fn matches_the_sigv4_suite_presigned_vector() {
        let req = Presign {
            host: "example.amazonaws.com",
            params: &[("Param2", "value2"), ("Param1", "value1")],
            region: "us-east-1",
            service: "service",
            time: at(1_440_938_160),
            expires: Duration::from_secs(35),
        };
        let c = creds(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            None,
        );
        let query = presigned_query(&req, &c);
        assert!(
            query.ends_with(
                "&X-Amz-Signature=f25aea20f8c722ece3b363fc5d60cc91add973f9b64c42ba36fa28d57afe9019"
            ),
            "{query}"
        );
        assert!(query.starts_with("Param1=value1&Param2=value2&X-Amz-Algorithm="));
    }

    /// AWS SDK for JavaScript v2, `test/services/rds.spec.js`: a presigned RDS URL with a
    /// session token, which is part of the signature.
    #[test]
    fn a_session_token_is_signed_as_the_js_sdk_does() {
        let req = Presign {
            host: "rds.eu-central-1.amazonaws.com",
            params: &[
                ("Action", "CopyDBClusterSnapshot"),
                ("DestinationRegion", "us-west-2"),
                ("SourceDBClusterSnapshotIdentifier", "source_id"),
                ("TargetDBClusterSnapshotIdentifier", "target_id"),
                ("Version", "2014-10-31"),
            ],
            region: "eu-central-1",
            service: "rds",
            time: at(0),
            expires: Duration::from_secs(3600),
        };
        let query = presigned_query(&req, &creds("akid", "secret", Some("session")));
        assert!(query.contains("&X-Amz-Security-Token=session&"), "{query}");
        assert!(
            query.ends_with(
                "&X-Amz-Signature=b14e9105480608d8958613670c8978b683aaedd08af0f660bafb826e22605e7f"
            ),
            "{query}"
        );
    }

    #[test]
    fn user_names_and_tokens_are_uri_encoded() {
        assert_eq!(uri_encode("a b+c/=~_.-Z9"), "a%20b%2Bc%2F%3D~_.-Z9");
        let token = rds_auth_token(
            "db",
            5432,
            "app user",
            "eu-west-1",
            &creds("AK", "SK", Some("tok/+=")),
            at(0),
        );
        assert!(token.starts_with("db:5432/?Action=connect&DBUser=app%20user&"));
        assert!(token.contains("&X-Amz-Security-Token=tok%2F%2B%3D&"));
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let shown = format!("{:?}", creds("AKID", "hunter2", Some("sessiontok")));
        assert!(shown.contains("AKID"));
        assert!(!shown.contains("hunter2") && !shown.contains("sessiontok"));
    }
}
