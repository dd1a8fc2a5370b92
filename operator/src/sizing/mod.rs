//! Connection-budget arithmetic: from what the database allows to the pool sizes each pooler
//! pod is configured with.
//!
//! Everything here is pure integer arithmetic so that it can be property-tested and so that
//! the controller, the offline `render` command and the tests all compute the same numbers.
//!
//! # The formula
//!
//! ```text
//! budget_db = maxConnections
//!           − superuser_reserved            (superuser_reserved_connections + reserved_connections)
//!           − ceil(maxConnections × reservedPercent / 100)   (headroom for maintenance, replication)
//!           − usedByOthers                  (connections other applications hold)
//! B         = floor(budget_db × maxConnectionsPercent / 100)   or   min(budget_db, maxServerConnections)
//!             and B + others_claimed ≤ budget_db               (other ConnectionPools on the database)
//! pods_max  = (autoscaling.maxReplicas or replicas) + rollout.maxSurge
//! per_pod   = floor(B / pods_max)                              = each pod's max_db_connections
//! ```
//!
//! `per_pod` is then split across the users by weight (largest remainder). A user's share is
//! its `pool_size + reserve_pool_size`: the reserve is carved out of the share, never added on
//! top, and `min_pool_size` connections are part of `pool_size`. A user whose weighted share
//! would fall below what it needs (`max(1, minPoolSize) + reservePoolSize`) gets exactly that,
//! and the rest is split among the others by weight.
//!
//! The invariant, checked by the property tests: `pods_max × Σ shares ≤ B`, so every pooler pod
//! that can exist at once — the replicas, or the autoscaler's maximum, plus the pods a rolling
//! update adds — together never open more server connections than the budget.
//!
//! Inputs that cannot satisfy it give [`SizingError::Infeasible`], which names the smallest
//! change of each knob that would make them feasible.

use std::fmt;

#[cfg(test)]
mod tests;

/// What the database server allows, before this pool's share is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatabaseLimits {
    /// The server's `max_connections`.
    pub max_connections: u32,
    /// Connection slots only superusers (and, since PostgreSQL 16, `pg_use_reserved_connections`
    /// members) may use: `superuser_reserved_connections + reserved_connections`.
    pub superuser_reserved: u32,
    /// Headroom kept free for maintenance, replication and emergencies, in percent of
    /// `max_connections` (rounded up to whole connections).
    pub reserved_percent: u32,
    /// Connections held by applications that do not go through any pooler.
    pub used_by_others: u32,
}

/// How much of the database budget this pool claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Share {
    /// A percentage of the database budget, rounded down (RDS Proxy's `MaxConnectionsPercent`).
    Percent(u32),
    /// An absolute number of server connections, capped at the database budget.
    Absolute(u32),
}

/// One user's demands on its slice of each pod's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserDemand {
    /// Relative weight in the split of each pod's connections.
    pub weight: u32,
    /// Server connections kept open even when idle; part of the pool, not added to it.
    pub min_pool_size: u32,
    /// Extra connections for clients that waited too long; part of the user's share.
    pub reserve_pool_size: u32,
}

impl UserDemand {
    /// The smallest share this user can live with: a pool of at least one connection (and at
    /// least its minimum), plus its reserve.
    pub fn minimum_share(&self) -> u64 {
        u64::from(self.min_pool_size.max(1)) + u64::from(self.reserve_pool_size)
    }
}

/// Everything the computation needs, gathered from the spec and from observations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inputs {
    /// The database server's limits.
    pub database: DatabaseLimits,
    /// This pool's claim on the database budget.
    pub share: Share,
    /// Server connections already claimed by other pools on the same database.
    pub others_claimed: u32,
    /// Pods the Deployment normally runs.
    pub replicas: u32,
    /// Extra pods a rolling update may add (the Deployment's `maxSurge`, at least 1 because
    /// `maxUnavailable` is 0).
    pub max_surge: u32,
    /// The most replicas an autoscaler may set; the budget is divided for this many instead
    /// of `replicas` when present.
    pub max_replicas: Option<u32>,
    /// The users sharing each pod's connections, in spec order.
    pub users: Vec<UserDemand>,
}

