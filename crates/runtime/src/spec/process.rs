//! The process's command line, environment and working directory, with Docker's rules.

use super::{DEFAULT_PATH, SpecError};
use oci_spec::image::ImageConfiguration;
use shoal_types::ContainerSpec;

/// The command line the container runs, with Docker's rules for Entrypoint and Cmd.
pub fn resolve_command(spec: &ContainerSpec, image: &ImageConfiguration) -> Result<Vec<String>, SpecError> {
    let config = image.config().as_ref();
    let mut command = match &spec.entrypoint {
        // `--entrypoint ""` arrives as [""] (Docker's CLI) or []: both clear the Entrypoint.
        Some(entrypoint) if entrypoint.len() == 1 && entrypoint[0].is_empty() => Vec::new(),
        Some(entrypoint) => entrypoint.clone(),
        None => config.and_then(|c| c.entrypoint().clone()).unwrap_or_default(),
    };
    if !spec.cmd.is_empty() {
        command.extend(spec.cmd.iter().cloned());
    } else if spec.entrypoint.is_none() {
        // A given entrypoint drops the image's Cmd, as in Docker.
        command.extend(config.and_then(|c| c.cmd().clone()).unwrap_or_default());
    }
    match command.first() {
        None => return Err(SpecError::NoCommand { image: spec.image.clone() }),
        Some(program) if program.is_empty() => return Err(SpecError::EmptyProgram { command }),
        Some(_) => {}
    }
    if let Some(arg) = command.iter().find(|a| a.contains('\0')) {
        return Err(SpecError::NulInArgument { arg: arg.clone() });
    }
    Ok(command)
}

/// The container's environment: `PATH`, `HOSTNAME`, the image's Env, then `-e` entries.
pub fn resolve_env(spec: &ContainerSpec, image: &ImageConfiguration, hostname: &str) -> Result<Vec<String>, SpecError> {
    let mut env: Vec<(String, String)> =
        vec![("PATH".into(), DEFAULT_PATH.into()), ("HOSTNAME".into(), hostname.to_string())];
    for entry in image.config().as_ref().and_then(|c| c.env().as_ref()).into_iter().flatten() {
        match split_env(entry) {
            Some((key, value)) => set_env(&mut env, key, value),
            // Never log the entry: it may hold a secret.
            None => tracing::warn!(image = %spec.image, "ignoring an Env entry of the image that is not KEY=VALUE"),
        }
    }
    for entry in &spec.env {
        let (key, value) = split_env(entry).ok_or_else(|| SpecError::Env { entry: entry.clone(), origin: "-e" })?;
        set_env(&mut env, key, value);
    }
    Ok(env.into_iter().map(|(k, v)| format!("{k}={v}")).collect())
}

fn split_env(entry: &str) -> Option<(&str, &str)> {
    entry.split_once('=').filter(|(key, _)| !key.is_empty() && !entry.contains('\0'))
}

fn set_env(env: &mut Vec<(String, String)>, key: &str, value: &str) {
    match env.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value.to_string(),
        None => env.push((key.to_string(), value.to_string())),
    }
}

