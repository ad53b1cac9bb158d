//! The user to run as, looked up in the image's own /etc/passwd and /etc/group, which are found
//! without following a symlink out of the root filesystem and read up to a bounded size.

use super::SpecError;
use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use oci_spec::image::ImageConfiguration;
use shoal_types::ContainerSpec;

/// Largest user or group id: runc refuses ids above `i32::MAX`.
const MAX_ID: u64 = i32::MAX as u64;
/// Largest /etc/passwd or /etc/group read from an image.
const MAX_USER_DB_BYTES: u64 = 1 << 20;
/// Symlinks followed while looking up one path in the root filesystem, as the kernel's limit.
const MAX_SYMLINKS: usize = 40;

/// A user resolved to ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups; never empty (see the module header).
    pub additional_gids: Vec<u32>,
}

/// The user to run as: `--user`, else the image's User, else root, resolved against the
/// image's /etc/passwd and /etc/group the way runc does for Docker.
pub fn resolve_user(
    rootfs: &Path,
    spec: &ContainerSpec,
    image: &ImageConfiguration,
) -> Result<ResolvedUser, SpecError> {
    let from_image = image.config().as_ref().and_then(|c| c.user().as_deref());
    let (user, origin) = match spec.user.as_deref() {
        Some(u) if !u.is_empty() => (u, "--user"),
        _ => (from_image.unwrap_or(""), "the image's User"),
    };
    lookup_user(rootfs, user, origin, &spec.image)
}

/// Resolves `user` (`UID`, `UID:GID`, `NAME`, `NAME:GROUP`, or empty for root).
///
/// A numeric user need not exist: its group is then 0. A named user or group must. Without an
/// explicit group, the supplementary groups are those listing the user's name as a member.
fn lookup_user(rootfs: &Path, user: &str, origin: &'static str, image: &str) -> Result<ResolvedUser, SpecError> {
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    if user.contains('\0') || group_part.is_some_and(|g| g.is_empty() || g.contains(':')) {
        return Err(SpecError::BadUser { user: user.to_string(), origin });
    }
    let uid_number = numeric_id(user_part, user)?;
    let gid_number = match group_part {
        Some(g) => numeric_id(g, user)?,
        None => None,
    };
    if let (Some(uid), Some(gid)) = (uid_number, gid_number) {
        // Nothing to look up: no supplementary groups with an explicit group, as in runc.
        return Ok(ResolvedUser { uid, gid, additional_gids: vec![gid] });
    }
    let passwd = read_user_db(rootfs, "/etc/passwd", image)?;
    let users = parse_passwd(passwd.as_deref().unwrap_or(""));
    let entry = if user_part.is_empty() {
        users.iter().find(|u| u.uid == 0)
    } else if let Some(uid) = uid_number {
        users.iter().find(|u| u.uid == uid)
    } else {
        let found = users.iter().find(|u| u.name == user_part);
        Some(found.ok_or_else(|| SpecError::UnknownUser { name: user_part.to_string(), image: image.to_string() })?)
    };
    let uid = match (entry, uid_number) {
        (Some(e), _) => e.uid,
        (None, Some(uid)) => uid,
        (None, None) => 0,
    };
    let needs_groups = match group_part {
        Some(_) => gid_number.is_none(),
        None => entry.is_some(),
    };
    let group_text = if needs_groups { read_user_db(rootfs, "/etc/group", image)? } else { None };
    let groups = parse_group(group_text.as_deref().unwrap_or(""));
    let (gid, mut additional_gids) = match group_part {
        Some(g) => match gid_number {
            Some(gid) => (gid, Vec::new()),
            None => {
                let group = groups
                    .iter()
                    .find(|e| e.name == g)
                    .ok_or_else(|| SpecError::UnknownGroup { name: g.to_string(), image: image.to_string() })?;
                (group.gid, Vec::new())
            }
        },
        None => {
            let gid = entry.map_or(0, |e| e.gid);
            let member_of: Vec<u32> = match entry {
                Some(e) => groups.iter().filter(|g| g.members.contains(&e.name)).map(|g| g.gid).collect(),
                None => Vec::new(),
            };
            (gid, member_of)
        }
    };
    let mut seen = Vec::with_capacity(additional_gids.len());
    additional_gids.retain(|g| {
        if seen.contains(g) {
            false
        } else {
            seen.push(*g);
            true
        }
    });
    if additional_gids.is_empty() {
        additional_gids.push(gid);
    }
    Ok(ResolvedUser { uid, gid, additional_gids })
}

/// `Some(id)` when `text` is all digits, an error when that number is out of range.
fn numeric_id(text: &str, user: &str) -> Result<Option<u32>, SpecError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    let out_of_range = || SpecError::IdOutOfRange { user: user.to_string(), id: text.to_string() };
    let id: u64 = text.parse().map_err(|_| out_of_range())?;
    if id > MAX_ID {
        return Err(out_of_range());
    }
    u32::try_from(id).map(Some).map_err(|_| out_of_range())
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn parse_id(field: &str) -> Option<u32> {
    field.trim().parse::<u32>().ok().filter(|id| u64::from(*id) <= MAX_ID)
}

