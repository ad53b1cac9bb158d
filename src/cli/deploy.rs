//! `shoal deploy shoal.toml`: declare services from a file. Idempotent: services that match
//! the file are left alone, new ones are created, changed ones updated (a rolling update when
//! the image changes); the diff is printed first. Services not in the file are not touched.
//!
//! ```toml
//! [[service]]
//! name = "web"
//! image = "app:v1"
//! replicas = 3
//! cmd = ["httpd", "-f", "-p", "80"]
//! cpus = "0.5"
//! memory = "128m"
//! ports = ["8080:80"]
//! env = ["MODE=prod"]
//! constraints = { region = "eu" }
//! spread = "zone"
//! health_cmd = "wget -q -O- localhost"
//! max_unavailable = 1
//! autoscale = { min = 2, max = 10, target_cpu = 70 }
//!
//! [[service]]
//! name = "node-agent"
//! image = "agent:v1"
//! mode = "global"          # one replica on every peer that matches the constraints
//! ```

use super::lifecycle::encode;
use anyhow::Context;
use shoal_api::client::Client;
use shoal_types::{Autoscale, ByteSize, PortMapping, Resources, ServiceInfo, ServiceMode, ServiceSpec};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The file declaring the services.
    file: PathBuf,
    /// Print the diff only.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    service: Vec<ServiceDecl>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceDecl {
    name: String,
    image: String,
    #[serde(default)]
    mode: ServiceMode,
    replicas: Option<u32>,
    #[serde(default)]
    cmd: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
    cpus: Option<String>,
    memory: Option<String>,
    #[serde(default)]
    ports: Vec<String>,
    #[serde(default)]
    constraints: BTreeMap<String, String>,
    spread: Option<String>,
    health_cmd: Option<String>,
    #[serde(default = "one")]
    max_unavailable: u32,
    autoscale: Option<AutoscaleDecl>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AutoscaleDecl {
    min: u32,
    max: u32,
    target_cpu: u32,
}

fn one() -> u32 {
    1
}

impl ServiceDecl {
    fn into_spec(self) -> anyhow::Result<ServiceSpec> {
        let ctx = format!("service {}", self.name);
        let cpus_milli = self.cpus.as_deref().map(Resources::parse_cpus).transpose().context(ctx.clone())?.unwrap_or(0);
        let memory_bytes = match &self.memory {
            Some(m) => m.parse::<ByteSize>().map_err(|e| anyhow::anyhow!("{ctx}: memory {m}: {e}"))?.0,
            None => 0,
        };
        let ports =
            self.ports.iter().map(|p| PortMapping::parse(p)).collect::<Result<Vec<_>, _>>().context(ctx.clone())?;
        let autoscale = match self.autoscale {
            Some(a) if a.min > a.max || a.max == 0 || a.target_cpu == 0 => {
                anyhow::bail!("{ctx}: autoscale needs 0 < min <= max and a target_cpu above 0")
            }
            Some(a) => Some(Autoscale { min: a.min, max: a.max, target_cpu_percent: a.target_cpu }),
            None => None,
        };
        if self.mode == ServiceMode::Global && self.replicas.is_some() {
            anyhow::bail!("{ctx}: a global service runs one replica on every matching peer; drop `replicas`");
        }
        Ok(ServiceSpec {
            name: self.name,
            image: self.image,
            replicas: if self.mode == ServiceMode::Global { 0 } else { self.replicas.unwrap_or(1) },
            mode: self.mode,
            rebalance: None,
            cmd: self.cmd,
            env: self.env,
            cpus_milli,
            memory_bytes,
            ports,
            constraints: self.constraints,
            spread: self.spread,
            health_cmd: self.health_cmd.map(|c| vec!["sh".into(), "-c".into(), c]),
            max_unavailable: self.max_unavailable,
            autoscale,
            previous_image: None,
            rollback_image: None,
            vip: None,
        })
    }
}

/// What differs between the running declaration and the file, field by field.
fn diff(old: &ServiceSpec, new: &ServiceSpec) -> Vec<String> {
    let a = serde_json::to_value(old).unwrap_or_default();
    let b = serde_json::to_value(new).unwrap_or_default();
    let mut out = Vec::new();
    if let (Some(a), Some(b)) = (a.as_object(), b.as_object()) {
        for (k, vb) in b {
            // The autoscaler owns the replica count of an autoscaled service.
            if k == "previous_image" || k == "rebalance" || k == "vip" || (k == "replicas" && new.autoscale.is_some()) {
                continue;
            }
            let va = a.get(k).cloned().unwrap_or_default();
            // The agent pins a tag to its digest (`app:v1@sha256:…`): the same tag in the file
            // is no change.
            if k == "image" && old.image.split_once('@').is_some_and(|(tag, _)| tag == new.image) {
                continue;
            }
            if va != *vb {
                out.push(format!("{k}: {va} -> {vb}"));
            }
        }
    }
    out
}

pub(crate) async fn run(args: Args, client: &Client) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
    let file: File =
        toml::from_str(&text).with_context(|| format!("{} is not a valid deploy file", args.file.display()))?;
    let specs = file.service.into_iter().map(ServiceDecl::into_spec).collect::<anyhow::Result<Vec<_>>>()?;
    let current: Vec<ServiceInfo> = client.get("/v1/services").await?;
    let by_name: BTreeMap<&str, &ServiceSpec> = current.iter().map(|s| (s.spec.name.as_str(), &s.spec)).collect();
    let mut changes = 0;
    for spec in specs {
        match by_name.get(spec.name.as_str()) {
            None => {
                match spec.mode {
                    ServiceMode::Global => println!("+ {} (global, {})", spec.name, spec.image),
                    ServiceMode::Replicated => println!("+ {} ({} x {})", spec.name, spec.replicas, spec.image),
                }
                changes += 1;
                if !args.dry_run {
                    let _: ServiceInfo = client.send_json(hyper::Method::POST, "/v1/services", &spec).await?;
                }
            }
            Some(old) => {
                let d = diff(old, &spec);
                if d.is_empty() {
                    println!("= {} (unchanged)", spec.name);
                    continue;
                }
                println!("~ {}", spec.name);
                for line in d {
                    println!("    {line}");
                }
                changes += 1;
                if !args.dry_run {
                    let mut spec = spec;
                    if spec.autoscale.is_some() {
                        spec.replicas = old.replicas;
                    }
                    let path = format!("/v1/services/{}", encode(&spec.name));
                    let _: ServiceInfo = client.send_json(hyper::Method::PUT, &path, &spec).await?;
                }
            }
        }
    }
    println!("{changes} change(s){}", if args.dry_run { " (dry run: nothing applied)" } else { "" });
    Ok(ExitCode::SUCCESS)
}
