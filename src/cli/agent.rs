//! `shoal agent`: run a peer.
//!
//! Order of start-up: resolve the configuration (defaults < `--config` file < flags), bind the
//! API socket (so a second agent on the same data dir fails before touching the network),
//! start the node (identity, overlay, join), then serve the API. SIGTERM or SIGINT leaves the
//! cluster gracefully (peers see `left`, not `dead`), then stops the API.

use anyhow::Context;
use shoal_node::{AgentConfig, FileConfig, Node, Overrides};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::info;
use tracing_subscriber::EnvFilter;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// TOML file with any of the settings below; flags win over it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where the identity, keys and state live [default: /var/lib/shoal as root].
    #[arg(long, env = "SHOAL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// This peer's name [default: host name].
    #[arg(long)]
    name: Option<String>,
    /// Overlay listen address (multiaddr), repeatable
    /// [default: /ip4/0.0.0.0/tcp/4100 and /ip4/0.0.0.0/udp/4100/quic-v1].
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<String>,
    /// Peers to join through: multiaddrs (with or without /p2p/<id>) or host:port.
    #[arg(long, value_name = "ADDR", num_args = 1.., value_delimiter = ',')]
    join: Vec<String>,
    /// The cluster key file (see `shoal keygen`); peers without it cannot connect
    /// [default: <data dir>/cluster.key, made on first start].
    #[arg(long, value_name = "FILE")]
    cluster_key: Option<PathBuf>,
    /// Run an open cluster with no key: anyone who reaches this peer can join and run work.
    #[arg(long)]
    insecure: bool,
    /// Discover peers on the local network with mDNS.
    #[arg(long)]
    mdns: bool,
    /// A label key=value for placement constraints, repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// The API's unix socket [default: <data-dir>/shoal.sock].
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
    /// Also serve the API on TCP at host:port (requests need the token in api.token).
    #[arg(long, value_name = "HOST:PORT")]
    api_listen: Option<String>,
    /// Where the TCP API's token is kept [default: <data-dir>/api.token].
    #[arg(long, value_name = "FILE")]
    api_token_file: Option<PathBuf>,
    /// CPUs to offer to workloads [default: all this machine has].
    #[arg(long)]
    cpus: Option<String>,
    /// Memory to offer to workloads, e.g. 4g [default: all this machine has].
    #[arg(long)]
    memory: Option<String>,
    /// Most bytes the content store may hold, e.g. 50g; least recently used unpinned content
    /// is evicted to stay under it [default: no limit].
    #[arg(long, value_name = "SIZE")]
    store_quota: Option<String>,
    /// Upload limit for content, e.g. 100mbit [default: none].
    #[arg(long, value_name = "RATE")]
    upload_limit: Option<String>,
    /// Download limit for content, e.g. 100mbit [default: none].
    #[arg(long, value_name = "RATE")]
    download_limit: Option<String>,
    /// Where peers connect to fetch content [default: the listen IP, a port the system picks;
    /// peers learn it from every offer].
    #[arg(long, value_name = "HOST:PORT")]
    data_listen: Option<String>,
    /// Fix this peer's container subnet instead of claiming one from --cluster-subnet.
    #[arg(long, value_name = "CIDR")]
    container_subnet: Option<String>,
    /// The pool every peer claims its container subnet from [default: 198.19.0.0/16].
    #[arg(long, value_name = "CIDR")]
    cluster_subnet: Option<String>,
    /// Prefix length of one peer's subnet [default: 24, 254 containers].
    #[arg(long, value_name = "BITS")]
    subnet_size: Option<u8>,
    /// The pool of services' virtual addresses [default: 198.18.240.0/20].
    #[arg(long, value_name = "CIDR")]
    service_subnet: Option<String>,
    /// How container traffic crosses between peers: encrypted (userspace WireGuard; the
    /// default with a cluster key), vxlan (kernel, plaintext, trusted networks only) or local.
    #[arg(long, value_name = "TRANSPORT")]
    network_transport: Option<String>,
    /// UDP port of the encrypted transport [default: 51820].
    #[arg(long, value_name = "PORT")]
    wg_port: Option<u16>,
    /// UDP port of the VXLAN transport [default: 4789].
    #[arg(long, value_name = "PORT")]
    vxlan_port: Option<u16>,
    /// A registry (HOST[:PORT]) to speak plain HTTP to, as Docker's flag of the same name
    /// (registries on 127.0.0.0/8 always are). Repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    insecure_registries: Vec<String>,
    /// Where the registry mirror (a read-only OCI registry serving the cluster's images,
    /// pulling through) listens, or `off` [default: 127.0.0.1:5050].
    #[arg(long, value_name = "ADDR")]
    mirror_listen: Option<String>,
    /// The registry a mirror request without `?ns=` (containerd sends it; Docker and Podman do
    /// not) is for [default: docker.io].
    #[arg(long, value_name = "HOST")]
    mirror_registry: Option<String>,
    /// Where Prometheus metrics are served (`GET /metrics`), or `off`
    /// [default: 127.0.0.1:9464].
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// Name of this peer's container bridge [default: shoal0].
    #[arg(long, value_name = "NAME")]
    bridge: Option<String>,
    /// Log filter, as RUST_LOG (which wins if set).
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Log format.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