/// How the budget was derived, number by number, for status and for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The server's `max_connections`.
    pub max_connections: u32,
    /// Slots reserved for superusers.
    pub superuser_reserved: u32,
    /// Connections kept free as headroom.
    pub reserved_headroom: u32,
    /// Connections held by non-pooled applications.
    pub used_by_others: u32,
    /// What is left for all pools on this database (`budget_db`).
    pub database: u32,
    /// What other pools on this database already claim.
    pub others_claimed: u32,
    /// This pool's budget `B`.
    pub pool: u32,
    /// The most pooler pods that can exist at once.
    pub pods_max: u32,
    /// Server connections per pod: `floor(B / pods_max)`.
    pub per_pod: u32,
}

/// The pool sizes one user gets in every pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserPool {
    /// `pool_size`: connections lent out at once in normal operation.
    pub pool_size: u32,
    /// `min_pool_size`: connections kept open even when idle (at most `pool_size`).
    pub min_pool_size: u32,
    /// `reserve_pool_size`: connections beyond `pool_size` for clients that waited too long.
    pub reserve_pool_size: u32,
}

impl UserPool {
    /// The most server connections this user's pool may hold in one pod.
    pub fn share(&self) -> u32 {
        self.pool_size + self.reserve_pool_size
    }
}

/// The result: the budget and every pod's pool sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sizing {
    /// How the budget was derived.
    pub budget: Budget,
    /// Per-user pool sizes, in the order of [`Inputs::users`].
    pub users: Vec<UserPool>,
}

impl Sizing {
    /// Each pod's `max_db_connections`: the hard cap the pooler enforces over all pools.
    pub fn max_db_connections(&self) -> u32 {
        self.budget.per_pod
    }

    /// `default_pool_size` for pools without a per-user size: the smallest user pool, so
    /// that an unexpected pool can never take more than any configured one.
    pub fn default_pool_size(&self) -> u32 {
        self.users.iter().map(|u| u.pool_size).min().unwrap_or(1)
    }

    /// The most server connections all pods together may hold: `pods_max × Σ shares`.
    pub fn committed(&self) -> u64 {
        let per_pod: u64 = self.users.iter().map(|u| u64::from(u.share())).sum();
        per_pod * u64::from(self.budget.pods_max)
    }
}

/// Inputs the computation refuses outright (admission normally catches these first).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidInput {
    /// There is nobody to give connections to.
    #[error("at least one user is needed")]
    NoUsers,
    /// A zero weight would leave a user without connections.
    #[error("user {index}: weight must be at least 1")]
    ZeroWeight {
        /// Position of the user in the spec.
        index: usize,
    },
    /// A percentage outside its range.
    #[error("{field} must be between {min} and {max}, got {value}")]
    PercentOutOfRange {
        /// The spec field.
        field: &'static str,
        /// The lowest allowed value.
        min: u32,
        /// The highest allowed value.
        max: u32,
        /// The value given.
        value: u32,
    },
    /// A count that must be at least one.
    #[error("{field} must be at least 1")]
    Zero {
        /// The spec field.
        field: &'static str,
    },
    /// The autoscaler's maximum is below the current replicas.
    #[error("replicas ({replicas}) must not exceed autoscaling.maxReplicas ({max_replicas})")]
    ReplicasAboveMax {
        /// `replicas`.
        replicas: u32,
        /// `autoscaling.maxReplicas`.
        max_replicas: u32,
    },
}

