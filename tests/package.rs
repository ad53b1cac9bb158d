//! The Debian package as a fleet installs it: `scripts/package.sh --dev` packs the debug build
//! (no compile), `dpkg -i` installs it, the installed binary and unit are checked (version,
//! config file, `systemd-analyze verify`, not enabled), and `dpkg --purge` leaves the machine
//! as it was. Needs root, dpkg and systemd-analyze (scripts/deps.sh), and cargo-deb.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const UNIT: &str = "/lib/systemd/system/shoal.service";
const CONFIG: &str = "/etc/shoal/agent.toml";

/// Runs `prog args`, failing the test with its output unless it succeeds.
fn run(prog: &str, args: &[&str]) -> Output {
    let out = Command::new(prog).args(args).output().unwrap_or_else(|e| panic!("cannot run {prog}: {e}"));
    assert!(out.status.success(), "`{prog} {}` failed ({}):\n{}", args.join(" "), out.status, text(&out));
    out
}

fn text(out: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "shoal"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Purges the package when the test ends, pass or fail.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        match Command::new("dpkg").args(["--purge", "shoal"]).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!("dpkg --purge shoal failed:\n{}", text(&o)),
            Err(e) => eprintln!("cannot run dpkg --purge shoal: {e}"),
        }
    }
}

#[test]
fn deb_installs_runs_verifies_and_purges() {
    // Never clobber a Shoal the machine really runs: the test would purge it afterwards.
    if installed() || Path::new("/usr/bin/shoal").exists() || Path::new("/etc/shoal").exists() {
        eprintln!("SKIP: shoal is installed on this machine (package, /usr/bin/shoal or /etc/shoal); not replacing it");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("scripts/package.sh"))
        .arg("--dev")
        .current_dir(root)
        .output()
        .expect("run scripts/package.sh");
    assert!(out.status.success(), "scripts/package.sh --dev failed ({}):\n{}", out.status, text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let deb: PathBuf = stdout
        .lines()
        .map(str::trim)
        .find(|l| l.ends_with(".deb"))
        .map(|l| root.join(l))
        .unwrap_or_else(|| panic!("scripts/package.sh printed no .deb path:\n{}", text(&out)));
    assert!(deb.is_file(), "{} is missing", deb.display());

    let control =
        String::from_utf8_lossy(&run("dpkg-deb", &["--field", &deb.to_string_lossy(), "Depends"]).stdout).into_owned();
    for dep in ["iproute2", "nftables", "conntrack", "libseccomp2", "libc6"] {
        assert!(control.contains(dep), "the package does not depend on {dep}: {control}");
    }

    let purge = Purge;
    run("dpkg", &["-i", &deb.to_string_lossy()]);
    assert!(installed(), "dpkg -i succeeded but shoal is not installed");

    let version = String::from_utf8_lossy(&run("/usr/bin/shoal", &["--version"]).stdout).trim().to_string();
    assert_eq!(version, format!("shoal {}", env!("CARGO_PKG_VERSION")));

    let conffiles =
        String::from_utf8_lossy(&run("dpkg-query", &["-W", "-f=${Conffiles}", "shoal"]).stdout).into_owned();
    assert!(conffiles.contains(CONFIG), "{CONFIG} is not a conffile: {conffiles}");

    // The unit as installed, with the installed binary: no errors, no warnings about it.
    let verify = run("systemd-analyze", &["verify", UNIT]);
    let said = text(&verify);
    assert!(!said.contains("shoal.service"), "systemd-analyze verify {UNIT} complained:\n{said}");
    let unit = std::fs::read_to_string(UNIT).expect("read the installed unit");
    for line in ["ExecStart=/usr/bin/shoal agent --config /etc/shoal/agent.toml", "KillMode=process", "Delegate=yes"] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks `{line}`");
    }
    // Installed, not enabled: a fleet sets the key first.
    assert!(
        !Path::new("/etc/systemd/system/multi-user.target.wants/shoal.service").exists(),
        "installing the package enabled shoal.service"
    );

    // The packaged config parses and resolves: the agent gets as far as the bad flag given to
    // stop it there, before it touches the data dir, the network or the key.
    let data = tempfile::tempdir().expect("tempdir");
    let agent = Command::new("/usr/bin/shoal")
        .args(["agent", "--config", CONFIG, "--container-subnet", "bogus", "--data-dir"])
        .arg(data.path())
        .output()
        .expect("run the agent");
    let said = text(&agent);
    assert!(!agent.status.success() && said.contains("for --container-subnet"), "the agent with {CONFIG}:\n{said}");

    drop(purge);
    assert!(!installed(), "shoal is still installed after dpkg --purge");
    for p in ["/usr/bin/shoal", "/etc/shoal", UNIT] {
        assert!(!Path::new(p).exists(), "{p} is left after dpkg --purge");
    }
}
