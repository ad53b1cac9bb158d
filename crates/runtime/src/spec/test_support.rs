//! Helpers shared by the tests of the spec modules: image configs, `run` options, a root
//! filesystem with a user database.

use oci_spec::image::ImageConfiguration;
use serde_json::json;
use shoal_types::ContainerSpec;
use std::fs;

pub(super) fn image(config: serde_json::Value) -> ImageConfiguration {
    serde_json::from_value(json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": { "type": "layers", "diff_ids": [] },
        "config": config,
    }))
    .expect("valid image config")
}

pub(super) fn run(image: &str) -> ContainerSpec {
    ContainerSpec { image: image.into(), ..Default::default() }
}

pub(super) fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_string()).collect()
}

/// A root filesystem with a small user database.
pub(super) fn rootfs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::create_dir_all(dir.path().join("etc")).expect("mkdir");
    fs::write(
        dir.path().join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\n# comment\nbroken line\nweb:x:1000:1000::/home/web:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n",
    )
    .expect("passwd");
    fs::write(
        dir.path().join("etc/group"),
        "root:x:0:\nwheel:x:10:root,web\nweb:x:1000:\naudio:x:29:web\nstaff:x:50:\nnogroup:x:65534:\n",
    )
    .expect("group");
    dir
}
