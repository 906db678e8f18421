//! Who may read the files peerd reads: the rule for `secret_file`, and
//! whether the service user could read what the service will read.
//!
//! The rule for a file holding the secret: others get no access at all,
//! the group may not write it, and the group may read it only when it is
//! the daemon's own group or `peerd` (the system service's group). So
//! `root:peerd` mode 0640 (the service reads it through its group, root
//! alone changes it) and `<owner>` mode 0600 are both fine; `root:staff`
//! mode 0640 is not.
//!
//! `peerd check-config` usually runs as root, who reads everything: it
//! also asks whether user `peerd` (which `peerd@.service` runs as) could
//! read the config, the secret and the TLS files, and warns when not.
//! (The unit's `PrivateUsers=yes` maps root and `peerd` to themselves, so
//! what the file system says here is what the service sees.)

use std::path::{Path, PathBuf};

/// The user and group `peerd@.service` runs as (`systemd/peerd.sysusers`).
pub const SERVICE_USER: &str = "peerd";

/// A file's owner, group and permission bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMode {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits (`0o777` at most).
    pub mode: u32,
}

/// A user as the kernel checks file access: uid and every group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    /// Primary group first, then the supplementary ones.
    pub gids: Vec<u32>,
}

/// The rule for `secret_file` (module doc). `trusted` are the groups that
/// may read it; `shown` names the file in the reason.
pub fn private_enough(f: FileMode, trusted: &[u32], shown: &str) -> Result<(), String> {
    let mode = f.mode & 0o777;
    let fix = format!(
        "run `chown root:{SERVICE_USER} {shown} && chmod 640 {shown}` (or `chmod 600 {shown}` \
         when peerd runs as its owner)"
    );
    if mode & 0o007 != 0 {
        return Err(format!(
            "secret_file {shown} may be read or changed by others (mode {mode:04o}); {fix}"
        ));
    }
    if mode & 0o020 != 0 {
        return Err(format!(
            "secret_file {shown} may be changed by its group (mode {mode:04o}); {fix}"
        ));
    }
    if mode & 0o040 != 0 && !trusted.contains(&f.gid) {
        let group = peerlink::paths::group_name(f.gid).unwrap_or_else(|| f.gid.to_string());
        return Err(format!(
            "secret_file {shown} may be read by group {group} (mode {mode:04o}), which is \
             neither {SERVICE_USER} nor this daemon's group; {fix}"
        ));
    }
    Ok(())
}

/// Whether `user` holds permission `want` (4 read, 1 search) on a file
/// with mode `f`: owner bits for the owner, else group bits for a member,
/// else the others' bits; root may do anything.
pub fn permits(f: FileMode, user: &User, want: u32) -> bool {
    if user.uid == 0 {
        return true;
    }
    let bits = if f.uid == user.uid {
        f.mode >> 6
    } else if user.gids.contains(&f.gid) {
        f.mode >> 3
    } else {
        f.mode
    };
    bits & want == want
}

/// Why `user` could not read `path` (a folder on the way it may not
/// search, or the file itself), if it could not.
#[cfg(unix)]
pub fn unreadable_by(path: &Path, user: &User) -> Option<String> {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut dirs: Vec<&Path> = path.ancestors().skip(1).collect();
    dirs.reverse();
    for dir in dirs {
        let Some(m) = file_mode(dir) else { continue };
        if !permits(m, user, 0o1) {
            return Some(format!(
                "it may not enter {} ({})",
                dir.display(),
                describe(m)
            ));
        }
    }
    let m = file_mode(&path)?;
    (!permits(m, user, 0o4)).then(|| format!("{} is {}", path.display(), describe(m)))
}

#[cfg(unix)]
fn file_mode(path: &Path) -> Option<FileMode> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(FileMode {
        uid: m.uid(),
        gid: m.gid(),
        mode: m.mode() & 0o777,
    })
}

/// `root:peerd mode 0640`, with numbers where a name is unknown.
fn describe(m: FileMode) -> String {
    let user = user_name(m.uid).unwrap_or_else(|| m.uid.to_string());
    let group = peerlink::paths::group_name(m.gid).unwrap_or_else(|| m.gid.to_string());
    format!("{user}:{group} mode {:04o}", m.mode)
}

