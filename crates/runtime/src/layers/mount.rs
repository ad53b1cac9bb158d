//! Overlay mounts: the option string (checked against the one-page limit), the mount itself
//! (or a read-only bind for a single lower) and unmounting.

use super::LayerError;
use std::ffi::CString;
use std::path::{Path, PathBuf};

use rustix::io::Errno;
use rustix::mount::{MountFlags, UnmountFlags};
use tracing::{debug, warn};

/// The kernel copies mount data into one page, NUL included.
const MAX_MOUNT_DATA: usize = 4095;

fn push_mount_path(data: &mut String, path: &Path) -> Result<(), LayerError> {
    let reason = match path.to_str() {
        None => "overlay paths must be valid UTF-8",
        Some(_) if !path.is_absolute() => "it must be an absolute path",
        Some(s) if s.contains([',', ':', '\\', '\0']) => {
            "it contains `,`, `:`, `\\` or NUL, which overlay options cannot carry"
        }
        Some(s) => {
            data.push_str(s);
            return Ok(());
        }
    };
    Err(LayerError::MountPath { path: path.to_path_buf(), reason })
}

/// The overlayfs option string for [`mount_overlay`], checked against the one-page limit.
pub fn overlay_options(lowers_top_first: &[PathBuf], upper: Option<(&Path, &Path)>) -> Result<String, LayerError> {
    if lowers_top_first.is_empty() {
        return Err(LayerError::NoLowerLayers);
    }
    let mut data = String::from("lowerdir=");
    for (i, lower) in lowers_top_first.iter().enumerate() {
        data.push_str(if i > 0 { ":" } else { "" });
        push_mount_path(&mut data, lower)?;
    }
    if let Some((upper, work)) = upper {
        data.push_str(",upperdir=");
        push_mount_path(&mut data, upper)?;
        data.push_str(",workdir=");
        push_mount_path(&mut data, work)?;
    }
    data.push_str(",index=off");
    if data.len() > MAX_MOUNT_DATA {
        return Err(LayerError::MountOptionsTooLong { len: data.len(), max: MAX_MOUNT_DATA });
    }
    Ok(data)
}

/// Mounts an overlay of `lowers_top_first` at `target`, writable through `upper` =
/// `(upperdir, workdir)` (same filesystem, workdir empty) or read-only when `None`. A single lower
/// without an upper becomes a read-only bind mount, since overlayfs needs two lowers then.
pub fn mount_overlay(
    target: &Path,
    lowers_top_first: &[PathBuf],
    upper: Option<(&Path, &Path)>,
) -> Result<(), LayerError> {
    let options = overlay_options(lowers_top_first, upper)?;
    let mount_err = |fstype, options: String| {
        move |e: Errno| LayerError::Mount { fstype, target: target.to_path_buf(), options, source: e.into() }
    };
    if let ([lower], None) = (lowers_top_first, upper) {
        rustix::mount::mount_bind(lower, target).map_err(mount_err("bind", format!("bind {}", lower.display())))?;
        if let Err(e) = rustix::mount::mount_remount(target, MountFlags::BIND | MountFlags::RDONLY, "") {
            let _ = rustix::mount::unmount(target, UnmountFlags::DETACH);
            return Err(mount_err("bind", "remount,bind,ro".to_owned())(e));
        }
        return Ok(());
    }
    // push_mount_path refused NUL, so this cannot fail; map it anyway rather than panic.
    let data = CString::new(options.as_str()).map_err(|_| mount_err("overlay", options.clone())(Errno::INVAL))?;
    let flags = if upper.is_none() { MountFlags::RDONLY } else { MountFlags::empty() };
    rustix::mount::mount("overlay", target, "overlay", flags, data.as_c_str())
        .map_err(mount_err("overlay", options))?;
    debug!(target = %target.display(), layers = lowers_top_first.len(), writable = upper.is_some(), "overlay mounted");
    Ok(())
}

/// Unmounts `target`; lazily (detached) if it is busy. Not mounted (or missing) is fine.
pub fn unmount(target: &Path) -> Result<(), LayerError> {
    let err = |e: Errno| LayerError::Unmount { target: target.to_path_buf(), source: e.into() };
    match rustix::mount::unmount(target, UnmountFlags::empty()) {
        Ok(()) | Err(Errno::INVAL | Errno::NOENT) => Ok(()),
        Err(Errno::BUSY) => {
            warn!(target = %target.display(), "mount busy; detaching it lazily");
            rustix::mount::unmount(target, UnmountFlags::DETACH).map_err(err)
        }
        Err(e) => Err(err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_options_over_a_page_are_refused() {
        let lowers: Vec<PathBuf> =
            (0..200).map(|i| PathBuf::from(format!("/var/lib/shoal/layers/{i:064}/fs"))).collect();
        let err = overlay_options(&lowers, None).unwrap_err();
        assert!(matches!(err, LayerError::MountOptionsTooLong { max: MAX_MOUNT_DATA, .. }), "{err}");
    }
}
