//! `shoal run`: create and start a container, like `docker run`.
//!
//! Attached (the default) it streams the container's stdout and stderr to its own and exits
//! with the container's exit code; `-d` prints the id and returns. Errors before the container
//! runs exit with 125, as Docker's do.

use shoal_api::client::Client;
use shoal_types::{AttachEvent, ByteSize, ContainerSpec, PortMapping, Resources, RestartPolicy, VolumeMount};
use std::io::Write;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Name of the container [default: IMAGE-<id>].
    #[arg(long)]
    name: Option<String>,
    /// Run in the background and print the container id.
    #[arg(short, long)]
    detach: bool,
    /// Remove the container when it exits.
    #[arg(long)]
    rm: bool,
    /// CPU limit, e.g. 0.5.
    #[arg(long)]
    cpus: Option<String>,
    /// Memory limit, e.g. 256m.
    #[arg(short, long)]
    memory: Option<String>,
    /// Most processes.
    #[arg(long)]
    pids: Option<u64>,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Publish a port: [IP:]HOST:CONTAINER[/udp] (repeatable; every host address when no IP).
    #[arg(short, long = "publish", value_name = "[IP:]HOST:CONTAINER[/udp]")]
    publish: Vec<String>,
    /// `bridge` (an address on the cluster network, the default) or `none` (loopback only).
    #[arg(long, default_value = "bridge")]
    network: shoal_types::NetworkMode,
    /// Bind mount: /host/dir:/dir[:ro] (repeatable).
    #[arg(short, long = "volume", value_name = "HOST:CONTAINER[:ro]")]
    volume: Vec<String>,
    /// Restart policy: no, on-failure[:N], always.
    #[arg(long, default_value = "no")]
    restart: String,
    /// Mount the root filesystem read-only.
    #[arg(long)]
    read_only: bool,
    /// UID[:GID] or a user name of the image.
    #[arg(short, long)]
    user: Option<String>,
    /// Working directory inside the container.
    #[arg(short, long)]
    workdir: Option<String>,
    /// Replace the image's entrypoint ("" clears it).
    #[arg(long)]
    entrypoint: Option<String>,
    /// Image: NAME:TAG or a digest.
    image: String,
    /// Command and arguments (replace the image's Cmd).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// Builds the spec from the flags; a bad flag is reported before anything is sent.
fn spec(a: Args) -> anyhow::Result<(ContainerSpec, bool)> {
    let cpus_milli = match &a.cpus {
        Some(c) => Resources::parse_cpus(c)?,
        None => 0,
    };
    let memory_bytes = match &a.memory {
        Some(m) => m.parse::<ByteSize>().map_err(|e| anyhow::anyhow!("--memory {m}: {e}"))?.0,
        None => 0,
    };
    for e in &a.env {
        shoal_types::container::check_env(e)?;
    }
    if let Some(n) = &a.name {
        shoal_types::container::check_name(n)?;
    }
    let ports = a.publish.iter().map(|p| PortMapping::parse(p)).collect::<Result<Vec<_>, _>>()?;
    if a.network == shoal_types::NetworkMode::None && !ports.is_empty() {
        anyhow::bail!("--network none has no network to publish a port from: drop -p or --network none");
    }
    let volumes = a.volume.iter().map(|v| VolumeMount::parse(v)).collect::<Result<Vec<_>, _>>()?;
    let restart = RestartPolicy::parse(&a.restart)?;
    let entrypoint = a.entrypoint.map(|e| if e.is_empty() { Vec::new() } else { vec![e] });
    Ok((
        ContainerSpec {
            name: a.name,
            image: a.image,
            entrypoint,
            cmd: a.command,
            env: a.env,
            cpus_milli,
            memory_bytes,
            pids: a.pids.unwrap_or(0),
            ports,
            volumes,
            restart,
            read_only: a.read_only,
            user: a.user,
            workdir: a.workdir,
            auto_remove: a.rm,
            labels: Default::default(),
            network: a.network,
        },
        a.detach,
    ))
}

pub(crate) async fn run(args: Args, client: &Client) -> anyhow::Result<ExitCode> {
    match attached(args, client).await {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            Ok(ExitCode::from(125))
        }
    }
}

async fn attached(args: Args, client: &Client) -> anyhow::Result<ExitCode> {
    let (spec, detach) = spec(args)?;
    if detach {
        let info: shoal_types::ContainerInfo = client.send_json(hyper::Method::POST, "/v1/containers", &spec).await?;
        println!("{}", info.id);
        return Ok(ExitCode::SUCCESS);
    }
    let mut code: Option<i32> = None;
    let mut failure: Option<String> = None;
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    client
        .stream_lines(hyper::Method::POST, "/v1/containers?attach=true", Some(&spec), |ev: AttachEvent| match ev {
            AttachEvent::Started { .. } => {}
            AttachEvent::Output(l) => {
                let w: &mut dyn Write = if l.stream == "stderr" { &mut err } else { &mut out };
                let _ = w.write_all(l.text.as_bytes());
                let _ = w.flush();
            }
            AttachEvent::Exited { container } => code = container.exit_code,
            AttachEvent::Error { message } => failure = Some(message),
        })
        .await?;
    if let Some(m) = failure {
        anyhow::bail!("{m}");
    }
    // The shell's convention: exit codes above 255 (none here) would wrap.
    Ok(ExitCode::from(code.unwrap_or(125).clamp(0, 255) as u8))
}