/// Warnings for `peerd check-config` run as root: the files this config
/// makes the service read that user [`SERVICE_USER`] could not read.
/// Nothing when not root or when there is no such user.
#[cfg(unix)]
pub fn service_user_warnings(cfg: &crate::config::Config) -> Vec<String> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Vec::new();
    }
    let Some(user) = lookup_user(SERVICE_USER) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = Vec::new();
    if Path::new(&cfg.source).is_file() {
        files.push(PathBuf::from(&cfg.source));
    }
    files.extend(cfg.secret_files.iter().cloned());
    files.extend(
        [&cfg.tls.cert, &cfg.tls.key, &cfg.tls.ca]
            .into_iter()
            .flatten()
            .cloned(),
    );
    files
        .iter()
        .filter_map(|f| {
            let why = unreadable_by(f, &user)?;
            let shown = f.display();
            Some(format!(
                "peerd@.service runs as user {SERVICE_USER}, who cannot read {shown}: {why}; \
                 run `chgrp {SERVICE_USER} {shown} && chmod g+r {shown}`"
            ))
        })
        .collect()
}

#[cfg(not(unix))]
pub fn service_user_warnings(_cfg: &crate::config::Config) -> Vec<String> {
    Vec::new()
}

/// The groups whose members may read a secret file: this process's
/// group and the service's.
#[cfg(unix)]
pub fn trusted_groups() -> Vec<u32> {
    // SAFETY: getegid cannot fail.
    let mut gids = vec![unsafe { libc::getegid() }];
    if let Some(g) = group_id(SERVICE_USER) {
        gids.push(g);
    }
    gids
}

/// What the user this process runs as is called, for error messages.
#[cfg(unix)]
pub fn current_user() -> String {
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    match user_name(uid) {
        Some(n) => format!("user {n} (uid {uid})"),
        None => format!("uid {uid}"),
    }
}

/// Run a `get*_r` lookup with a buffer that grows on ERANGE.
#[cfg(unix)]
fn with_buffer<T>(mut f: impl FnMut(&mut [u8]) -> Result<Option<T>, i32>) -> Option<T> {
    let mut buf = vec![0u8; 4096];
    loop {
        match f(&mut buf) {
            Err(libc::ERANGE) if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            Err(_) => return None,
            Ok(v) => return v,
        }
    }
}

/// Copy a C string from a passwd/group entry.
///
/// # Safety
/// `p` is null or points to a NUL-terminated string.
#[cfg(unix)]
unsafe fn owned(p: *const libc::c_char) -> Option<String> {
    // SAFETY: the caller's promise.
    (!p.is_null()).then(|| {
        unsafe { std::ffi::CStr::from_ptr(p) }
            .to_string_lossy()
            .into_owned()
    })
}

#[cfg(unix)]
fn user_name(uid: u32) -> Option<String> {
    with_buffer(|buf| {
        // SAFETY: an all-zero passwd is a valid value for getpwuid_r to fill.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut out = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; the strings point into buf.
        let rc =
            unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut out) };
        if rc != 0 {
            return Err(rc);
        }
        // SAFETY: on success pw_name is a C string in buf (or null).
        Ok(if out.is_null() {
            None
        } else {
            unsafe { owned(pw.pw_name) }
        })
    })
}

#[cfg(unix)]
fn group_id(name: &str) -> Option<u32> {
    let cname = std::ffi::CString::new(name).ok()?;
    with_buffer(|buf| {
        // SAFETY: an all-zero group is a valid value for getgrnam_r to fill.
        let mut gr: libc::group = unsafe { std::mem::zeroed() };
        let mut out = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call.
        let rc = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                &mut gr,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut out,
            )
        };
        if rc != 0 {
            return Err(rc);
        }
        Ok((!out.is_null()).then_some(gr.gr_gid))
    })
}