/// Why a budget does not fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shortfall {
    /// Nothing is left once the reserved slots, the headroom and other applications are
    /// taken from `max_connections`.
    DatabaseExhausted {
        /// The budget derivation (with `database` 0).
        budget: Budget,
        /// The unclamped `budget_db`, possibly negative.
        remaining: i64,
    },
    /// This pool and the other pools on the database together claim more than it has.
    Overcommitted {
        /// The budget derivation.
        budget: Budget,
    },
    /// The pool's budget cannot give every pod the minimum its users need.
    TooSmall {
        /// The budget derivation.
        budget: Budget,
        /// The least connections one pod needs: `Σ max(1, minPoolSize) + reservePoolSize`.
        need_per_pod: u64,
    },
}

/// One change that, on its own, makes the inputs feasible; each is the smallest such change
/// of its knob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fix {
    /// Run fewer replicas.
    Replicas(u32),
    /// Let the autoscaler go less high.
    MaxReplicas(u32),
    /// Surge fewer pods during rolling updates.
    MaxSurge(u32),
    /// Claim a different percentage of the database budget.
    Percent(Adjust),
    /// Claim a different absolute number of server connections.
    MaxServerConnections(Adjust),
    /// Give the database server a higher `max_connections`.
    MaxConnections(u32),
}

/// A knob whose feasible values form the interval `lo..=hi` (within `1..=max`), currently
/// set to `from` outside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adjust {
    /// The current value.
    pub from: u32,
    /// The smallest value that fits.
    pub lo: u32,
    /// The largest value that fits.
    pub hi: u32,
    /// The largest value the knob takes at all.
    pub max: u32,
}

impl Adjust {
    /// The feasible value nearest to the current one.
    pub fn nearest(&self) -> u32 {
        self.from.clamp(self.lo, self.hi)
    }

    fn describe(&self, f: &mut fmt::Formatter<'_>, knob: &str) -> fmt::Result {
        let (lo, hi) = (self.lo, self.hi);
        match (self.from < lo, lo == 1, hi == self.max) {
            (true, _, true) => write!(f, "raise {knob} to ≥ {lo}"),
            (false, true, _) => write!(f, "lower {knob} to ≤ {hi}"),
            (true, _, false) => write!(f, "raise {knob} to between {lo} and {hi}"),
            (false, false, _) => write!(f, "lower {knob} to between {lo} and {hi}"),
        }
    }
}

impl fmt::Display for Fix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fix::Replicas(n) => write!(f, "reduce replicas to ≤ {n}"),
            Fix::MaxReplicas(n) => write!(f, "reduce autoscaling.maxReplicas to ≤ {n}"),
            Fix::MaxSurge(n) => write!(f, "reduce rollout.maxSurge to ≤ {n}"),
            Fix::Percent(range) => range.describe(f, "maxConnectionsPercent"),
            Fix::MaxServerConnections(range) => range.describe(f, "maxServerConnections"),
            Fix::MaxConnections(n) => {
                write!(
                    f,
                    "raise maxConnections (the database's max_connections) to ≥ {n}"
                )
            }
        }
    }
}

/// Inputs that do not fit, with every single-knob change that would make them fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Infeasible {
    /// What does not fit.
    pub shortfall: Shortfall,
    /// The smallest feasible change of each knob that has one, most local first.
    pub fixes: Vec<Fix>,
    /// Whether some user asks for a minimum or reserve pool, which could be lowered too.
    pub users_could_ask_less: bool,
}

impl Shortfall {
    /// The budget derivation that did not fit.
    pub fn budget(&self) -> &Budget {
        match self {
            Shortfall::DatabaseExhausted { budget, .. }
            | Shortfall::Overcommitted { budget }
            | Shortfall::TooSmall { budget, .. } => budget,
        }
    }
}

impl Infeasible {
    /// A short CamelCase reason for a status condition.
    pub fn reason(&self) -> &'static str {
        match self.shortfall {
            Shortfall::DatabaseExhausted { .. } => "DatabaseExhausted",
            Shortfall::Overcommitted { .. } => "Overcommitted",
            Shortfall::TooSmall { .. } => "BudgetTooSmall",
        }
    }
}

