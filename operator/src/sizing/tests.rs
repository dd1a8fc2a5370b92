use proptest::prelude::*;

use super::*;

fn user(weight: u32, min_pool_size: u32, reserve_pool_size: u32) -> UserDemand {
    UserDemand {
        weight,
        min_pool_size,
        reserve_pool_size,
    }
}

fn inputs(max_connections: u32, replicas: u32, users: Vec<UserDemand>) -> Inputs {
    Inputs {
        database: DatabaseLimits {
            max_connections,
            superuser_reserved: 3,
            reserved_percent: 15,
            used_by_others: 0,
        },
        share: Share::Percent(100),
        others_claimed: 0,
        replicas,
        max_surge: 1,
        max_replicas: None,
        users,
    }
}

/// A change to valid inputs, for table-driven cases.
type Change = Box<dyn Fn(&mut Inputs)>;

fn infeasible(i: &Inputs) -> Infeasible {
    match compute(i) {
        Err(SizingError::Infeasible(e)) => e,
        other => panic!("expected an infeasible budget, got {other:?}"),
    }
}

/// The README's worked example: 19 replicas plus one surge pod are 20 pods, and a budget of
/// 500 gives each 25 — Heroku's "20 dynos × 25 = 500".
#[test]
fn worked_example_twenty_pods_of_twenty_five() {
    let mut i = inputs(592, 19, vec![user(4, 2, 0), user(1, 0, 2)]);
    i.database.superuser_reserved = 3;
    let s = compute(&i).expect("feasible");
    let b = s.budget;
    assert_eq!(b.reserved_headroom, 89); // ceil(592 × 0.15) = ceil(88.8)
    assert_eq!(b.database, 500); // 592 − 3 − 89 − 0
    assert_eq!(b.pool, 500);
    assert_eq!(b.pods_max, 20);
    assert_eq!(b.per_pod, 25);
    assert_eq!(s.max_db_connections(), 25);
    assert_eq!(
        s.users,
        vec![
            UserPool {
                pool_size: 20,
                min_pool_size: 2,
                reserve_pool_size: 0
            },
            UserPool {
                pool_size: 3,
                min_pool_size: 0,
                reserve_pool_size: 2
            },
        ]
    );
    assert_eq!(s.default_pool_size(), 3);
    assert_eq!(s.committed(), 500);
}

#[test]
fn autoscaling_maximum_replaces_replicas() {
    let mut i = inputs(1000, 2, vec![user(1, 0, 0)]);
    i.max_replicas = Some(9);
    let s = compute(&i).expect("feasible");
    // 1000 − 3 − 150 = 847; 10 pods → 84 each.
    assert_eq!(s.budget.pods_max, 10);
    assert_eq!(s.budget.per_pod, 84);
}

#[test]
fn percent_and_absolute_claims() {
    let mut i = inputs(100, 1, vec![user(1, 0, 0)]);
    // 100 − 3 − 15 = 82
    i.share = Share::Percent(50);
    assert_eq!(compute(&i).expect("fits").budget.pool, 41);
    i.share = Share::Absolute(30);
    assert_eq!(compute(&i).expect("fits").budget.pool, 30);
    i.share = Share::Absolute(300);
    assert_eq!(compute(&i).expect("fits").budget.pool, 82);
}

#[test]
fn weights_split_by_largest_remainder() {
    let demands = [user(1, 0, 0), user(1, 0, 0), user(1, 0, 0)];
    assert_eq!(split_by_weight(10, &demands), vec![4, 3, 3]);
    let demands = [user(3, 0, 0), user(1, 0, 0)];
    assert_eq!(split_by_weight(10, &demands), vec![8, 2]);
    let demands = [user(1, 0, 0), user(2, 0, 0)];
    assert_eq!(split_by_weight(10, &demands), vec![3, 7]);
}

