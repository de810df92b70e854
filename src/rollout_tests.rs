use super::*;
use crate::fetch::{Format, Origin};

fn hosts(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("web-{i:05}.dc1.example.com"))
        .collect()
}

fn release(identity: &str, sha256: Option<&str>, rollout: Option<f64>) -> Release {
    Release {
        identity: identity.into(),
        sha256: sha256.map(str::to_string),
        signature: None,
        size_hint: None,
        format: Format::Raw,
        origin: Origin::Local,
        body: Box::new(std::io::Cursor::new(Vec::new())),
        local_file: None,
        delta: None,
        rollout_percent: rollout,
        version: None,
        source: None,
    }
}

fn fleet(o: FleetOptions) -> Fleet {
    Fleet::new(FleetOptions {
        host_name: o.host_name.or(Some("web-1".into())),
        ..o
    })
    .unwrap()
}

#[test]
fn the_bucket_is_stable_across_machines_and_versions() {
    // Known answers: a change here re-shuffles every fleet mid-rollout. Never change them.
    assert_eq!(bucket("web-1", "sha256:00"), KNOWN[0]);
    assert_eq!(bucket("", ""), KNOWN[1]);
    assert_eq!(bucket("db-7.example.com", "v1.4.0"), KNOWN[2]);
    // Length-prefixed: moving a byte from host to identity is another input.
    assert_ne!(bucket("ab", "c"), bucket("a", "bc"));
}

// Computed independently, from the formula in docs/fleet.md (Python's hashlib and struct).
const KNOWN: [f64; 3] = [33.00023203685256, 90.84652453354502, 64.12473123940859];

#[test]
fn buckets_are_uniform_enough() {
    let hosts = hosts(20_000);
    let mut deciles = [0usize; 10];
    for h in &hosts {
        let b = bucket(h, "sha256:deadbeef");
        assert!((0.0..100.0).contains(&b), "{b}");
        deciles[(b / 10.0) as usize] += 1;
    }
    // 2000 expected per decile; σ ≈ 42, so ±200 is far beyond chance.
    for (i, n) in deciles.iter().enumerate() {
        assert!((1800..2200).contains(n), "decile {i}: {n} of 20000");
    }
    for (percent, lo, hi) in [(1.0, 140, 260), (10.0, 1800, 2200), (50.0, 9600, 10400)] {
        let n = hosts
            .iter()
            .filter(|h| in_rollout(h, "v2", percent))
            .count();
        assert!((lo..hi).contains(&n), "{percent} %: {n} of 20000");
    }
}

#[test]
fn zero_takes_no_host_and_hundred_takes_every_host() {
    for h in hosts(5000) {
        assert!(!in_rollout(&h, "v2", 0.0), "{h} at 0 %");
        assert!(in_rollout(&h, "v2", 100.0), "{h} at 100 %");
        assert!(!in_rollout(&h, "v2", f64::NAN), "{h} at NaN");
    }
}

#[test]
fn raising_the_percentage_only_adds_hosts() {
    let hosts = hosts(2000);
    let at = |p: f64| -> Vec<bool> { hosts.iter().map(|h| in_rollout(h, "v3", p)).collect() };
    let (low, high) = (at(20.0), at(60.0));
    assert!(low.iter().zip(&high).all(|(l, h)| !*l || *h));
}

#[test]
fn another_release_goes_first_on_other_hosts() {
    let hosts = hosts(4000);
    let first = |id: &str| -> Vec<bool> { hosts.iter().map(|h| in_rollout(h, id, 50.0)).collect() };
    let (a, b) = (first("v1"), first("v2"));
    let both = a.iter().zip(&b).filter(|(x, y)| **x && **y).count();
    // Independent halves share a quarter of the hosts, not all of them.
    assert!(
        (800..1200).contains(&both),
        "{both} of 4000 in both first halves"
    );
}

#[test]
fn percentages_parse_in_the_documented_forms() {
    for (text, want) in [
        ("50", 50.0),
        ("50%\n", 50.0),
        (" 12.5 % ", 12.5),
        ("rollout: 0", 0.0),
        ("ROLLOUT=100", 100.0),
        ("# comment\n\nrollout: 33", 33.0),
    ] {
        assert_eq!(parse_percent(text), Ok(want), "{text:?}");
    }
    for text in [
        "",
        "101",
        "-1",
        "NaN",
        "inf",
        "fifty",
        "percent: 5",
        "# only a comment",
    ] {
        assert!(parse_percent(text).is_err(), "{text:?} parsed");
    }
    let e = parse_percent("rollout: lots").unwrap_err().to_string();
    assert!(e.contains("rollout: lots") && e.contains("0 to 100"), "{e}");
}