impl fmt::Display for Infeasible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.shortfall {
            Shortfall::DatabaseExhausted { budget, remaining } => write!(
                f,
                "the database has no connections left for pools: max_connections {} − {} \
                 superuser-reserved − {} headroom − {} used by others = {remaining}",
                budget.max_connections,
                budget.superuser_reserved,
                budget.reserved_headroom,
                budget.used_by_others,
            )?,
            Shortfall::Overcommitted { budget } => write!(
                f,
                "this pool's budget of {} plus the {} claimed by other pools on the database \
                 exceeds the database budget of {} (pools sharing a database split its budget \
                 with maxConnectionsPercent or maxServerConnections)",
                budget.pool, budget.others_claimed, budget.database,
            )?,
            Shortfall::TooSmall {
                budget,
                need_per_pod,
            } => write!(
                f,
                "{} pods can exist at once and each needs at least {need_per_pod} server \
                 connections (1 per user plus minimum and reserve pools), {} in all, but the \
                 pool's budget is {} (database budget {} = max_connections {} − {} \
                 superuser-reserved − {} headroom − {} used by others)",
                budget.pods_max,
                u64::from(budget.pods_max) * need_per_pod,
                budget.pool,
                budget.database,
                budget.max_connections,
                budget.superuser_reserved,
                budget.reserved_headroom,
                budget.used_by_others,
            )?,
        }
        let mut hints: Vec<String> = self.fixes.iter().map(Fix::to_string).collect();
        if self.users_could_ask_less {
            hints.push("lower the users' minPoolSize or reservePoolSize".to_owned());
        }
        match hints.split_last() {
            None => write!(f, "; no single setting can fix this on its own"),
            Some((last, [])) => write!(f, "; smallest fix: {last}"),
            Some((last, rest)) => write!(f, "; smallest fixes: {}, or {last}", rest.join(", ")),
        }
    }
}

/// Why no sizing could be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizingError {
    /// An input is out of its range.
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// The inputs are valid but the budget does not fit.
    #[error("connection budget does not fit: {0}")]
    Infeasible(Infeasible),
}

/// Computes every pod's pool sizes, or explains why the budget cannot hold them.
pub fn compute(inputs: &Inputs) -> Result<Sizing, SizingError> {
    check_inputs(inputs)?;
    let budget = derive_budget(inputs);
    if let Some(shortfall) = shortfall(inputs, &budget) {
        // Smaller minimums only help a budget that is too small per pod.
        let users_could_ask_less = matches!(shortfall, Shortfall::TooSmall { .. })
            && inputs
                .users
                .iter()
                .any(|u| u.min_pool_size > 1 || u.reserve_pool_size > 0);
        return Err(SizingError::Infeasible(Infeasible {
            shortfall,
            fixes: fixes(inputs),
            users_could_ask_less,
        }));
    }
    let shares = split_by_weight(u64::from(budget.per_pod), &inputs.users);
    let users = inputs
        .users
        .iter()
        .zip(shares)
        .map(|(demand, share)| UserPool {
            // `share ≥ minimum_share` was guaranteed by the split, so this cannot underflow,
            // and `share ≤ per_pod` fits in u32.
            pool_size: u32::try_from(share).unwrap_or(u32::MAX) - demand.reserve_pool_size,
            min_pool_size: demand.min_pool_size,
            reserve_pool_size: demand.reserve_pool_size,
        })
        .collect();
    Ok(Sizing { budget, users })
}

/// The standby a read-only pool is sized for: the one with the smallest database budget,
/// since every read-only pod may connect to every standby (`None` for no standbys).
pub fn tightest(standbys: &[DatabaseLimits]) -> Option<DatabaseLimits> {
    standbys.iter().copied().min_by_key(database_budget)
}