#[test]
fn minimums_are_honoured_before_weights() {
    // By weight alone the second user would get 1, but it needs 2 + 3.
    let demands = [user(9, 0, 0), user(1, 2, 3)];
    assert_eq!(split_by_weight(10, &demands), vec![5, 5]);
    let i = inputs(100, 1, vec![user(9, 0, 0), user(1, 2, 3)]);
    let s = compute(&i).expect("fits");
    assert_eq!(s.users[1].pool_size, 2);
    assert_eq!(s.users[1].reserve_pool_size, 3);
    assert_eq!(s.users[1].min_pool_size, 2);
}

#[test]
fn too_small_names_the_smallest_changes() {
    // 100 − 3 − 15 = 82 for 5 + 1 pods; two users need 1 + (4 + 10) = 15 per pod → 90.
    let i = inputs(100, 5, vec![user(1, 0, 0), user(1, 4, 10)]);
    let e = infeasible(&i);
    assert_eq!(e.reason(), "BudgetTooSmall");
    assert!(e.fixes.contains(&Fix::Replicas(4)), "{:?}", e.fixes);
    // 90 + 3 + ceil(0.15 m) ≤ m → m ≥ 109 (109 − 3 − 17 = 89 < 90; 110 − 3 − 17 = 90).
    assert!(e.fixes.contains(&Fix::MaxConnections(110)), "{:?}", e.fixes);
    let text = e.to_string();
    assert!(text.contains("reduce replicas to ≤ 4"), "{text}");
    assert!(
        text.contains("maxConnections (the database's max_connections) to ≥ 110"),
        "{text}"
    );
    assert!(text.contains("lower the users' minPoolSize"), "{text}");
    assert!(text.contains("6 pods can exist at once"), "{text}");
}

#[test]
fn overcommitted_database_suggests_a_smaller_claim() {
    let mut i = inputs(100, 1, vec![user(1, 0, 0)]);
    i.others_claimed = 50; // of 82
    let e = infeasible(&i);
    assert_eq!(e.reason(), "Overcommitted");
    let range = e
        .fixes
        .iter()
        .find_map(|f| match f {
            Fix::Percent(r) => Some(*r),
            _ => None,
        })
        .expect("a percent fix");
    // 82 − 50 = 32 left: floor(82 × 0.40) = 32 fits, floor(82 × 0.41) = 33 does not.
    assert_eq!(range.nearest(), 40);
    assert!(
        e.to_string()
            .contains("lower maxConnectionsPercent to between 3 and 40"),
        "{e}"
    );
    // The pod count is not the problem, so fewer replicas is not offered.
    assert!(!e.fixes.iter().any(|f| matches!(f, Fix::Replicas(_))));
}

#[test]
fn exhausted_database() {
    let i = inputs(3, 1, vec![user(1, 0, 0)]);
    let e = infeasible(&i);
    assert_eq!(e.reason(), "DatabaseExhausted");
    // 2 pods × 1 + 3 reserved + ceil(0.15 m) ≤ m → m = 6 (6 − 3 − 1 = 2).
    assert_eq!(e.fixes, vec![Fix::MaxConnections(6)]);
    assert!(
        e.to_string().contains("headroom − 0 used by others = -1"),
        "{e}"
    );
}

#[test]
fn absolute_claim_too_small_says_raise() {
    let mut i = inputs(1000, 3, vec![user(1, 0, 0)]);
    i.share = Share::Absolute(2);
    let e = infeasible(&i);
    let text = e.to_string();
    assert!(text.contains("raise maxServerConnections to ≥ 4"), "{text}");
    // max_connections cannot help an absolute claim that is itself too small.
    assert!(!e.fixes.iter().any(|f| matches!(f, Fix::MaxConnections(_))));
}

