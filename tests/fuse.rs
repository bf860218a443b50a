//! The FUSE mount on a real 3-node cluster: ordinary programs (sh, cat, cp, mv, rm, mkdir,
//! truncate, tar, git) on one node's mount, results on every node's. Needs /dev/fuse and root;
//! without them every test prints one `SKIPPED:` line.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// Whether this machine can mount FUSE filesystems; says why not, loudly, if it cannot.
fn fuse_available() -> bool {
    if !Path::new("/dev/fuse").exists() {
        println!("SKIPPED: no /dev/fuse");
        return false;
    }
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED: FUSE tests mount directly and need root");
        return false;
    }
    true
}

fn mount_of(tmp: &Path, i: usize) -> PathBuf {
    tmp.join(format!("mnt.{}", i + 1))
}

/// A cluster whose node i mounts at `<tmp>/mnt.<i+1>`.
fn mounted_cluster(extra: &[&str]) -> (Cluster, Vec<PathBuf>) {
    let c = Cluster::start_with(3, |i, tmp| {
        let mut args = vec!["--mount".to_string(), mount_of(tmp, i).display().to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    });
    let mounts: Vec<PathBuf> = (0..3).map(|i| mount_of(c.tmp.path(), i)).collect();
    for m in &mounts {
        wait_for(Duration::from_secs(20), "the mount", || {
            is_mounted(m).then_some(())
        });
    }
    (c, mounts)
}

fn is_mounted(path: &Path) -> bool {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    table
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| Path::new(m) == path)
}

/// Runs a shell command; returns (success, stdout, stderr).
fn sh(script: &str) -> (bool, String, String) {
    let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn ok(script: &str) -> String {
    let (success, out, err) = sh(script);
    assert!(success, "`{script}` failed: {err}");
    out
}

/// Every file (relative path → bytes) and directory under `root`.
fn tree(root: &Path) -> Vec<(String, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Option<Vec<u8>>)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if p.is_dir() {
                out.push((rel, None));
                walk(root, &p, out);
            } else {
                out.push((rel, Some(std::fs::read(&p).unwrap())));
            }
        }
    }
    walk(root, root, &mut out);
    out
}

#[test]
fn echo_on_one_node_cat_on_every_node() {
    if !fuse_available() {
        return;
    }
    let (mut c, m) = mounted_cluster(&[]);
    let leader = c.wait_leader();
    let follower = c.followers(leader)[0];
    let (ml, mf) = (
        &m[leader].display().to_string(),
        &m[follower].display().to_string(),
    );

    ok(&format!("echo BAR > {ml}/foo"));
    for mount in &m {
        assert_eq!(ok(&format!("cat {}/foo", mount.display())), "BAR\n");
    }
    // A write through a follower's mount.
    ok(&format!("echo from-follower > {mf}/bar"));
    assert_eq!(ok(&format!("cat {ml}/bar")), "from-follower\n");

    // mkdir, rename, truncate, rm, rmdir propagate.
    ok(&format!(
        "mkdir -p {mf}/d/e && echo x > {mf}/d/e/f && mv {mf}/d/e/f {mf}/d/g && truncate -s 1 {mf}/foo"
    ));
    for mount in &m {
        let mp = mount.display();
        assert_eq!(ok(&format!("cat {mp}/d/g")), "x\n");
        assert!(!mount.join("d/e/f").exists());
        assert_eq!(ok(&format!("cat {mp}/foo")), "B");
    }
    ok(&format!(
        "mv {ml}/d {ml}/renamed && rm {ml}/renamed/g && rmdir {ml}/renamed/e {ml}/renamed"
    ));
    for mount in &m {
        assert!(!mount.join("d").exists() && !mount.join("renamed").exists());
    }
    let (success, _, err) = sh(&format!("rmdir {ml}"));
    assert!(!success, "{err}");

    // ls -l looks normal: sizes and mtimes.
    let before = std::time::SystemTime::now() - Duration::from_secs(5);
    let meta = std::fs::metadata(m[2].join("bar")).unwrap();
    assert_eq!(meta.len(), "from-follower\n".len() as u64);
    assert!(meta.modified().unwrap() > before);
    let listing = ok(&format!("ls -l {}", m[2].display()));
    assert!(
        listing.contains(" 14 ") && listing.contains("bar") && listing.contains("-rw-r--r--"),
        "{listing}"
    );

    // HTTP → FUSE and FUSE → HTTP.
    assert_eq!(c.nodes[follower].post("/files/via-http", b"http body").0, 200);
    assert_eq!(ok(&format!("cat {}/via-http", m[leader].display())), "http body");
    ok(&format!("printf fuse-body > {ml}/via-fuse"));
    for n in &c.nodes {
        assert_eq!(n.get("/files/via-fuse"), (200, b"fuse-body".to_vec()));
    }
    // Bad names get EINVAL, unsupported operations a proper errno.
    let (success, _, err) = sh(&format!("ln -s foo {ml}/link"));
    assert!(!success && err.contains("not permitted"), "{err}");

    // Modes and owners are not replicated: a change fails loudly, setting what is shown works.
    let (success, _, err) = sh(&format!("chmod 600 {ml}/bar"));
    assert!(
        !success && err.contains("not permitted"),
        "chmod 600 must not pretend: {err}"
    );
    let (success, _, err) = sh(&format!("chown 1234 {ml}/bar"));
    assert!(
        !success && err.contains("not permitted"),
        "chown must not pretend: {err}"
    );
    ok(&format!(
        "chmod 644 {ml}/bar && chmod 755 {ml}/. && chown 0:0 {ml}/bar"
    ));

    // Two processes appending to one file through one mount share its buffer: every line of
    // both survives (each writer used to get a private copy, and the last close won).
    ok(&format!(
        "(for i in $(seq 40); do echo a$i; done) >> {ml}/shared.log & \
         (for i in $(seq 40); do echo b$i; done) >> {ml}/shared.log; wait"
    ));
    let text = ok(&format!("cat {mf}/shared.log"));
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort();
    let mut want: Vec<String> = (1..=40)
        .flat_map(|i| [format!("a{i}"), format!("b{i}")])
        .collect();
    want.sort();
    assert_eq!(lines, want, "both appenders' lines, on another node's mount");

    // An open file keeps the version it opened, whole, even after the kernel learnt the size
    // of a newer, shorter one (it used to cut reads at that size: "f5-1131" read as "f5-113").
    {
        use std::io::Read;
        assert_eq!(
            c.nodes[follower].post("/files/versioned", b"the long version").0,
            200
        );
        let mut old = std::fs::File::open(m[follower].join("versioned")).unwrap();
        assert_eq!(c.nodes[follower].post("/files/versioned", b"new").0, 200);
        assert_eq!(std::fs::metadata(m[follower].join("versioned")).unwrap().len(), 3);
        let mut seen = String::new();
        old.read_to_string(&mut seen).unwrap();
        assert_eq!(seen, "the long version");
        assert_eq!(std::fs::read(m[follower].join("versioned")).unwrap(), b"new");
    }

    // The mount is the mounting user's alone unless --allow-other; the kernel then need not
    // check modes (that would cost a getattr of the directory per path walk after changes).
    let options = mount_options(&m[0]);
    assert!(!options.contains("allow_other"), "{options}");
    assert!(!options.contains("default_permissions"), "{options}");
}

/// The kernel's super-block options of the mount at `path`.
fn mount_options(path: &Path) -> String {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = table
        .lines()
        .find(|l| l.split(' ').nth(4).is_some_and(|m| Path::new(m) == path))
        .unwrap();
    line.rsplit(' ').next().unwrap().to_string()
}

#[test]
fn allow_other_is_opt_in() {
    if !fuse_available() {
        return;
    }
    let c = Cluster::start_with(1, |i, tmp| {
        vec![
            "--mount".into(),
            mount_of(tmp, i).display().to_string(),
            "--allow-other".into(),
        ]
    });
    let mount = mount_of(c.tmp.path(), 0);
    wait_for(Duration::from_secs(20), "the mount", || {
        is_mounted(&mount).then_some(())
    });
    let options = mount_options(&mount);
    assert!(options.contains("allow_other"), "{options}");
    assert!(
        options.contains("default_permissions"),
        "other users get the modes files show: {options}"
    );
}