/// The working directory: `--workdir`, else the image's WorkingDir, else `/`.
pub fn resolve_workdir(spec: &ContainerSpec, image: &ImageConfiguration) -> Result<String, SpecError> {
    let from_image = image.config().as_ref().and_then(|c| c.working_dir().as_deref());
    let (workdir, origin) = match (spec.workdir.as_deref(), from_image) {
        (Some(w), _) if !w.is_empty() => (w, "--workdir"),
        (_, Some(w)) if !w.is_empty() => (w, "the image's WorkingDir"),
        _ => return Ok("/".into()),
    };
    if !workdir.starts_with('/') || workdir.contains('\0') {
        return Err(SpecError::BadWorkdir { workdir: workdir.to_string(), origin });
    }
    Ok(workdir.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::test_support::{image, run, strings};
    use serde_json::json;

    #[test]
    fn command_follows_docker() {
        let both = image(json!({ "Entrypoint": ["/ep", "-x"], "Cmd": ["default"] }));
        let cmd_only = image(json!({ "Cmd": ["sh"] }));
        let nothing = image(json!({}));
        // (image, --entrypoint, command, expected; None for "no command")
        type Case<'a> = (&'a ImageConfiguration, Option<&'a [&'a str]>, &'a [&'a str], Option<&'a [&'a str]>);
        let table: Vec<Case<'_>> = vec![
            (&both, None, &[], Some(&["/ep", "-x", "default"])),
            (&both, None, &["mine"], Some(&["/ep", "-x", "mine"])),
            (&both, Some(&["/other"]), &[], Some(&["/other"])),
            (&both, Some(&["/other"]), &["a"], Some(&["/other", "a"])),
            (&both, Some(&[""]), &["ls", "/"], Some(&["ls", "/"])),
            (&both, Some(&[]), &["ls"], Some(&["ls"])),
            (&both, Some(&[""]), &[], None),
            (&cmd_only, None, &[], Some(&["sh"])),
            (&cmd_only, None, &["echo", "hi"], Some(&["echo", "hi"])),
            (&cmd_only, Some(&["/bin/env"]), &[], Some(&["/bin/env"])),
            (&nothing, None, &[], None),
            (&nothing, None, &["true"], Some(&["true"])),
        ];
        for (img, entrypoint, cmd, expected) in table {
            let spec = ContainerSpec { entrypoint: entrypoint.map(strings), cmd: strings(cmd), ..run("img:1") };
            let got = resolve_command(&spec, img);
            match expected {
                Some(want) => assert_eq!(got.expect("a command"), strings(want), "{entrypoint:?} {cmd:?}"),
                None => {
                    let err = got.expect_err("no command");
                    assert!(matches!(err, SpecError::NoCommand { .. }), "{err}");
                    assert!(err.to_string().contains("give one after the image name"), "{err}");
                }
            }
        }
    }

    #[test]
    fn command_refuses_empty_program_and_nul() {
        let img = image(json!({ "Entrypoint": [""], "Cmd": ["x"] }));
        assert!(matches!(resolve_command(&run("i"), &img), Err(SpecError::EmptyProgram { .. })));
        let spec = ContainerSpec { cmd: strings(&["echo", "a\0b"]), ..run("i") };
        assert!(matches!(resolve_command(&spec, &image(json!({}))), Err(SpecError::NulInArgument { .. })));
    }

    #[test]
    fn env_merges_and_overrides_by_key() {
        let img = image(json!({ "Env": ["LANG=C", "FOO=image", "broken"] }));
        let spec = ContainerSpec { env: strings(&["FOO=mine", "NEW=1", "EMPTY="]), ..run("i") };
        let env = resolve_env(&spec, &img, "web").expect("env");
        assert_eq!(
            env,
            strings(&[&format!("PATH={DEFAULT_PATH}"), "HOSTNAME=web", "LANG=C", "FOO=mine", "NEW=1", "EMPTY="])
        );

        let img = image(json!({ "Env": ["PATH=/opt/bin"] }));
        let spec = ContainerSpec { env: strings(&["HOSTNAME=override"]), ..run("i") };
        assert_eq!(resolve_env(&spec, &img, "web").expect("env"), strings(&["PATH=/opt/bin", "HOSTNAME=override"]));

        for bad in ["NOEQUALS", "=v", "K=a\0b"] {
            let spec = ContainerSpec { env: strings(&[bad]), ..run("i") };
            assert!(matches!(resolve_env(&spec, &img, "h"), Err(SpecError::Env { .. })), "{bad}");
        }
    }

    #[test]
    fn workdir_comes_from_option_then_image_then_root() {
        let img = image(json!({ "WorkingDir": "/srv" }));
        assert_eq!(resolve_workdir(&run("i"), &img).expect("dir"), "/srv");
        let spec = ContainerSpec { workdir: Some("/app".into()), ..run("i") };
        assert_eq!(resolve_workdir(&spec, &img).expect("dir"), "/app");
        assert_eq!(resolve_workdir(&run("i"), &image(json!({}))).expect("dir"), "/");
        let spec = ContainerSpec { workdir: Some("app".into()), ..run("i") };
        let err = resolve_workdir(&spec, &img).expect_err("relative");
        assert!(err.to_string().contains("--workdir"), "{err}");
        let err = resolve_workdir(&run("i"), &image(json!({ "WorkingDir": "rel" }))).expect_err("relative");
        assert!(err.to_string().contains("image's WorkingDir"), "{err}");
    }
}