/// Raises the open-file limit to its hard limit: the default 1,024 is a few hundred peers'
/// connections plus the data channel's, and an agent out of descriptors stops accepting
/// anything (the overlay, the API, the data port).
fn raise_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(err = %e, soft, hard, "cannot raise the open-file limit");
            }
        }
        _ => {}
    }
}

fn init_tracing(level: &str, format: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!("{level},libp2p=warn,libp2p_kad=error,multistream_select=warn,yamux=warn,foca=warn,hickory_server=warn,hickory_proto=warn,hickory_resolver=warn"))
    });
    use tracing_subscriber::prelude::*;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(std::io::stderr);
    // The formatter shows what the level asks for; the event log takes every line that
    // carries an `ev` field, whatever the level.
    let fmt = if format == "json" { fmt.json().boxed() } else { fmt.boxed() };
    tracing_subscriber::registry().with(fmt.with_filter(filter)).with(shoal_events::layer()).init();
}

pub(crate) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    init_tracing(&args.log_level, &args.log_format);
    raise_file_limit();
    let file = match &args.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let cfg = AgentConfig::resolve(
        file,
        Overrides {
            data_dir: args.data_dir,
            name: args.name,
            listen: args.listen,
            join: args.join,
            cluster_key: args.cluster_key,
            insecure: args.insecure,
            mdns: args.mdns,
            labels: args.labels,
            api_socket: args.api_socket,
            api_listen: args.api_listen,
            api_token_file: args.api_token_file,
            cpus: args.cpus,
            memory: args.memory,
            store_quota: args.store_quota,
            upload_limit: args.upload_limit,
            download_limit: args.download_limit,
            data_listen: args.data_listen,
            container_subnet: args.container_subnet,
            cluster_subnet: args.cluster_subnet,
            subnet_size: args.subnet_size,
            service_subnet: args.service_subnet,
            network_transport: args.network_transport,
            wg_port: args.wg_port,
            vxlan_port: args.vxlan_port,
            insecure_registries: args.insecure_registries,
            mirror_listen: args.mirror_listen,
            metrics_listen: args.metrics_listen,
            mirror_registry: args.mirror_registry,
            bridge: args.bridge,
        },
    )?;

    std::fs::create_dir_all(&cfg.data_dir).with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
    let unix = shoal_api::bind_unix(&cfg.api_socket).await?;
    let tcp = match cfg.api_listen {
        Some(a) => {
            let tls = shoal_api::tls::load_or_create(&cfg.data_dir)
                .with_context(|| format!("the API certificate in {}", cfg.data_dir.display()))?;
            let token = shoal_api::auth::load_or_create_token(&cfg.api_token_file, &tls.fingerprint)
                .with_context(|| format!("reading or creating the API token {}", cfg.api_token_file.display()))?;
            Some((shoal_api::bind_tcp(a).await?, token, tls))
        }
        None => None,
    };

    let node = Node::start(cfg.clone()).await?;
    let app = shoal_api::router(node.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut servers = vec![tokio::spawn({
        let (app, path, stop) = (app.clone(), cfg.api_socket.clone(), stopped(stop_rx.clone()));
        async move { shoal_api::serve_unix(unix, &path, app, stop).await }
    })];
    if let Some((listener, token, tls)) = tcp {
        servers.push(tokio::spawn(shoal_api::serve_tcp(listener, token, tls, app, stopped(stop_rx.clone()))));
    }
    let status = node.status().await?;
    info!(peer = %status.id, name = %status.name, api = %cfg.api_socket.display(), "agent ready");

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: leaving the cluster"),
        _ = int.recv() => info!("SIGINT: leaving the cluster"),
    }
    node.shutdown().await;
    let _ = stop_tx.send(true);
    for s in servers {
        match tokio::time::timeout(std::time::Duration::from_secs(5), s).await {
            Ok(Ok(Err(e))) => tracing::warn!(err = %e, "API server stopped with an error"),
            Ok(_) => {}
            Err(_) => tracing::warn!("API server did not stop in time"),
        }
    }
    info!("agent stopped");
    Ok(ExitCode::SUCCESS)
}