#[test]
fn large_files_tarballs_and_git_leave_identical_trees() {
    if !fuse_available() {
        return;
    }
    let (mut c, m) = mounted_cluster(&[]);
    let leader = c.wait_leader();
    let writer = c.followers(leader)[0];
    let work = c.tmp.path().join("work");
    std::fs::create_dir_all(work.join("src")).unwrap();

    // 64 MiB through a follower's mount, without holding it in memory.
    let big: Vec<u8> = (0..64u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(work.join("big.bin"), &big).unwrap();
    ok(&format!(
        "cp {}/big.bin {}/big.bin",
        work.display(),
        m[writer].display()
    ));
    for (i, mount) in m.iter().enumerate() {
        assert!(
            std::fs::read(mount.join("big.bin")).unwrap() == big,
            "node {i} has the exact bytes"
        );
    }
    let status = std::fs::read_to_string(format!(
        "/proc/{}/status",
        c.nodes[writer].child.as_ref().unwrap().id()
    ))
    .unwrap();
    let peak_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(peak_kb < 48 * 1024, "peak RSS {peak_kb} kB while copying 64 MiB");

    // A tarball of a few hundred files, unpacked into the mount.
    for i in 0..300 {
        let dir = work.join(format!("src/d{}", i % 12));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(format!("f{i}.txt")),
            format!("file {i}\n").repeat(i % 7 + 1),
        )
        .unwrap();
    }
    ok(&format!("cd {} && tar cf src.tar src", work.display()));
    ok(&format!(
        "tar xf {}/src.tar -C {}",
        work.display(),
        m[writer].display()
    ));
    assert_eq!(tree(&m[writer].join("src")), tree(&work.join("src")));

    // git inside the mount.
    let repo = m[leader].join("repo");
    ok(&format!(
        "mkdir {r} && cd {r} && git init -q && cp -r {src} . && git add . && \
         git -c user.name=raftd -c user.email=raftd@localhost commit -qm 'first' && git status --short",
        r = repo.display(),
        src = work.join("src").display()
    ));
    assert!(ok(&format!(
        "cd {} && git log --oneline",
        m[writer].join("repo").display()
    ))
    .contains("first"));

    // Identical trees on all nodes: through every mount and in every data directory.
    let reference = tree(&m[0]);
    assert!(reference.len() > 300);
    for (i, mount) in m.iter().enumerate().skip(1) {
        assert!(tree(mount) == reference, "mount {i} differs");
    }
    for node in &c.nodes {
        wait_for(Duration::from_secs(20), "data dirs to converge", || {
            (tree(&node.dir.join("files")) == reference).then_some(())
        });
    }
}

#[test]
fn close_fails_without_quorum_and_mounts_recover() {
    if !fuse_available() {
        return;
    }
    let (mut c, m) = mounted_cluster(&["--request-timeout-ms", "2000"]);
    let leader = c.wait_leader();
    let [a, b] = c.followers(leader)[..] else { panic!() };
    ok(&format!("echo before > {}/f", m[a].display()));
    // A file held open across the outage, with written data not yet committed.
    let mut held = std::fs::File::create(m[a].join("sticky")).unwrap();
    std::io::Write::write_all(&mut held, b"must not be lost").unwrap();

    // The kernel caches the mount root's attributes: the restart below must still see the
    // mount as stale, not busy.
    std::fs::metadata(&m[b]).unwrap();

    // Quorum lost: the write is refused at close, visibly, in bounded time.
    c.nodes[leader].kill();
    c.nodes[b].kill();
    let fsync = held.sync_all().unwrap_err();
    assert_eq!(fsync.raw_os_error(), Some(libc::EIO), "{fsync}");
    let started = Instant::now();
    let (success, _, err) = sh(&format!("echo lost > {}/f", m[a].display()));
    assert!(!success, "close must fail without a quorum");
    assert!(err.contains("Input/output error"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    // The killed nodes left stale mounts ("Transport endpoint is not connected"; `statfs`,
    // because attributes the kernel cached may still answer `stat`).
    let stale = {
        let path = std::ffi::CString::new(m[b].display().to_string()).unwrap();
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        assert_ne!(unsafe { libc::statfs(path.as_ptr(), &mut st) }, 0);
        std::io::Error::last_os_error()
    };
    assert_eq!(stale.raw_os_error(), Some(libc::ENOTCONN), "{stale}");
    c.nodes[b].spawn();
    c.nodes[leader].spawn();
    wait_for(Duration::from_secs(30), "the remount to serve", || {
        (std::fs::read_to_string(m[b].join("f")).ok()? == "before\n").then_some(())
    });
    assert!(c.nodes[b].logs().contains("detaching a stale mount"));

    // The failed fsync's error sticks to the data: the next fsync commits it for real, rather
    // than reporting success for data that never reached a quorum.
    c.wait_leader();
    held.sync_all().unwrap();
    for n in &c.nodes {
        assert_eq!(
            n.get("/files/sticky"),
            (200, b"must not be lost".to_vec()),
            "{}",
            n.name
        );
    }
    drop(held);
    c.wait_leader();
    ok(&format!("echo after > {}/f", m[a].display()));
    assert_eq!(ok(&format!("cat {}/f", m[leader].display())), "after\n");

    // A busy mount point and a file as mount point are refused with a clear message.
    let run_other = |dir: &str, mount: &Path| {
        let socket = listener();
        let port = socket.local_addr().unwrap().port().to_string();
        let mut cmd = Command::new(bin());
        cmd.arg(c.tmp.path().join(dir))
            .args(["--port", &port, "--mount", &mount.display().to_string()]);
        pass_listener(&mut cmd, &socket);
        cmd.output().unwrap()
    };
    let busy = run_other("other", &m[a]);
    assert!(!busy.status.success());
    assert!(
        String::from_utf8_lossy(&busy.stderr).contains("busy"),
        "{}",
        String::from_utf8_lossy(&busy.stderr)
    );
    let file = c.tmp.path().join("plain-file");
    std::fs::write(&file, b"").unwrap();
    let not_dir = run_other("other2", &file);
    assert!(String::from_utf8_lossy(&not_dir.stderr).contains("not a directory"));

    // SIGTERM unmounts cleanly.
    c.nodes[a].signal(libc::SIGTERM);
    wait_for(Duration::from_secs(20), "the node to exit", || {
        (!c.nodes[a].is_running()).then_some(())
    });
    assert!(!is_mounted(&m[a]), "unmounted on SIGTERM");
}

/// A file deleted or renamed on another node while open for writing here is not re-created
/// under its old name when the writer closes (its contents go, as an unlinked file's do).
#[test]
fn a_file_removed_elsewhere_while_open_is_not_resurrected_and_one_renamed_follows_its_name() {
    if !fuse_available() {
        return;
    }
    let (mut c, m) = mounted_cluster(&[]);
    let leader = c.wait_leader();
    let here = c.followers(leader)[0];
    for name in ["deleted", "renamed", "renamed-late"] {
        assert_eq!(
            c.nodes[leader].post(&format!("/files/{name}"), b"original").0,
            200
        );
        c.wait_replicated(here, name, b"original");
    }
    let open = |name: &str| {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(m[here].join(name))
            .unwrap();
        std::io::Write::write_all(&mut f, b" and more").unwrap();
        f
    };
    let (deleted, renamed, late) = (open("deleted"), open("renamed"), open("renamed-late"));
    assert_eq!(c.nodes[leader].delete("/files/deleted").0, 200);
    // In this process: a child's exec would close its copies of the open files, and each close
    // flushes (commits) the writer.
    std::fs::rename(m[leader].join("renamed"), m[leader].join("moved")).unwrap();
    c.wait_replicated(here, "moved", b"original");
    // Renamed and committed at once: this node may not have applied the rename yet when the
    // handle commits; the commit then catches up and follows the name.
    std::fs::rename(m[leader].join("renamed-late"), m[leader].join("moved-late")).unwrap();
    late.sync_all().unwrap();
    // Closing succeeds: the data of a removed file is dropped (as POSIX does for an unlinked
    // one) and its name does not come back; a renamed file's data lands under its new name.
    deleted.sync_all().unwrap();
    renamed.sync_all().unwrap();
    drop((deleted, renamed, late));
    let leader = c.wait_leader();
    for n in &c.nodes {
        for gone in ["deleted", "renamed", "renamed-late"] {
            assert_eq!(n.get(&format!("/files/{gone}")).0, 404, "{gone} on {}", n.name);
        }
    }
    for moved in ["moved", "moved-late"] {
        for i in 0..c.nodes.len() {
            c.wait_replicated(i, moved, b"original and more");
        }
        assert_eq!(std::fs::read(m[here].join(moved)).unwrap(), b"original and more");
    }
    assert_eq!(c.nodes[leader].get("/files/deleted").0, 404);
}

#[test]
fn directories_count_their_subdirectories_and_files_their_blocks() {
    if !fuse_available() {
        return;
    }
    let (_c, mounts) = mounted_cluster(&[]);
    use std::os::unix::fs::MetadataExt;
    let d = mounts[0].join("d");
    std::fs::create_dir(&d).unwrap();
    for sub in ["a", "b", "c"] {
        std::fs::create_dir(d.join(sub)).unwrap();
    }
    std::fs::write(d.join("f"), vec![7u8; 10_000]).unwrap();
    // POSIX: a directory's link count is 2 (itself and its `.`) + one `..` per subdirectory;
    // `find` and other tools rely on it. On every node.
    for m in &mounts {
        wait_for(Duration::from_secs(20), "the tree on every mount", || {
            std::fs::metadata(m.join("d/f")).ok()
        });
        assert_eq!(
            std::fs::metadata(m.join("d")).unwrap().nlink(),
            5,
            "on {}",
            m.display()
        );
        assert_eq!(std::fs::metadata(m.join("d/a")).unwrap().nlink(), 2);
        let f = std::fs::metadata(m.join("d/f")).unwrap();
        assert_eq!(f.nlink(), 1);
        assert!(
            f.blocks() >= 10_000 / 512,
            "blocks {} for 10,000 bytes",
            f.blocks()
        );
    }
    std::fs::remove_dir(d.join("b")).unwrap();
    assert_eq!(std::fs::metadata(&d).unwrap().nlink(), 4);
}

#[test]
fn files_past_the_largest_size_are_efbig_not_eio() {
    if !fuse_available() {
        return;
    }
    let (_c, mounts) = mounted_cluster(&["--max-file-size", "1048576"]);
    let f = mounts[0].join("f");
    std::fs::write(&f, b"keep").unwrap();
    let open = || std::fs::OpenOptions::new().write(true).open(&f).unwrap();
    // POSIX: a size past the largest file is EFBIG, as a local filesystem answers.
    for size in [(1 << 20) + 1, 100 << 40] {
        let err = open().set_len(size).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EFBIG), "truncate to {size}: {err}");
    }
    let err = std::os::unix::fs::FileExt::write_at(&open(), b"x", 1 << 20).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EFBIG),
        "write past the limit: {err}"
    );
    assert_eq!(std::fs::read(&f).unwrap(), b"keep");
    // Up to the limit is fine.
    open().set_len(1 << 20).unwrap();
    assert_eq!(std::fs::metadata(&f).unwrap().len(), 1 << 20);
}

