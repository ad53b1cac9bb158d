//! Running iproute2 (`ip`, `tc`) with errors that name the command and its complaint.

use crate::LabError;
use std::process::Command;

/// Runs `prog args...`; returns stdout, or [`LabError::Command`] with stderr.
pub(crate) fn run(prog: &str, args: &[&str]) -> Result<String, LabError> {
    let out = Command::new(prog).args(args).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            LabError::MissingTool { tool: prog.to_string(), package: package_of(prog) }
        } else {
            LabError::Command { cmd: format!("{prog} {}", args.join(" ")), stderr: e.to_string() }
        }
    })?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: format!("{prog} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Like [`run`] but ignores failure (for idempotent teardown).
pub(crate) fn run_quiet(prog: &str, args: &[&str]) {
    let _ = Command::new(prog).args(args).output();
}

/// The Debian package that provides a tool.
pub(crate) fn package_of(tool: &str) -> String {
    match tool {
        "ip" | "tc" | "bridge" => "iproute2",
        other => other,
    }
    .to_string()
}

/// Checks that the lab's tools exist; with `install`, installs missing ones with apt.
pub fn check_tools(install: bool) -> Result<(), LabError> {
    let missing: Vec<&str> = ["ip", "tc"].into_iter().filter(|t| Command::new(t).arg("-V").output().is_err()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let pkgs: Vec<String> = missing.iter().map(|t| package_of(t)).collect();
    if !install {
        return Err(LabError::MissingTool { tool: missing.join(", "), package: pkgs.join(" ") });
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq"])
        .args(&pkgs)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .map_err(|e| LabError::Command { cmd: "apt-get install".into(), stderr: e.to_string() })?;
    if !status.success() {
        return Err(LabError::Command {
            cmd: format!("apt-get install {}", pkgs.join(" ")),
            stderr: format!("{status}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tool_names_its_package() {
        let e = run("shoal-no-such-tool", &[]).unwrap_err();
        assert!(matches!(e, LabError::MissingTool { .. }), "{e}");
        assert!(e.to_string().contains("--install-deps"), "{e}");
        let e = LabError::MissingTool { tool: "tc".into(), package: package_of("tc") };
        assert!(e.to_string().contains("iproute2"));
    }
}