fn check_inputs(inputs: &Inputs) -> Result<(), InvalidInput> {
    if inputs.users.is_empty() {
        return Err(InvalidInput::NoUsers);
    }
    if let Some(index) = inputs.users.iter().position(|u| u.weight == 0) {
        return Err(InvalidInput::ZeroWeight { index });
    }
    let percent = |field, value, min| {
        if (min..=100).contains(&value) {
            Ok(())
        } else {
            Err(InvalidInput::PercentOutOfRange {
                field,
                min,
                max: 100,
                value,
            })
        }
    };
    percent("reservedPercent", inputs.database.reserved_percent, 0)?;
    match inputs.share {
        Share::Percent(p) => percent("maxConnectionsPercent", p, 1)?,
        Share::Absolute(0) => {
            return Err(InvalidInput::Zero {
                field: "maxServerConnections",
            })
        }
        Share::Absolute(_) => {}
    }
    for (field, value) in [
        ("replicas", inputs.replicas),
        ("rollout.maxSurge", inputs.max_surge),
        ("maxConnections", inputs.database.max_connections),
    ] {
        if value == 0 {
            return Err(InvalidInput::Zero { field });
        }
    }
    if let Some(max_replicas) = inputs.max_replicas {
        if max_replicas < inputs.replicas {
            return Err(InvalidInput::ReplicasAboveMax {
                replicas: inputs.replicas,
                max_replicas,
            });
        }
    }
    Ok(())
}

/// `ceil(a × percent / 100)` without overflow.
fn percent_ceil(a: u32, percent: u32) -> u64 {
    (u64::from(a) * u64::from(percent)).div_ceil(100)
}

/// The database budget `budget_db` for a given `max_connections`, possibly negative.
fn database_budget(limits: &DatabaseLimits) -> i64 {
    i64::from(limits.max_connections)
        - i64::from(limits.superuser_reserved)
        - percent_ceil(limits.max_connections, limits.reserved_percent) as i64
        - i64::from(limits.used_by_others)
}

/// This pool's budget `B` out of a (non-negative) database budget.
fn pool_budget(share: Share, database: u32) -> u32 {
    match share {
        // floor(database × p / 100) ≤ database for p ≤ 100, so it fits in u32.
        Share::Percent(p) => {
            u32::try_from(u64::from(database) * u64::from(p) / 100).unwrap_or(database)
        }
        Share::Absolute(n) => n.min(database),
    }
}

fn pods_max(inputs: &Inputs) -> u64 {
    u64::from(inputs.max_replicas.unwrap_or(inputs.replicas)) + u64::from(inputs.max_surge)
}

fn need_per_pod(users: &[UserDemand]) -> u64 {
    users.iter().map(UserDemand::minimum_share).sum()
}

fn derive_budget(inputs: &Inputs) -> Budget {
    let limits = &inputs.database;
    let database = u32::try_from(database_budget(limits).max(0)).unwrap_or(0);
    let pool = pool_budget(inputs.share, database);
    let pods_max = pods_max(inputs);
    Budget {
        max_connections: limits.max_connections,
        superuser_reserved: limits.superuser_reserved,
        reserved_headroom: u32::try_from(percent_ceil(
            limits.max_connections,
            limits.reserved_percent,
        ))
        .unwrap_or(u32::MAX),
        used_by_others: limits.used_by_others,
        database,
        others_claimed: inputs.others_claimed,
        pool,
        pods_max: u32::try_from(pods_max).unwrap_or(u32::MAX),
        // pods_max ≥ 1 because max_surge ≥ 1.
        per_pod: u32::try_from(u64::from(pool) / pods_max).unwrap_or(0),
    }
}