/// `*at` calls relative to a directory, for paths too long to be given whole from `/` (as
/// programs working inside a tree use them).
struct At(std::fs::File);

impl At {
    fn new(dir: &Path) -> At {
        At(std::fs::File::open(dir).unwrap())
    }

    fn c(path: &str) -> std::ffi::CString {
        std::ffi::CString::new(path).unwrap()
    }

    fn errno<T: PartialOrd + Default>(r: T) -> Result<T, i32> {
        if r < T::default() {
            Err(std::io::Error::last_os_error().raw_os_error().unwrap())
        } else {
            Ok(r)
        }
    }

    fn dir(&self, path: &str) -> At {
        use std::os::fd::{AsRawFd, FromRawFd};
        let flags = libc::O_RDONLY | libc::O_DIRECTORY;
        let fd =
            Self::errno(unsafe { libc::openat(self.0.as_raw_fd(), Self::c(path).as_ptr(), flags) }).unwrap();
        At(unsafe { std::fs::File::from_raw_fd(fd) })
    }

    fn mkdir(&self, path: &str) -> Result<(), i32> {
        use std::os::fd::AsRawFd;
        Self::errno(unsafe { libc::mkdirat(self.0.as_raw_fd(), Self::c(path).as_ptr(), 0o755) }).map(|_| ())
    }

    fn write(&self, path: &str, data: &[u8]) -> Result<(), i32> {
        use std::os::fd::{AsRawFd, FromRawFd};
        let flags = libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC;
        let fd =
            Self::errno(unsafe { libc::openat(self.0.as_raw_fd(), Self::c(path).as_ptr(), flags, 0o644) })?;
        let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
        std::io::Write::write_all(&mut file, data).map_err(|e| e.raw_os_error().unwrap())
    }

    fn read(&self, path: &str) -> Result<Vec<u8>, i32> {
        use std::os::fd::{AsRawFd, FromRawFd};
        let fd =
            Self::errno(unsafe { libc::openat(self.0.as_raw_fd(), Self::c(path).as_ptr(), libc::O_RDONLY) })?;
        let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut data).map_err(|e| e.raw_os_error().unwrap())?;
        Ok(data)
    }
}

#[test]
fn paths_as_long_as_linux_allows_work_on_the_mount_and_over_http() {
    if !fuse_available() {
        return;
    }
    let (c, mounts) = mounted_cluster(&[]);
    // 15 directories and a file, 255 bytes each: 4,095 bytes from the root (PATH_MAX - 1).
    let components: Vec<String> = (0..16).map(|i| format!("{i:x}").repeat(255)).collect();
    let name = components.join("/");
    assert_eq!(name.len(), 4095);
    let here = At::new(&mounts[0]);
    for depth in 1..16 {
        here.mkdir(&components[..depth].join("/")).unwrap();
    }
    here.write(&name, b"deep").unwrap();
    // The same name over HTTP on another node, and through a third node's mount.
    let (code, body) = c.nodes[1].get(&format!("/files/{name}"));
    assert_eq!((code, body.as_slice()), (200, &b"deep"[..]));
    assert_eq!(At::new(&mounts[2]).read(&name).unwrap(), b"deep");
    // Longer is refused: ENAMETOOLONG on the mount (reached from a directory deep inside, so
    // the kernel does not see the whole path), 400 over HTTP.
    let deep = here.dir(&components[..15].join("/"));
    deep.mkdir("z").unwrap();
    assert_eq!(
        deep.dir("z").write(&"y".repeat(255), b"no"),
        Err(libc::ENAMETOOLONG)
    );
    let (code, _) = c.nodes[1].request("PUT", &format!("/files/{name}y"), b"no");
    assert_eq!(code, 400);
}

/// Blocks the local copy of `path` occupies (512-byte units), and where its first data is
/// (`SEEK_DATA` from 0; `None` if it holds none).
fn layout_of(path: &Path) -> (u64, Option<u64>) {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let file = std::fs::File::open(path).unwrap();
    let data = unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_DATA) };
    (
        file.metadata().unwrap().blocks(),
        (data >= 0).then_some(data as u64),
    )
}

fn fallocate(path: &Path, mode: i32, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let r = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset as i64, len as i64) };
    assert_eq!(r, 0, "fallocate {mode:#x}: {}", std::io::Error::last_os_error());
}

