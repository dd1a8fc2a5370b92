//! Reading the pooler pods' `/status`: straight from each running pod's IP on the pooler's
//! HTTP port, concurrently but at most `concurrency` requests at once over all pools, each
//! bounded by a timeout.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::Store;
use kube::ResourceExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use weir_pooler::http::StatusDocument;

use super::usage::PodReport;
use crate::render::selector_labels;

/// A `/status` document is a few hundred bytes per pool; anything far larger is not one.
const MAX_BODY: usize = 1 << 20;

/// How the pods are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadSettings {
    /// The pooler's HTTP port.
    pub port: u16,
    /// Bound on one request, connecting included.
    pub timeout: Duration,
    /// Requests in flight at once, over all pools.
    pub concurrency: usize,
}

/// Reads pods' `/status` within [`ReadSettings`].
#[derive(Debug, Clone)]
pub struct Reader {
    settings: ReadSettings,
    permits: Arc<Semaphore>,
}

impl Reader {
    /// A reader with its own bound on requests in flight.
    pub fn new(settings: ReadSettings) -> Reader {
        Reader {
            permits: Arc::new(Semaphore::new(settings.concurrency.max(1))),
            settings,
        }
    }

    /// The `/status` of each pod, in the order given.
    pub async fn read_all(&self, pods: &[Target]) -> Vec<PodReport> {
        futures::future::join_all(pods.iter().map(|pod| async move {
            PodReport {
                name: pod.name.clone(),
                status: self.read(pod.ip).await,
            }
        }))
        .await
    }

    async fn read(&self, ip: IpAddr) -> Result<StatusDocument, String> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| "the operator is stopping".to_owned())?;
        tokio::time::timeout(self.settings.timeout, fetch(ip, self.settings.port))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {:?}", self.settings.timeout)))
    }
}

async fn fetch(ip: IpAddr, port: u16) -> Result<StatusDocument, String> {
    let stream = TcpStream::connect((ip, port))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let connection = tokio::spawn(connection);
    let request = Request::get("/status")
        .header(hyper::header::HOST, ip.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let answer = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|e| format!("not a /status document: {e}"))
    }
    .await;
    connection.abort();
    answer
}

/// A pooler pod to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The pod's name.
    pub name: String,
    /// Its IP.
    pub ip: IpAddr,
}

/// The pool's pods whose pooler runs: phase Running with an IP. Pods not started yet load
/// the ConfigMap mounted when they start, and hold no server connection before.
pub fn running_pods(pods: &Store<Pod>, namespace: &str, pool: &str) -> Vec<Target> {
    let selector = selector_labels(pool);
    let mut targets: Vec<Target> = pods
        .state()
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(namespace))
        .filter(|p| {
            let labels = p.labels();
            selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
        .filter_map(|p| {
            let status = p.status.as_ref()?;
            if status.phase.as_deref() != Some("Running") {
                return None;
            }
            Some(Target {
                name: p.name_any(),
                ip: status.pod_ip.as_deref()?.parse().ok()?,
            })
        })
        .collect();
    targets.sort_by(|a, b| a.name.cmp(&b.name));
    targets
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::{reflector, watcher};

    fn pod(name: &str, pool: &str, phase: &str, ip: Option<&str>) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.metadata.namespace = Some("shop".into());
        p.metadata.labels = Some(selector_labels(pool));
        p.status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some(phase.into()),
            pod_ip: ip.map(Into::into),
            ..Default::default()
        });
        p
    }

    #[test]
    fn only_the_pools_running_pods_with_an_ip_are_read() {
        let (store, mut writer) = reflector::store::<Pod>();
        for p in [
            pod("orders-b", "orders", "Running", Some("10.0.0.2")),
            pod("orders-a", "orders", "Running", Some("fd00::1")),
            pod("orders-c", "orders", "Pending", Some("10.0.0.3")),
            pod("orders-d", "orders", "Running", None),
            pod("users-a", "users", "Running", Some("10.0.0.4")),
        ] {
            writer.apply_watcher_event(&watcher::Event::Apply(p));
        }
        let found = running_pods(&store, "shop", "orders");
        let names: Vec<_> = found.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["orders-a", "orders-b"]);
        assert_eq!(found[0].ip, "fd00::1".parse::<IpAddr>().expect("ip"));
        assert!(running_pods(&store, "other", "orders").is_empty());
    }

    #[tokio::test]
    async fn a_status_document_is_read() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let document = StatusDocument {
            config_file_digest: "abc".into(),
            clients: 3,
            ..StatusDocument::default()
        };
        let body = serde_json::to_string(&document).expect("json");
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut request = vec![0; 1024];
            let n = socket.read(&mut request).await.expect("read");
            assert!(request[..n].starts_with(b"GET /status HTTP/1.1"));
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            socket.write_all(answer.as_bytes()).await.expect("write");
        });
        let reader = Reader::new(ReadSettings {
            port,
            timeout: Duration::from_secs(5),
            concurrency: 1,
        });
        let reports = reader
            .read_all(&[Target {
                name: "p".into(),
                ip: "127.0.0.1".parse().expect("ip"),
            }])
            .await;
        assert_eq!(reports[0].status, Ok(document));
    }

    #[tokio::test]
    async fn a_silent_or_absent_pod_is_reported_with_why() {
        // A listener that never answers, and a port nobody listens on.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = silent.local_addr().expect("addr").port();
        let reader = Reader::new(ReadSettings {
            port,
            timeout: Duration::from_millis(200),
            concurrency: 2,
        });
        let target = Target {
            name: "p".into(),
            ip: "127.0.0.1".parse().expect("ip"),
        };
        let reports = reader.read_all(std::slice::from_ref(&target)).await;
        let why = reports[0].status.as_ref().expect_err("no answer");
        assert!(why.starts_with("no answer within"), "{why}");
        drop(silent);
        let reports = reader.read_all(&[target]).await;
        let why = reports[0].status.as_ref().expect_err("refused");
        assert!(why.starts_with("cannot connect"), "{why}");
    }
}