/// Lines `name:password:uid:gid:...`; malformed ones are skipped, as libc does.
fn parse_passwd(text: &str) -> Vec<PasswdEntry<'_>> {
    text.lines().filter_map(passwd_entry).collect()
}

fn passwd_entry(line: &str) -> Option<PasswdEntry<'_>> {
    let mut fields = line.split(':');
    let name = fields.next().filter(|n| !n.is_empty() && !n.starts_with('#'))?;
    let _password = fields.next()?;
    Some(PasswdEntry { name, uid: parse_id(fields.next()?)?, gid: parse_id(fields.next()?)? })
}

/// Lines `name:password:gid:member,member`; malformed ones are skipped.
fn parse_group(text: &str) -> Vec<GroupEntry<'_>> {
    text.lines().filter_map(group_entry).collect()
}

fn group_entry(line: &str) -> Option<GroupEntry<'_>> {
    let mut fields = line.split(':');
    let name = fields.next().filter(|n| !n.is_empty() && !n.starts_with('#'))?;
    let _password = fields.next()?;
    let gid = parse_id(fields.next()?)?;
    let members = fields.next().unwrap_or("").split(',').map(str::trim).filter(|m| !m.is_empty()).collect();
    Some(GroupEntry { name, gid, members })
}

/// The contents of /etc/passwd or /etc/group in the image, `None` when it has none.
fn read_user_db(rootfs: &Path, file: &'static str, image: &str) -> Result<Option<String>, SpecError> {
    let bytes = read_in_rootfs(rootfs, Path::new(file), MAX_USER_DB_BYTES)
        .map_err(|source| SpecError::UserDatabase { file, image: image.to_string(), source })?;
    Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned()))
}

/// Reads `path` as the container would see it (symlinks resolved inside `rootfs`, never out of
/// it); `None` when it does not exist. Refuses anything but a regular file of at most `limit` bytes.
fn read_in_rootfs(rootfs: &Path, path: &Path, limit: u64) -> io::Result<Option<Vec<u8>>> {
    let Some(resolved) = resolve_in_rootfs(rootfs, path)? else { return Ok(None) };
    // O_NOFOLLOW: the last component was checked not to be a symlink; O_NONBLOCK: a FIFO planted
    // there must not hang the open.
    let file = match fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(&resolved)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "it is not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("it is larger than {} KiB", limit >> 10)));
    }
    Ok(Some(bytes))
}

enum Step {
    Up,
    Name(OsString),
}

fn steps(path: &Path) -> Vec<Step> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(Step::Name(name.to_os_string())),
            Component::ParentDir => Some(Step::Up),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// Resolves `path` inside `rootfs` as if `rootfs` were `/`: `..` stops at the top and an absolute