/// Writes cost what they change: a byte far out in a file, a 16 GiB length, a one-byte change
/// to a large file each travel as a small `file:patch`, leave holes on every replica, and read
/// back exactly; `fallocate` punches and zeroes ranges as holes; `SEEK_DATA` on the mount
/// finds the data.
#[test]
fn writes_cost_what_they_change_and_holes_stay_holes() {
    use std::os::unix::fs::FileExt;
    if !fuse_available() {
        return;
    }
    let (mut c, mounts) = mounted_cluster(&[]);
    let leader = c.wait_leader();
    let logs: Vec<PathBuf> = c.nodes.iter().map(|n| n.dir.join("log")).collect();
    let log_len = |i: usize| std::fs::metadata(&logs[i]).unwrap().len();
    let on_every_node = |name: &str, what: &str, check: &dyn Fn(&Path) -> bool| {
        for n in &c.nodes {
            let local = n.dir.join("files").join(name);
            wait_for(Duration::from_secs(20), &format!("{what} on {}", n.name), || {
                (local.exists() && check(&local)).then_some(())
            });
        }
    };

    // One byte at 2^31 + 1 (this used to send 2 GiB of zeros through the log).
    let far = (1u64 << 31) + 1;
    let before = log_len(leader);
    let f = mounts[1].join("far");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&f)
        .unwrap();
    file.write_all_at(b"x", far).unwrap();
    drop(file);
    assert_eq!(std::fs::metadata(&f).unwrap().len(), far + 1);
    on_every_node("far", "a sparse 2 GiB file", &|p| {
        let mut byte = [0u8];
        std::fs::File::open(p)
            .unwrap()
            .read_exact_at(&mut byte, far)
            .is_ok()
            && &byte == b"x"
    });
    for n in &c.nodes {
        let (blocks, data) = layout_of(&n.dir.join("files/far"));
        assert!(blocks <= 64, "{}: far is sparse, {blocks} blocks", n.name);
        assert!(data.unwrap() >= 1 << 31, "{}: first data at {data:?}", n.name);
    }
    assert!(log_len(leader) - before < 4096, "one small entry for one byte");
    assert!(std::fs::read_to_string(&logs[leader])
        .unwrap()
        .contains(" file:patch {\"filename\":\"far\""));

    // A 16 GiB length (the default largest file): instant, nothing but a length anywhere.
    let huge = mounts[0].join("huge");
    ok(&format!("truncate -s 16G {}", huge.display()));
    on_every_node("huge", "a 16 GiB hole", &|p| {
        std::fs::metadata(p).unwrap().len() == 16 << 30
    });
    for n in &c.nodes {
        assert_eq!(
            layout_of(&n.dir.join("files/huge")),
            (0, None),
            "{}: all hole",
            n.name
        );
    }

    // One byte changed in an 8 MiB file: a one-byte entry; the rest unchanged everywhere.
    let big = mounts[2].join("big");
    let contents: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&big, &contents).unwrap();
    let before = log_len(leader);
    let file = std::fs::OpenOptions::new().write(true).open(&big).unwrap();
    file.write_all_at(b"Z", 4 << 20).unwrap();
    drop(file);
    assert!(
        log_len(leader) - before < 4096,
        "one small entry for one byte changed"
    );
    let mut expected = contents.clone();
    expected[4 << 20] = b'Z';
    on_every_node("big", "the one-byte change", &|p| {
        std::fs::read(p).unwrap() == expected
    });

    // Punch the first MiB, zero a range in the middle, lengthen by fallocate: holes, not zeros.
    fallocate(
        &big,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        0,
        1 << 20,
    );
    fallocate(
        &big,
        libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
        2 << 20,
        1 << 20,
    );
    fallocate(&big, 0, 0, 9 << 20);
    expected[..1 << 20].fill(0);
    expected[2 << 20..3 << 20].fill(0);
    expected.resize(9 << 20, 0);
    assert_eq!(
        std::fs::read(&big).unwrap(),
        expected,
        "the mount reads the new version"
    );
    on_every_node("big", "the punched file", &|p| {
        std::fs::read(p).unwrap() == expected
    });
    for n in &c.nodes {
        let (blocks, data) = layout_of(&n.dir.join("files/big"));
        assert_eq!(data, Some(1 << 20), "{}: the punched MiB is a hole", n.name);
        assert!(blocks <= 7 << 11, "{}: {blocks} blocks for 6 MiB of data", n.name);
    }
    // The mount finds holes too (lseek SEEK_DATA / SEEK_HOLE through FUSE).
    assert_eq!(layout_of(&mounts[0].join("big")).1, Some(1 << 20));
    assert!(layout_of(&mounts[0].join("far")).1.unwrap() >= 1 << 31);
    // Unsupported modes say so.
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new().write(true).open(&big).unwrap();
    let r = unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_COLLAPSE_RANGE, 0, 4096) };
    assert_eq!(
        (r, std::io::Error::last_os_error().raw_os_error()),
        (-1, Some(libc::EOPNOTSUPP))
    );
}

