//! Property tests of everything that parses input from outside the node: log lines (the log
//! file and `raftd log`), command JSON (peer proposals and appends), names (every API), and
//! snapshot archives (from peers). Each starts from the seed corpus in `tests/corpus/` (real
//! lines and a real snapshot taken from a running node), mutates it at random, and checks
//! that nothing panics and nothing escapes the directory it is confined to.
//!
//! The run is bounded (proptest's default of 256 cases per property). For a longer soak:
//! `PROPTEST_CASES=100000 cargo test --release --test fuzz`. A failure prints the minimal
//! input and is replayed first on the next run (`tests/fuzz.proptest-regressions`, kept in the repository).

use std::collections::BTreeSet;
use std::path::{Component, Path};

use openraft::{CommittedLeaderId, EntryPayload};
use proptest::prelude::*;
use raftd::names;
use raftd::raft::command::{
    Chunk, Command, Commit, Data, Delete, Dir, Layout, Patch, Piece, Rename, Span, StagedPatch, Touch, Write,
};
use raftd::raft::{log_format, Entry, LogId};
use raftd::store::files::Tree;
use raftd::store::snapshot::{self, Validator};

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus");

fn corpus_lines() -> Vec<Vec<u8>> {
    let text = std::fs::read(format!("{CORPUS}/log-lines.txt")).unwrap();
    text.split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

fn corpus_names() -> Vec<String> {
    std::fs::read_to_string(format!("{CORPUS}/names.txt"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn corpus_snapshot() -> Vec<u8> {
    std::fs::read(format!("{CORPUS}/snapshot.snap")).unwrap()
}

/// One random edit: flip, insert, delete, or cut the input at a position.
type Edit = (usize, u8, u8);

fn mutate(seed: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for &(at, op, byte) in edits {
        let at = if out.is_empty() { 0 } else { at % out.len() };
        match op {
            0 if !out.is_empty() => out[at] ^= byte.max(1),
            1 => out.insert(at, byte),
            2 if !out.is_empty() => {
                out.remove(at);
            }
            3 => out.truncate(at),
            _ => {}
        }
    }
    out
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    prop::collection::vec((any::<usize>(), 0u8..4, any::<u8>()), 0..6)
}

/// Everything under `dir`, as relative paths.
fn listing(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            out.insert(path.strip_prefix(root).unwrap().display().to_string());
            if entry.file_type().unwrap().is_dir() {
                walk(root, &path, out);
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

/// Names built from pieces an attacker would use.
fn name() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec![
        "a", "b", "..", ".", "", "link", "x y", "log", "\0", "ü", "/",
    ]);
    (prop::collection::vec(piece, 1..4), any::<bool>()).prop_map(|(pieces, absolute)| {
        let joined = pieces.join("/");
        if absolute {
            format!("/{joined}")
        } else {
            joined
        }
    })
}

fn command() -> impl Strategy<Value = Command> {
    let data = prop::collection::vec(any::<u8>(), 0..16).prop_map(Data);
    prop_oneof![
        (name(), data.clone()).prop_map(|(n, d)| Command::Write(Write {
            filename: n,
            data: d,
            mtime: 1,
            req: None,
            existing: false,
        })),
        name().prop_map(|n| Command::Delete(Delete {
            filename: n,
            req: None
        })),
        name().prop_map(|n| Command::Mkdir(Dir {
            dirname: n,
            mtime: 1,
            req: None
        })),
        name().prop_map(|n| Command::Rmdir(Dir {
            dirname: n,
            mtime: 0,
            req: None
        })),
        (name(), name()).prop_map(|(from, to)| Command::Rename(Rename { from, to, req: None })),
        name().prop_map(|n| Command::Touch(Touch {
            filename: n,
            mtime: Some(2),
            atime: Some(3)
        })),
        (0u64..3, 0u32..3, data.clone()).prop_map(|(upload, seq, data)| Command::Chunk(Chunk {
            upload,
            seq,
            data
        })),
        (0u64..3, prop::option::of(name()), prop::option::of(layout())).prop_map(
            |(upload, filename, shape)| {
                Command::Commit(Commit {
                    upload,
                    filename,
                    mtime: 3,
                    req: None,
                    existing: false,
                    patch: shape.map(|layout| StagedPatch {
                        spans: vec![Span(0, layout.size.min(16))],
                        layout,
                    }),
                })
            }
        ),
        (name(), layout(), 0u64..64, data.clone(), any::<bool>()).prop_map(
            |(n, layout, offset, d, existing)| {
                Command::Patch(Patch {
                    filename: n,
                    layout,
                    writes: vec![Piece { offset, data: d }],
                    mtime: 4,
                    req: None,
                    existing,
                })
            }
        ),
    ]
}

/// A patch's shape, sometimes with ranges past its length (refused the same way everywhere).
fn layout() -> impl Strategy<Value = Layout> {
    (
        prop::option::of(0u64..64),
        0u64..80,
        prop::option::of((0u64..80, 0u64..40)),
    )
        .prop_map(|(cut, size, zero)| Layout {
            cut,
            size,
            zeros: zero.map(|(o, l)| Span(o, l)).into_iter().collect(),
        })
}

proptest! {
    /// A damaged log line is refused with an error, never a panic; a line that decodes
    /// encodes back to an entry that decodes the same.
    #[test]
    fn log_lines_decode_or_fail_cleanly(seed in 0usize..64, edits in edits()) {
        let lines = corpus_lines();
        let line = mutate(&lines[seed % lines.len()], &edits);
        if let Ok(entry) = log_format::decode(&line) {
            let mut again = Vec::new();
            log_format::encode(&entry, &mut again).unwrap();
            prop_assert_eq!(log_format::decode(&again).unwrap(), entry);
        }
    }

    /// Arbitrary bytes, too.
    #[test]
    fn arbitrary_bytes_are_not_log_lines(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = log_format::decode(&bytes);
        let _ = log_format::decode_header(&bytes);
    }

    /// Command JSON from peers (the wire form) and from the log (name + body) parses or fails,
    /// never panics.
    #[test]
    fn command_json_parses_or_fails_cleanly(seed in 0usize..64, edits in edits()) {
        let lines = corpus_lines();
        let Ok(Entry { payload: EntryPayload::Normal(cmd), .. }) = log_format::decode(&lines[seed % lines.len()]) else {
            return Ok(());
        };
        let wire = mutate(&serde_json::to_vec(&cmd).unwrap(), &edits);
        let _ = serde_json::from_slice::<Command>(&wire);
        let body = mutate(cmd.body_json().unwrap().as_bytes(), &edits);
        if let Ok(text) = std::str::from_utf8(&body) {
            let _ = Command::from_name_json(cmd.name(), text);
        }
    }

    /// A name that passes validation is a plain relative path of normal components: joined to
    /// any root it stays below that root.
    #[test]
    fn valid_names_stay_below_the_root(seed in 0usize..64, edits in edits(), generated in name()) {
        let names = corpus_names();
        let mutated = String::from_utf8_lossy(&mutate(names[seed % names.len()].as_bytes(), &edits)).to_string();
        for candidate in [mutated, generated] {
            if names::validate(&candidate).is_ok() {
                let path = Path::new(&candidate);
                prop_assert!(path.components().all(|c| matches!(c, Component::Normal(_))), "{:?}", candidate);
                prop_assert!(!candidate.contains('\0'));
            }
        }
    }

    /// Any sequence of commands, with any names, applied to a tree that even holds a planted
    /// symlink to the outside: nothing appears outside `files/` and `sm/`, nothing is written
    /// through the symlink, and every outcome is a result, not a panic.
    #[test]
    fn commands_never_escape_the_tree(cmds in prop::collection::vec(command(), 1..8)) {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        let tree = Tree::open(&data).unwrap();
        std::os::unix::fs::symlink(&outside, tree.root.join("link")).unwrap();
        for (i, cmd) in cmds.iter().enumerate() {
            let applied = tree.apply(cmd, i as u64);
            prop_assert!(applied.is_ok(), "{:?} failed the node: {:?}", cmd, applied);
        }
        prop_assert!(listing(&outside).is_empty(), "written through the symlink: {:?}", listing(&outside));
        let top: BTreeSet<String> = ["data", "outside"].map(String::from).into();
        prop_assert_eq!(std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect::<BTreeSet<_>>(), top);
        let data_top: BTreeSet<String> = ["files", "sm"].map(String::from).into();
        prop_assert_eq!(std::fs::read_dir(&data).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect::<BTreeSet<_>>(), data_top);
    }

    /// A damaged or hostile snapshot archive unpacks only below its destination or fails
    /// cleanly; the streaming validator accepts only archives that unpack.
    #[test]
    fn snapshot_archives_unpack_inside_or_fail(edits in edits(), piece in 1usize..600) {
        let archive = mutate(&corpus_snapshot(), &edits);
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("dest");
        let extracted = snapshot::extract(archive.as_slice(), &dest);
        let names: Vec<String> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        prop_assert!(names.iter().all(|n| n == "dest"), "{:?}", names);
        let mut validator = Validator::default();
        let accepted = archive.chunks(piece).try_for_each(|c| validator.feed(c)).and_then(|()| validator.finish());
        if accepted.is_ok() {
            prop_assert!(extracted.is_ok(), "validator accepted what extract refused: {:?}", extracted.err());
        }
    }
}

/// The seed corpus itself is valid: every line decodes, the snapshot validates and unpacks.
#[test]
fn corpus_is_valid() {
    for line in corpus_lines() {
        log_format::decode(&line).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&line)));
    }
    let archive = corpus_snapshot();
    let mut v = Validator::default();
    v.feed(&archive).unwrap();
    v.finish().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    snapshot::extract(archive.as_slice(), tmp.path()).unwrap();
    // The planted-path example from the security report is in the names corpus and refused.
    assert!(corpus_names().iter().any(|n| n == "../escaped"));
    assert!(names::validate("../escaped").is_err());
    let _ = LogId::new(CommittedLeaderId::new(1, 0), 1);
}