fn shortfall(inputs: &Inputs, budget: &Budget) -> Option<Shortfall> {
    let remaining = database_budget(&inputs.database);
    if remaining <= 0 {
        return Some(Shortfall::DatabaseExhausted {
            budget: *budget,
            remaining,
        });
    }
    if u64::from(budget.pool) + u64::from(inputs.others_claimed) > u64::from(budget.database) {
        return Some(Shortfall::Overcommitted { budget: *budget });
    }
    let need = need_per_pod(&inputs.users);
    if u64::from(budget.per_pod) < need {
        return Some(Shortfall::TooSmall {
            budget: *budget,
            need_per_pod: need,
        });
    }
    None
}

/// Whether `inputs` fit: a positive database budget, room next to the other pools, and
/// enough per pod for every user's minimum.
fn feasible(inputs: &Inputs) -> bool {
    shortfall(inputs, &derive_budget(inputs)).is_none()
}

/// The smallest single-knob changes that make `inputs` feasible.
fn fixes(inputs: &Inputs) -> Vec<Fix> {
    let mut out = Vec::new();
    let changed = |change: &dyn Fn(&mut Inputs)| {
        let mut changed = inputs.clone();
        change(&mut changed);
        changed
    };
    let fits = |change: &dyn Fn(&mut Inputs)| feasible(&changed(change));

    // Fewer pods only ever helps, so take the largest pod count below the current one
    // that fits.
    let base = inputs.max_replicas.unwrap_or(inputs.replicas);
    let fewer = last_true(1, base.saturating_sub(1), |n| {
        fits(&|i: &mut Inputs| match i.max_replicas {
            Some(_) => {
                i.max_replicas = Some(n);
                i.replicas = i.replicas.min(n);
            }
            None => i.replicas = n,
        })
    });
    if let Some(n) = fewer {
        out.push(match inputs.max_replicas {
            Some(_) => Fix::MaxReplicas(n),
            None => Fix::Replicas(n),
        });
    }
    if let Some(n) = last_true(1, inputs.max_surge.saturating_sub(1), |n| {
        fits(&|i: &mut Inputs| i.max_surge = n)
    }) {
        out.push(Fix::MaxSurge(n));
    }

    // A different claim: a larger one gives each pod more (monotone), a smaller one leaves
    // more room for the other pools (monotone the other way), so the claims that fit are
    // the interval between where "enough per pod" starts and "room for the others" ends.
    if database_budget(&inputs.database) > 0 {
        let need = need_per_pod(&inputs.users);
        let budget_with = |share: Share| derive_budget(&changed(&|i: &mut Inputs| i.share = share));
        let enough = |share: Share| u64::from(budget_with(share).per_pod) >= need;
        let room = |share: Share| {
            let b = budget_with(share);
            u64::from(b.pool) + u64::from(inputs.others_claimed) <= u64::from(b.database)
        };
        let (from, max, make): (u32, u32, fn(u32) -> Share) = match inputs.share {
            Share::Percent(p) => (p, 100, Share::Percent),
            Share::Absolute(n) => (n, u32::MAX, Share::Absolute),
        };
        let lo = first_true(1, max, |v| enough(make(v)));
        let hi = last_true(1, max, |v| room(make(v)));
        if let (Some(lo), Some(hi)) = (lo, hi) {
            if lo <= hi {
                let range = Adjust { from, lo, hi, max };
                out.push(match inputs.share {
                    Share::Percent(_) => Fix::Percent(range),
                    Share::Absolute(_) => Fix::MaxServerConnections(range),
                });
            }
        }
    }

    // A bigger server: every part of the budget grows with max_connections, so feasibility
    // is monotone in it.
    let current = inputs.database.max_connections;
    if let Some(m) = first_true(current.saturating_add(1), u32::MAX, |m| {
        fits(&|i: &mut Inputs| i.database.max_connections = m)
    }) {
        out.push(Fix::MaxConnections(m));
    }
    out
}