/// A small deterministic generator (xorshift64*), so a failing run is repeated by its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A randomized exerciser in the spirit of fsx: one file on one node's mount, driven through
/// writes, reads, truncates, punched and zeroed ranges, shared writable mappings flushed by
/// `msync`, fsyncs and reopenings, each checked against an in-memory model; at every close the
/// other nodes' mounts must show the model too. `RAFTD_FSX_OPS` sets the number of operations
/// (a bounded run in CI), `RAFTD_FSX_SEED` the seed.
#[test]
fn a_randomized_exerciser_agrees_with_a_model_on_every_node() {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    if !fuse_available() {
        return;
    }
    let ops: usize = std::env::var("RAFTD_FSX_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500);
    let seed: u64 = std::env::var("RAFTD_FSX_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rand::random::<u64>() | 1);
    println!("fsx: {ops} operations, seed {seed} (RAFTD_FSX_SEED={seed} repeats this run)");
    let (mut c, mounts) = mounted_cluster(&[]);
    let leader = c.wait_leader();
    // Meanwhile, linearizable reads through another node, and the leader's quorum-ack age:
    // the quorum guard must never refuse on this healthy, busy cluster.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        let reader = c.nodes[(leader + 1) % 3].name.clone();
        let leader = c.nodes[leader].name.clone();
        std::thread::spawn(move || {
            let (mut reads, mut refused, mut max_age) = (0u64, Vec::new(), 0u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((code, body)) = http(&reader, "GET", "/files/fsx", b"") {
                    reads += 1;
                    if code == 503 {
                        refused.push(String::from_utf8_lossy(&body).to_string());
                    }
                }
                if let Ok((200, body)) = http(&leader, "GET", "/status", b"") {
                    let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    max_age = max_age.max(status["millis_since_quorum_ack"].as_u64().unwrap_or(0));
                }
            }
            (reads, refused, max_age)
        })
    };
    let path = mounts[0].join("fsx");
    let mut rng = Rng(seed);
    let mut model: Vec<u8> = Vec::new();
    let open = |truncate: bool| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(truncate)
            .open(&path)
            .unwrap()
    };
    let mut file = open(true);
    const SPAN: u64 = 256 << 10;
    let page = 4096u64;
    let check_everywhere = |model: &[u8], step: usize| {
        for m in &mounts {
            let p = m.join("fsx");
            wait_for(
                Duration::from_secs(20),
                &format!("step {step}: {} shows the model", p.display()),
                || (std::fs::read(&p).ok()? == model).then_some(()),
            );
        }
    };
    for step in 0..ops {
        let ctx = |what: &str| format!("seed {seed} step {step}: {what}");
        let len = model.len() as u64;
        match rng.below(100) {
            0..=29 => {
                let offset = rng.below(SPAN);
                let n = 1 + rng.below(16 << 10) as usize;
                let data: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                file.write_all_at(&data, offset)
                    .unwrap_or_else(|e| panic!("{}: {e}", ctx("write")));
                let end = offset as usize + n;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[offset as usize..end].copy_from_slice(&data);
            }
            30..=49 => {
                let offset = rng.below(len + 1);
                let n = rng.below(32 << 10) as usize;
                let mut buf = vec![0u8; n];
                let mut got = 0;
                while got < n {
                    match file.read_at(&mut buf[got..], offset + got as u64) {
                        Ok(0) => break,
                        Ok(k) => got += k,
                        Err(e) => panic!("{}: {e}", ctx("read")),
                    }
                }
                let want_end = (offset as usize + n).min(model.len());
                let want = &model[(offset as usize).min(want_end)..want_end];
                assert!(
                    &buf[..got] == want,
                    "{}",
                    ctx(&format!("read {n} at {offset}: got {got} bytes, differ"))
                );
            }
            50..=59 => {
                let size = rng.below(SPAN + SPAN / 4);
                file.set_len(size)
                    .unwrap_or_else(|e| panic!("{}: {e}", ctx("truncate")));
                model.resize(size as usize, 0);
            }
            60..=67 => {
                let offset = rng.below(len + 1);
                let n = rng.below(64 << 10);
                let zero = rng.below(2) == 0;
                let mode = if zero {
                    libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
                } else {
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
                };
                let r = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset as i64, n.max(1) as i64) };
                assert_eq!(r, 0, "{}: {}", ctx("fallocate"), std::io::Error::last_os_error());
                let end = ((offset + n.max(1)) as usize).min(model.len());
                if (offset as usize) < end {
                    model[offset as usize..end].fill(0);
                }
            }
            68..=79 if len >= page => {
                // A shared writable mapping of whole pages inside the file, flushed by msync.
                let first = rng.below(len / page);
                let pages = 1 + rng.below((len / page - first).min(8));
                let map_len = (pages * page).min(len - first * page) as usize;
                let addr = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        map_len,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_SHARED,
                        file.as_raw_fd(),
                        (first * page) as i64,
                    )
                };
                assert_ne!(
                    addr,
                    libc::MAP_FAILED,
                    "{}: {}",
                    ctx("mmap"),
                    std::io::Error::last_os_error()
                );
                let mapped = unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, map_len) };
                let base = (first * page) as usize;
                assert!(
                    mapped[..] == model[base..base + map_len],
                    "{}",
                    ctx("mapped pages differ")
                );
                let at = rng.below(map_len as u64) as usize;
                let n = (1 + rng.below(4096) as usize).min(map_len - at);
                for (i, b) in mapped[at..at + n].iter_mut().enumerate() {
                    *b = (step + i) as u8 | 1;
                    model[base + at + i] = *b;
                }
                let r = unsafe { libc::msync(addr, map_len, libc::MS_SYNC) };
                assert_eq!(r, 0, "{}: {}", ctx("msync"), std::io::Error::last_os_error());
                unsafe { libc::munmap(addr, map_len) };
            }
            80..=87 => file
                .sync_all()
                .unwrap_or_else(|e| panic!("{}: {e}", ctx("fsync"))),
            _ => {
                // Close, check every node, reopen (sometimes truncating).
                drop(file);
                check_everywhere(&model, step);
                let truncate = rng.below(4) == 0;
                file = open(truncate);
                if truncate {
                    model.clear();
                }
            }
        }
    }
    drop(file);
    check_everywhere(&model, ops);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (reads, refused, max_age) = watcher.join().unwrap();
    println!("fsx: {reads} linearizable reads meanwhile, longest quorum-ack age {max_age} ms");
    assert!(reads > 0);
    assert!(
        refused.is_empty(),
        "the quorum guard refused on a healthy cluster: {refused:?}"
    );
}

/// What `tar x` does over files that exist: `open(O_EXCL)` fails, so it removes the file
/// and creates it again at once. The new file's contents must be committed, through the
/// leader's mount and a follower's (the removal's invalidation, held back by the kernel
/// until the create ended, used to retire the new file's number — the same number, as
/// numbers come from the path — and its contents were dropped at close: 8–15 of 20 lost).
#[test]
fn a_file_removed_and_created_again_at_once_keeps_its_new_contents() {
    use std::os::unix::fs::OpenOptionsExt;
    if !fuse_available() {
        return;
    }
    let (mut c, mounts) = mounted_cluster(&[]);
    let leader = c.wait_leader();
    let follower = (leader + 1) % 3;
    for n in [leader, follower] {
        let dir = mounts[n].join(format!("again{n}"));
        std::fs::create_dir(&dir).unwrap();
        for i in 0..20 {
            std::fs::write(dir.join(format!("f{i}")), b"old").unwrap();
        }
        for i in 0..20 {
            let path = dir.join(format!("f{i}"));
            let create = || {
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o644)
                    .open(&path)
            };
            let mut file = match create() {
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    std::fs::remove_file(&path).unwrap();
                    create().unwrap()
                }
                other => other.unwrap(),
            };
            std::io::Write::write_all(&mut file, format!("new {i}").as_bytes()).unwrap();
            drop(file);
            let read = std::fs::read(&path).map_err(|e| e.kind());
            assert_eq!(
                read,
                Ok(format!("new {i}").into_bytes()),
                "f{i} through node {n}'s mount"
            );
        }
        for other in 0..3 {
            c.wait_replicated(other, &format!("again{n}/f19"), b"new 19");
            for i in 0..20 {
                let got = c.nodes[other].get(&format!("/files/again{n}/f{i}"));
                assert_eq!(got, (200, format!("new {i}").into_bytes()));
            }
        }
    }
}

/// POSIX lifetimes: a file created and not yet closed is listed, removable and renamable; an
/// open file survives `unlink` (`fstat` shows no links, reads see its data) and its later
/// writes never bring it back.
#[test]
fn open_files_outlive_their_names_and_never_come_back() {
    use std::io::{Read, Seek, Write};
    use std::os::unix::fs::MetadataExt;
    if !fuse_available() {
        return;
    }
    let (c, mounts) = mounted_cluster(&[]);
    let m = &mounts[1];
    let names = |dir: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    let rw = |p: &Path, create: bool| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(create)
            .open(p)
            .unwrap()
    };

    // Created, written, not closed: listed and stat-able here.
    let mut created = rw(&m.join("created"), true);
    created.write_all(b"abc").unwrap();
    assert_eq!(names(m), ["created"]);
    assert_eq!(std::fs::metadata(m.join("created")).unwrap().nlink(), 1);
    // Unlinked while open: fstat shows no links, the data is still there, writes go nowhere.
    std::fs::remove_file(m.join("created")).unwrap();
    assert!(names(m).is_empty());
    let meta = created.metadata().unwrap();
    assert_eq!((meta.nlink(), meta.len()), (0, 3));
    created.write_all(b"def").unwrap();
    created.rewind().unwrap();
    let mut back = String::new();
    created.read_to_string(&mut back).unwrap();
    assert_eq!(back, "abcdef");
    created.sync_all().unwrap();
    drop(created);

    // A committed file, open for reading and for writing, unlinked.
    std::fs::write(m.join("kept"), b"committed").unwrap();
    let mut reader = std::fs::File::open(m.join("kept")).unwrap();
    let mut writer = rw(&m.join("kept"), false);
    std::fs::remove_file(m.join("kept")).unwrap();
    let meta = reader.metadata().unwrap();
    assert_eq!((meta.nlink(), meta.len()), (0, 9), "fstat after unlink");
    let mut text = String::new();
    reader.read_to_string(&mut text).unwrap();
    assert_eq!(text, "committed");
    assert_eq!(writer.metadata().unwrap().nlink(), 0);
    writer.write_all(b"resurrected?").unwrap();
    writer.sync_all().unwrap();
    drop(writer);

    // Open only for reading, unlinked: fstat answers from the reader (pjdfstest unlink/14).
    std::fs::write(m.join("read-only"), b"only read").unwrap();
    let mut lone = std::fs::File::open(m.join("read-only")).unwrap();
    std::fs::remove_file(m.join("read-only")).unwrap();
    let meta = lone.metadata().unwrap();
    assert_eq!(
        (meta.nlink(), meta.len()),
        (0, 9),
        "fstat of a lone reader after unlink"
    );
    let mut text = String::new();
    lone.read_to_string(&mut text).unwrap();
    assert_eq!(text, "only read");
    drop(lone);

    // Created and renamed while open: its later writes land under the new name.
    let mut moved = rw(&m.join("draft"), true);
    moved.write_all(b"first ").unwrap();
    std::fs::rename(m.join("draft"), m.join("final")).unwrap();
    moved.write_all(b"second").unwrap();
    drop(moved);

    for (i, n) in c.nodes.iter().enumerate() {
        let files = n.dir.join("files");
        wait_for(Duration::from_secs(20), &format!("final on {}", n.name), || {
            (std::fs::read(files.join("final")).ok()? == b"first second").then_some(())
        });
        assert_eq!(names(&files), ["final"], "{}: nothing came back", n.name);
        assert_eq!(names(&mounts[i]), ["final"], "{}'s mount", n.name);
    }
}