#[test]
fn invalid_inputs_are_refused() {
    let ok = inputs(100, 1, vec![user(1, 0, 0)]);
    let cases: Vec<(Change, &str)> = vec![
        (Box::new(|i| i.users.clear()), "at least one user"),
        (Box::new(|i| i.users[0].weight = 0), "weight"),
        (
            Box::new(|i| i.share = Share::Percent(0)),
            "maxConnectionsPercent",
        ),
        (
            Box::new(|i| i.share = Share::Percent(101)),
            "maxConnectionsPercent",
        ),
        (
            Box::new(|i| i.share = Share::Absolute(0)),
            "maxServerConnections",
        ),
        (
            Box::new(|i| i.database.reserved_percent = 101),
            "reservedPercent",
        ),
        (Box::new(|i| i.max_surge = 0), "rollout.maxSurge"),
        (Box::new(|i| i.replicas = 0), "replicas"),
        (
            Box::new(|i| i.max_replicas = Some(0)),
            "autoscaling.maxReplicas",
        ),
    ];
    for (change, needle) in cases {
        let mut i = ok.clone();
        change(&mut i);
        match compute(&i) {
            Err(SizingError::Invalid(e)) => assert!(e.to_string().contains(needle), "{e}"),
            other => panic!("{needle}: {other:?}"),
        }
    }
}

#[test]
fn fix_descriptions() {
    let raise = Adjust {
        from: 5,
        lo: 10,
        hi: 100,
        max: 100,
    };
    assert_eq!(
        Fix::Percent(raise).to_string(),
        "raise maxConnectionsPercent to ≥ 10"
    );
    let window = Adjust {
        from: 5,
        lo: 10,
        hi: 20,
        max: 100,
    };
    assert_eq!(
        Fix::Percent(window).to_string(),
        "raise maxConnectionsPercent to between 10 and 20"
    );
    let lower = Adjust {
        from: 90,
        lo: 1,
        hi: 20,
        max: 100,
    };
    assert_eq!(lower.nearest(), 20);
    assert_eq!(
        Fix::MaxServerConnections(lower).to_string(),
        "lower maxServerConnections to ≤ 20"
    );
    assert_eq!(
        Fix::MaxSurge(1).to_string(),
        "reduce rollout.maxSurge to ≤ 1"
    );
}

fn arb_users() -> impl Strategy<Value = Vec<UserDemand>> {
    prop::collection::vec(
        (1u32..=20, 0u32..=6, 0u32..=4).prop_map(|(w, m, r)| user(w, m, r)),
        1..=5,
    )
}

prop_compose! {
    fn arb_inputs()(
        max_connections in 1u32..=3000,
        superuser_reserved in 0u32..=10,
        reserved_percent in 0u32..=50,
        used_by_others in 0u32..=100,
        share in prop_oneof![
            (1u32..=100).prop_map(Share::Percent),
            (1u32..=3000).prop_map(Share::Absolute),
        ],
        others_claimed in prop_oneof![Just(0u32), 0u32..=1500],
        replicas in 1u32..=40,
        max_surge in 1u32..=5,
        extra_replicas in prop::option::of(0u32..=40),
        users in arb_users(),
    ) -> Inputs {
        Inputs {
            database: DatabaseLimits {
                max_connections,
                superuser_reserved,
                reserved_percent,
                used_by_others,
            },
            share,
            others_claimed,
            replicas,
            max_surge,
            max_replicas: extra_replicas.map(|e| replicas + e),
            users,
        }
    }
}

/// Feasibility straight from the definition, without any of the module's helpers.
fn fits_by_definition(i: &Inputs) -> bool {
    let m = i64::from(i.database.max_connections);
    let headroom = (m * i64::from(i.database.reserved_percent) + 99) / 100;
    let db = m
        - i64::from(i.database.superuser_reserved)
        - headroom
        - i64::from(i.database.used_by_others);
    if db <= 0 {
        return false;
    }
    let b = match i.share {
        Share::Percent(p) => db * i64::from(p) / 100,
        Share::Absolute(n) => db.min(i64::from(n)),
    };
    let pods = i64::from(i.max_replicas.unwrap_or(i.replicas) + i.max_surge);
    let need: i64 = i
        .users
        .iter()
        .map(|u| i64::from(u.min_pool_size.max(1) + u.reserve_pool_size))
        .sum();
    b + i64::from(i.others_claimed) <= db && b / pods >= need
}