/// The first value in `lo..=hi` where `p` holds, for a predicate that is false up to some
/// point and true from there on.
fn first_true(lo: u32, hi: u32, p: impl Fn(u32) -> bool) -> Option<u32> {
    if lo > hi || !p(hi) {
        return None;
    }
    // Invariant: p(good) holds; every value below `bad + 1` that was probed failed.
    let (mut bad, mut good) = (u64::from(lo), u64::from(hi));
    if p(lo) {
        return Some(lo);
    }
    while good - bad > 1 {
        let mid = bad + (good - bad) / 2;
        if p(u32::try_from(mid).unwrap_or(u32::MAX)) {
            good = mid;
        } else {
            bad = mid;
        }
    }
    u32::try_from(good).ok()
}

/// The last value in `lo..=hi` where `p` holds, for a predicate that is true up to some
/// point and false from there on.
fn last_true(lo: u32, hi: u32, p: impl Fn(u32) -> bool) -> Option<u32> {
    if lo > hi || !p(lo) {
        return None;
    }
    if p(hi) {
        return Some(hi);
    }
    let (mut good, mut bad) = (u64::from(lo), u64::from(hi));
    while bad - good > 1 {
        let mid = good + (bad - good) / 2;
        if p(u32::try_from(mid).unwrap_or(u32::MAX)) {
            good = mid;
        } else {
            bad = mid;
        }
    }
    u32::try_from(good).ok()
}

/// Splits `per_pod` connections across `users` by weight with the largest-remainder
/// method, never giving a user less than [`UserDemand::minimum_share`]. The caller ensures
/// `per_pod ≥ Σ minimum_share`; the result always sums to `per_pod`.
pub fn split_by_weight(per_pod: u64, users: &[UserDemand]) -> Vec<u64> {
    let mut shares: Vec<Option<u64>> = vec![None; users.len()];
    // Pin users whose weighted quota falls below their minimum, then re-split the rest
    // among the others; pinning only shrinks what the others share, so this converges.
    loop {
        let pinned: u64 = shares.iter().flatten().sum();
        let free = per_pod.saturating_sub(pinned);
        let weight: u64 = unpinned(&shares, users)
            .map(|(_, u)| u64::from(u.weight))
            .sum();
        if weight == 0 {
            break;
        }
        let short: Vec<usize> = unpinned(&shares, users)
            .filter(|(_, u)| {
                u128::from(free) * u128::from(u.weight)
                    < u128::from(u.minimum_share()) * u128::from(weight)
            })
            .map(|(i, _)| i)
            .collect();
        if short.is_empty() {
            break;
        }
        for i in short {
            shares[i] = Some(users[i].minimum_share());
        }
    }
    let pinned: u64 = shares.iter().flatten().sum();
    let free = per_pod.saturating_sub(pinned);
    let weight: u64 = unpinned(&shares, users)
        .map(|(_, u)| u64::from(u.weight))
        .sum();
    if weight > 0 {
        let mut remainders = Vec::new();
        let mut given = 0u64;
        for (i, user) in users.iter().enumerate() {
            if shares[i].is_some() {
                continue;
            }
            let exact = u128::from(free) * u128::from(user.weight);
            let floor = u64::try_from(exact / u128::from(weight)).unwrap_or(u64::MAX);
            remainders.push((exact % u128::from(weight), i));
            shares[i] = Some(floor);
            given += floor;
        }
        // Largest remainder first; equal remainders go to the earlier user.
        remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let leftover = usize::try_from(free - given).unwrap_or(usize::MAX);
        for &(_, i) in remainders.iter().take(leftover) {
            if let Some(share) = shares[i].as_mut() {
                *share += 1;
            }
        }
    }
    shares.into_iter().map(Option::unwrap_or_default).collect()
}

fn unpinned<'a>(
    shares: &'a [Option<u64>],
    users: &'a [UserDemand],
) -> impl Iterator<Item = (usize, &'a UserDemand)> + 'a {
    users
        .iter()
        .enumerate()
        .filter(|(i, _)| shares[*i].is_none())
}