/// One row of the conformance table: a system call on the mount and what POSIX (Linux, as on
/// ext4) answers, or the documented refusal for what raftd deliberately does not replicate.
struct Row {
    call: String,
    run: Call,
    want: Result<(), i32>,
}

/// A system call against the mount's root: success or the errno.
type Call = Box<dyn Fn(&Path) -> Result<(), i32>>;

fn cpath(root: &Path, rel: &str) -> std::ffi::CString {
    std::ffi::CString::new(root.join(rel).into_os_string().into_encoded_bytes()).unwrap()
}

fn sys(r: libc::c_int) -> Result<(), i32> {
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    } else {
        Ok(())
    }
}

/// Opens `rel` with `flags`, runs `f` on the descriptor, closes it.
fn with_fd(root: &Path, rel: &str, flags: i32, f: impl Fn(i32) -> libc::c_int) -> Result<(), i32> {
    let fd = unsafe { libc::open(cpath(root, rel).as_ptr(), flags, 0o644) };
    sys(fd)?;
    let r = sys(f(fd));
    let closed = sys(unsafe { libc::close(fd) });
    r.and(closed)
}

fn row(call: &str, want: Result<(), i32>, run: impl Fn(&Path) -> Result<(), i32> + 'static) -> Row {
    Row {
        call: call.to_string(),
        run: Box::new(run),
        want,
    }
}

fn errno_name(e: i32) -> String {
    let names = [
        (libc::ENOENT, "ENOENT"),
        (libc::EEXIST, "EEXIST"),
        (libc::EISDIR, "EISDIR"),
        (libc::ENOTDIR, "ENOTDIR"),
        (libc::ENOTEMPTY, "ENOTEMPTY"),
        (libc::EINVAL, "EINVAL"),
        (libc::EPERM, "EPERM"),
        (libc::EFBIG, "EFBIG"),
        (libc::ENAMETOOLONG, "ENAMETOOLONG"),
        (libc::EOPNOTSUPP, "EOPNOTSUPP"),
        (libc::ENXIO, "ENXIO"),
        (libc::EBADF, "EBADF"),
        (libc::EIO, "EIO"),
    ];
    names
        .iter()
        .find(|(n, _)| *n == e)
        .map_or_else(|| format!("errno {e}"), |(_, s)| s.to_string())
}