/// symlink restarts from `rootfs`, so the result is always under `rootfs`. `None` when a component
/// does not exist. The result's last component is not a symlink.
fn resolve_in_rootfs(rootfs: &Path, path: &Path) -> io::Result<Option<PathBuf>> {
    let mut pending: VecDeque<Step> = steps(path).into();
    let mut resolved = PathBuf::new();
    let mut links = 0;
    while let Some(step) = pending.pop_front() {
        let name = match step {
            Step::Up => {
                resolved.pop();
                continue;
            }
            Step::Name(name) => name,
        };
        let candidate = rootfs.join(&resolved).join(&name);
        let meta = match fs::symlink_metadata(&candidate) {
            Ok(meta) => meta,
            Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => return Ok(None),
            Err(e) => return Err(e),
        };
        if !meta.file_type().is_symlink() {
            resolved.push(name);
            continue;
        }
        links += 1;
        if links > MAX_SYMLINKS {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "too many levels of symbolic links"));
        }
        let target = fs::read_link(&candidate)?;
        if target.is_absolute() {
            resolved = PathBuf::new();
        }
        for step in steps(&target).into_iter().rev() {
            pending.push_front(step);
        }
    }
    Ok(Some(rootfs.join(resolved)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::test_support::{image, rootfs, run};
    use serde_json::json;

    fn user(root: &Path, user: &str) -> Result<ResolvedUser, SpecError> {
        lookup_user(root, user, "--user", "img:1")
    }

    fn ids(uid: u32, gid: u32, groups: &[u32]) -> ResolvedUser {
        ResolvedUser { uid, gid, additional_gids: groups.to_vec() }
    }

    #[test]
    fn user_forms_resolve_like_docker() {
        let root = rootfs();
        let r = root.path();
        assert_eq!(user(r, "").expect("root"), ids(0, 0, &[10]));
        assert_eq!(user(r, "web").expect("name"), ids(1000, 1000, &[10, 29]));
        assert_eq!(user(r, "1000").expect("uid"), ids(1000, 1000, &[10, 29]));
        assert_eq!(user(r, "4242").expect("unknown uid"), ids(4242, 0, &[0]));
        assert_eq!(user(r, "4242:77").expect("uid:gid"), ids(4242, 77, &[77]));
        assert_eq!(user(r, "web:staff").expect("name:group"), ids(1000, 50, &[50]));
        assert_eq!(user(r, "1000:audio").expect("uid:group"), ids(1000, 29, &[29]));
        assert_eq!(user(r, "nobody").expect("nobody"), ids(65534, 65534, &[65534]));

        let err = user(r, "ghost").expect_err("unknown");
        assert!(matches!(&err, SpecError::UnknownUser { name, .. } if name == "ghost"), "{err}");
        assert!(err.to_string().contains("img:1"), "{err}");
        assert!(matches!(user(r, "web:ghosts"), Err(SpecError::UnknownGroup { .. })));
        for bad in ["web:", "a:b:c"] {
            assert!(matches!(user(r, bad), Err(SpecError::BadUser { .. })), "{bad}");
        }
        assert!(matches!(user(r, "2147483648"), Err(SpecError::IdOutOfRange { .. })));
        assert!(matches!(user(r, "1:99999999999999999999"), Err(SpecError::IdOutOfRange { .. })));
    }

    #[test]
    fn user_without_user_database() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(user(dir.path(), "123").expect("numeric"), ids(123, 0, &[0]));
        assert_eq!(user(dir.path(), "").expect("root"), ids(0, 0, &[0]));
        assert!(matches!(user(dir.path(), "web"), Err(SpecError::UnknownUser { .. })));
    }

    #[test]
    fn user_comes_from_option_then_image() {
        let root = rootfs();
        let img = image(json!({ "User": "web" }));
        assert_eq!(resolve_user(root.path(), &run("i"), &img).expect("image user").uid, 1000);
        let spec = ContainerSpec { user: Some("0".into()), ..run("i") };
        assert_eq!(resolve_user(root.path(), &spec, &img).expect("option").uid, 0);
    }

    #[test]
    fn user_database_symlinks_stay_inside_the_rootfs() {
        // A host file that must never be read: it defines "evil".
        let host = tempfile::tempdir().expect("tempdir");
        let host_passwd = host.path().join("passwd");
        fs::write(&host_passwd, "evil:x:4242:4242::/:/bin/sh\n").expect("host passwd");

        let root = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(root.path().join("etc")).expect("mkdir");
        std::os::unix::fs::symlink(&host_passwd, root.path().join("etc/passwd")).expect("symlink");
        assert!(matches!(user(root.path(), "evil"), Err(SpecError::UnknownUser { .. })), "absolute symlink escaped");

        fs::remove_file(root.path().join("etc/passwd")).expect("rm");
        let climb = format!("../../../../../../../..{}", host_passwd.display());
        std::os::unix::fs::symlink(&climb, root.path().join("etc/passwd")).expect("symlink");
        assert!(matches!(user(root.path(), "evil"), Err(SpecError::UnknownUser { .. })), "relative symlink escaped");

        // The same absolute target, present inside the root filesystem, is what counts.
        let inside = root.path().join(host_passwd.strip_prefix("/").expect("absolute"));
        fs::create_dir_all(inside.parent().expect("parent")).expect("mkdir");
        fs::write(&inside, "app:x:500:500::/:/bin/sh\n").expect("inner passwd");
        fs::remove_file(root.path().join("etc/passwd")).expect("rm");
        std::os::unix::fs::symlink(&host_passwd, root.path().join("etc/passwd")).expect("symlink");
        assert_eq!(user(root.path(), "app").expect("resolved inside"), ids(500, 500, &[500]));

        // A loop is an error, not a hang.
        fs::remove_file(root.path().join("etc/passwd")).expect("rm");
        std::os::unix::fs::symlink("/etc/passwd", root.path().join("etc/passwd")).expect("symlink");
        assert!(matches!(user(root.path(), "app"), Err(SpecError::UserDatabase { .. })));
    }

    #[test]
    fn user_database_must_be_small_and_regular() {
        let root = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(root.path().join("etc/passwd")).expect("a directory");
        assert!(matches!(user(root.path(), "web"), Err(SpecError::UserDatabase { .. })));
        fs::remove_dir(root.path().join("etc/passwd")).expect("rm");
        let big = "x".repeat((MAX_USER_DB_BYTES + 1) as usize);
        fs::write(root.path().join("etc/passwd"), big).expect("big");
        let err = user(root.path(), "web").expect_err("too big");
        assert!(err.to_string().contains("larger than") && err.to_string().contains("UID:GID"), "{err}");
        // As the message says, numeric UID:GID needs no user database.
        assert_eq!(user(root.path(), "5:6").expect("numeric"), ids(5, 6, &[6]));
        nix::unistd::mkfifo(&root.path().join("etc/group"), nix::sys::stat::Mode::S_IRWXU).expect("fifo");
        fs::write(root.path().join("etc/passwd"), "web:x:1:1::/:/bin/sh\n").expect("passwd");
        assert!(matches!(user(root.path(), "web"), Err(SpecError::UserDatabase { file: "/etc/group", .. })));
    }
}
