//! Leader election on a `coordination.k8s.io/v1` Lease, so that several replicas of the
//! operator can run and exactly one of them reconciles.
//!
//! The lease itself (acquire, renew before expiry, take over an expired one) is
//! kube-lease-manager's. What is added here: any error talking about the lease counts as
//! losing it, because the holder cannot tell whether its renewal landed. The manager is
//! then rebuilt, and it regains leadership at once if the lease on the server still names
//! this replica, or waits for it to expire otherwise. Leadership ends a `grace` before the
//! lease would expire, so a successor never overlaps with us (up to that much clock skew).

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

/// Where the lease lives and how it is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSettings {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity as a holder (unique among replicas).
    pub identity: String,
    /// How long a lease stays valid without renewal, in seconds.
    pub duration_seconds: u64,
    /// How long before expiry the holder renews, in seconds (less than the duration).
    pub grace_seconds: u64,
}

/// The settings cannot be used.
#[derive(Debug, thiserror::Error)]
#[error(
    "lease renewal grace ({grace}s) must be at least 1s and shorter than the lease duration \
     ({duration}s)"
)]
pub struct InvalidLease {
    grace: u64,
    duration: u64,
}

impl LeaseSettings {
    /// Checks the timing parameters, which the lease manager would otherwise panic on.
    pub fn check(&self) -> Result<(), InvalidLease> {
        if self.grace_seconds == 0 || self.grace_seconds >= self.duration_seconds {
            return Err(InvalidLease {
                grace: self.grace_seconds,
                duration: self.duration_seconds,
            });
        }
        Ok(())
    }
}

/// A running election: whether this replica leads, until [`Election::resign`].
pub struct Election {
    leading: watch::Receiver<bool>,
    stop: Arc<Notify>,
    task: JoinHandle<()>,
}

/// Pause after a failure before trying again.
const RETRY: Duration = Duration::from_secs(1);

impl Election {
    /// Starts competing for the lease in the background.
    pub fn start(client: Client, settings: LeaseSettings) -> Result<Election, InvalidLease> {
        settings.check()?;
        let (tx, leading) = watch::channel(false);
        let stop = Arc::new(Notify::new());
        let task = tokio::spawn(compete(client, settings, tx, Arc::clone(&stop)));
        Ok(Election {
            leading,
            stop,
            task,
        })
    }

    /// A receiver of the leadership state: `true` while this replica leads.
    pub fn leading(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }

    /// Stops competing and releases the lease if held, so a successor need not wait for
    /// it to expire.
    pub async fn resign(self) {
        self.stop.notify_one();
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "leader election task failed");
        }
    }
}

async fn build(
    client: &Client,
    settings: &LeaseSettings,
) -> kube_lease_manager::Result<LeaseManager> {
    LeaseManagerBuilder::new(client.clone(), &settings.name)
        .with_namespace(&settings.namespace)
        .with_identity(&settings.identity)
        .with_duration(settings.duration_seconds)
        .with_grace(settings.grace_seconds)
        .with_field_manager(format!("weir-operator-lease-{}", settings.identity))
        .build()
        .await
}

async fn compete(
    client: Client,
    settings: LeaseSettings,
    leading: watch::Sender<bool>,
    stop: Arc<Notify>,
) {
    loop {
        let manager = tokio::select! {
            () = stop.notified() => return,
            built = build(&client, &settings) => match built {
                Ok(manager) => manager,
                Err(e) => {
                    tracing::warn!(error = %e, lease = %settings.name, "cannot set up the leader lease");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            },
        };
        loop {
            tokio::select! {
                () = stop.notified() => {
                    leading.send_replace(false);
                    if let Err(e) = manager.release().await {
                        tracing::warn!(error = %e, "cannot release the leader lease");
                    }
                    return;
                }
                changed = manager.changed() => match changed {
                    Ok(is_leader) => {
                        tracing::info!(identity = %settings.identity, leading = is_leader, "leadership changed");
                        leading.send_replace(is_leader);
                    }
                    Err(e) => {
                        if *leading.borrow() {
                            tracing::warn!(error = %e, "leader lease renewal failed; stepping down");
                        } else {
                            tracing::warn!(error = %e, "leader lease check failed");
                        }
                        leading.send_replace(false);
                        break;
                    }
                },
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(duration: u64, grace: u64) -> LeaseSettings {
        LeaseSettings {
            namespace: "ns".into(),
            name: "weir-operator".into(),
            identity: "a".into(),
            duration_seconds: duration,
            grace_seconds: grace,
        }
    }

    #[test]
    fn grace_must_be_shorter_than_the_lease() {
        assert!(settings(15, 5).check().is_ok());
        assert!(settings(15, 15).check().is_err());
        assert!(settings(15, 0).check().is_err());
        let message = settings(5, 9).check().expect_err("refused").to_string();
        assert!(message.contains("(5s)"), "{message}");
    }
}