#[test]
fn the_release_percentage_wins_over_the_configured_one() {
    let id = (0..)
        .map(|i| format!("sha256:{i:064x}"))
        .find(|id| bucket("web-1", id) >= 50.0)
        .unwrap();
    let f = fleet(FleetOptions {
        rollout_percent: Some(0.0),
        ..Default::default()
    });
    let why = f
        .defers(&Standing::Open, &release(&id, None, None))
        .unwrap();
    assert!(
        why.contains("outside the 0 % rollout") && why.contains("web-1"),
        "{why}"
    );
    assert!(f
        .defers(&Standing::Open, &release(&id, None, Some(100.0)))
        .is_none());
    let why = f
        .defers(&Standing::Open, &release(&id, None, Some(50.0)))
        .unwrap();
    assert!(why.contains("50 % rollout"), "{why}");
    let all = fleet(FleetOptions::default());
    assert!(all
        .defers(&Standing::Open, &release(&id, None, None))
        .is_none());
}

#[test]
fn a_pin_takes_its_release_whatever_the_rollout_and_nothing_else() {
    let f = fleet(FleetOptions {
        rollout_percent: Some(0.0),
        ..Default::default()
    });
    let pinned = |pin: &str| Standing::Pinned {
        pin: pin.into(),
        by: "pinned by test".into(),
    };
    let hex = "ab".repeat(32);
    let rel = release("v7", Some(&hex), None);
    assert!(f.defers(&pinned("v7"), &rel).is_none());
    assert!(f.defers(&pinned(&hex.to_uppercase()), &rel).is_none());
    assert!(f.defers(&pinned(&format!("sha256:{hex}")), &rel).is_none());
    let why = f.defers(&pinned("v6"), &rel).unwrap();
    assert_eq!(why, "pinned by test to v6");
    let why = f
        .defers(&Standing::Held("held by test".into()), &rel)
        .unwrap();
    assert_eq!(why, "held by test");
}

#[test]
fn the_hold_file_holds_or_pins_and_the_configuration_holds_first() {
    let dir = std::env::temp_dir().join(format!("upshift-rollout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let invoked = dir.join("app");
    let hold = dir.join("app.hold");
    let _ = std::fs::remove_file(&hold);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let f = fleet(FleetOptions::default());
    assert_eq!(rt.block_on(f.standing(&invoked)), Standing::Open);
    std::fs::write(&hold, "").unwrap();
    let Standing::Held(why) = rt.block_on(f.standing(&invoked)) else {
        panic!("an empty hold file must hold")
    };
    assert!(why.contains("app.hold"), "{why}");
    std::fs::write(&hold, "# until the incident is over\nv1.2.3\n").unwrap();
    assert!(matches!(
        rt.block_on(f.standing(&invoked)),
        Standing::Pinned { pin, .. } if pin == "v1.2.3"
    ));
    let held = fleet(FleetOptions {
        hold: true,
        ..Default::default()
    });
    assert_eq!(
        rt.block_on(held.standing(&invoked)),
        Standing::Held("held by Upgrader::hold".into())
    );
    std::fs::remove_file(&hold).unwrap();
    let pinned = fleet(FleetOptions {
        pin: Some(" v9 ".into()),
        hold_file: Some(dir.join("elsewhere")),
        ..Default::default()
    });
    assert!(matches!(
        rt.block_on(pinned.standing(&invoked)),
        Standing::Pinned { pin, by } if pin == "v9" && by.contains("Upgrader::pin")
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn invalid_settings_are_configuration_errors() {
    for o in [
        FleetOptions {
            rollout_percent: Some(101.0),
            ..Default::default()
        },
        FleetOptions {
            rollout_percent: Some(f64::NAN),
            ..Default::default()
        },
        FleetOptions {
            jitter: Some(1.5),
            ..Default::default()
        },
    ] {
        let e = Fleet::new(o).unwrap_err().to_string();
        assert!(e.contains("invalid upshift configuration"), "{e}");
    }
    // Without an override, the name is the machine's.
    let f = Fleet::new(FleetOptions::default()).unwrap();
    let expected = nix::unistd::gethostname().unwrap();
    assert_eq!(f.host, expected.to_string_lossy());
}

#[test]
fn jitter_stays_within_its_fraction() {
    for _ in 0..1000 {
        let j = jittered(Duration::from_secs(10), 0.1);
        assert!(
            j >= Duration::from_secs(9) && j <= Duration::from_secs(11),
            "{j:?}"
        );
    }
    assert_eq!(
        jittered(Duration::from_secs(10), 0.0),
        Duration::from_secs(10)
    );
    let spread: std::collections::BTreeSet<_> = (0..100)
        .map(|_| jittered(Duration::from_secs(10), 0.5))
        .collect();
    assert!(spread.len() > 50, "{spread:?}");
    assert!(spread.iter().all(|d| *d >= Duration::from_secs(5)));
}