/// The mount against a table of system calls and their expected results (in the spirit of
/// pjdfstest): names, directories, renames, truncates, times, holes, and the deliberate
/// refusals (symlinks, hard links, devices, modes, owners). Every mismatch is reported at once.
#[test]
fn the_mount_answers_system_calls_as_posix_says() {
    if !fuse_available() {
        return;
    }
    let (c, mounts) = mounted_cluster(&[]);
    let root = mounts[0].clone();
    ok(&format!(
        "cd {} && mkdir -p d e n && echo x > d/f && echo y > n/child",
        root.display()
    ));
    let ro = libc::O_RDONLY;
    let wo = libc::O_WRONLY;
    let long_name = "a".repeat(256);
    let past_max = (16u64 << 30) + 1;
    let table = vec![
        row("open(missing, O_RDONLY)", Err(libc::ENOENT), move |r| {
            with_fd(r, "missing", ro, |_| 0)
        }),
        row("open(d/f, O_CREAT|O_EXCL)", Err(libc::EEXIST), move |r| {
            with_fd(r, "d/f", wo | libc::O_CREAT | libc::O_EXCL, |_| 0)
        }),
        row("open(d, O_WRONLY)", Err(libc::EISDIR), move |r| {
            with_fd(r, "d", wo, |_| 0)
        }),
        row("open(d/f, O_DIRECTORY)", Err(libc::ENOTDIR), move |r| {
            with_fd(r, "d/f", ro | libc::O_DIRECTORY, |_| 0)
        }),
        row("open(d/f/x, O_CREAT)", Err(libc::ENOTDIR), move |r| {
            with_fd(r, "d/f/x", wo | libc::O_CREAT, |_| 0)
        }),
        row("open(<256 bytes>, O_CREAT)", Err(libc::ENAMETOOLONG), move |r| {
            with_fd(r, &long_name, wo | libc::O_CREAT, |_| 0)
        }),
        row("mkdir(d)", Err(libc::EEXIST), |r| {
            sys(unsafe { libc::mkdir(cpath(r, "d").as_ptr(), 0o755) })
        }),
        row("mkdir(missing/x)", Err(libc::ENOENT), |r| {
            sys(unsafe { libc::mkdir(cpath(r, "missing/x").as_ptr(), 0o755) })
        }),
        row("mkdir(d/f/x)", Err(libc::ENOTDIR), |r| {
            sys(unsafe { libc::mkdir(cpath(r, "d/f/x").as_ptr(), 0o755) })
        }),
        row("rmdir(n) non-empty", Err(libc::ENOTEMPTY), |r| {
            sys(unsafe { libc::rmdir(cpath(r, "n").as_ptr()) })
        }),
        row("rmdir(d/f) a file", Err(libc::ENOTDIR), |r| {
            sys(unsafe { libc::rmdir(cpath(r, "d/f").as_ptr()) })
        }),
        row("rmdir(missing)", Err(libc::ENOENT), |r| {
            sys(unsafe { libc::rmdir(cpath(r, "missing").as_ptr()) })
        }),
        row("unlink(e) a directory", Err(libc::EISDIR), |r| {
            sys(unsafe { libc::unlink(cpath(r, "e").as_ptr()) })
        }),
        row("unlink(missing)", Err(libc::ENOENT), |r| {
            sys(unsafe { libc::unlink(cpath(r, "missing").as_ptr()) })
        }),
        row("rename(n, n/inside)", Err(libc::EINVAL), |r| {
            sys(unsafe { libc::rename(cpath(r, "n").as_ptr(), cpath(r, "n/inside").as_ptr()) })
        }),
        row("rename(d/f, n) file over directory", Err(libc::EISDIR), |r| {
            sys(unsafe { libc::rename(cpath(r, "d/f").as_ptr(), cpath(r, "n").as_ptr()) })
        }),
        row("rename(e, d/f) directory over file", Err(libc::ENOTDIR), |r| {
            sys(unsafe { libc::rename(cpath(r, "e").as_ptr(), cpath(r, "d/f").as_ptr()) })
        }),
        row(
            "rename(e, n) over a non-empty directory",
            Err(libc::ENOTEMPTY),
            |r| sys(unsafe { libc::rename(cpath(r, "e").as_ptr(), cpath(r, "n").as_ptr()) }),
        ),
        row("rename(missing, x)", Err(libc::ENOENT), |r| {
            sys(unsafe { libc::rename(cpath(r, "missing").as_ptr(), cpath(r, "x").as_ptr()) })
        }),
        row("rename(d/f, d/f) onto itself", Ok(()), |r| {
            sys(unsafe { libc::rename(cpath(r, "d/f").as_ptr(), cpath(r, "d/f").as_ptr()) })
        }),
        row("renameat2(d/f, n/child, NOREPLACE)", Err(libc::EEXIST), |r| {
            let (a, b) = (cpath(r, "d/f"), cpath(r, "n/child"));
            sys(unsafe {
                libc::renameat2(
                    libc::AT_FDCWD,
                    a.as_ptr(),
                    libc::AT_FDCWD,
                    b.as_ptr(),
                    libc::RENAME_NOREPLACE,
                )
            })
        }),
        row(
            "renameat2(d/f, n/child, EXCHANGE) not supported",
            Err(libc::EINVAL),
            |r| {
                let (a, b) = (cpath(r, "d/f"), cpath(r, "n/child"));
                sys(unsafe {
                    libc::renameat2(
                        libc::AT_FDCWD,
                        a.as_ptr(),
                        libc::AT_FDCWD,
                        b.as_ptr(),
                        libc::RENAME_EXCHANGE,
                    )
                })
            },
        ),
        row("symlink(d/f, s) not replicated", Err(libc::EPERM), |r| {
            sys(unsafe { libc::symlink(cpath(r, "d/f").as_ptr(), cpath(r, "s").as_ptr()) })
        }),
        row("link(d/f, l) not replicated", Err(libc::EPERM), |r| {
            sys(unsafe { libc::link(cpath(r, "d/f").as_ptr(), cpath(r, "l").as_ptr()) })
        }),
        row("mknod(fifo) not replicated", Err(libc::EPERM), |r| {
            sys(unsafe { libc::mknod(cpath(r, "fifo").as_ptr(), libc::S_IFIFO | 0o644, 0) })
        }),
        row("chmod(d/f, 0600) not replicated", Err(libc::EPERM), |r| {
            sys(unsafe { libc::chmod(cpath(r, "d/f").as_ptr(), 0o600) })
        }),
        row("chmod(d/f, 0644) what it shows", Ok(()), |r| {
            sys(unsafe { libc::chmod(cpath(r, "d/f").as_ptr(), 0o644) })
        }),
        row("chown(d/f, 1234, 1234) not replicated", Err(libc::EPERM), |r| {
            sys(unsafe { libc::chown(cpath(r, "d/f").as_ptr(), 1234, 1234) })
        }),
        row("truncate(d/f, 16 GiB + 1)", Err(libc::EFBIG), move |r| {
            sys(unsafe { libc::truncate(cpath(r, "d/f").as_ptr(), past_max as i64) })
        }),
        row("truncate(d, 0)", Err(libc::EISDIR), |r| {
            sys(unsafe { libc::truncate(cpath(r, "d").as_ptr(), 0) })
        }),
        row("truncate(missing, 0)", Err(libc::ENOENT), |r| {
            sys(unsafe { libc::truncate(cpath(r, "missing").as_ptr(), 0) })
        }),
        row("utimensat(d/f, atime, mtime)", Ok(()), |r| {
            let times = [
                libc::timespec {
                    tv_sec: 1_000_000_000,
                    tv_nsec: 5,
                },
                libc::timespec {
                    tv_sec: 1_100_000_000,
                    tv_nsec: 7,
                },
            ];
            sys(unsafe { libc::utimensat(libc::AT_FDCWD, cpath(r, "d/f").as_ptr(), times.as_ptr(), 0) })
        }),
        row("fallocate(COLLAPSE_RANGE)", Err(libc::EOPNOTSUPP), |r| {
            with_fd(r, "d/f", libc::O_RDWR, |fd| unsafe {
                libc::fallocate(fd, libc::FALLOC_FL_COLLAPSE_RANGE, 0, 4096)
            })
        }),
        row(
            "fallocate(PUNCH_HOLE) without KEEP_SIZE",
            Err(libc::EOPNOTSUPP),
            |r| {
                with_fd(r, "d/f", libc::O_RDWR, |fd| unsafe {
                    libc::fallocate(fd, libc::FALLOC_FL_PUNCH_HOLE, 0, 1)
                })
            },
        ),
        row("lseek(d/f, 100, SEEK_DATA) past the end", Err(libc::ENXIO), |r| {
            with_fd(r, "d/f", libc::O_RDONLY, |fd| unsafe {
                libc::lseek(fd, 100, libc::SEEK_DATA) as libc::c_int
            })
        }),
        row("write on an O_RDONLY descriptor", Err(libc::EBADF), |r| {
            with_fd(r, "d/f", libc::O_RDONLY, |fd| unsafe {
                libc::write(fd, b"z".as_ptr().cast(), 1) as libc::c_int
            })
        }),
        row("unlink(d/f/) trailing slash", Err(libc::ENOTDIR), |r| {
            sys(unsafe { libc::unlink(cpath(r, "d/f/").as_ptr()) })
        }),
        row("rmdir(e)", Ok(()), |r| {
            sys(unsafe { libc::rmdir(cpath(r, "e").as_ptr()) })
        }),
        row("mkdir(e) again", Ok(()), |r| {
            sys(unsafe { libc::mkdir(cpath(r, "e").as_ptr(), 0o755) })
        }),
        row("rename(e, n/e) into another directory", Ok(()), |r| {
            sys(unsafe { libc::rename(cpath(r, "e").as_ptr(), cpath(r, "n/e").as_ptr()) })
        }),
    ];
    let mut failures = Vec::new();
    for row in &table {
        let got = (row.run)(&root);
        let show = |r: &Result<(), i32>| match r {
            Ok(()) => "ok".to_string(),
            Err(e) => errno_name(*e),
        };
        println!("{:<50} {:>12} {:>12}", row.call, show(&row.want), show(&got));
        if got != row.want {
            failures.push(format!(
                "{}: want {}, got {}",
                row.call,
                show(&row.want),
                show(&got)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} calls differ:\n{}",
        failures.len(),
        table.len(),
        failures.join("\n")
    );
    // What the calls that succeeded left behind.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(root.join("d/f")).unwrap();
    assert_eq!((meta.mtime(), meta.mtime_nsec()), (1_100_000_000, 7));
    assert!(root.join("n/e").is_dir() && !root.join("e").exists());

    // Access times: replicated when set, never moved by reads (noatime); ctime follows changes.
    let times = |m: &Path| {
        let meta = std::fs::metadata(m.join("d/f")).unwrap();
        (meta.atime(), meta.atime_nsec(), meta.mtime(), meta.mtime_nsec())
    };
    let set = (1_000_000_000, 5, 1_100_000_000, 7);
    for (i, m) in mounts.iter().enumerate() {
        wait_for(
            Duration::from_secs(20),
            &format!("times on {}", c.nodes[i].name),
            || (times(m) == set).then_some(()),
        );
    }
    assert_eq!(ok(&format!("cat {}/d/f", mounts[2].display())), "x\n");
    assert_eq!(times(&mounts[2]), set, "a read does not move the access time");
    ok(&format!("touch -a -d @1200000000 {}/d/f", root.display()));
    for m in &mounts {
        wait_for(Duration::from_secs(20), "touch -a everywhere", || {
            (times(m) == (1_200_000_000, 0, 1_100_000_000, 7)).then_some(())
        });
    }
    let ctime = |p: &Path| {
        let meta = std::fs::metadata(p).unwrap();
        (meta.ctime(), meta.ctime_nsec())
    };
    let before = ctime(&root.join("d/f"));
    // The kernel's change-time clock ticks every few milliseconds: let one tick pass.
    std::thread::sleep(Duration::from_millis(20));
    ok(&format!("mv {0}/d/f {0}/d/g", root.display()));
    assert!(ctime(&root.join("d/g")) > before, "a rename changes ctime");
}

/// The inode table holds what the kernel caches, not every name ever seen: after the kernel
/// drops its caches (and forgets the inodes), the table shrinks back.
/// What `tar` does to every file it unpacks: contents, then the archive's mtime, owner and
/// mode set through the still-open descriptor, then close. The mtime travels with the close's
/// commit to every node; an owner or mode the file already has is accepted, another refused.
#[test]
fn times_owners_and_modes_set_through_an_open_file_travel_with_its_close() {
    use std::os::unix::fs::MetadataExt;
    if !fuse_available() {
        return;
    }
    let (c, mounts) = mounted_cluster(&[]);
    let root = &mounts[1];
    let path = cpath(root, "unpacked");
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
            0o644,
        )
    };
    sys(fd).unwrap();
    assert_eq!(unsafe { libc::write(fd, b"abc".as_ptr().cast(), 3) }, 3);
    let omit = libc::timespec {
        tv_sec: 0,
        tv_nsec: libc::UTIME_OMIT,
    };
    let mtime = libc::timespec {
        tv_sec: 1_300_000_000,
        tv_nsec: 9,
    };
    sys(unsafe { libc::futimens(fd, [omit, mtime].as_ptr()) }).unwrap();
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    sys(unsafe { libc::fstat(fd, &mut st) }).unwrap();
    assert_eq!((st.st_mtime, st.st_mtime_nsec, st.st_size), (1_300_000_000, 9, 3));
    sys(unsafe { libc::fchown(fd, st.st_uid, st.st_gid) }).unwrap();
    sys(unsafe { libc::fchmod(fd, st.st_mode & 0o7777) }).unwrap();
    assert_eq!(sys(unsafe { libc::fchmod(fd, 0o600) }), Err(libc::EPERM));
    assert_eq!(
        sys(unsafe { libc::fchown(fd, st.st_uid + 1, st.st_gid) }),
        Err(libc::EPERM)
    );
    sys(unsafe { libc::close(fd) }).unwrap();
    for (i, m) in mounts.iter().enumerate() {
        wait_for(
            Duration::from_secs(20),
            &format!("the file on {}", c.nodes[i].name),
            || {
                let meta = std::fs::metadata(m.join("unpacked")).ok()?;
                ((meta.mtime(), meta.mtime_nsec(), meta.len()) == (1_300_000_000, 9, 3)).then_some(())
            },
        );
        assert_eq!(std::fs::read(m.join("unpacked")).unwrap(), b"abc");
    }
    // A write after the time was set moves it again, as on a local disk.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_APPEND) };
    sys(fd).unwrap();
    sys(unsafe { libc::futimens(fd, [omit, mtime].as_ptr()) }).unwrap();
    assert_eq!(unsafe { libc::write(fd, b"d".as_ptr().cast(), 1) }, 1);
    sys(unsafe { libc::close(fd) }).unwrap();
    let recent = |m: &Path| std::fs::metadata(m.join("unpacked")).unwrap().mtime() > 1_700_000_000;
    for (i, m) in mounts.iter().enumerate() {
        wait_for(
            Duration::from_secs(20),
            &format!("the write on {}", c.nodes[i].name),
            || (std::fs::read(m.join("unpacked")).unwrap() == b"abcd").then_some(()),
        );
        assert!(recent(m), "{}: the write's own time", c.nodes[i].name);
    }
}

