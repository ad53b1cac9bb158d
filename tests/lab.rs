//! End-to-end tests of `shoal lab`: real agents in network namespaces and cgroups, driven
//! through the real CLI. Each lab is torn down when its test ends, pass or fail.

#![allow(clippy::unwrap_used)]

use shoal_testkit::lab::{TestLab, leftovers, measure_tcp};
use shoal_types::PeerState::{Alive, Dead};
use std::net::Ipv4Addr;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn four_peers_all_alive_then_partition_2_2_and_heal() -> anyhow::Result<()> {
    let lab = TestLab::up("part", 4, &[])?;
    let all = [0, 1, 2, 3];
    lab.wait_states(&all, &all, Alive, Duration::from_secs(20)).await?;
    let st = lab.status()?;
    assert_eq!(st.len(), 4);
    for (i, r) in st.iter().enumerate() {
        assert_eq!(r["index"], i);
        assert_eq!(r["state"], "running");
        assert_eq!(r["ip"], format!("198.18.0.{}", 10 + i));
        assert!(r["id"].as_str().is_some_and(|s| s.starts_with("12D3KooW")));
        assert_eq!(r["name"], format!("peer-{i}"));
    }

    lab.ok(&["partition", "0,1", "2,3"])?;
    lab.wait_states(&[0, 1], &[2, 3], Dead, Duration::from_secs(20)).await?;
    lab.wait_states(&[2, 3], &[0, 1], Dead, Duration::from_secs(20)).await?;
    // Each side still sees its own half alive.
    lab.wait_states(&[0, 1], &[0, 1], Alive, Duration::from_secs(5)).await?;
    lab.wait_states(&[2, 3], &[2, 3], Alive, Duration::from_secs(5)).await?;
    assert_eq!(lab.status()?[2]["group"], 2);

    lab.ok(&["heal"])?;
    let took = lab.wait_states(&all, &all, Alive, Duration::from_secs(30)).await?;
    eprintln!("healed in {took:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_and_restart_a_peer() -> anyhow::Result<()> {
    let lab = TestLab::up("kill", 3, &[])?;
    let ids = lab.ids()?;
    lab.wait_states(&[0, 1, 2], &[0, 1, 2], Alive, Duration::from_secs(20)).await?;
    lab.ok(&["kill", "1"])?;
    assert_eq!(lab.status()?[1]["state"], "stopped");
    lab.wait_states(&[0, 2], &[1], Dead, Duration::from_secs(10)).await?;
    lab.ok(&["start", "1"])?;
    lab.wait_states(&[0, 1, 2], &[0, 1, 2], Alive, Duration::from_secs(20)).await?;
    assert_eq!(lab.ids()?, ids, "same ids after the restart");
    assert_eq!(lab.status()?[1]["cluster_state"], "alive");
    // Its log survives and `lab logs` shows it, both runs.
    let logs = lab.ok(&["logs", "1"])?;
    assert_eq!(logs.matches("agent ready").count(), 2, "{logs}");
    // `lab exec` runs inside the peer with SHOAL_ADDR set.
    let out = lab.ok(&["exec", "1", "--", "shoal", "status", "--json"])?;
    let s: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(s["id"], ids[1].as_str());
    assert!(lab.ok(&["exec", "1", "--", "ip", "-4", "addr", "show", "eth0"])?.contains("198.18.0.11"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn shaped_links_deliver_their_rate_both_ways() -> anyhow::Result<()> {
    let lab = TestLab::up("rate", 2, &["--bandwidth", "20mbit"])?;
    let (a, b) = (lab.netns(0), lab.netns(1));
    let (ip0, ip1) = (Ipv4Addr::new(198, 18, 0, 10), Ipv4Addr::new(198, 18, 0, 11));
    let up = measure_tcp(&a, &b, ip1, 5201, 5 << 20)?;
    let down = measure_tcp(&b, &a, ip0, 5202, 5 << 20)?;
    eprintln!("20mbit link: {:.1} / {:.1} Mbit/s", up / 1e6, down / 1e6);
    for r in [up, down] {
        assert!((16e6..22e6).contains(&r), "{r} bit/s on a 20mbit link");
    }
    // Reshape one peer while running: its link now limits both directions.
    lab.ok(&["link", "1", "--bandwidth", "5mbit"])?;
    let r = measure_tcp(&a, &b, ip1, 5203, 2 << 20)?;
    eprintln!("5mbit link: {:.1} Mbit/s", r / 1e6);
    assert!((4e6..5.6e6).contains(&r), "{r} bit/s on a 5mbit link");
    assert_eq!(lab.status()?[1]["link"]["bandwidth_bps"], 5_000_000);
    // Unshaped: far above.
    lab.ok(&["link", "1", "--bandwidth", "none"])?;
    lab.ok(&["link", "0", "--bandwidth", "none"])?;
    let r = measure_tcp(&a, &b, ip1, 5204, 20 << 20)?;
    assert!(r > 100e6, "{r} bit/s unshaped");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn down_leaves_nothing_even_after_a_crash() -> anyhow::Result<()> {
    let lab = TestLab::up("down", 3, &[])?;
    let (name, dir) = (lab.name.clone(), lab.dir());
    assert!(!leftovers(&name, &dir).is_empty(), "a running lab has namespaces, cgroups, processes");
    // A peer killed behind the lab's back, and the state file gone: down still cleans up.
    lab.ok(&["kill", "2"])?;
    std::fs::remove_file(dir.join("lab.json"))?;
    let out = lab.down();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(leftovers(&name, &dir), Vec::<String>::new());
    // Idempotent.
    let again = lab.down();
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("nothing to remove"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn clear_errors_second_up_and_no_netem() -> anyhow::Result<()> {
    let lab = TestLab::up("err", 1, &[])?;
    let out = lab.cli(&["up", "--peers", "2"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already up") && err.contains("shoal lab down"), "{err}");
    assert_eq!(lab.status()?.len(), 1, "the running lab is untouched");
    let out = lab.cli(&["exec", "7", "--", "true"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no peer 7"));

    // This kernel has no sch_netem: --latency fails with the module's name and leaves nothing.
    if !std::fs::read("/proc/config.gz").is_ok_and(|_| netem_available()) {
        let other = TestLab { name: format!("{}-n", lab.name), root: tempfile::tempdir()? };
        let out = other.cli(&["up", "--peers", "2", "--latency", "20ms"]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("sch_netem"), "{err}");
        assert_eq!(leftovers(&other.name, &other.dir()), Vec::<String>::new());
    }
    Ok(())
}

fn netem_available() -> bool {
    std::process::Command::new("sh")
        .args(["-c", "zcat /proc/config.gz | grep -q '^CONFIG_NET_SCH_NETEM=[ym]'"])
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread")]
async fn peers_find_each_other_by_mdns() -> anyhow::Result<()> {
    let lab = TestLab::up("mdns", 3, &["--mdns"])?;
    lab.wait_states(&[0, 1, 2], &[0, 1, 2], Alive, Duration::from_secs(30)).await?;
    Ok(())
}