/// User `name` with all its groups, from the user and group databases.
#[cfg(unix)]
pub fn lookup_user(name: &str) -> Option<User> {
    let cname = std::ffi::CString::new(name).ok()?;
    let (uid, gid) = with_buffer(|buf| {
        // SAFETY: an all-zero passwd is a valid value for getpwnam_r to fill.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut out = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call.
        let rc = unsafe {
            libc::getpwnam_r(
                cname.as_ptr(),
                &mut pw,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut out,
            )
        };
        if rc != 0 {
            return Err(rc);
        }
        Ok((!out.is_null()).then_some((pw.pw_uid, pw.pw_gid)))
    })?;
    let mut gids: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut n = gids.len() as libc::c_int;
        // SAFETY: gids holds n entries; getgrouplist writes at most n and
        // sets n to how many there are.
        let rc = unsafe { libc::getgrouplist(cname.as_ptr(), gid, gids.as_mut_ptr(), &mut n) };
        let n = usize::try_from(n).unwrap_or(0);
        if rc >= 0 {
            gids.truncate(n);
            break;
        }
        if n <= gids.len() || n > 65536 {
            gids = vec![gid];
            break;
        }
        gids.resize(n, 0);
    }
    gids.retain(|g| *g != gid);
    gids.insert(0, gid);
    Some(User {
        name: name.to_string(),
        uid,
        gids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEERD: u32 = 990;

    fn f(uid: u32, gid: u32, mode: u32) -> FileMode {
        FileMode { uid, gid, mode }
    }

    #[test]
    fn secret_rule() {
        let ok = |m: FileMode| private_enough(m, &[0, PEERD], "/etc/peerd/secret");
        // root-only, owner-only and root:peerd 0640 are private enough
        assert_eq!(ok(f(0, 0, 0o600)), Ok(()));
        assert_eq!(ok(f(1000, 1000, 0o400)), Ok(()));
        assert_eq!(ok(f(0, PEERD, 0o640)), Ok(()));
        assert_eq!(ok(f(0, PEERD, 0o440)), Ok(()));
        // anything for others, group writes, or a group that is not trusted
        for (m, says) in [
            (f(0, PEERD, 0o644), "others (mode 0644)"),
            (f(0, 0, 0o604), "others (mode 0604)"),
            (f(0, PEERD, 0o660), "changed by its group (mode 0660)"),
            (f(0, 4242, 0o640), "read by group 4242 (mode 0640)"),
        ] {
            let e = ok(m).unwrap_err();
            assert!(e.contains(says), "{e}");
            assert!(
                e.contains("chown root:peerd /etc/peerd/secret && chmod 640"),
                "{e}"
            );
        }
    }

    #[test]
    fn who_may_read() {
        let peerd = User {
            name: "peerd".into(),
            uid: 990,
            gids: vec![PEERD],
        };
        let root = User {
            name: "root".into(),
            uid: 0,
            gids: vec![0],
        };
        // what the README used to say: root-only, the service cannot read it
        assert!(!permits(f(0, 0, 0o600), &peerd, 4));
        assert!(permits(f(0, 0, 0o600), &root, 4));
        // root:peerd 0640: through the group
        assert!(permits(f(0, PEERD, 0o640), &peerd, 4));
        // owner bits win over group bits, as in the kernel
        assert!(!permits(f(990, PEERD, 0o040), &peerd, 4));
        // folders need x
        assert!(permits(f(0, 0, 0o755), &peerd, 1));
        assert!(!permits(f(0, 0, 0o750), &peerd, 1));
        assert!(permits(f(0, PEERD, 0o750), &peerd, 1));
    }

    #[cfg(unix)]
    #[test]
    fn unreadable_files_and_folders_are_named() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("etc");
        std::fs::create_dir(&sub).unwrap();
        let file = sub.join("secret");
        std::fs::write(&file, "x").unwrap();
        let set =
            |p: &Path, m: u32| std::fs::set_permissions(p, PermissionsExt::from_mode(m)).unwrap();
        set(dir.path(), 0o755);
        set(&sub, 0o755);
        set(&file, 0o600);
        // someone who owns nothing here, in no group of these files
        let stranger = User {
            name: "stranger".into(),
            uid: 4_000_000,
            gids: vec![4_000_000],
        };
        let why = unreadable_by(&file, &stranger).unwrap();
        assert!(
            why.contains(&file.display().to_string()) && why.contains("mode 0600"),
            "{why}"
        );
        set(&file, 0o644);
        assert_eq!(unreadable_by(&file, &stranger), None);
        set(&sub, 0o700);
        let why = unreadable_by(&file, &stranger).unwrap();
        assert!(
            why.contains(&format!("may not enter {}", sub.display())),
            "{why}"
        );
    }
}