#[test]
fn the_inode_table_shrinks_when_the_kernel_forgets() {
    if !fuse_available() {
        return;
    }
    let (c, mounts) = mounted_cluster(&[]);
    let m = mounts[0].display().to_string();
    ok(&format!(
        "mkdir {m}/many && cd {m}/many && for i in $(seq 300); do echo $i > f$i; done"
    ));
    let gauge = || {
        let (_, body) = c.nodes[0].get("/metrics");
        String::from_utf8(body)
            .unwrap()
            .lines()
            .find_map(|l| {
                l.strip_prefix("raftd_fuse_inodes ")
                    .map(|v| v.parse::<f64>().unwrap() as u64)
            })
            .unwrap()
    };
    assert_eq!(ok(&format!("ls -l {m}/many | grep -c '^-'")).trim(), "300");
    assert!(gauge() >= 300, "every listed file was looked up: {}", gauge());
    use std::os::unix::fs::MetadataExt;
    let number = std::fs::metadata(mounts[0].join("many/f17")).unwrap().ino();
    wait_for(Duration::from_secs(20), "the kernel to forget the names", || {
        std::fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
        (gauge() < 50).then_some(())
    });
    // Forgotten names still work, under the numbers they had (so `git` and `find`, which
    // remember them, see the same files).
    assert_eq!(ok(&format!("cat {m}/many/f17")), "17\n");
    let again = std::fs::metadata(mounts[0].join("many/f17")).unwrap().ino();
    assert_eq!(again, number, "a name looked up again got another number");
    let listed = ok(&format!("ls -i {m}/many/ | grep -w f17"));
    assert_eq!(
        listed.split_whitespace().next(),
        Some(number.to_string().as_str())
    );
    assert_eq!(ok(&format!("ls {m}/many | wc -l")).trim(), "300");
}

/// A counter of node `i`'s FUSE operations of kind `op`.
fn fuse_ops(c: &Cluster, i: usize, op: &str) -> u64 {
    let (_, body) = c.nodes[i].get("/metrics");
    let prefix = format!("raftd_fuse_operations_total{{op=\"{op}\"}} ");
    String::from_utf8(body)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).map(|v| v.parse::<f64>().unwrap() as u64))
        .unwrap_or(0)
}

#[test]
fn the_kernel_caches_names_and_attributes_and_forgets_whatever_changes_anywhere() {
    if !fuse_available() {
        return;
    }
    let (mut c, m) = mounted_cluster(&[]);
    let leader = c.wait_leader();
    let (here, elsewhere) = (c.followers(leader)[0], c.followers(leader)[1]);
    let f = m[here].join("f");
    std::fs::write(&f, b"one").unwrap();

    // Cached: a hundred `stat`s of a name cost the node (almost) no requests.
    std::fs::metadata(&f).unwrap();
    let asked = || fuse_ops(&c, here, "lookup") + fuse_ops(&c, here, "getattr");
    let before = asked();
    for _ in 0..100 {
        assert_eq!(std::fs::metadata(&f).unwrap().len(), 3);
    }
    let requests = asked() - before;
    assert!(
        requests < 10,
        "100 stats of a cached name sent {requests} requests"
    );

    // Exact: a change committed through another node is what `open` then sees, and from then
    // on what `stat` shows — not the attributes cached a moment ago.
    let two = b"version two, longer";
    assert_eq!(c.nodes[elsewhere].post("/files/f", two).0, 200);
    assert_eq!(std::fs::read(&f).unwrap(), two);
    assert_eq!(std::fs::metadata(&f).unwrap().len(), two.len() as u64);

    // Removed elsewhere: gone here, though its entry was cached.
    assert_eq!(c.nodes[elsewhere].delete("/files/f").0, 200);
    let opened = std::fs::File::open(&f).map(|_| ());
    assert_eq!(opened.unwrap_err().kind(), std::io::ErrorKind::NotFound);
    assert!(!f.exists(), "a removed name stays cached");

    // A name that changes kind elsewhere (file, then directory) is looked up afresh: no
    // stale type, no EIO.
    let g = m[here].join("g");
    std::fs::write(&g, b"a file").unwrap();
    assert!(std::fs::metadata(&g).unwrap().is_file());
    assert_eq!(c.nodes[elsewhere].delete("/files/g").0, 200);
    assert_eq!(c.nodes[elsewhere].post("/files/g/inner", b"x").0, 200);
    assert_eq!(std::fs::read(g.join("inner")).unwrap(), b"x");
    assert!(std::fs::metadata(&g).unwrap().is_dir());

    // A shell whose working directory is in the mount keeps it while others change the
    // directory's contents; it sees a name created elsewhere (negative lookups are never
    // cached).
    std::fs::create_dir(m[here].join("d")).unwrap();
    let d = m[here].join("d").display().to_string();
    let mut shell = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {d} && echo ready && until [ -e stop ]; do sleep 0.02; done; ls; /bin/pwd"
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(shell.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line, "ready\n");
    for name in ["a", "b", "stop"] {
        assert_eq!(c.nodes[elsewhere].post(&format!("/files/d/{name}"), b"x").0, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while shell.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the shell in the mount never saw `stop`"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert_eq!(rest, format!("a\nb\nstop\n{d}\n"));
}