fn apply(i: &Inputs, fix: &Fix) -> Inputs {
    let mut i = i.clone();
    match *fix {
        Fix::Replicas(n) => i.replicas = n,
        Fix::MaxReplicas(n) => {
            i.max_replicas = Some(n);
            i.replicas = i.replicas.min(n);
        }
        Fix::MaxSurge(n) => i.max_surge = n,
        Fix::Percent(r) => i.share = Share::Percent(r.nearest()),
        Fix::MaxServerConnections(r) => i.share = Share::Absolute(r.nearest()),
        Fix::MaxConnections(n) => i.database.max_connections = n,
    }
    i
}

/// The same fix moved one step towards the current value, which must no longer fit.
fn one_step_short(fix: &Fix) -> Option<Fix> {
    Some(match *fix {
        Fix::Replicas(n) => Fix::Replicas(n + 1),
        Fix::MaxReplicas(n) => Fix::MaxReplicas(n + 1),
        Fix::MaxSurge(n) => Fix::MaxSurge(n + 1),
        Fix::MaxConnections(n) => Fix::MaxConnections(n - 1),
        Fix::Percent(r) | Fix::MaxServerConnections(r) => {
            let nearest = r.nearest();
            let step = if r.from < nearest {
                nearest - 1
            } else {
                nearest + 1
            };
            let moved = Adjust {
                lo: step,
                hi: step,
                ..r
            };
            match fix {
                Fix::Percent(_) => Fix::Percent(moved),
                _ => Fix::MaxServerConnections(moved),
            }
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// The heart of the matter: everything that can run at once fits in the budget.
    #[test]
    fn never_exceeds_the_budget(i in arb_inputs()) {
        if let Ok(s) = compute(&i) {
            let b = s.budget;
            prop_assert!(s.committed() <= u64::from(b.pool));
            prop_assert!(u64::from(b.pool) + u64::from(i.others_claimed) <= u64::from(b.database));
            prop_assert!(b.database <= i.database.max_connections);
            prop_assert_eq!(b.pods_max, i.max_replicas.unwrap_or(i.replicas) + i.max_surge);
            prop_assert_eq!(b.per_pod, b.pool / b.pods_max);
            let per_pod: u32 = s.users.iter().map(UserPool::share).sum();
            prop_assert_eq!(per_pod, s.max_db_connections());
            for (pool, demand) in s.users.iter().zip(&i.users) {
                prop_assert!(pool.pool_size >= 1);
                prop_assert!(pool.min_pool_size <= pool.pool_size);
                prop_assert_eq!(pool.min_pool_size, demand.min_pool_size);
                prop_assert_eq!(pool.reserve_pool_size, demand.reserve_pool_size);
                prop_assert!(s.default_pool_size() <= pool.pool_size);
            }
        }
    }

    /// Exactly the inputs that fit by definition are accepted.
    #[test]
    fn accepts_exactly_the_feasible(i in arb_inputs()) {
        prop_assert_eq!(compute(&i).is_ok(), fits_by_definition(&i));
    }

    /// Every suggested fix works on its own and is the smallest change of its knob.
    #[test]
    fn fixes_are_feasible_and_minimal(i in arb_inputs()) {
        if let Err(SizingError::Infeasible(e)) = compute(&i) {
            for fix in &e.fixes {
                prop_assert!(fits_by_definition(&apply(&i, fix)), "{fix} does not fit");
                if let Some(short) = one_step_short(fix) {
                    prop_assert!(!fits_by_definition(&apply(&i, &short)), "{fix} is not the smallest");
                }
            }
            // A feasible claim exists whenever some percentage fits, and it is offered.
            if let Share::Percent(_) = i.share {
                let any = (1..=100).any(|p| {
                    let mut j = i.clone();
                    j.share = Share::Percent(p);
                    fits_by_definition(&j)
                });
                prop_assert_eq!(any, e.fixes.iter().any(|f| matches!(f, Fix::Percent(_))));
            }
        }
    }

    /// Without binding minimums, each share is within one connection of its exact quota.
    #[test]
    fn split_is_proportional(per_pod in 0u64..=5000, weights in prop::collection::vec(1u32..=50, 1..=8)) {
        let demands: Vec<UserDemand> = weights.iter().map(|w| user(*w, 0, 0)).collect();
        let need: u64 = demands.iter().map(UserDemand::minimum_share).sum();
        prop_assume!(per_pod >= need);
        let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
        let shares = split_by_weight(per_pod, &demands);
        prop_assert_eq!(shares.iter().sum::<u64>(), per_pod);
        let binding = demands.iter().any(|d| per_pod * u64::from(d.weight) < d.minimum_share() * total);
        if !binding {
            for (share, w) in shares.iter().zip(&weights) {
                let exact = per_pod * u64::from(*w);
                prop_assert!(share * total <= exact + total && exact < (share + 1) * total);
            }
        }
    }

    /// Every user gets at least its minimum, and the split always adds up.
    #[test]
    fn split_honours_minimums(extra in 0u64..=200, users in arb_users()) {
        let need: u64 = users.iter().map(UserDemand::minimum_share).sum();
        let shares = split_by_weight(need + extra, &users);
        prop_assert_eq!(shares.iter().sum::<u64>(), need + extra);
        for (share, u) in shares.iter().zip(&users) {
            prop_assert!(*share >= u.minimum_share());
        }
    }

    /// A bigger server never turns a fitting pool into one that does not fit.
    #[test]
    fn more_connections_never_hurt(i in arb_inputs(), more in 1u32..=500) {
        if compute(&i).is_ok() {
            let mut j = i.clone();
            j.database.max_connections += more;
            prop_assert!(compute(&j).is_ok());
        }
    }
}

fn standby(max_connections: u32, superuser_reserved: u32, used_by_others: u32) -> DatabaseLimits {
    DatabaseLimits {
        max_connections,
        superuser_reserved,
        reserved_percent: 15,
        used_by_others,
    }
}

/// A read-only pool is sized for the standby with the least room, which need not be the one
/// with the lowest max_connections.
#[test]
fn read_only_pools_are_sized_for_the_tightest_standby() {
    let big_but_busy = standby(200, 3, 150); // 200 − 3 − 30 − 150 = 17
    let small = standby(100, 3, 0); // 100 − 3 − 15 = 82
    assert_eq!(tightest(&[small, big_but_busy]), Some(big_but_busy));
    assert_eq!(tightest(&[]), None);

    let mut i = inputs(100, 3, vec![user(1, 0, 0)]);
    i.database = tightest(&[small, big_but_busy, small]).expect("standbys");
    let s = compute(&i).expect("feasible");
    assert_eq!(s.budget.database, 17);
    assert_eq!(s.budget.pods_max, 4);
    assert_eq!(s.budget.per_pod, 4); // floor(17 / 4)
    assert!(s.committed() <= 17);
}

proptest! {
    /// Every read-only pod may connect to every standby: all of them together stay within
    /// each standby's own budget.
    #[test]
    fn read_only_pods_fit_every_standby(
        standbys in prop::collection::vec((1u32..2000, 0u32..10, 0u32..300), 1..5),
        replicas in 1u32..30,
        max_surge in 1u32..4,
    ) {
        let limits: Vec<DatabaseLimits> =
            standbys.iter().map(|&(m, r, o)| standby(m, r, o)).collect();
        let mut i = inputs(1, replicas, vec![user(2, 1, 0), user(1, 0, 1)]);
        i.max_surge = max_surge;
        i.database = tightest(&limits).expect("standbys");
        if let Ok(s) = compute(&i) {
            for limits in &limits {
                prop_assert!(s.committed() <= database_budget(limits).max(0) as u64);
            }
        }
    }
}
